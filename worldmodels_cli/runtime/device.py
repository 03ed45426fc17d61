"""`--device auto|cpu|cuda` resolution."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve(name: str) -> str:
    """'auto' picks CUDA when present; asking for CUDA without one is a clear error."""
    import torch

    if name not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return name


SMALL_BATCH = 64  # below this many rows a CPU step runs on one thread (the dream's rule, dream/program.py)


@contextlib.contextmanager
def few_rows_one_thread(rows: int, device) -> Iterator[None]:
    """One torch thread while stepping fewer than SMALL_BATCH rows on the CPU: a step of small ops only adds
    synchronisation across threads, and suffers badly when another process shares the cores (an RSSM's loop over
    time on a busy 2-core machine: 2.5 s a step on one thread against 7-35 s on two)."""
    import torch

    if rows >= SMALL_BATCH or torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
