"""`wm export agent`: a trained agent as a small folder that runs anywhere.

The folder holds three artifacts: V and M with their weights only (no optimizer state, which is two thirds of a
training checkpoint; float16 with `--float16`, loaded back as float32) and the controller, re-pointed at the V and
M beside it by checksum and relative path, so `wm evaluate --controller DIR/controller.h5` rebuilds the agent on
any machine. What it was made from stays recorded (each artifact's config, preset, seed and inputs, and the
source files' checksums under `exported_from` in the summary).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..runtime.errors import ArtifactError, ConfigError
from ..store import artifacts as A
from ..store import checkpoint, files

NAMES = {"vae": "vae.h5", "mdn": "mdn.h5", "controller": "controller.h5"}
# root attributes atomic_write stamps itself; every other attribute of the controller is copied as it is
_STAMPED = {A.KIND, A.SCHEMA, A.CONFIG, A.SEED, A.CREATED, A.VERSIONS, A.INPUTS, A.ENV, A.PRESET, A.COMMAND}


@dataclass
class ExportResult:
    folder: Path
    sizes: dict[str, int]
    float16: bool

    def line(self) -> str:
        total = sum(self.sizes.values())
        each = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in self.sizes.items())
        kind = "float16" if self.float16 else "float32"
        return f"{self.folder}: agent ({kind} weights) {total / 1e6:.2f} MB: {each}"


def run(controller: str | os.PathLike, folder: str | os.PathLike, *, float16: bool = False,
        vae: str | None = None, mdn: str | None = None, preset: str | None = None) -> ExportResult:
    """Write `folder`/{vae,mdn,controller}.h5 from `controller` and the V and M it records (or `vae`, `mdn`).
    `preset`: the preset name to record where the sources record none (made before presets were recorded)."""
    from ..game.agent import agent_spec

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder}: exists and is not empty; choose a new folder")
    spec, _, meta = agent_spec(controller, vae=vae, mdn=mdn)
    folder.mkdir(parents=True, exist_ok=True)
    for kind, src in (("vae", spec.vae), ("mdn", spec.mdn)):
        _weights_only(Path(src), folder / NAMES[kind], kind, float16, preset)
    _repointed(Path(controller), folder / NAMES["controller"], meta, folder, preset)
    return ExportResult(folder, {k: (folder / n).stat().st_size for k, n in NAMES.items()}, float16)


def _weights_only(src: Path, dst: Path, kind: str, float16: bool, preset: str | None) -> None:
    ckpt = checkpoint.load(src, kind)
    if not ckpt.complete:
        raise ArtifactError(f"{src}: an unfinished {kind} training checkpoint; finish its training first")
    weights = {k: v.astype(np.float16) if float16 and v.dtype.kind == "f" else v for k, v in ckpt.weights.items()}
    m = ckpt.meta
    summary = {**m.summary, "exported_from": {"path": os.path.abspath(src), "sha256": A.sha256(src)},
               "float16": float16}
    extra = None
    if kind == "mdn":  # dreams start from these (ref §7)
        from ..models.mdnrnn import load_initial_z

        mu0, lv0 = load_initial_z(src)
        extra = lambda fh: A.write_initial_z(fh, mu0, lv0)  # noqa: E731
    checkpoint.save(dst, kind, state_dict=weights, model_config=m.model_config, train_state=None, summary=summary,
                    complete=True, config=m.config, seed=m.seed, inputs=m.inputs, env=m.env, extra=extra,
                    preset=m.preset or preset)


def _repointed(src: Path, dst: Path, meta: A.Meta, folder: Path, preset: str | None) -> None:
    """The controller artifact as it is, but recording the V and M in `folder` as its inputs."""
    inputs = A.inputs_record({"vae": folder / NAMES["vae"], "mdn": folder / NAMES["mdn"]})
    files.check_writable(dst)
    with h5py.File(src, "r") as fin, A.atomic_write(dst, "controller", config=meta.config, seed=meta.seed,
                                                      inputs=inputs, env=meta.env,
                                                      preset=meta.preset or preset) as fh:
        for name in fin:
            fin.copy(fin[name], fh, name)
        for key, value in fin.attrs.items():
            if key not in _STAMPED:
                fh.attrs[key] = value
        summary = A._loads(fin.attrs.get(A.SUMMARY))
        A.set_summary(fh, {**summary, "exported_from": {"path": os.path.abspath(src), "sha256": A.sha256(src)}})
