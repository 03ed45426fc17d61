"""Where an artifact came from, and finding what it came from: the command that made it (for `wm rerun`), the
preset it was made with (inherited by the stages that read it), and its inputs wherever they now are.

An input is recorded by checksum, absolute path and path relative to the recording artifact's folder
(`artifacts.atomic_write` adds the last). `locate` tries the relative path first (a folder moved or copied
whole), then the absolute one, then the input's file name beside the artifact, then any artifact in that folder
with the recorded checksum; a file found at a recorded path with other bytes is refused, never used silently.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..runtime.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

_command: dict[str, Any] | None = None  # set by the `wm` entry point for the artifacts this process writes


def set_command(argv: list[str] | None) -> None:
    """Record `wm ARGV` (and the folder it runs in) as the command of every artifact written until reset."""
    global _command
    _command = None if argv is None else {"argv": list(argv), "cwd": os.getcwd(), "python": sys.executable}


def command() -> dict[str, Any]:
    """The current command record, {} outside the `wm` entry point (a stage called from Python)."""
    return dict(_command or {})


def with_relative_paths(inputs: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """`inputs` (artifacts.inputs_record form) with each record's path also relative to `folder`."""

    def rel(rec: Any) -> Any:
        if isinstance(rec, list):
            return [rel(q) for q in rec]
        if isinstance(rec, dict) and "path" in rec:
            return {**rec, "relative": os.path.relpath(os.path.abspath(rec["path"]), os.path.abspath(folder))}
        return rec

    return {role: rel(rec) for role, rec in inputs.items()}


def locate(artifact: str | os.PathLike, rec: Mapping[str, Any], role: str) -> Path:
    """The file an input record of `artifact` names: the same bytes, wherever they now are (module doc)."""
    from .artifacts import sha256

    here = Path(artifact).parent
    recorded = Path(rec["path"])
    candidates = [here / rec["relative"]] if rec.get("relative") else []
    candidates += [recorded, here / recorded.name]
    seen, differs = set(), None
    for cand in candidates:
        key = os.path.abspath(cand)
        if key in seen or not cand.is_file():
            continue
        seen.add(key)
        if sha256(cand) == rec["sha256"]:
            return cand
        differs = differs or cand
    for cand in sorted(here.glob("*.h5")):  # moved and renamed: any file in the folder with the same bytes
        if os.path.abspath(cand) not in seen and _same_size(cand, rec) and sha256(cand) == rec["sha256"]:
            log.info("%s: its %s %s was found as %s (same checksum)", artifact, role, recorded, cand)
            return cand
    if differs is not None:
        raise ArtifactError(f"{artifact}: {differs} is not the {role} it was made with (checksum differs); "
                            f"pass --{role} PATH to use it anyway")
    raise ArtifactError(f"{artifact}: its {role} {recorded} is missing (looked beside it too); pass --{role} PATH")


def _same_size(path: Path, rec: Mapping[str, Any]) -> bool:
    return "bytes" not in rec or path.stat().st_size == rec["bytes"]


def inherited_preset(explicit: str | None, inputs: Iterable[str | os.PathLike], *, default: str = "paper") -> str:
    """The preset a stage runs with: `explicit` if given (a note when its inputs were made with another), else
    the one its inputs record (refused when they disagree or one records none), else `default` (a stage
    without artifact inputs: `wm collect`)."""
    from .artifacts import validate

    recorded = {str(p): validate(p).preset for p in inputs}
    named = {p: s for p, s in recorded.items() if s}
    if explicit is not None:
        other = sorted({s for s in named.values() if s != explicit})
        if other:
            log.warning("--preset %s, although the inputs were made with %s", explicit, ", ".join(other))
        return explicit
    if not recorded:
        log.info("preset %s (pass --preset small for a laptop-sized run)", default)
        return default
    unnamed = [p for p, s in recorded.items() if not s]
    if unnamed:
        raise ConfigError(f"{unnamed[0]} records no preset (imported, or made before artifacts recorded one); pass --preset")
    if len(set(named.values())) > 1:
        made = ", ".join(f"{Path(p).name}: {s}" for p, s in named.items())
        raise ConfigError(f"the inputs were made with different presets ({made}); pass --preset")
    scale = next(iter(named.values()))
    log.info("preset %s (the one its inputs were made with)", scale)
    return scale
