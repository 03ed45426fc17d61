"""`wm collect` benchmark: frames/s with 1 and 2 workers against a bare loop over the same env, where the time
outside the game goes, and peak RSS collecting 20 vs 200 tiny episodes.

- bare: env.reset/step and the random data policy over the same episodes (same seeds), frames kept in nothing.
- collect1 / collect2: `collect.run` with 1 / 2 workers, end to end (shards, merge into the gzip-4 artifact,
  worker start-up), frames/s over its wall time. min_length is 0 here so both run exactly the same episodes.
  One worker runs inline (in this process, its frame encoder on a thread beside the game).
- CPU ms/frame of each (this process, its threads and its workers): the cost that contention does not hide;
  cpu_overhead = 1 - bare/collect1 on that measure.
- where the time goes (collect1): starting the env (`startup1_s`, what the bare loop does before its clock
  starts), what the merge (a thread, streaming while the episodes run) had left after the last episode
  (`merge_tail_s`), and on collect1's own frames the CPU ms per frame of
  compressing them once (`encode_once_ms`, frame_codec: the workers' share) and of making the artifact's chunks
  from that (`chunks_ms`, the merge's share), against what the previous collect did to every frame
  (`twice_ms`: gzip-1 into a shard, inflate, gzip-4 in the merge), measured here on the same frames, with the
  sizes of both (`ratio_once`, `ratio_twice`: compressed/raw) and the deflate engine (`engine`: isal or zlib).
- rss: peak RSS (ru_maxrss) of a child process collecting 20 and 200 tiny fake-env episodes, workers 1.

    python benchmarks/collect.py [--quick] [--env doom|carracing|fake-doom|fake-carracing] [--episodes N]

The last line is one JSON object: overhead = 1 - collect1/bare (target <= 0.15 on Doom; with --quick's few
episodes the env's start-up weighs: overhead_excl_startup leaves it out), scaling = collect2/collect1
(target >= 1.8; scaling_excl_startup leaves out the time to start the 2 worker processes, measured separately),
rss_ratio = rss200/rss20 (target <= 1.10), and the figures behind them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import h5py

from worldmodels_cli.config import Preset, preset
from worldmodels_cli.game.envs import make_env
from worldmodels_cli.game.policies import random_policy
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.runtime.executor import make_executor
from worldmodels_cli.stages import collect
from worldmodels_cli.store import artifacts as A
from worldmodels_cli.store import frame_codec

_RSS_CHILD = """
import resource, sys
from worldmodels_cli.stages import collect
from worldmodels_cli.config import preset
from worldmodels_cli.runtime import Runtime
p = preset("doom", "tiny")
p = p.replace(collect=p.collect.replace(episodes=int(sys.argv[1])))
collect.run(p, sys.argv[2], runtime=Runtime(seed=0, workers=1))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _config(env: str, episodes: int) -> Preset:
    fake = env.startswith("fake-")
    name = env.removeprefix("fake-")
    p = preset(name, "paper")
    return p.replace(env=p.env.replace(fake=fake), collect=p.collect.replace(episodes=episodes, min_length=0))


def _cpu() -> float:
    """CPU seconds of this process, its threads and its finished (waited-for) children: unlike wall time, this
    barely moves when other jobs share the cores."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def bare(cfg: Preset, episodes: int) -> tuple[int, float, float]:
    """(frames, seconds, cpu seconds) of the plain loop: the same episodes, seeds and policy, nothing stored."""
    c0 = _cpu()
    env = make_env(cfg.env)
    policy = random_policy(cfg.env, cfg.collect)
    go_on = cfg.collect.ignore_done and cfg.env.name == "carracing"
    frames, t0 = 0, time.perf_counter()
    for i in range(episodes):
        seed = collect.episode_seed(0, i)
        rng = collect.seeding.generator(seed, "policy")
        obs = env.reset(seed)
        policy.reset(rng)
        for _ in range(cfg.env.max_steps):
            step = env.step(policy.act(obs, rng))
            obs, frames = step.obs, frames + 1
            if step.truncated or (step.terminated and not go_on):
                break
    seconds = time.perf_counter() - t0
    env.close()
    return frames, seconds, _cpu() - c0


def timed_collect(cfg: Preset, out: Path, workers: int) -> tuple[int, float, float, float]:
    """(frames, seconds, cpu seconds, seconds the merge took after the last episode) of `collect.run`."""
    tail, real_finish = [], collect._Merger.finish

    def finish(self):
        t = time.perf_counter()
        try:
            return real_finish(self)
        finally:
            tail.append(time.perf_counter() - t)

    collect._Merger.finish = finish
    try:
        c0, t0 = _cpu(), time.perf_counter()
        res = collect.run(cfg, out, runtime=Runtime(seed=0, workers=workers))
        return res.frames, time.perf_counter() - t0, _cpu() - c0, sum(tail)
    finally:
        collect._Merger.finish = real_finish


def codec_costs(rollouts: Path, frames_max: int = 3000) -> dict[str, float]:
    """CPU ms per frame, on the artifact's first episodes (≤ frames_max frames): compressing once (each frame, as
    the workers do), making 64-frame chunks from that (the merge), and the previous way's double compression."""
    with h5py.File(rollouts, "r") as fh:
        starts, lengths = fh[A.EPISODE_STARTS][()], fh[A.EPISODE_LENGTHS][()]
        n = int(min(frames_max, fh[A.FRAMES].shape[0]))
        frames = fh[A.FRAMES][:n]
    episodes = [frames[s:min(s + m, n)] for s, m in zip(starts.tolist(), lengths.tolist(), strict=True) if s < n]
    chunk = 64

    def cpu_ms(fn) -> tuple[float, object]:
        t = time.process_time()
        out = fn()
        return (time.process_time() - t) * 1e3 / n, out

    once_ms, encoded = cpu_ms(lambda: [frame_codec.encode(e) for e in episodes])

    chunks_ms, built = cpu_ms(lambda: frame_codec.build_chunks(encoded, chunk))

    def twice() -> list[bytes]:  # what the previous collect did: gzip-1 shards, then inflate and gzip-4
        shards = [zlib.compress(e[i:i + chunk].tobytes(), 1) for e in episodes for i in range(0, len(e), chunk)]
        raw = b"".join(zlib.decompress(z) for z in shards)
        return [zlib.compress(raw[i:i + chunk * frame_codec.FRAME_BYTES], 4)
                for i in range(0, len(raw), chunk * frame_codec.FRAME_BYTES)]

    twice_ms, previous = cpu_ms(twice)
    size = n * frame_codec.FRAME_BYTES
    return {"encode_once_ms": once_ms, "chunks_ms": chunks_ms, "twice_ms": twice_ms,
            "ratio_once": sum(map(len, built)) / size, "ratio_twice": sum(map(len, previous)) / size}


def _noop(state, task):
    state.envs.take(1)  # the worker's env (a Doom engine) starts on its first task
    return task


def pool_startup(cfg: Preset, workers: int) -> tuple[float, float]:
    """(wall, cpu) seconds to start and stop `workers` collect workers running nothing (spawn, imports, env)."""
    payload = collect._Payload(cfg.env, cfg.collect, 0, tempfile.gettempdir(), None)
    c0, t0 = _cpu(), time.perf_counter()
    with make_executor(workers, collect._init_worker, payload) as ex:
        list(ex.run(_noop, list(range(workers))))
    return time.perf_counter() - t0, _cpu() - c0


def peak_rss_kb(episodes: int, out: Path) -> int:
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(episodes), str(out)], check=True,
                          capture_output=True, text=True)
    return int(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="doom", choices=["doom", "carracing", "fake-doom", "fake-carracing"])
    ap.add_argument("--episodes", type=int, default=None, help="episodes per frames/s measurement")
    ap.add_argument("--quick", action="store_true", help="fewer episodes (noisier figures)")
    args = ap.parse_args()
    default = {"doom": 60, "carracing": 6, "fake-doom": 400, "fake-carracing": 40}[args.env]
    episodes = args.episodes or (max(2, default // 3) if args.quick else default)
    if args.env == "carracing":  # paper: 1000 steps; shorter episodes keep the run under two minutes here
        cfg = _config(args.env, episodes)
        cfg = cfg.replace(env=cfg.env.replace(max_steps=300 if not args.quick else 150))
    else:
        cfg = _config(args.env, episodes)
    print(f"env {args.env}: {episodes} episodes per run, max_steps {cfg.env.max_steps}, cpus {os.cpu_count()}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_bare, s_bare, cpu_bare = bare(cfg, episodes)
        n1, s1, cpu1, merge1 = timed_collect(cfg, tmp / "c1.h5", 1)
        n2, s2, cpu2, _ = timed_collect(cfg, tmp / "c2.h5", 2)
        assert n_bare == n1 == n2, (n_bare, n1, n2)
        bare_fps, c1_fps, c2_fps = n_bare / s_bare, n1 / s1, n2 / s2
        ms = {k: 1000 * c / n_bare for k, c in (("bare", cpu_bare), ("collect1", cpu1), ("collect2", cpu2))}
        print(f"bare loop   {bare_fps:8.0f} frames/s  ({n_bare} frames, {s_bare:.1f}s, {ms['bare']:.3f} CPU ms/frame)")
        print(f"collect K=1 {c1_fps:8.0f} frames/s  ({s1:.1f}s, {ms['collect1']:.3f} CPU ms/frame)")
        print(f"collect K=2 {c2_fps:8.0f} frames/s  ({s2:.1f}s incl. worker start-up, {ms['collect2']:.3f} CPU ms/frame)")
        start_wall, start_cpu = pool_startup(cfg, 2)
        start1, _ = pool_startup(cfg, 1)  # inline: the env's start in this process
        steady1 = n1 / max(s1 - start1, 1e-9)
        steady2 = n2 / max(s2 - start_wall, 1e-9)
        print(f"  K=1: of which starting the env {start1:.1f}s, the merge's tail after the last episode {merge1:.2f}s; "
              f"without the start {steady1:.0f} frames/s")
        print(f"  K=2: of which starting 2 workers: {start_wall:.1f}s wall, {start_cpu:.1f}s CPU; "
              f"without it {steady2:.0f} frames/s")
        codec = codec_costs(tmp / "c1.h5")
        game_ms = 1000 * s_bare / n_bare
        print(f"frames compressed once: {codec['encode_once_ms']:.3f} CPU ms/frame in the workers (on a thread "
              f"beside the game) + {codec['chunks_ms']:.3f} in the merge = "
              f"{codec['encode_once_ms'] + codec['chunks_ms']:.3f}, size {codec['ratio_once']:.3f} of raw; "
              f"the previous double compression {codec['twice_ms']:.3f} ms/frame, size {codec['ratio_twice']:.3f} "
              f"(once/twice {(codec['encode_once_ms'] + codec['chunks_ms']) / codec['twice_ms']:.2f}); "
              f"the game {game_ms:.3f} wall ms/frame")
        rss20, rss200 = peak_rss_kb(20, tmp / "r20.h5"), peak_rss_kb(200, tmp / "r200.h5")
        print(f"peak RSS: 20 tiny episodes {rss20 / 1024:.1f} MiB, 200: {rss200 / 1024:.1f} MiB")
    figures = {
        "env": args.env, "episodes": episodes, "frames": n_bare,
        "bare_fps": round(bare_fps, 1), "collect1_fps": round(c1_fps, 1), "collect2_fps": round(c2_fps, 1),
        "overhead": round(1 - c1_fps / bare_fps, 4), "overhead_excl_startup": round(1 - steady1 / bare_fps, 4),
        "startup1_s": round(start1, 2), "merge_tail_s": round(merge1, 3),
        "scaling": round(c2_fps / c1_fps, 4),
        "pool_startup_s": round(start_wall, 2), "scaling_excl_startup": round(steady2 / c1_fps, 4),
        **{f"{k}_cpu_ms_per_frame": round(v, 4) for k, v in ms.items()},
        "cpu_overhead": round(1 - ms["bare"] / ms["collect1"], 4),
        "rss20_mib": round(rss20 / 1024, 1), "rss200_mib": round(rss200 / 1024, 1),
        "rss_ratio": round(rss200 / rss20, 4),
        **{k: round(v, 4) for k, v in codec.items()}, "engine": frame_codec.ENGINE,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
