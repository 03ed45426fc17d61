"""Metrics as JSONL beside each output, `key=value` log lines, and terminal-only progress bars."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def metrics_path(artifact: str | os.PathLike) -> Path:
    """`data/vae.h5` -> `data/vae.metrics.jsonl`."""
    p = Path(artifact)
    return p.with_name(p.stem + ".metrics.jsonl")


class MetricsWriter:
    """Append-only JSONL; each record gets a wall-clock timestamp. Namespaced keys (`vae/loss`)."""

    def __init__(self, path: str | os.PathLike, *, truncate: bool = False) -> None:
        self.path = Path(path)
        if truncate and self.path.exists():
            self.path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        rec = {"time": round(time.time(), 3), **{k: _clean(v) for k, v in record.items()}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a kill mid-line leaves a partial last record
                continue
        return out

    def truncate_after(self, key: str, value: float) -> None:
        """Drop records with record[key] > value: a resumed run rewrites what the lost work had logged."""
        kept = [r for r in self.read() if r.get(key, -math.inf) <= value]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def kv(**items: Any) -> str:
    """A fixed `key=value` log line."""
    parts = []
    for k, v in items.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        parts.append(f"{k}={v}")
    return " ".join(parts)


def progress(total: int | None, desc: str, unit: str = "it", initial: int = 0):
    """A tqdm bar on a terminal; a silent stand-in otherwise (logs carry the progress there)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not sys.stderr.isatty(),
                dynamic_ncols=True, leave=False)
