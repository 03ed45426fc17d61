"""`wm collect`: run a data policy in the real (or fake) env and record a rollouts artifact (ref §2).

Episode i is seeded from ``seeding.derive(seed, "collect", i)`` and may run in any worker, so the data never
depend on the number of workers. Each worker writes each finished episode to its own shard, atomically, in a
work folder beside the output::

    <out>.parts/manifest.json          what is being collected (env and collect config, seed): a rerun must match
    <out>.parts/episode-000123.h5      a kept episode (written under a temp name, then renamed)
    <out>.parts/episode-000124.short   marker: that episode was not longer than min_length and is discarded
    <out>.parts/lock                   held while a collection runs

The kept episodes are the first ``episodes`` indices, in index order, whose length exceeds ``min_length``
(Doom: 100, ref §2.2), so the kept set never depends on the workers either. They are merged in index order into
``<out>``'s temp file while the collection runs (a thread takes each one as soon as every index before it is
finished; memory stays flat), which is renamed into place when all are in; then the work folder is deleted. Frames are compressed once (store/frame_codec.py): a worker deflates each frame of a kept
episode on a thread beside the game as it comes (handed over ``frame_codec.BLOCK_FRAMES`` at a time), and its shard holds them as the artifact will; the merge makes
each gzip chunk from them as they are (on ``workers`` threads), recompressing only a chunk's first frame when it
was compressed against the frame before. With ``ignore_done`` (CarRacing) the steps after the env's own end are recorded as the env
reports them (off the playfield: −100 and terminated every step); the summary's mean return stops at that end.

A kill at any point costs at most the episodes in flight: rerunning the same command finds the finished shards
and runs only the missing episodes; a larger ``--episodes`` on a complete artifact collects only the extra
episodes (ids continue) and rewrites the artifact with the old episodes first (their frames chunks are copied
as stored, not re-encoded).

With ``--backend ray`` on several machines the work folder must be on a file system all of them share.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import fcntl
import logging
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import tracking
from ..config import CollectConfig, EnvConfig, Preset
from ..game.envs import Env, check_env_config
from ..game.episodes import ENVS_PER_WORKER, EnvSet, EpisodeError, lockstep
from ..game.policies import Actor, Policy, PolicyBatch, make_actor
from ..runtime import Runtime, seeding
from ..runtime.errors import ArtifactError, ConfigError
from ..runtime.executor import make_executor
from ..store import artifacts as A
from ..store import files, frame_codec, metrics, runs

log = logging.getLogger(__name__)

SHARD_SUFFIX = ".h5"
SHORT_SUFFIX = ".short"
LOCK = "lock"
# a rerun with more episodes appends to the same run; the controller counts by its bytes, not where it lies (a
# moved or copied data folder resumes, as every other stage's inputs do)
FREE = ("collect.episodes", "controller.path")
MAX_BATCH = 1024  # episodes handed to the workers at once; memory stays flat whatever --episodes says


@dataclass(frozen=True)
class EpisodeMeta:
    """What a worker reports about one finished episode (the data itself is in its shard)."""

    index: int
    seed: int
    length: int
    ret: float
    kept: bool


@dataclass(frozen=True)
class CollectResult:
    path: Path
    episodes: int
    frames: int
    mean_length: float
    mean_return: float
    ran: int = 0  # episodes run by this call (kept and discarded)
    reused: int = 0  # finished episodes found from an interrupted run
    appended_to: int = 0  # episodes the artifact held before this call
    seconds: float = 0.0

    def summary_line(self) -> str:
        how = []
        if self.appended_to:
            how.append(f"{self.appended_to} already there")
        if self.reused:
            how.append(f"{self.reused} resumed")
        note = f" ({', '.join(how)})" if how else ""
        return (f"{self.path}: {self.episodes} episodes{note}, {self.frames} frames, mean length "
                f"{self.mean_length:.1f}, mean return {self.mean_return:.1f}; ran {self.ran} in {self.seconds:.1f}s")


def episode_seed(seed: int, index: int) -> int:
    return seeding.derive(seed, "collect", index)


def shard_path(parts: Path, index: int, suffix: str = SHARD_SUFFIX) -> Path:
    return parts / f"episode-{index:06d}{suffix}"


# --------------------------------------------------------------------------------------------- workers
@dataclass(frozen=True)
class _Payload:
    env: EnvConfig
    collect: CollectConfig
    seed: int
    parts: str
    controller: str | None


class _Worker:
    """A worker's envs and data actor, built once (a Doom engine takes a while to start)."""

    def __init__(self, p: _Payload) -> None:
        self.p = p
        self.envs = EnvSet(p.env)
        self.actor: Actor = make_actor(p.env, p.collect, p.controller)
        self.encoder = frame_codec.StreamEncoder()  # frames compressed once, beside the game (frame_codec)

    def close(self) -> None:
        self.envs.close()
        self.encoder.close()


def _init_worker(payload: _Payload) -> _Worker:
    return _Worker(payload)


def rollout(env: Env, policy: Policy | Actor, seed: int, max_steps: int, *, ignore_done: bool = False) -> dict[str, np.ndarray]:
    """One episode: per-step arrays keyed by the artifact's dataset names (`episodes.lockstep` with one env)."""
    actor = policy if hasattr(policy, "start") else PolicyBatch.of(policy)
    return lockstep([env], actor, [seed], max_steps, record=True, ignore_done=ignore_done)[0]


def chunk_size(col: CollectConfig, env: EnvConfig) -> int:
    """Episodes a collect task steps in lockstep: a controller's agent acts for several at once; the random
    policies gain nothing from it, and one episode per task keeps their collection as it always ran."""
    return ENVS_PER_WORKER[env.name] if col.policy == "controller" else 1


def _run_chunk(state: _Worker, indices: list[int]) -> list[EpisodeMeta]:
    """Episodes `indices` in lockstep; each is written to its shard as soon as it ends (a kill loses only the
    episodes still running). Frames are compressed as they come, on the encoder's thread, once an episode is
    long enough to be kept: the shard holds them as the artifact will (frame_codec). They are handed over
    `frame_codec.BLOCK_FRAMES` at a time, as views of the episode's frames array (lockstep never writes a row
    again), so the game's thread pays one hand-over per block, and the last block's compression at the end."""
    p, parts, encoder = state.p, Path(state.p.parts), state.encoder
    seeds = [episode_seed(p.seed, i) for i in indices]
    metas: list[EpisodeMeta] = []
    keep_from = p.collect.min_length  # frame t = min_length exists: the episode is longer than min_length
    block = frame_codec.BLOCK_FRAMES
    sent = [0] * len(indices)  # frames of each episode handed to the encoder
    for index in indices:
        encoder.drop(index)  # what a failed try of this chunk left

    def frame(j: int, t: int, frames: np.ndarray) -> None:
        if t >= keep_from and t + 1 - sent[j] >= block:
            encoder.add(indices[j], frames[sent[j]:t + 1])
            sent[j] = t + 1

    def write(j: int, steps: dict[str, np.ndarray]) -> None:
        index, length = indices[j], len(steps[A.FRAMES])
        kept = length > p.collect.min_length
        if kept:
            if sent[j] < length:
                encoder.add(index, steps[A.FRAMES][sent[j]:])
            A.write_episode_shard(shard_path(parts, index), steps, encoder.finish(index), episode_id=index,
                                  seed=seeds[j])
        else:  # only the name matters: this index was run and is discarded (ref §2.2)
            shard_path(parts, index, SHORT_SUFFIX).write_text(f"{length}\n")
        metas.append(EpisodeMeta(index, seeds[j], length, float(steps[A.REWARDS].sum(dtype=np.float64)), kept))

    try:
        lockstep(state.envs.take(len(indices)), state.actor, seeds, p.env.max_steps, record=True,
                 ignore_done=p.collect.ignore_done, labels=[_describe_one(p.seed, i) for i in indices], on_end=write,
                 on_frame=frame)
    except EpisodeError:
        state.envs.close()
        raise
    finally:
        for index in indices:
            encoder.drop(index)  # nothing, unless an episode failed halfway
    return sorted(metas, key=lambda m: m.index)


def _describe_one(seed: int, index: int) -> str:
    return f"episode {index} (seed {episode_seed(seed, index)})"


# --------------------------------------------------------------------------------------------- identity
def _record(cfg: Preset) -> dict[str, Any]:
    """The config a rollouts artifact records: only what shapes its data."""
    return {"env": cfg.env.to_dict(), "collect": cfg.collect.to_dict(), "scale": cfg.scale}  # scale: not identity


# --------------------------------------------------------------------------------------------- work folder
@contextlib.contextmanager
def _locked(parts: Path) -> Iterator[None]:
    with open(parts / LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{parts}: another wm collect is writing this output") from None
        yield


def _scan(parts: Path, start: int) -> dict[int, bool]:
    """{index: kept} of the finished episodes in the work folder; removes what a kill left half-written."""
    done: dict[int, bool] = {}
    for entry in parts.iterdir():
        name = entry.name
        if name.startswith(".episode-"):  # a temp shard: its writer was killed mid-write
            entry.unlink()
            continue
        if not name.startswith("episode-"):
            continue
        stem, suffix = os.path.splitext(name)
        if suffix not in (SHARD_SUFFIX, SHORT_SUFFIX):
            continue
        try:
            index = int(stem.split("-", 1)[1])
        except ValueError:
            continue
        if index >= start:
            done[index] = suffix == SHARD_SUFFIX
    return done


def _selected(done: dict[int, bool], start: int, needed: int) -> tuple[list[int], int]:
    """The kept indices, in order, of the finished prefix from `start` (at most `needed`), and the first index
    of that prefix that is not finished."""
    chosen, i = [], start
    while i in done and len(chosen) < needed:
        if done[i]:
            chosen.append(i)
        i += 1
    return chosen, i


def _next_batch(done: dict[int, bool], start: int, needed: int, workers: int) -> list[int]:
    """Indices to run next: enough, at the observed keep rate, to complete the first `needed` kept ones."""
    chosen, frontier = _selected(done, start, needed)
    ahead = [i for i in done if i > frontier]
    missing = needed - len(chosen) - sum(done[i] for i in ahead)
    tried = [i for i in done if i >= start]
    rate = max(0.02, sum(done[i] for i in tried) / len(tried)) if tried else 1.0
    count = max(1, math.ceil(max(missing, 0) / rate))
    if missing > 0 and rate < 1.0:
        count = max(count, workers)  # a few spare episodes keep every worker busy
    count = min(count, MAX_BATCH + workers)  # a huge --episodes runs batch after batch, never a list of them all
    batch, i = [], frontier
    while len(batch) < count:
        if i not in done:
            batch.append(i)
        i += 1
    return batch


# --------------------------------------------------------------------------------------------- run
def run(cfg: Preset, out: str | os.PathLike, controller: str | os.PathLike | None = None, *,
        runtime: Runtime = Runtime()) -> CollectResult:
    """Collect `cfg.collect.episodes` kept episodes into the rollouts artifact `out` (resuming or appending)."""
    seed, workers, backend, address = runtime.seed, runtime.workers, runtime.backend, runtime.address
    t0 = time.monotonic()
    out = Path(out)
    env_cfg, col = cfg.env, cfg.collect
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if col.min_length >= env_cfg.max_steps:
        raise ConfigError(f"CollectConfig.min_length ({col.min_length}) >= EnvConfig.max_steps ({env_cfg.max_steps}): "
                          "no episode could be kept")
    files.check_writable(out)
    check_env_config(env_cfg)
    controller = None if controller is None else str(controller)
    make_actor(env_cfg, col, controller)  # a bad policy setting fails here, in one line, not in a worker
    record = _record(cfg)
    if controller is not None:  # a different controller file makes different data: part of the identity
        record["controller"] = A.inputs_record({"controller": controller})["controller"]
    ident = runs.identity(record, seed, free=FREE)  # the controller is in `record`
    needed = col.episodes

    old = None
    if out.exists():
        try:
            meta = A.validate(out, "rollouts")
        except ArtifactError as exc:  # anything else at `out` is refused, never overwritten
            raise ArtifactError(f"{exc}; refusing to overwrite it (use another --out)") from None
        runs.check_same_run(str(out), runs.identity(meta.config, meta.seed, free=FREE), ident)
        with A.open_artifact(out, "rollouts") as fh:
            old = A.read_episode_index(fh)
        if old.episodes > needed:
            raise ConfigError(f"{out} already holds {old.episodes} episodes, more than --episodes {needed}; "
                              "use another --out")
        if old.episodes == needed:
            log.info("%s is complete (%d episodes); nothing to do", out, needed)
            s = meta.summary
            return CollectResult(out, old.episodes, old.frames, float(s.get("mean_length", 0.0)),
                                 float(s.get("mean_return", 0.0)), appended_to=old.episodes,
                                 seconds=time.monotonic() - t0)
    start = int(old.ids.max()) + 1 if old is not None and old.episodes else 0
    needed -= old.episodes if old is not None else 0

    parts = runs.work_folder(out, ident, "collection")
    with _locked(parts):
        for stale in out.parent.glob(f".{out.name}.tmp-*"):  # a merge killed mid-write
            stale.unlink()
        done = _scan(parts, start)
        found = set(done)
        fresh = old is None and not found  # a new collection: an old JSONL there belongs to another run
        writer = metrics.MetricsWriter(metrics.metrics_path(out), truncate=fresh)
        with tracking.start(writer, out, runtime, stage="collect", config=record, step_key="collect/episode",
                            first_step=start, purge=fresh):
            with _Merger(out, old, parts, start, needed, record, seed, env_cfg, col, threads=workers) as merger:
                for index in sorted(done):
                    merger.offer(index, done[index])
                ran = _collect(env_cfg, col, seed, parts, start, needed, done, workers, backend, address,
                               controller, writer, merger.offer)
                chosen, _ = _selected(done, start, needed)
                assert len(chosen) == needed, (len(chosen), needed)
                reused = sum(i in found for i in chosen)
                stats = merger.finish()
            seconds = time.monotonic() - t0
            result = CollectResult(out, stats["episodes"], stats["frames"], stats["mean_length"],
                                   stats["mean_return"], ran=ran, reused=reused,
                                   appended_to=old.episodes if old is not None else 0, seconds=seconds)
            writer.write({"collect/episodes": result.episodes, "collect/frames": result.frames, "collect/ran": ran,
                          "collect/seconds": round(seconds, 3), "collect/mean_length": result.mean_length,
                          "collect/mean_return": result.mean_return})
    shutil.rmtree(parts)
    return result


def _collect(env_cfg: EnvConfig, col: CollectConfig, seed: int, parts: Path, start: int, needed: int,
             done: dict[int, bool], workers: int, backend: str, address: str | None, controller: str | None,
             writer: metrics.MetricsWriter, on_episode: Callable[[int, bool], None]) -> int:
    """Run episodes until the first `needed` kept indices from `start` are all finished; returns how many ran.
    `on_episode(index, kept)` is called as each one finishes."""
    if len(_selected(done, start, needed)[0]) == needed:
        return 0
    payload = _Payload(env_cfg, col, seed, str(parts), controller)
    have = len(_selected(done, start, needed)[0])
    ran = frames = 0
    t0 = time.monotonic()
    bar = metrics.progress(total=needed, desc="collect", unit="ep", initial=have)
    budget = 50 * needed + 1000  # give up if (almost) nothing is long enough to keep

    def describe(chunk: list[int]) -> str:
        first = _describe_one(seed, chunk[0])
        return first if len(chunk) == 1 else f"{len(chunk)} episodes from {first} to {_describe_one(seed, chunk[-1])}"

    size = chunk_size(col, env_cfg)
    try:
        with make_executor(workers, _init_worker, payload, backend=backend, address=address) as ex:
            while len(_selected(done, start, needed)[0]) < needed:
                if ran >= budget:
                    raise ConfigError(f"only {sum(done.values())} of {ran} episodes were longer than "
                                      f"CollectConfig.min_length {col.min_length}; lower it")
                batch = _next_batch(done, start, needed, workers * size)
                chunks = [batch[i:i + size] for i in range(0, len(batch), size)]
                for _, ep in ((k, m) for k, metas in ex.run(_run_chunk, chunks, describe=describe) for m in metas):
                    done[ep.index] = ep.kept
                    on_episode(ep.index, ep.kept)
                    ran += 1
                    frames += ep.length
                    writer.write({"collect/episode": ep.index, "collect/seed": ep.seed, "collect/length": ep.length,
                                  "collect/return": ep.ret, "collect/kept": ep.kept})
                    now = time.monotonic()
                    rate_fr = frames / max(now - t0, 1e-9)
                    if ep.kept:
                        bar.update(1)
                    bar.set_postfix_str(f"{ran} run, {rate_fr:.0f} frames/s", refresh=False)  # the bar counts kept ones
    finally:
        bar.close()
    return ran


def _return(steps: dict[str, np.ndarray]) -> float:
    """The episode's return up to the env's own end: ignore_done runs CarRacing on past it (ref §2.1), where
    each step off the playfield is another -100 that no evaluation would count."""
    ended = np.flatnonzero(steps[A.TERMINATED] | steps[A.TRUNCATED])
    stop = int(ended[0]) + 1 if len(ended) else len(steps[A.REWARDS])
    return float(steps[A.REWARDS][:stop].sum(dtype=np.float64))


class _FrameWriter:
    """Appends frames to the artifact's chunked frames dataset: each chunk is made from its frames compressed once
    (frame_codec.build_chunk) on `threads` threads, while the main thread alone touches HDF5. At most a few
    chunks are in flight, so memory stays flat."""

    def __init__(self, ds: h5py.Dataset, chunk: int, threads: int) -> None:
        self.ds, self.chunk = ds, chunk
        self.pieces: list[tuple[frame_codec.EncodedFrames, int, int]] = []  # the chunk being filled
        self.fill = 0
        self.size = 0  # frames handed to the chunk builders so far
        self.pool = cf.ThreadPoolExecutor(max(1, threads), thread_name_prefix="chunks")
        self.pending: collections.deque[tuple[int, cf.Future]] = collections.deque()
        self.max_pending = 4 * max(1, threads)

    def add(self, frames: frame_codec.EncodedFrames) -> None:
        """Append an episode's compressed frames (or a stretch of one)."""
        k = 0
        while k < len(frames):
            take = min(self.chunk - self.fill, len(frames) - k)
            self.pieces.append((frames, k, k + take))
            self.fill, k = self.fill + take, k + take
            if self.fill == self.chunk:
                self._submit()

    def copy_from(self, src: h5py.Dataset, n: int, starts: np.ndarray) -> None:
        """Append src[:n], whose episodes start at `starts`: whole chunks are copied as stored bytes when the layouts
        match; the rest is compressed here as each episode's frames, so the bytes are a fresh collection's."""
        assert self.size == 0 and self.fill == 0
        whole = n // self.chunk if A.same_frames_layout(src, self.ds) else 0
        if whole:
            self.ds.resize(whole * self.chunk, axis=0)
            for k in range(whole):
                A.write_frames_chunk(self.ds, k * self.chunk, A.read_frames_chunk(src, k * self.chunk))
            self.size = whole * self.chunk
        bounds = np.unique(np.concatenate([np.asarray(starts, dtype=np.int64), [n]]))
        lo = whole * self.chunk
        while lo < n:
            first = int(bounds[bounds <= lo].max(initial=0))  # the start of the episode holding frame lo
            hi = min(int(bounds[bounds > lo].min()), (lo // self.chunk + 1) * self.chunk)  # within one chunk
            self.add(frame_codec.encode(src[lo:hi], first=lo - first))
            lo = hi

    def _submit(self) -> None:
        first, pieces = self.size, self.pieces
        self.size += self.fill
        self.pieces, self.fill = [], 0
        self.ds.resize(self.size, axis=0)
        self.pending.append((first, self.pool.submit(frame_codec.build_chunk, pieces, self.chunk)))
        while len(self.pending) > self.max_pending:
            self._store_one()

    def _store_one(self) -> None:
        first, future = self.pending.popleft()
        A.write_frames_chunk(self.ds, first, future.result())

    def finish(self) -> None:
        if self.fill:
            self._submit()
        while self.pending:
            self._store_one()
        self.pool.shutdown()

    def abort(self) -> None:
        self.pool.shutdown(cancel_futures=True)


_FINISH, _ABORT = object(), object()


class _Merger:
    """Streams the kept episodes into `out` while they are still being collected: a thread merges each shard in
    index order as soon as every index before it is finished (after the old artifact's episodes when appending),
    into `out`'s temp file (`A.atomic_write`), renamed into place when all are in. The shards stay until then, so
    a kill loses only the episodes in flight; memory stays flat (a few chunks in flight)."""

    def __init__(self, out: Path, old: A.EpisodeIndex | None, parts: Path, start: int, needed: int, record: dict,
                 seed: int, env_cfg: EnvConfig, col: CollectConfig, threads: int) -> None:
        self.out, self.old, self.parts, self.start, self.needed = out, old, parts, start, needed
        self.record, self.seed, self.env_cfg, self.col, self.threads = record, seed, env_cfg, col, threads
        self.starts: list[int] = []
        self.lengths: list[int] = []
        self.seeds: list[int] = []
        self.ids: list[int] = []
        self.returns: list[float] = []
        self.n = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="merge", daemon=True)

    def __enter__(self) -> _Merger:
        inputs = {"controller": self.record["controller"]} if "controller" in self.record else {}
        with contextlib.ExitStack() as stack:
            fh = stack.enter_context(A.atomic_write(self.out, "rollouts", config=self.record, seed=self.seed,
                                                    env=self.env_cfg.name, inputs=inputs))
            self.fh = fh
            self.frames = _FrameWriter(A.create_frames_dataset(fh, self.col.chunk_frames), self.col.chunk_frames,
                                       self.threads)
            A.create_step_datasets(fh, self.env_cfg.action_dim, env_actions=self.env_cfg.name == "doom")
            self.step_ds = {key: fh[key] for key in (*A.STEP_DATA, A.ENV_ACTIONS) if key in fh}
            self._thread.start()
            self._stack = stack.pop_all()  # from here __exit__ closes it
        return self

    def offer(self, index: int, kept: bool) -> None:
        """Episode `index` is finished (kept: its shard is written). Raises what the merge met, if anything."""
        self._check()
        self._queue.put((index, kept))

    def finish(self) -> dict[str, Any]:
        """Wait for the merge of all `needed` episodes; write the episode index and summary; the stats."""
        self._queue.put(_FINISH)
        self._thread.join()
        self._check()
        self.frames.finish()
        assert self.frames.size == self.n and len(self.ids) == self.needed + (self.old.episodes if self.old else 0)
        A.write_episode_index(self.fh, A.EpisodeIndex(*(np.asarray(x, dtype=np.int64)
                                                        for x in (self.starts, self.lengths, self.seeds, self.ids))))
        stats = {"episodes": len(self.ids), "frames": self.n, "mean_length": float(np.mean(self.lengths)),
                 "mean_return": float(np.mean(self.returns)), "std_return": float(np.std(self.returns)),
                 "policy": self.col.policy, "fake_env": self.env_cfg.fake}
        A.set_summary(self.fh, stats)
        return stats

    def __exit__(self, *exc: Any) -> bool | None:
        if self._thread.is_alive():  # the collection failed or was interrupted: stop merging
            self._queue.put(_ABORT)
            self._thread.join()
        if exc[0] is not None or self._error is not None:
            self.frames.abort()
        return self._stack.__exit__(*exc)  # renames the temp file into place, or removes it

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self._copy_old()
            done: dict[int, bool] = {}
            frontier, merged = self.start, 0
            while True:
                item = self._queue.get()
                if item is _ABORT:
                    return
                if item is _FINISH:
                    if merged != self.needed:
                        raise RuntimeError(f"merged {merged} of {self.needed} episodes")
                    return
                done[item[0]] = item[1]
                while frontier in done and merged < self.needed:
                    if done.pop(frontier):
                        self._add_shard(frontier)
                        merged += 1
                    frontier += 1
        except BaseException as exc:  # handed to the main thread by offer() / finish()
            self._error = exc

    def _add_steps(self, steps: dict[str, np.ndarray], episode_id: int, episode_seed_: int) -> None:
        for key, ds in self.step_ds.items():
            if key not in steps:
                raise ArtifactError(f"episode {episode_id} lacks {key}; delete {self.parts} and rerun")
            A.append(ds, steps[key])
        length = len(steps[A.REWARDS])
        self.starts.append(self.n)
        self.lengths.append(length)
        self.seeds.append(episode_seed_)
        self.ids.append(episode_id)
        self.returns.append(_return(steps))
        self.n += length

    def _copy_old(self) -> None:
        old, out = self.old, self.out
        if old is None or not old.episodes:
            return
        with A.open_artifact(out, "rollouts") as src:
            self.frames.copy_from(src[A.FRAMES], old.frames, old.starts)
            for e in range(old.episodes):
                lo, hi = int(old.starts[e]), int(old.starts[e] + old.lengths[e])
                steps = {key: src[key][lo:hi] for key in self.step_ds}
                if not all(np.isfinite(steps[k]).all() for k in (A.ACTIONS, A.REWARDS)):
                    raise ArtifactError(f"{out}: episode {old.ids[e]} holds NaN or inf (damaged); "
                                        "refusing to extend it (use another --out)")
                self._add_steps(steps, int(old.ids[e]), int(old.seeds[e]))

    def _add_shard(self, index: int) -> None:
        path = shard_path(self.parts, index)
        try:
            shard = A.read_episode_shard(path)
        except ArtifactError as exc:  # only an OS crash or a disk fault damages a renamed shard
            path.unlink()
            raise ArtifactError(f"{exc}; removed it: rerun the same command to collect that episode again") from None
        if len(shard.frames) != len(shard.steps.get(A.REWARDS, ())):
            raise ArtifactError(f"{path}: frames and rewards differ in length; delete it and rerun")
        self.frames.add(shard.frames)
        self._add_steps(shard.steps, shard.episode_id, shard.seed)
