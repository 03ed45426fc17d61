"""Small fakes shipped in the package so worker processes (spawned, or Ray actors) can import them in tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def init_counter(payload: Any) -> dict:
    """Worker state: the payload plus the worker's pid (to show state is built once per worker)."""
    return {"payload": payload, "pid": os.getpid(), "calls": 0}


def square(state: dict, task: int) -> tuple[int, int]:
    state["calls"] += 1
    return task * task + state["payload"], state["pid"]


def flaky(state: dict, task: tuple[int, str]) -> int:
    """Raises the first time a task runs (a marker file records the attempt): retried, then succeeds."""
    value, marker_dir = task
    marker = Path(marker_dir) / f"flaky-{value}"
    if not marker.exists():
        marker.touch()
        raise RuntimeError(f"env crashed on task {value}")
    return value


def always_fails(state: dict, task: int) -> int:
    raise ValueError(f"broken env for seed {task}")


def die_once(state: dict, task: tuple[int, str]) -> int:
    """Kills its worker process (as a segfaulting env would) the first time task 2 runs."""
    value, marker_dir = task
    marker = Path(marker_dir) / f"died-{value}"
    if value == 2 and not marker.exists():
        marker.touch()
        os._exit(1)
    return value * 10


def die_always(state: dict, task: int) -> int:
    if task == 1:
        os._exit(1)
    return task

