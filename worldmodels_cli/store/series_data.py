"""Batches for training M from one or more `series` artifacts (ref §4): stored (μ, logσ²) per frame, actions,
rewards and the episode index. V never runs here.

Every batch draws z afresh: z = μ + exp(logσ²/2)·ε (ref §4.1, §C.3: never μ itself). A batch holds T+1 frames
per row; M's inputs are frames [:-1] and its targets frames [1:] (teacher forcing, ref §4.1). The done target of
input t is whether the step after frame t ended the episode by a death (`terminated`): restart[t+1] of the
reference (ref §4.3, §C.1) for every episode that ends in a death, but 0 at the end of an episode cut at the step
cap (`truncated`, not a death: M must not learn that surviving 2100 steps kills).

Two layouts (ref §4.2, §4.3):
- `episodes` (CarRacing): each step, the first B of a random permutation of the episodes; each row is one episode
  from its first frame (a random window of seq_len frames when an episode is longer), zero initial state; rows of
  shorter episodes are padded and masked.
- `streams` (Doom): each epoch the episodes are shuffled, concatenated into one stream, reshaped to B parallel
  streams and cut into chunks of seq_len frames; the LSTM state is carried across the chunks of an epoch (the caller
  does that; `Batch.reset` says when to start from zeros). As the reference, the last frame of a chunk is a target
  only, and the chunk-to-chunk transition is not trained.

Memory: mu/logvar are loaded into RAM (float32). At Doom paper scale that is ≈3M frames × 64 × 2 ≈ 1.5 GB, which
is acceptable for M training; frames are never loaded here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime import seeding
from ..runtime.errors import ArtifactError, ConfigError
from . import artifacts as A


@dataclass(frozen=True)
class SeriesData:
    """The per-step datasets of one or more series artifacts, concatenated (episode starts re-offset)."""

    mu: np.ndarray  # (N, Z) float32
    logvar: np.ndarray  # (N, Z) float32
    actions: np.ndarray  # (N, A) float32
    rewards: np.ndarray  # (N,) float32
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    index: A.EpisodeIndex
    env: str
    paths: tuple[str, ...]

    @property
    def z_dim(self) -> int:
        return int(self.mu.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episodes(self) -> int:
        return self.index.episodes

    @functools.cached_property
    def live(self) -> np.ndarray:
        """(N,) bool: no earlier step of the frame's episode terminated. CarRacing's data run on past the end
        (ref §2.1), where gymnasium pays -100 at every step after leaving the playfield; the real game pays it once
        and stops, so those later rewards are not M's to learn."""
        ended = np.zeros(len(self.terminated), dtype=bool)
        for start, length in zip(self.index.starts, self.index.lengths, strict=True):
            t = self.terminated[start:start + length]
            ended[start + 1:start + length] = np.cumsum(t[:-1]) > 0
        return ~ended

    def initial(self) -> tuple[np.ndarray, np.ndarray]:
        """(μ, logσ²) of the first frame of every episode, (E, Z) each: where dreams start (ref §7)."""
        return self.mu[self.index.starts], self.logvar[self.index.starts]


def load_series(paths: Sequence[str | os.PathLike]) -> SeriesData:
    """Read and concatenate series artifacts of one env (e.g. old and new data, iterative training)."""
    if not paths:
        raise ConfigError("no series artifact given (--series)")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (A.MU, A.LOGVAR, *A.STEP_DATA)}
    starts, lengths, seeds, ids = [], [], [], []
    env, offset, first = None, 0, None
    for p in paths:
        meta = A.validate(p, "series")
        with A.open_artifact(p, "series") as fh:
            idx = A.read_episode_index(fh)
            arrays = {k: fh[k][()] for k in parts}
        n = len(arrays[A.MU])
        if arrays[A.MU].ndim != 2 or arrays[A.LOGVAR].shape != arrays[A.MU].shape or arrays[A.ACTIONS].ndim != 2:
            raise ArtifactError(f"{p}: mu/logvar must be (N, Z) and actions (N, A) (damaged series artifact)")
        if any(len(arrays[k]) != n for k in parts) or idx.frames != n or (idx.episodes and (idx.starts.min() < 0 or (idx.starts + idx.lengths).max() > n)):
            raise ArtifactError(f"{p}: per-step datasets and the episode index disagree (damaged series artifact)")
        bad = [k for k in (A.MU, A.LOGVAR, A.ACTIONS, A.REWARDS) if not np.isfinite(arrays[k]).all()]
        if bad:  # z sampled from a NaN μ poisons M at its first step
            raise ArtifactError(f"{p}: {bad[0]} holds NaN or inf (damaged series artifact)")
        shape = (arrays[A.MU].shape[1], arrays[A.ACTIONS].shape[1])
        if first is None:
            first, env = (str(p), shape), meta.env
        elif shape != first[1]:
            raise ArtifactError(f"{p}: latent/action sizes {shape} differ from {first[0]}'s {first[1]}")
        elif meta.env != env:
            raise ArtifactError(f"{p}: env {meta.env!r} differs from {first[0]}'s {env!r}")
        for k in parts:
            parts[k].append(arrays[k])
        starts.append(idx.starts + offset)
        lengths.append(idx.lengths)
        seeds.append(idx.seeds)
        ids.append(idx.ids)
        offset += n
    index = A.EpisodeIndex(*(np.concatenate(x).astype(np.int64) for x in (starts, lengths, seeds, ids)))
    if index.episodes == 0:
        raise ArtifactError(f"{', '.join(map(str, paths))}: no episodes in the series")
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return SeriesData(
        mu=cat[A.MU].astype(np.float32, copy=False), logvar=cat[A.LOGVAR].astype(np.float32, copy=False),
        actions=cat[A.ACTIONS].astype(np.float32, copy=False), rewards=cat[A.REWARDS].astype(np.float32, copy=False),
        terminated=cat[A.TERMINATED].astype(bool, copy=False), truncated=cat[A.TRUNCATED].astype(bool, copy=False),
        index=index, env=env or "", paths=tuple(str(Path(p)) for p in paths),
    )


def split_episodes(episodes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) episode numbers: a seeded random `fraction` held out (at least one when fraction > 0
    and there are two or more episodes; never all)."""
    order = seeding.generator(seed, "mdn-split").permutation(episodes)
    n_val = int(round(fraction * episodes))
    if fraction > 0 and episodes >= 2:
        n_val = min(max(n_val, 1), episodes - 1)
    else:
        n_val = 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def bootstrap_episodes(train: np.ndarray, seed: int) -> np.ndarray:
    """A bootstrap resample of the training episodes: as many, drawn with replacement, sorted (an ensemble member's
    data; docs/pessimism.md). Only `train`'s episodes are drawn, so the held-out ones stay out of every member."""
    return np.sort(seeding.generator(seed, "mdn-bootstrap").choice(np.asarray(train), size=len(train), replace=True))


@dataclass
class Batch:
    """T+1 frames per row: inputs are [:, :-1], targets [:, 1:]."""

    z: np.ndarray  # (B, T+1, Z) float32, sampled afresh from (μ, logσ²)
    actions: np.ndarray  # (B, T+1, A)
    rewards: np.ndarray  # (B, T+1)
    restart: np.ndarray  # (B, T+1) float32: 1 on each episode's first frame
    mask: np.ndarray  # (B, T) float32: 1 where input t has a real target t+1 (0 on padding)
    live: np.ndarray  # (B, T+1) float32: SeriesData.live (the reward of step t is a real one)
    death: np.ndarray  # (B, T+1) float32: the step after frame t ended its episode by a death (terminated)
    reset: bool  # start this batch from a zero LSTM state

    @property
    def done_target(self) -> np.ndarray:
        """(B, T): whether step t ended the episode by a death (module doc; ref §4.3, §C.1)."""
        return self.death[:, :-1]


def sample_z(mu: np.ndarray, logvar: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """z = μ + exp(logσ²/2)·ε, ε ~ N(0, 1) (ref §4.1, §C.3)."""
    eps = rng.standard_normal(mu.shape, dtype=np.float32)
    return (mu + np.exp(0.5 * logvar) * eps).astype(np.float32, copy=False)


def _gather(data: SeriesData, idx: np.ndarray, restart: np.ndarray, mask: np.ndarray, rng, reset: bool) -> Batch:
    return Batch(
        z=sample_z(data.mu[idx], data.logvar[idx], rng),  # (B, T+1, Z)
        actions=data.actions[idx], rewards=data.rewards[idx], restart=restart.astype(np.float32),
        mask=mask.astype(np.float32), live=data.live[idx].astype(np.float32),
        death=data.terminated[idx].astype(np.float32), reset=reset,
    )


def _restart_flags(data: SeriesData) -> np.ndarray:
    flags = np.zeros(len(data.mu), dtype=bool)
    flags[data.index.starts] = True
    return flags


class EpisodeBatcher:
    """`episodes` layout (CarRacing, ref §4.2)."""

    def __init__(self, data: SeriesData, episodes: np.ndarray, batch_size: int, seq_len: int, seed: int) -> None:
        episodes = np.asarray(episodes)
        episodes = episodes[data.index.lengths[episodes] >= 2]  # a 1-frame episode has no transition to learn
        if len(episodes) == 0:
            raise ConfigError("no training episode with 2 or more frames (all held out for validation?)")
        self.data, self.episodes = data, episodes
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rng = seeding.generator(seed, "mdn-batches")
        self._restart = _restart_flags(data)

    def next(self) -> Batch:
        rng, ix = self.rng, self.data.index
        n, b = len(self.episodes), self.batch_size
        pick = np.concatenate([rng.permutation(n) for _ in range(-(-b // n))])[:b]  # ref: a permutation's first B
        eps = self.episodes[pick]
        lengths = np.minimum(ix.lengths[eps], self.seq_len)
        # an episode longer than seq_len contributes a random window (zero state at its start)
        spare = ix.lengths[eps] - lengths
        offsets = np.floor(rng.random(b) * (spare + 1)).astype(np.int64)
        width = int(lengths.max())
        t = np.arange(width)
        idx = ix.starts[eps, None] + offsets[:, None] + np.minimum(t[None, :], lengths[:, None] - 1)  # (B, T+1)
        mask = t[None, 1:] < lengths[:, None]  # (B, T)
        restart = self._restart[idx] & (t[None, :] < lengths[:, None])
        restart[:, 0] = True  # every row starts from a zero state: flag it (ref §4.3)
        return _gather(self.data, idx, restart, mask, rng, reset=True)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class StreamBatcher:
    """`streams` layout (Doom, ref §4.3 `rnn_train.py:76-106`)."""

    def __init__(self, data: SeriesData, episodes: np.ndarray, batch_size: int, seq_len: int, seed: int) -> None:
        self.data, self.episodes = data, np.asarray(episodes)
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        frames = int(data.index.lengths[self.episodes].sum())
        self.chunks = frames // (batch_size * seq_len)
        if self.chunks == 0:
            raise ConfigError(
                f"{frames} training frames are too few for batch_size x seq_len = {batch_size} x {seq_len}; "
                "use more data or a smaller preset"
            )
        self.rng = seeding.generator(seed, "mdn-batches")
        self.epoch, self.chunk = 0, 0
        self._restart = _restart_flags(data)
        self._stream: np.ndarray | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.chunks

    def _build(self) -> np.ndarray:
        """This epoch's frame indices (B, chunks·seq_len): shuffled episodes, concatenated, split in B streams."""
        ix = self.data.index
        order = seeding.generator(self.seed, "mdn-epoch", self.epoch).permutation(self.episodes)
        stream = np.concatenate([np.arange(ix.starts[e], ix.starts[e] + ix.lengths[e]) for e in order])
        used = self.chunks * self.batch_size * self.seq_len
        return stream[:used].reshape(self.batch_size, -1)  # (B, chunks·seq_len)

    def next(self) -> Batch:
        if self._stream is None:
            self._stream = self._build()
        s = self.chunk * self.seq_len
        idx = self._stream[:, s : s + self.seq_len]  # (B, T+1)
        reset = self.chunk == 0
        restart = self._restart[idx]
        mask = np.ones((self.batch_size, self.seq_len - 1), dtype=bool)
        self.chunk += 1
        if self.chunk == self.chunks:
            self.epoch, self.chunk, self._stream = self.epoch + 1, 0, None
        return _gather(self.data, idx, restart, mask, self.rng, reset=reset)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "epoch": self.epoch, "chunk": self.chunk}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.epoch, self.chunk, self._stream = int(state["epoch"]), int(state["chunk"]), None


def make_batcher(layout: str, data: SeriesData, episodes: np.ndarray, batch_size: int, seq_len: int, seed: int):
    if layout == "episodes":
        return EpisodeBatcher(data, episodes, batch_size, seq_len, seed)
    if layout == "streams":
        return StreamBatcher(data, episodes, batch_size, seq_len, seed)
    raise ConfigError(f"unknown batching {layout!r}; choose episodes or streams")


def validation_batches(data: SeriesData, episodes: np.ndarray, batch_size: int, seed: int) -> Iterator[Batch]:
    """Whole held-out episodes from their first frame (zero state, restart flag at t = 0), padded and masked; z
    drawn from a fixed-seed generator so the figure is comparable across checkpoints."""
    rng = seeding.generator(seed, "mdn-val-noise")
    ix = data.index
    for i in range(0, len(episodes), batch_size):
        eps = np.asarray(episodes[i : i + batch_size])
        lengths = ix.lengths[eps]
        if lengths.max() < 2:
            continue
        t = np.arange(int(lengths.max()))
        idx = ix.starts[eps, None] + np.minimum(t[None, :], lengths[:, None] - 1)  # (B, T+1)
        restart = np.zeros(idx.shape, dtype=bool)
        restart[:, 0] = True
        yield _gather(data, idx, restart, t[None, 1:] < lengths[:, None], rng, reset=True)


def write_fake_series(
    path: str | os.PathLike, lengths: Sequence[int], *, z_dim: int, action_dim: int, env: str, seed: int = 0,
    logvar: float = -4.0,
) -> None:
    """A small series artifact with learnable dynamics (μ_{t+1} = 0.9·μ_t + 0.3·mean(a_t) + noise), for tests and
    benchmarks: no env, no V."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.sum())
    mu = np.zeros((n, z_dim), dtype=np.float32)
    actions = rng.uniform(-1, 1, (n, action_dim)).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    for s, length in zip(starts, lengths, strict=True):
        mu[s] = rng.standard_normal(z_dim)
        for t in range(s + 1, s + length):
            mu[t] = 0.9 * mu[t - 1] + 0.3 * actions[t - 1].mean() + 0.05 * rng.standard_normal(z_dim)
    ends = np.zeros(n, dtype=bool)
    ends[starts + lengths - 1] = True
    with A.atomic_write(path, "series", config={"fake": True}, seed=seed, env=env) as fh:
        fh.create_dataset(A.MU, data=mu)
        fh.create_dataset(A.LOGVAR, data=np.full((n, z_dim), logvar, dtype=np.float32))
        fh.create_dataset(A.ACTIONS, data=actions)
        fh.create_dataset(A.REWARDS, data=rng.standard_normal(n).astype(np.float32))
        fh.create_dataset(A.TERMINATED, data=ends)
        fh.create_dataset(A.TRUNCATED, data=np.zeros(n, dtype=bool))
        A.write_episode_index(fh, A.EpisodeIndex(starts, lengths, np.arange(len(lengths)), np.arange(len(lengths))))
