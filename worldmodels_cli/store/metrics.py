"""Metrics as JSONL beside each output, `key=value` log lines, and progress: a bar on a terminal (log lines are
written through it, so they never land on the bar's line), periodic "k of N, rate, ETA" lines in a log file."""

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


HEADER = "header"  # the key of a header record: {"time": t, "header": {command line, config, versions, ...}}


class MetricsWriter:
    """Append-only JSONL; each record gets a wall-clock timestamp. Namespaced keys (`vae/loss`); a non-finite
    number is stored as null (JSON has no NaN). `begin` starts an invocation's records with a header record and
    attaches a tracker (`tracking.py`): every record written after it goes to the tracker too, so the JSONL stays
    the source of truth and a tracker only mirrors it."""

    def __init__(self, path: str | os.PathLike, *, truncate: bool = False) -> None:
        self.path = Path(path)
        self.tracker: Any = None
        if truncate and self.path.exists():
            self.path.unlink()

    def begin(self, header: dict[str, Any], tracker: Any = None) -> MetricsWriter:
        """Write the header record; from now on `tracker` (header, record, image, close) gets every record too."""
        rec = {"time": round(time.time(), 3), HEADER: _clean_tree(header)}
        self._append(rec)
        self.tracker = tracker
        if tracker is not None:
            tracker.header(rec)
        return self

    def write(self, record: dict[str, Any]) -> None:
        rec = {"time": round(time.time(), 3), **{k: _clean(v) for k, v in record.items()}}
        self._append(rec)
        if self.tracker is not None:
            self.tracker.record(rec)

    def image(self, tag: str, path: str | os.PathLike | None, step: int) -> None:
        """A picture the stage wrote beside its artifact (png, gif), to the tracker; the file is the record."""
        if self.tracker is not None and path is not None and Path(path).exists():
            self.tracker.image(tag, Path(path), int(step))

    def close(self) -> None:
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            tracker.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _append(self, rec: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def read(self, *, headers: bool = False) -> list[dict[str, Any]]:
        """The metric records (and with `headers` the header records too, in file order)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a kill mid-line leaves a partial last record
                continue
            if isinstance(rec, dict) and (headers or HEADER not in rec):
                out.append(rec)
        return out

    def headers(self) -> list[dict[str, Any]]:
        """The header of every invocation that wrote here, oldest first."""
        return [r[HEADER] for r in self.read(headers=True) if HEADER in r]

    def truncate_after(self, key: str, value: float) -> None:
        """Drop records with record[key] > value: a resumed run rewrites what the lost work had logged (headers,
        which have no `key`, stay)."""
        kept = [r for r in self.read(headers=True) if _at_most(r.get(key), value)]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)


def _at_most(x: Any, value: float) -> bool:
    return not isinstance(x, (int, float)) or x <= value


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON null: "nan" strings would make every reader parse numbers out of text
    return v


def _clean_tree(x: Any) -> Any:
    """A header as plain JSON: numpy scalars unwrapped, tuples as lists, non-finite numbers null."""
    if isinstance(x, dict):
        return {str(k): _clean_tree(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean_tree(v) for v in x]
    if isinstance(x, os.PathLike):
        return str(x)
    return _clean(x)


def kv(**items: Any) -> str:
    """A fixed `key=value` log line."""
    parts = []
    for k, v in items.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        parts.append(f"{k}={v}")
    return " ".join(parts)


LOG_PROGRESS = "WM_LOG_PROGRESS"  # set: progress as log lines even on a terminal (workers side by side)


def progress(total: int | None, desc: str, unit: str = "it", initial: int = 0):
    """A tqdm bar (rate, ETA) on a terminal; without one (or with WM_LOG_PROGRESS set), a `LogProgress` with the
    same methods."""
    if not sys.stderr.isatty() or os.environ.get(LOG_PROGRESS):
        return LogProgress(total, desc, unit, initial)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, leave=False)


PROGRESS_SECONDS = "WM_PROGRESS_SECONDS"  # seconds between LogProgress lines (default 30)


class LogProgress:
    """Progress for a log file: "desc: k of N (p%), rate unit/s, ETA h:mm:ss" every `WM_PROGRESS_SECONDS`
    seconds, and once at the end. Rate and ETA count only this process's work (a resumed run's `initial` is
    not work done now)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.n, self.start = total, desc, unit, initial, initial
        self.every = float(os.environ.get(PROGRESS_SECONDS, 30))
        self.t0 = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False
        self.logged = initial  # the count the last line showed

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last, self.logged = now, self.n
            log.info(self.line())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def line(self) -> str:
        rate = (self.n - self.start) / max(time.monotonic() - self.t0, 1e-9)
        parts = [f"{self.desc}: {self.n}" + (f" of {self.total} ({100 * self.n / max(self.total, 1):.0f}%)"
                                               if self.total else f" {self.unit}")]
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def close(self) -> None:
        if not self.closed and self.n > self.start and self.n != self.logged:  # once at the end, not twice
            log.info(self.line())
        self.closed = True

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class BarSafeHandler(logging.StreamHandler):
    """A log handler that writes through tqdm, which clears a live bar, prints the line, and redraws the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
