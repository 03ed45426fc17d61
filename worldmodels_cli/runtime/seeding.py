"""Explicit, derived seeds: one seed per run; per-stage, per-worker and per-episode seeds derived from it."""

from __future__ import annotations

import hashlib
import random

import numpy as np

_STAGES: dict[str, int] = {}


def derive(seed: int, stage: str, *index: int) -> int:
    """A 31-bit seed from (seed, stage, index...): stable across runs, machines and worker counts."""
    key = f"{int(seed)}/{stage}/" + "/".join(str(int(i)) for i in index)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") & 0x7FFFFFFF


def generator(seed: int, stage: str, *index: int) -> np.random.Generator:
    return np.random.default_rng(derive(seed, stage, *index))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's legacy global and torch (for code we don't control, e.g. gymnasium internals)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
