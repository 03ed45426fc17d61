"""`wm collect`: run a data policy in the real (or fake) env and record a rollouts artifact (ref §2).

Episode i is seeded from ``seeding.derive(seed, "collect", i)`` and may run in any worker, so the data never
depend on the number of workers. Each worker writes each finished episode to its own shard, atomically, in a
work folder beside the output::

    <out>.parts/manifest.json          what is being collected (env and collect config, seed): a rerun must match
    <out>.parts/episode-000123.h5      a kept episode (written under a temp name, then renamed)
    <out>.parts/episode-000124.short   marker: that episode was not longer than min_length and is discarded
    <out>.parts/lock                   held while a collection runs

The kept episodes are the first ``episodes`` indices, in index order, whose length exceeds ``min_length``
(Doom: 100, ref §2.2), so the kept set never depends on the workers either. When they all exist they are merged
in index order into ``<out>`` (one atomic write, streamed episode by episode so memory stays flat), and the work
folder is deleted. With ``ignore_done`` (CarRacing) the steps after the env's own end are recorded as the env
reports them (off the playfield: −100 and terminated every step); the summary's mean return stops at that end.

A kill at any point costs at most the episodes in flight: rerunning the same command finds the finished shards
and runs only the missing episodes; a larger ``--episodes`` on a complete artifact collects only the extra
episodes (ids continue) and rewrites the artifact with the old episodes first (their frames chunks are copied
as stored, not re-encoded). The merge encodes the frames chunks on ``workers`` threads.

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
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import tracking
from ..config import CollectConfig, EnvConfig, Preset
from ..game.envs import FRAME_SHAPE, Env, check_env_config
from ..game.episodes import ENVS_PER_WORKER, EnvSet, EpisodeError, lockstep
from ..game.policies import Actor, Policy, PolicyBatch, make_actor
from ..runtime import Runtime, seeding
from ..runtime.errors import ArtifactError, ConfigError
from ..runtime.executor import make_executor
from ..store import artifacts as A
from ..store import files, metrics, runs

log = logging.getLogger(__name__)

SHARD_SUFFIX = ".h5"
SHORT_SUFFIX = ".short"
LOCK = "lock"
FREE = ("collect.episodes",)  # a rerun with more episodes appends to the same run
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

    def close(self) -> None:
        self.envs.close()


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
    episodes still running)."""
    p, parts = state.p, Path(state.p.parts)
    seeds = [episode_seed(p.seed, i) for i in indices]
    metas: list[EpisodeMeta] = []

    def write(j: int, steps: dict[str, np.ndarray]) -> None:
        index, length = indices[j], len(steps[A.FRAMES])
        kept = length > p.collect.min_length
        if kept:
            A.write_episode_shard(shard_path(parts, index), steps, episode_id=index, seed=seeds[j])
        else:  # only the name matters: this index was run and is discarded (ref §2.2)
            shard_path(parts, index, SHORT_SUFFIX).write_text(f"{length}\n")
        metas.append(EpisodeMeta(index, seeds[j], length, float(steps[A.REWARDS].sum(dtype=np.float64)), kept))

    try:
        lockstep(state.envs.take(len(indices)), state.actor, seeds, p.env.max_steps, record=True,
                 ignore_done=p.collect.ignore_done, labels=[_describe_one(p.seed, i) for i in indices], on_end=write)
    except EpisodeError:
        state.envs.close()
        raise
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
            ran = _collect(env_cfg, col, seed, parts, start, needed, done, workers, backend, address, controller,
                           writer)
            chosen, _ = _selected(done, start, needed)
            assert len(chosen) == needed, (len(chosen), needed)
            reused = sum(i in found for i in chosen)
            stats = _merge(out, old, parts, chosen, record, seed, env_cfg, col, threads=workers)
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
             writer: metrics.MetricsWriter) -> int:
    """Run episodes until the first `needed` kept indices from `start` are all finished; returns how many ran."""
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
    """Appends frames to the artifact's chunked frames dataset, encoding full chunks on `threads` threads (zlib
    runs without the GIL) while the main thread alone touches HDF5. At most a few chunks are in flight, so memory
    stays flat."""

    def __init__(self, ds: h5py.Dataset, chunk: int, threads: int) -> None:
        self.ds, self.chunk = ds, chunk
        self.buf = np.empty((chunk, *FRAME_SHAPE), dtype=np.uint8)
        self.fill = 0
        self.size = 0  # frames handed to the encoder so far
        self.pool = cf.ThreadPoolExecutor(max(1, threads), thread_name_prefix="encode")
        self.pending: collections.deque[tuple[int, cf.Future]] = collections.deque()
        self.max_pending = 4 * max(1, threads)

    def add(self, frames: np.ndarray) -> None:
        i = 0
        while i < len(frames):
            take = min(self.chunk - self.fill, len(frames) - i)
            self.buf[self.fill:self.fill + take] = frames[i:i + take]
            self.fill, i = self.fill + take, i + take
            if self.fill == self.chunk:
                self._submit()

    def copy_from(self, src: h5py.Dataset, n: int) -> None:
        """Append src[:n]; whole chunks are copied as stored bytes when the layouts match (no re-encoding)."""
        assert self.size == 0 and self.fill == 0
        whole = n // self.chunk if A.same_frames_layout(src, self.ds) else 0
        if whole:
            self.ds.resize(whole * self.chunk, axis=0)
            for k in range(whole):
                A.write_frames_chunk(self.ds, k * self.chunk, A.read_frames_chunk(src, k * self.chunk))
            self.size = whole * self.chunk
        for lo in range(whole * self.chunk, n, self.chunk):
            self.add(src[lo:min(lo + self.chunk, n)])

    def _submit(self) -> None:
        first, block = self.size, self.buf[:self.fill].copy()
        self.size += self.fill
        self.fill = 0
        self.ds.resize(self.size, axis=0)
        self.pending.append((first, self.pool.submit(A.encode_frames_chunk, block, self.chunk)))
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


def _merge(out: Path, old: A.EpisodeIndex | None, parts: Path, chosen: list[int], record: dict, seed: int,
           env_cfg: EnvConfig, col: CollectConfig, threads: int) -> dict[str, Any]:
    """Stream the old artifact's episodes (if appending) and then the chosen shards, in index order, into `out`."""
    starts, lengths, seeds, ids, returns = [], [], [], [], []
    inputs = {"controller": record["controller"]} if "controller" in record else {}
    with A.atomic_write(out, "rollouts", config=record, seed=seed, env=env_cfg.name, inputs=inputs) as fh:
        frames = _FrameWriter(A.create_frames_dataset(fh, col.chunk_frames), col.chunk_frames, threads)
        A.create_step_datasets(fh, env_cfg.action_dim, env_actions=env_cfg.name == "doom")
        step_ds = {key: fh[key] for key in (*A.STEP_DATA, A.ENV_ACTIONS) if key in fh}
        n = 0

        def add_steps(steps: dict[str, np.ndarray], episode_id: int, episode_seed_: int) -> None:
            nonlocal n
            for key, ds in step_ds.items():
                if key not in steps:
                    raise ArtifactError(f"episode {episode_id} lacks {key}; delete {parts} and rerun")
                A.append(ds, steps[key])
            length = len(steps[A.REWARDS])
            starts.append(n)
            lengths.append(length)
            seeds.append(episode_seed_)
            ids.append(episode_id)
            returns.append(_return(steps))
            n += length

        try:
            if old is not None and old.episodes:
                with A.open_artifact(out, "rollouts") as src:
                    frames.copy_from(src[A.FRAMES], old.frames)
                    for e in range(old.episodes):
                        lo, hi = int(old.starts[e]), int(old.starts[e] + old.lengths[e])
                        steps = {key: src[key][lo:hi] for key in step_ds}
                        if not all(np.isfinite(steps[k]).all() for k in (A.ACTIONS, A.REWARDS)):
                            raise ArtifactError(f"{out}: episode {old.ids[e]} holds NaN or inf (damaged); "
                                                "refusing to extend it (use another --out)")
                        add_steps(steps, int(old.ids[e]), int(old.seeds[e]))
            for index in chosen:
                path = shard_path(parts, index)
                try:
                    steps, episode_id, episode_seed_ = A.read_episode_shard(path)
                except ArtifactError as exc:  # only an OS crash or a disk fault damages a renamed shard
                    path.unlink()
                    raise ArtifactError(f"{exc}; removed it: rerun the same command to collect that episode again") from None
                if len(steps[A.FRAMES]) != len(steps[A.REWARDS]):
                    raise ArtifactError(f"{path}: frames and rewards differ in length; delete it and rerun")
                frames.add(steps[A.FRAMES])
                add_steps(steps, episode_id, episode_seed_)
            frames.finish()
        except BaseException:
            frames.abort()
            raise
        assert frames.size == n, (frames.size, n)
        A.write_episode_index(fh, A.EpisodeIndex(*(np.asarray(x, dtype=np.int64) for x in (starts, lengths, seeds, ids))))
        stats = {"episodes": len(ids), "frames": n, "mean_length": float(np.mean(lengths)),
                 "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
                 "policy": col.policy, "fake_env": env_cfg.fake}
        A.set_summary(fh, stats)
    return stats
