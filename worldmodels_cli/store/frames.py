"""Frames streamed from rollouts artifacts for training V, in memory that does not grow with the dataset.

The paper's code loads every frame into RAM (≈123 GB for CarRacing, ref §3). Here an epoch is a random walk over
*blocks* of `block_frames` consecutive frames (block boundaries at multiples of `block_frames`: with a multiple of
the HDF5 chunk length each block decompresses whole chunks once). The blocks are permuted, taken `buffer_blocks`
at a time into a shuffle buffer (a "group"), and the group's training frames are permuted and emitted. So:

- every training frame is emitted exactly once per epoch, nothing from validation episodes;
- the order is a pure function of (seed, epoch): a resume skips the consumed frames and continues identically;
- the emitted order does not depend on the number of data-loader workers: worker w builds groups g ≡ w (mod W)
  and torch's DataLoader returns them round-robin, i.e. in group order. Each worker opens the files itself.

Peak memory is a few groups (buffer_blocks · block_frames · 12 KiB each), independent of the dataset's size.
Train/validation split: whole episodes, `val_fraction` of each file's episodes, chosen from the seed.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import h5py
import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..runtime import seeding
from ..runtime.errors import ArtifactError, ConfigError
from . import artifacts as A

FRAME_SHAPE = (64, 64, 3)


def rollouts_env(rollouts: Sequence[str | os.PathLike]) -> str:
    """Validate the rollouts artifacts and return their common env; one-line errors otherwise."""
    if not rollouts:
        raise ConfigError("no --rollouts given")
    envs = {}
    for p in rollouts:
        meta = A.validate(p, "rollouts")
        if not meta.env:
            raise ArtifactError(f"{p}: rollouts artifact has no env attribute")
        envs[str(p)] = meta.env
    if len(set(envs.values())) > 1:
        raise ConfigError("rollouts of different envs cannot be mixed: "
                          + ", ".join(f"{p} is {e}" for p, e in envs.items()))
    return next(iter(envs.values()))


@dataclass(frozen=True)
class Source:
    """One rollouts file: where its episodes lie and which are held out."""

    path: str
    frames: int
    starts: np.ndarray  # (E,) int64
    lengths: np.ndarray  # (E,) int64
    val: np.ndarray  # (E,) bool

    @cached_property
    def _sorted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = np.argsort(self.starts, kind="stable")
        return self.starts[order], self.lengths[order], self.val[order]

    def _episode_at(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For positions x: (index into the start-sorted episodes, or -1; offset of x inside that episode)."""
        starts, _, _ = self._sorted
        e = np.searchsorted(starts, x, side="right") - 1  # the last episode starting at or before x
        return e, x - starts[np.maximum(e, 0)]

    def count_before(self, x: np.ndarray, *, val: bool = False) -> np.ndarray:
        """Number of training (or validation) frames at positions < x, vectorised over x."""
        _, lengths, v = self._sorted
        sel = v == val
        cum = np.concatenate([[0], np.cumsum(np.where(sel, lengths, 0))])
        e, off = self._episode_at(np.asarray(x))
        ec = np.maximum(e, 0)
        inside = np.where(sel[ec], np.clip(off, 0, lengths[ec]), 0) if len(lengths) else 0
        return np.where(e >= 0, cum[ec] + inside, 0) if len(lengths) else np.zeros_like(x)

    def mask(self, lo: int, hi: int, *, val: bool = False) -> np.ndarray:
        """(hi-lo,) bool: which frames of [lo, hi) belong to training (or validation) episodes."""
        _, lengths, v = self._sorted
        if not len(lengths):
            return np.zeros(hi - lo, dtype=bool)
        e, off = self._episode_at(np.arange(lo, hi))
        ec = np.maximum(e, 0)
        return (e >= 0) & (off < lengths[ec]) & (v[ec] == val)


def split_episodes(paths: Sequence[str | os.PathLike], val_fraction: float, seed: int) -> list[Source]:
    """Read each file's episode index and hold out round(val_fraction · E) whole episodes per file (at least one
    when val_fraction > 0 and the file has two or more), chosen deterministically from (seed, file position)."""
    sources = []
    for i, path in enumerate(paths):
        with A.open_artifact(path, "rollouts") as fh:
            idx = A.read_episode_index(fh)
            frames = int(fh[A.FRAMES].shape[0])
        e = idx.episodes
        n_val = int(round(val_fraction * e))
        if val_fraction > 0 and e >= 2:
            n_val = min(max(n_val, 1), e - 1)
        else:
            n_val = 0
        val = np.zeros(e, dtype=bool)
        val[seeding.generator(seed, "vae-split", i).permutation(e)[:n_val]] = True
        sources.append(Source(str(path), frames, idx.starts, idx.lengths, val))
    return sources


class TrainFrames:
    """The epoch plan over training frames; iterating yields whole shuffled groups (M, 64, 64, 3) uint8 of the
    epoch and first group set by `at(epoch, first_group)` (a positioned copy). Inside a DataLoader worker, only
    that worker's share of the groups. A batch of 100 thus mixes frames of up to `buffer_blocks` random places in
    the dataset; with the defaults (256 x 32) that is 8192 frames, ~100 MB, per group."""

    def __init__(self, sources: Sequence[Source], block_frames: int, buffer_blocks: int, seed: int) -> None:
        self.sources = list(sources)
        self.block_frames, self.buffer_blocks, self.seed = block_frames, buffer_blocks, seed
        files, starts, counts = [], [], []
        for f, src in enumerate(self.sources):
            edges = np.unique(np.minimum(np.arange(0, src.frames + block_frames, block_frames), src.frames))
            n = np.diff(src.count_before(edges))  # training frames per block
            keep = n > 0
            files.append(np.full(int(keep.sum()), f, dtype=np.int32))
            starts.append(edges[:-1][keep])
            counts.append(n[keep])
        self.block_file = np.concatenate(files) if files else np.zeros(0, np.int32)
        self.block_start = np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)
        self.block_count = np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, np.int64)
        self.epoch, self.first_group = 0, 0

    @property
    def frames(self) -> int:
        """Training frames per epoch."""
        return int(self.block_count.sum())

    def groups(self, epoch: int) -> list[np.ndarray]:
        """Block ids of each group of this epoch, in emission order."""
        perm = seeding.generator(self.seed, "vae-blocks", epoch).permutation(len(self.block_count))
        return [perm[i : i + self.buffer_blocks] for i in range(0, len(perm), self.buffer_blocks)]

    def group_sizes(self, epoch: int) -> np.ndarray:
        return np.array([int(self.block_count[g].sum()) for g in self.groups(epoch)], dtype=np.int64)

    def at(self, epoch: int, first_group: int = 0) -> TrainFrames:
        clone = copy.copy(self)
        clone.epoch, clone.first_group = epoch, first_group
        return clone

    def read_group(self, files: dict[int, h5py.File], epoch: int, g: int, blocks: np.ndarray) -> np.ndarray:
        """The training frames of the group's blocks, permuted: (M, 64, 64, 3) uint8."""
        parts = []
        for b in sorted(blocks.tolist(), key=lambda b: (self.block_file[b], self.block_start[b])):  # file order
            f, lo = int(self.block_file[b]), int(self.block_start[b])
            src = self.sources[f]
            hi = min(lo + self.block_frames, src.frames)
            if f not in files:
                files[f] = h5py.File(src.path, "r")
            frames = files[f][A.FRAMES][lo:hi]
            m = src.mask(lo, hi)
            parts.append(frames if m.all() else frames[m])
        buf = np.concatenate(parts) if parts else np.zeros((0, *FRAME_SHAPE), np.uint8)
        perm = seeding.generator(self.seed, "vae-shuffle", epoch, g).permutation(len(buf))
        return buf[perm]

    def __iter__(self) -> Iterator[np.ndarray]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        files: dict[int, h5py.File] = {}  # opened here, i.e. inside the worker process (h5py is not fork-safe)
        try:
            for g, blocks in enumerate(self.groups(self.epoch)):
                if g >= self.first_group and g % workers == worker:
                    yield self.read_group(files, self.epoch, g, blocks)
        finally:
            for fh in files.values():
                fh.close()


class _Groups(IterableDataset):
    """torch's view of a positioned TrainFrames (each worker iterates its share of the groups)."""

    def __init__(self, plan: TrainFrames) -> None:
        self.plan = plan

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.plan)


def _ignore_sigint(_worker_id: int) -> None:
    """Workers ignore Ctrl-C: the main process catches it, checkpoints, and shuts them down."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_batches(plan: TrainFrames, epoch: int, batch_size: int, *, skip_frames: int = 0,
                  num_workers: int = 0) -> Iterator[np.ndarray]:
    """This epoch's training frames in batches (B, 64, 64, 3) uint8, all full but the last, after skipping the
    first `skip_frames` (a resume). Groups before the skip point are never read."""
    sizes = plan.group_sizes(epoch)
    ends = np.cumsum(sizes)
    first = int(np.searchsorted(ends, skip_frames, side="right"))
    offset = skip_frames - (int(ends[first - 1]) if first > 0 else 0)
    if first >= len(sizes):
        return
    dataset = plan.at(epoch, first)
    if num_workers > 0:
        # one group in flight per worker: memory stays a few groups
        loader = DataLoader(_Groups(dataset), batch_size=None, num_workers=num_workers, prefetch_factor=1,
                            worker_init_fn=_ignore_sigint)
        groups = (t.numpy() for t in loader)
    else:
        groups = iter(dataset)
    carry = np.zeros((0, *FRAME_SHAPE), np.uint8)
    for i, group in enumerate(groups):
        if i == 0 and offset:
            group = group[offset:]
        buf = np.concatenate([carry, group]) if len(carry) else group
        full = len(buf) // batch_size * batch_size
        for s in range(0, full, batch_size):
            yield buf[s : s + batch_size]
        carry = buf[full:]
    if len(carry):
        yield carry


def val_batches(sources: Sequence[Source], batch_size: int, *, read_frames: int = 256) -> Iterator[np.ndarray]:
    """Validation episodes' frames in file order, in batches (B, 64, 64, 3) uint8; sequential reads."""
    carry = np.zeros((0, *FRAME_SHAPE), np.uint8)
    for src in sources:
        if not src.val.any():
            continue
        with h5py.File(src.path, "r") as fh:
            ds = fh[A.FRAMES]
            for s, n in sorted(zip(src.starts[src.val].tolist(), src.lengths[src.val].tolist(), strict=True)):
                for lo in range(s, s + n, read_frames):
                    buf = np.concatenate([carry, ds[lo : min(lo + read_frames, s + n)]])
                    full = len(buf) // batch_size * batch_size
                    for i in range(0, full, batch_size):
                        yield buf[i : i + batch_size]
                    carry = buf[full:]
    if len(carry):
        yield carry


def val_frames(sources: Sequence[Source]) -> int:
    return int(sum(src.lengths[src.val].sum() for src in sources))


def sample_frames(sources: Sequence[Source], n: int, *, val: bool = True) -> np.ndarray:
    """Up to n frames evenly spaced over the validation (or training) episodes, for the reconstruction grid."""
    spans = [(src, int(s), int(ln)) for src in sources
             for s, ln, v in zip(src.starts, src.lengths, src.val, strict=True) if v == val and ln > 0]
    total = sum(ln for _, _, ln in spans)
    if total == 0:
        return np.zeros((0, *FRAME_SHAPE), np.uint8)
    want = np.unique(np.linspace(0, total - 1, min(n, total)).astype(np.int64))
    out, pos, k = [], 0, 0
    for src, s, ln in spans:
        picks = []
        while k < len(want) and want[k] < pos + ln:
            picks.append(s + int(want[k] - pos))
            k += 1
        if picks:
            with h5py.File(src.path, "r") as fh:
                out.extend(fh[A.FRAMES][p] for p in picks)
        pos += ln
    return np.stack(out)
