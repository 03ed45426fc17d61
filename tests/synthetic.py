"""Synthetic, schema-valid rollouts artifacts for tests and benchmarks (no environment needed).

Each frame carries its global position in the file in pixel (0, 0) (three bytes, little-endian), so a test can
tell exactly which frames a loader emitted; the rest is a smooth, episode-dependent picture a VAE can learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from worldmodels_cli.config import preset
from worldmodels_cli.store import artifacts as A


def frame_ids(frames: np.ndarray) -> np.ndarray:
    """(N, 64, 64, 3) uint8 -> (N,) int64: the position each synthetic frame was written at."""
    px = frames[:, 0, 0, :].astype(np.int64)
    return px[:, 0] | (px[:, 1] << 8) | (px[:, 2] << 16)


def make_frames(first: int, n: int, episode: int, rng: np.random.Generator) -> np.ndarray:
    """n frames (n, 64, 64, 3) uint8 of one episode, tagged with positions first..first+n-1."""
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    base = np.stack([(xx * (2 + episode % 5)) % 256, (yy * 3 + 40 * episode) % 256, np.full_like(xx, 90.0)], -1)
    out = np.empty((n, 64, 64, 3), np.uint8)
    cx, cy = rng.uniform(10, 54, 2)
    for t in range(n):
        cx, cy = np.clip([cx + rng.normal(0, 2), cy + rng.normal(0, 2)], 6, 58)
        blob = ((xx - cx) ** 2 + (yy - cy) ** 2) < 36
        img = base.copy()
        img[blob] = (220, 30, 30)
        out[t] = img.astype(np.uint8)
        pos = first + t
        out[t, 0, 0] = (pos & 255, (pos >> 8) & 255, (pos >> 16) & 255)
    return out


def write_rollouts(
    path: str | Path,
    *,
    env: str = "carracing",
    lengths: Sequence[int] = (30, 25, 40, 20, 35, 28),
    seed: int = 0,
    chunk_frames: int = 16,
    first_id: int = 0,
) -> Path:
    """Write a rollouts artifact with episodes of the given lengths, stored in order; returns the path."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    cfg = preset(env, "tiny")
    action_dim = cfg.env.action_dim
    lengths = [int(n) for n in lengths]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    with A.atomic_write(path, "rollouts", config=cfg, seed=seed, env=env) as fh:
        frames_ds = A.create_frames_dataset(fh, chunk_frames)
        A.create_step_datasets(fh, action_dim, env_actions=env == "doom", chunk=256)
        for e, n in enumerate(lengths):
            A.append(frames_ds, make_frames(int(starts[e]), n, first_id + e, rng))
            A.append(fh[A.ACTIONS], rng.uniform(-1, 1, (n, action_dim)).astype(np.float32))
            A.append(fh[A.REWARDS], rng.normal(0, 1, n).astype(np.float32))
            term = np.zeros(n, bool)
            trunc = np.zeros(n, bool)
            (term if e % 2 == 0 else trunc)[-1] = True
            A.append(fh[A.TERMINATED], term)
            A.append(fh[A.TRUNCATED], trunc)
            if env == "doom":
                A.append(fh[A.ENV_ACTIONS], rng.integers(0, 3, n).astype(np.int8))
        A.write_episode_index(fh, A.EpisodeIndex(
            starts=starts, lengths=np.asarray(lengths, np.int64),
            seeds=np.arange(len(lengths), dtype=np.int64) * 7 + 1000 * seed + 1,
            ids=np.arange(first_id, first_id + len(lengths), dtype=np.int64)))
        A.set_summary(fh, {"episodes": len(lengths), "frames": int(sum(lengths))})
    return path
