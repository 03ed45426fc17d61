"""The paper's Doom experiment on this machine: each `paper` Doom stage measured for seconds at its real size, and
the projected wall time of the whole run (the Doom half of `make reproduce`, one τ):

    collect 10,000 episodes -> V 10 epochs -> encode -> M 24,400 steps -> 1800 generations in the dream -> 100 real
    evaluation episodes

Each stage runs a short, fixed amount of its real work (paper sizes, the device given, the cores there are) and its
rate is projected over the paper's amount of work; beside it, the rate of the baseline it is measured against,
measured in the same run:

| stage    | measured                                              | baseline                                      |
|----------|-------------------------------------------------------|-----------------------------------------------|
| collect  | `collect.run`, real Doom, `workers` processes          | the bare game loop on one core × workers       |
| vae      | V (z 64) Adam steps of 100 frames streamed from HDF5   | the same steps on frames already in memory     |
| encode   | `encode.run` of a rollouts artifact                    | V's forward alone on frames in memory          |
| mdn      | M (H 512) steps of 100 streams × 499, auto path        | the split path (one LSTM call per restart)     |
| evolve   | one generation, 64 × 16 rollouts in the dream          | the plain per-rollout loop (reference.py)      |
| evaluate | the agent (V + M + C) in real Doom, `workers`          | the random policy through the same runner     |

Work assumed (the paper's preset; lengths from our data and the paper, each an option):
- 10,000 kept episodes of `--episode-length` 295 frames (make demo seed 0's 500 random-policy episodes longer than
  100: 295 ± 145; 95 % of episodes are kept): ≈ 2.95 M frames;
- V: 10 epochs over the 95 % not held out; encode: every frame; M: 24,400 × 100 × 499 sequence-steps;
- evolve: 1800 × 64 × 16 dreams of mean `--dream-length` 600 steps (the random policy's ≈ 300 at the start, the
  paper's τ 1.15 controller's 918 ± 546 at the end), done bias calibrated to it, cap 2100;
- evaluate: 100 episodes of `--eval-length` 1092 steps (the paper's agent, 1092 ± 556).
Not counted: checkpoints, validation passes, pictures (seconds each), the stages' start-up beyond what is measured.

    python benchmarks/paper_doom.py [--quick] [--device auto|cpu|cuda] [--workers N] [--threads N] [--stages a,b]

`--quick` (< 2 min on a 2-core CPU) runs less of each stage and M at batch 8 and the dream at population 16,
projected by sequence-steps and by rows (linear on a CPU; a GPU run without --quick measures the real sizes).
Target (issue 24): ≤ 2 h on one H100/H200 with 16 cores. The last line is one JSON object: `projected_total_h`,
`stages` {name: {projected_s, rate, unit, baseline, baseline_rate, work}}, and the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from synthetic import write_rollouts  # noqa: E402

from worldmodels_cli.config import preset  # noqa: E402
from worldmodels_cli.runtime import Runtime, seeding  # noqa: E402
from worldmodels_cli.runtime import device as devices  # noqa: E402

PAPER = preset("doom", "paper")
BATCH_V = PAPER.vae_train.batch_size


def _bench(name: str):
    """A sibling benchmark module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def _stage(projected_s: float | None, rate: float | None, unit: str, baseline: str, baseline_rate: float | None,
           work: str, **extra) -> dict:
    r = lambda x: None if x is None else round(float(x), 3)  # noqa: E731
    return {"projected_s": r(projected_s), "rate": r(rate), "unit": unit, "baseline": baseline,
            "baseline_rate": r(baseline_rate), "work": work, **extra}


# ------------------------------------------------------------------------------------------------ collect
def _start_env(state, task):
    state.envs.take(1)  # a worker's Doom engine starts on its first task
    return task


def _startup(cfg, workers: int) -> float:
    """Seconds to start `workers` collect workers and their engines (and stop them)."""
    from worldmodels_cli.runtime.executor import make_executor
    from worldmodels_cli.stages import collect

    payload = collect._Payload(cfg.env, cfg.collect, 0, tempfile.gettempdir(), None)
    t0 = time.perf_counter()
    with make_executor(workers, collect._init_worker, payload) as ex:
        list(ex.run(_start_env, list(range(workers))))
    return time.perf_counter() - t0


def stage_collect(args, tmp: Path) -> dict:
    """`collect.run` on real Doom with `workers` processes; the steady rate (start-up measured apart)."""
    cb = _bench("collect")
    from worldmodels_cli.stages import collect
    from worldmodels_cli.store import metrics

    w = args.workers
    episodes = w * (2 if args.quick else 4)
    cfg = PAPER.replace(collect=PAPER.collect.replace(episodes=episodes))
    start_s = _startup(cfg, w)
    out = tmp / "collect.h5"
    res = collect.run(cfg, out, runtime=Runtime(seed=0, workers=w))
    # the steady rate: frames of the episodes that ended after the first one, over the time between (the metric
    # records' clock), so the workers' start-up is left out (it is `start_s`, added once)
    ends = sorted((r["time"], r["collect/length"]) for r in metrics.MetricsWriter(metrics.metrics_path(out)).read()
                  if "collect/length" in r)
    fps = sum(n for _, n in ends[1:]) / max(ends[-1][0] - ends[0][0], 1e-9)
    bare_cfg = cfg.replace(collect=cfg.collect.replace(min_length=0))
    n, s, _ = cb.bare(bare_cfg, 2 if args.quick else 4)
    base = n / s * w
    frames = PAPER.collect.episodes * args.episode_length
    return _stage(start_s + frames / fps, fps, "frames/s", f"bare game × {w} workers", base,
                  f"{PAPER.collect.episodes} episodes × {args.episode_length} frames",
                  workers=w, start_s=round(start_s, 2), sample_frames=res.frames)


# ---------------------------------------------------------------------------------------------------- V
def _v_model(dev: str):
    from worldmodels_cli.models.vae import ConvVAE
    from worldmodels_cli.stages import train_vae

    torch.manual_seed(0)
    model = ConvVAE(PAPER.vae).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=PAPER.vae_train.lr)
    amp = train_vae._make_amp(PAPER.vae_train.amp, dev)
    gen = torch.Generator(device=dev)
    count = [0]

    def step(batch: np.ndarray) -> None:
        i = count[0]
        train_vae.train_step(model, opt, torch.from_numpy(batch),
                             lambda s: train_vae._noise(s, gen, 0, "bench", i, dev), amp, dev,
                             PAPER.vae_train.kl_tolerance)
        count[0] += 1

    return model, step


def stage_vae(args, dev: str, rollouts: Path) -> dict:
    """V training steps fed by the streaming loader (as `wm train-vae`), and by memory."""
    from worldmodels_cli.store import artifacts as A
    from worldmodels_cli.store import frames

    steps = (3 if args.quick else 10) * (5 if dev == "cuda" else 1)
    plan = frames.TrainFrames(frames.split_episodes([rollouts], 0.0, seed=0), PAPER.vae_train.block_frames,
                              PAPER.vae_train.buffer_blocks, seed=0)
    with A.open_artifact(rollouts, "rollouts") as fh:
        memory = fh[A.FRAMES][()]
    rng = seeding.generator(0, "bench")

    def rate(take) -> float:
        _, step = _v_model(dev)
        step(take())  # warm-up: the loader's first group, kernels, allocator
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(take())
        _sync(dev)
        return steps * BATCH_V / (time.perf_counter() - t0)

    batches = frames.train_batches(plan, 0, BATCH_V, num_workers=PAPER.vae_train.num_workers)
    rates = {"stream": rate(lambda: next(batches)),
             "memory": rate(lambda: memory[np.sort(rng.choice(len(memory), BATCH_V, replace=False))])}
    batches.close()
    frames_n = PAPER.vae_train.epochs * (1 - PAPER.vae_train.val_episodes) * PAPER.collect.episodes * args.episode_length
    return _stage(frames_n / rates["stream"], rates["stream"], "frames/s", "frames in memory", rates["memory"],
                  f"{PAPER.vae_train.epochs:g} epochs × {1 - PAPER.vae_train.val_episodes:.0%} of the frames")


# ----------------------------------------------------------------------------------------------- encode
def stage_encode(args, dev: str, rollouts: Path, vae_path: Path, tmp: Path) -> dict:
    """`encode.run` (V's μ and logσ² of every frame, streamed from and to HDF5), and V's forward alone."""
    from worldmodels_cli.models.vae import load_vae, to_input
    from worldmodels_cli.stages import encode
    from worldmodels_cli.store import artifacts as A

    encode.run([rollouts], vae_path, tmp / "warm.series.h5", runtime=Runtime(seed=0, device=dev))  # warm-up
    t0 = time.perf_counter()
    res = encode.run([rollouts], vae_path, tmp / "series.h5", runtime=Runtime(seed=0, device=dev))
    fps = res.frames / (time.perf_counter() - t0)
    model, _ = load_vae(vae_path, dev)
    with A.open_artifact(rollouts, "rollouts") as fh:
        memory = torch.from_numpy(fh[A.FRAMES][()]).to(dev)
    batch = PAPER.encode.batch_size
    with torch.no_grad():
        model.encode(to_input(memory[:batch]))
        _sync(dev)
        t0 = time.perf_counter()
        for lo in range(0, len(memory), batch):
            model.encode(to_input(memory[lo:lo + batch]))
        _sync(dev)
        base = len(memory) / (time.perf_counter() - t0)
    return _stage(PAPER.collect.episodes * args.episode_length / fps, fps, "frames/s",
                  "V's forward on frames in memory", base, "every frame")


# ---------------------------------------------------------------------------------------------------- M
def stage_mdn(args, dev: str, tmp: Path) -> dict:
    mb = _bench("mdn")
    from worldmodels_cli.models.mdnrnn import auto_restart_path

    t = PAPER.mdn_train
    batch = t.batch_size if not args.quick and dev == "cuda" else (8 if args.quick else 32)
    steps = (2 if args.quick else 10) if dev == "cuda" else (1 if args.quick else 2)
    series = tmp / "doom.series.h5"
    mb.doom_series(series, 3 * batch * t.seq_len)
    auto = auto_restart_path(torch.device(dev))
    paths = (auto,) if auto == "split" else (auto, "split")
    rates = mb.bench_doom_paths(series, torch.device(dev), batch, steps, paths=paths, seq_len=t.seq_len)
    work = t.steps * t.batch_size * (t.seq_len - 1)
    return _stage(work / rates[auto], rates[auto], "seq-steps/s", "split path (one call per restart time)",
                  rates["split"], f"{t.steps} steps × {t.batch_size} × {t.seq_len - 1}", path=auto, batch=batch)


# ----------------------------------------------------------------------------------------------- evolve
def stage_evolve(args, dev: str) -> dict:
    db = _bench("dream")
    from worldmodels_cli.dream.program import dream_rollouts
    from worldmodels_cli.dream.reference import reference_rollout
    from worldmodels_cli.models.controller import Controller
    from worldmodels_cli.models.mdnrnn import MDNRNN

    ev = PAPER.evolve
    pop = 16 if args.quick else ev.pop
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mdn = MDNRNN(PAPER.mdn).to(dev).eval()
    mu0 = rng.normal(0, 1, (1000, PAPER.mdn.z_dim)).astype(np.float32)
    lv0 = np.full((1000, PAPER.mdn.z_dim), -2.0, np.float32)
    db.calibrate_done_bias(mdn, mu0, lv0, args.dream_length, dev)
    ctrl = Controller(PAPER.controller, PAPER.mdn.z_dim, PAPER.mdn.hidden, PAPER.mdn.action_dim, "doom")
    params = rng.normal(0, 0.1, (pop, ctrl.param_count))
    seeds = rng.integers(0, 2**31 - 1, (pop, ev.trials))
    dream_rollouts(mdn, seeds[:2, :2], mu0, lv0, controller=ctrl, params=params[:2], tau=ev.temperature,
                   max_steps=16)  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    res = dream_rollouts(mdn, seeds, mu0, lv0, controller=ctrl, params=params, tau=ev.temperature,
                         max_steps=ev.max_steps)
    _sync(dev)
    gen_s = (time.perf_counter() - t0) * ev.pop / pop  # --quick: 16 of the 64 members, scaled by rows
    rate = res.rollout_steps / (time.perf_counter() - t0)
    steps, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < (2.0 if args.quick else 5.0):
        steps += reference_rollout(mdn, int(seeds[i % pop, 0]), mu0, lv0, controller=ctrl, params=params[i % pop],
                                   tau=ev.temperature, max_steps=ev.max_steps)[1]
        i += 1
    _sync(dev)
    base = steps / (time.perf_counter() - t0)
    return _stage(ev.generations * gen_s, rate, "rollout-steps/s", "per-rollout loop", base,
                  f"{ev.generations} generations × {ev.pop} × {ev.trials} dreams, mean {args.dream_length:g} steps",
                  seconds_per_generation=round(gen_s, 3), mean_length=round(float(res.lengths.mean()), 1),
                  population_measured=pop)


# --------------------------------------------------------------------------------------------- evaluate
def stage_evaluate(args, vae_path: Path, mdn_path: Path, mc: dict) -> dict:
    from worldmodels_cli.game.agent import AgentSpec
    from worldmodels_cli.game.episodes import ENVS_PER_WORKER, EpisodeRunner
    from worldmodels_cli.models.controller import build_controller

    w, per = args.workers, ENVS_PER_WORKER["doom"]
    cfg = PAPER.env
    spec = AgentSpec(str(vae_path), str(mdn_path), mc)
    params = np.random.default_rng(0).normal(0, 0.1, (1, build_controller(mc).param_count))
    n = w * per if not args.quick else w
    rates = {}
    for policy in ("agent", "random"):
        with EpisodeRunner(cfg, policy=policy, agent=spec, workers=w, envs_per_worker=per) as runner:
            p = params if policy == "agent" else None
            runner.episodes(p, np.arange(w)[None, :] + 50_000)  # warm-up: workers, envs, models loaded
            t0 = time.perf_counter()
            _, lengths = runner.episodes(p, np.arange(n)[None, :] + 1000)
            rates[policy] = lengths.sum() / (time.perf_counter() - t0)
    steps = 100 * args.eval_length
    return _stage(steps / rates["agent"], rates["agent"], "env-steps/s", f"random policy, same runner, {w} workers",
                  rates["random"], f"100 episodes × {args.eval_length} steps", workers=w)


# ------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="less of each stage (< 2 min on a 2-core CPU)")
    ap.add_argument("--device", default="auto", choices=devices.DEVICES)
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16), help="env workers (default: cores, ≤ 16)")
    ap.add_argument("--episode-length", type=float, default=295.0, help="mean frames of a kept random episode")
    ap.add_argument("--dream-length", type=float, default=600.0, help="mean dream length over the evolution")
    ap.add_argument("--eval-length", type=float, default=1092.0, help="mean real episode of the final agent")
    ap.add_argument("--stages", default="collect,vae,encode,mdn,evolve,evaluate")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads of this process (a CPU shared with other jobs: 1, or OpenMP's barriers stall)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = devices.resolve(args.device)
    wanted = args.stages.split(",")
    from worldmodels_cli.testing import random_world

    t_start = time.perf_counter()
    stages: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        vae_path, mdn_path, mc = random_world(tmp, "doom", "paper")
        rollouts = write_rollouts(tmp / "frames.h5", env="doom", lengths=[256] * (6 if args.quick else 24),
                                  chunk_frames=PAPER.collect.chunk_frames)
        runs = {
            "collect": lambda: stage_collect(args, tmp),
            "vae": lambda: stage_vae(args, dev, rollouts),
            "encode": lambda: stage_encode(args, dev, rollouts, vae_path, tmp),
            "mdn": lambda: stage_mdn(args, dev, tmp),
            "evolve": lambda: stage_evolve(args, dev),
            "evaluate": lambda: stage_evaluate(args, vae_path, mdn_path, mc),
        }
        for name in wanted:
            t0 = time.perf_counter()
            try:
                stages[name] = runs[name]()
            except Exception as exc:  # e.g. no vizdoom on this machine: the other stages still count
                stages[name] = _stage(None, None, "", "", None, "", error=f"{type(exc).__name__}: {exc}")
            s = stages[name]
            s["measured_s"] = round(time.perf_counter() - t0, 1)
            rate = "failed: " + s["error"] if "error" in s else (
                f"{s['rate']:,.0f} {s['unit']} (baseline {s['baseline']}: {s['baseline_rate']:,.0f}); "
                f"projected {s['projected_s'] / 3600:.2f} h for {s['work']}")
            print(f"{name:8s} {rate}  [{s['measured_s']} s]", flush=True)
    done = [s["projected_s"] for s in stages.values() if s.get("projected_s") is not None]
    total_h = sum(done) / 3600
    complete = len(done) == len(wanted) == 6
    cores = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if dev == "cuda" else None
    label = f"{gpu} + {cores} cores" if gpu else f"{cores}-core CPU, torch threads {args.threads}"
    print(f"paper Doom projected on this machine ({label}{', --quick' if args.quick else ''}): {total_h:.2f} h"
          f"{'' if complete else ' (stages missing: not the whole run)'}; target on one H100/H200 + 16 cores: 2 h; "
          f"measured in {time.perf_counter() - t_start:.0f} s")
    print(json.dumps({"projected_total_h": round(total_h, 3), "complete": complete, "machine": label,
                      "device": dev, "cores": cores, "workers": args.workers, "threads": args.threads,
                      "quick": args.quick,
                      "target_h": 2.0, "stages": stages,
                      "ok": complete and all(math.isfinite(x) for x in done)}))


if __name__ == "__main__":
    main()
