"""Is an existing output this run? The one rule behind every stage's resume, the work folder of the stages that
build their output in parts (collect, encode), and the Ctrl-C guard of the training loops.

A run's identity is what shapes its output: the config it records, less the settings a rerun may change (counts
that only extend it: more episodes, steps or generations; settings that change no result: log intervals, loader
workers), its seed and the checksums of its inputs. A stage with an existing output compares the identity the
output records with its own: equal, it resumes (or reports the output done); different, it refuses in one line
that names what differs, and never overwrites the output.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..runtime.errors import ArtifactError
from .files import write_text_atomic

log = logging.getLogger(__name__)


# A setting added after artifacts were made: the value those artifacts were made with. An artifact that does not
# record the setting is compared as if it recorded this value, so a run made before the setting existed still
# resumes (and one whose command now asks for something else is still refused).
LEGACY_VALUES = {
    "env.doom_screen_flashes": False,  # before it was a setting, flashes were always off
    "mdn_train.ensemble": 1,  # before ensembles (docs/pessimism.md), every M was one M
    "mdn_train.unknown_quantile": 0.99,
    "evolve.pessimism": "off",
    "evolve.pessimism_penalty": 1.0,
    "vae_train.detail_weight": 0.0,  # before it was a setting, V's loss weighted every pixel alike
}


def identity(config: Mapping[str, Any], seed: int | None, inputs: Mapping[str, Any] | None = None, *,
             free: Iterable[str] = ()) -> dict[str, Any]:
    """The identity of a run: `config` as plain JSON without the dotted paths `free` ("collect.episodes") and the
    preset's name, the
    seed (None: the output does not depend on it), and the SHA-256 of each input (`artifacts.inputs_record` form;
    paths do not count; None: the stage records its inputs in `config`)."""
    config = json.loads(json.dumps(config, sort_keys=True))  # tuples -> lists, as read back from an artifact
    config.pop("scale", None)  # the preset's name labels a run; its values are what count
    for path, value in LEGACY_VALUES.items():
        *parents, key = path.split(".")
        node = config
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and key not in node:
            node[key] = value
    for path in free:
        *parents, key = path.split(".")
        node = config
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    out: dict[str, Any] = {"config": config}
    if seed is not None:
        out["seed"] = int(seed)
    if inputs is not None:
        out["inputs"] = _checksums(inputs)
    return out


def _checksums(inputs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for role, rec in inputs.items():
        try:
            out[role] = [q["sha256"] for q in rec] if isinstance(rec, list) else rec["sha256"]
        except (KeyError, TypeError):
            out[role] = rec  # an unreadable record differs from any real one
    return out


def differences(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """'path existing vs wanted' for every leaf that differs, the seed and the env first (the likeliest mix-ups)."""
    out = _diff(existing, wanted, "")
    out.sort(key=lambda d: 0 if d.startswith("seed") else 1 if d.startswith("config.env") else 2)
    return [d.removeprefix("config.") for d in out]


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    if a == b:
        return []
    if prefix.startswith("inputs."):
        return [f"{prefix.rstrip('.')} (another file)"]
    return [f"{prefix.rstrip('.')} {a!r} vs {b!r}"]


def check_same_run(what: str, existing: Mapping[str, Any], wanted: Mapping[str, Any], hint: str = "") -> None:
    """Raise a one-line ArtifactError when `existing` (what an output records) is not the run `wanted`."""
    diff = differences(existing, wanted)
    if diff:
        shown = "; ".join(diff[:3]) + (" ..." if len(diff) > 3 else "")
        raise ArtifactError(f"{what}: exists from another run ({shown}: there vs this command); use another --out "
                            f"or delete it to start over{hint}")


MANIFEST = "manifest.json"  # in a work folder: the identity of the run its parts belong to


def parts_dir(out: str | Path) -> Path:
    """`<out>.parts/`, beside the output: where collect and encode keep finished parts until they merge them."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def work_folder(out: str | Path, wanted: Mapping[str, Any], what: str) -> Path:
    """The work folder of `out` for the run `wanted`: created with its manifest, or an existing one reused when its
    manifest records the same run (a resumed collection or encode), refused otherwise; `what` names the stage."""
    parts = parts_dir(out)
    manifest = parts / MANIFEST
    parts.mkdir(exist_ok=True)
    if manifest.exists():
        try:
            recorded = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            recorded = {"manifest": "unreadable"}
        check_same_run(f"{parts} (an unfinished {what})", recorded, json.loads(json.dumps(wanted, sort_keys=True)))
    else:  # new, or killed before its manifest was written: nothing in it yet
        write_text_atomic(manifest, json.dumps(wanted, sort_keys=True))
    return parts


class StopAfterStep:
    """Ctrl-C during a training loop: the first asks it to stop after the current step (`requested`), where it
    checkpoints and leaves a resumable output; a second one aborts at once. Installed in the main thread only."""

    def __init__(self) -> None:
        self.requested = False
        self._prev = None

    def __enter__(self) -> StopAfterStep:
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # info, not warning: the CLI's own line on exit is the one line a Ctrl-C prints
        log.info("interrupt: stopping after this step and saving a checkpoint (Ctrl-C again to abort)")

    def __exit__(self, *exc) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)
