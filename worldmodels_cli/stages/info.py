"""`wm info`: what an artifact is, its key figures and provenance, and whether it validates."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..runtime.errors import ArtifactError
from ..store import artifacts as A


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """A flat-ish dict for display; `valid` is False (with `error`) when the artifact does not validate."""
    try:
        meta = A.validate(path)
        if meta.kind in ("vae", "mdn"):  # the weights too: NaN or a non-numeric tensor makes it invalid
            from ..store.checkpoint import load

            load(path, meta.kind)
        elif meta.kind == "controller":
            from ..models.controller import load_controller

            for which in ("best", "mean"):
                load_controller(path, which)
    except ArtifactError as exc:
        return {"path": str(path), "valid": False, "error": str(exc)}
    report: dict[str, Any] = {"path": str(path), "valid": True, "kind": meta.kind, "env": meta.env,
                              "schema_version": meta.schema_version, "seed": meta.seed, "created": meta.created}
    with A.open_artifact(path) as fh:
        if meta.kind in ("rollouts", "series"):
            idx = A.read_episode_index(fh)
            report["episodes"] = idx.episodes
            report["frames"] = idx.frames
            if idx.episodes:
                report["episode_length"] = f"{idx.lengths.mean():.1f} ± {idx.lengths.std():.1f} (min {idx.lengths.min()}, max {idx.lengths.max()})"
        if A.WEIGHTS in fh:
            report["parameters"] = int(sum(np.prod(fh[A.WEIGHTS][k].shape) for k in fh[A.WEIGHTS]))
    if meta.model_config:
        report["model"] = meta.model_config
    if meta.kind == "mdn":
        from ..dream.program import DREAM_SUMMARY, mdn_dream_summary

        report[DREAM_SUMMARY] = mdn_dream_summary(path, meta)  # the dream's length and done rate
        if isinstance(meta.summary.get("ensemble"), dict):  # K, the held-out quantiles, the threshold
            report["ensemble"] = meta.summary["ensemble"]
    report.update({k: v for k, v in meta.summary.items()
                   if k not in report and (not isinstance(v, (list, dict)) or k == "scores")})
    report["inputs"] = {role: (v["path"] if isinstance(v, dict) else [q["path"] for q in v]) for role, v in meta.inputs.items()}
    report["versions"] = {k: v for k, v in meta.versions.items() if k in ("worldmodels_cli", "torch", "gymnasium", "vizdoom")}
    return report
