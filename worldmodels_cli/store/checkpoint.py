"""Model artifacts (`vae`, `mdn`) that double as training checkpoints.

One file holds the weights (one HDF5 dataset per state-dict entry), the architecture (`model_config`), the training
state a resume needs (optimizer state, counters, ...; stored as data, never pickled), the provenance, and a
`summary` whose `complete` flag says whether training finished. A training stage rewrites the whole file
atomically at each checkpoint, so the file at its final path is always a consistent checkpoint: a kill at any
moment loses at most the work since the last one, and rerunning the same command resumes from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..runtime.errors import ArtifactError
from . import artifacts as A

COMPLETE = "complete"  # summary entry: False while training is unfinished


@dataclass(frozen=True)
class Checkpoint:
    """What `load` reads back: the artifact's Meta, its weights (numpy) and its training state (nested dict)."""

    meta: A.Meta
    weights: dict[str, np.ndarray]
    train_state: dict

    @property
    def complete(self) -> bool:
        return is_complete(self.meta)


def is_complete(meta: A.Meta) -> bool:
    return bool(meta.summary.get(COMPLETE, True))


def save(
    out: str | os.PathLike,
    kind: str,
    *,
    state_dict: Mapping[str, Any],
    model_config: Any,
    train_state: Mapping[str, Any] | None,
    summary: Mapping[str, Any],
    complete: bool,
    config: Any,
    seed: int,
    inputs: Mapping[str, Any],
    env: str,
    extra: Callable[[h5py.File], None] | None = None,
    preset: str | None = None,
    schema: int = A.SCHEMA_VERSION,
) -> None:
    """(Re)write the model artifact `out` atomically. `extra(fh)` may add stage-specific datasets; `preset`
    names the preset when `config` does not, `schema` the version stamped (artifacts.atomic_write)."""
    with A.atomic_write(out, kind, config=config, seed=seed, inputs=inputs, env=env, preset=preset,
                        schema=schema) as fh:
        A.write_state_dict(fh.create_group(A.WEIGHTS), state_dict)
        A.write_tree(fh.create_group(A.TRAIN_STATE), dict(train_state or {}))
        A.set_model_config(fh, model_config)
        if extra is not None:
            extra(fh)
        A.set_summary(fh, {**summary, COMPLETE: bool(complete)})


def load(path: str | os.PathLike, kind: str) -> Checkpoint:
    """Read a model artifact; a damaged one raises ArtifactError naming the file."""
    meta = A.validate(path, kind)
    try:
        with h5py.File(path, "r") as fh:
            weights = A.read_state_dict(fh[A.WEIGHTS])
            train_state = A.read_tree(fh[A.TRAIN_STATE]) if A.TRAIN_STATE in fh else {}
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: corrupt {kind} checkpoint ({A._first_line(exc)})") from None
    if not meta.model_config:
        raise ArtifactError(f"{path}: {kind} artifact has no model_config; cannot rebuild the model")
    for name, arr in weights.items():  # a NaN weight would silently poison every later stage
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise ArtifactError(f"{path}: {kind} weight {name} is not a numeric tensor (damaged artifact)")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ArtifactError(f"{path}: {kind} weight {name} holds NaN or inf (damaged or diverged artifact)")
    return Checkpoint(meta=meta, weights=weights, train_state=train_state)


def load_weights(model, weights: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Copy numpy weights into `model` (strict); a mismatch is a damaged artifact, named as such."""
    import torch

    try:
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: weights do not match the recorded model_config ({A._first_line(exc)})") from None


def load_model(path: str | os.PathLike, kind: str, build: Callable[[dict], Any], device: str = "cpu", *,
               allow_incomplete: bool = False):
    """Rebuild a model from the artifact's model_config with `build(model_config)`, load its weights, move it to
    `device`, put it in eval mode -> (model, Meta)."""
    from ..runtime.errors import WorldModelsError

    ckpt = load(path, kind)
    if not allow_incomplete and not ckpt.complete:
        step = ckpt.meta.summary.get("steps", "?")
        raise ArtifactError(f"{path}: an unfinished {kind} training checkpoint (step {step}); rerun its training "
                            "command to finish it first")
    try:
        model = build(ckpt.meta.model_config)
    except (WorldModelsError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: invalid model_config ({A._first_line(exc)})") from None
    load_weights(model, ckpt.weights, path)
    return model.to(device).eval(), ckpt.meta


# ------------------------------------------------------------------------------ optimizer state as data
def optimizer_state_to_tree(state_dict: Mapping[str, Any]) -> dict:
    """torch optimizer.state_dict() -> a tree `artifacts.write_tree` stores (tensors become datasets)."""
    return {"state": {str(k): dict(v) for k, v in state_dict["state"].items()},
            "param_groups": [dict(g) for g in state_dict["param_groups"]]}


def optimizer_state_from_tree(tree: Mapping[str, Any]) -> dict:
    """Inverse of optimizer_state_to_tree: int parameter ids, numpy arrays back to tensors (0-d ones too, e.g.
    Adam's `step`)."""
    import torch

    def tensor(v: Any) -> Any:
        return torch.from_numpy(np.array(v)) if isinstance(v, (np.ndarray, np.generic)) else v

    state = {int(k): {kk: tensor(vv) for kk, vv in v.items()} for k, v in tree.get("state", {}).items()}
    return {"state": state, "param_groups": [dict(g) for g in tree["param_groups"]]}


def beside(out: str | os.PathLike, suffix: str) -> Path:
    """A file next to an artifact: `data/vae.h5`, `.recon.png` -> `data/vae.recon.png`."""
    p = Path(out)
    return p.with_name(p.stem + suffix)
