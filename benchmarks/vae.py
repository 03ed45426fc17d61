"""Benchmark V training: streaming from HDF5 vs an in-memory tensor, peak RSS vs dataset size, frames/s per core.

    python benchmarks/vae.py [--quick] [--steps N] [--device cpu|cuda]

Figures (last line, JSON):
- fps_stream / fps_memory: training frames/s of the paper-size VAE (z=32, batch 100) fed by the streaming loader
  (frames.train_batches, 1 data-loader worker, as `wm train-vae`) and by random batches of a tensor already in
  memory, measured in the same run, interleaved step by step so that load from other processes hits both alike;
  `stream_vs_memory` = their ratio (target >= 0.9: loading is not the bottleneck).
- fps_1core: the streaming pipeline with torch.set_num_threads(1) and no worker process (the best-known PyTorch
  port: ~106 frames/s on one core); fps_all: the streaming pipeline with all cores.
- rss_small_mb / rss_large_mb: peak RSS of a whole `train_vae.run` epoch (tiny VAE, so the data path dominates)
  over two synthetic datasets 8x apart in size, each in its own subprocess; `rss_ratio` = large / small
  (target <= 1.10). The shuffle buffer is set below the small dataset's size so both runs actually stream.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from synthetic import write_rollouts  # noqa: E402

from worldmodels_cli.config import VAEConfig, preset  # noqa: E402
from worldmodels_cli.models.vae import ConvVAE  # noqa: E402
from worldmodels_cli.runtime import Runtime, seeding  # noqa: E402
from worldmodels_cli.stages import train_vae  # noqa: E402
from worldmodels_cli.store import artifacts as A  # noqa: E402
from worldmodels_cli.store import frames  # noqa: E402

BATCH = 100


def _rollouts(path: Path, n_frames: int, episode: int = 100, seed: int = 0) -> Path:
    return write_rollouts(path, lengths=[episode] * math.ceil(n_frames / episode), seed=seed, chunk_frames=64)


def _trainer(device: str):
    torch.manual_seed(0)
    model = ConvVAE(VAEConfig(z_dim=32)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    amp = train_vae._make_amp("auto", device)
    gen = torch.Generator(device=device)
    count = {"step": 0}

    def step(batch: np.ndarray) -> None:
        b = torch.from_numpy(batch)
        i = count["step"]
        train_vae.train_step(model, opt, b, lambda s: train_vae._noise(s, gen, 0, "bench", i, device), amp, device, 0.5)
        count["step"] += 1

    return step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def throughput(path: Path, steps: int, rounds: int, device: str) -> dict[str, float]:
    """Interleaved rounds of `steps` training steps fed by the stream and by memory; frames/s of each."""
    sources = frames.split_episodes([path], 0.0, seed=0)
    plan = frames.TrainFrames(sources, block_frames=256, buffer_blocks=32, seed=0)
    with A.open_artifact(path, "rollouts") as fh:
        memory = fh[A.FRAMES][()]  # the baseline holds everything in RAM
    rng = seeding.generator(0, "bench")
    step_stream, step_memory = _trainer(device), _trainer(device)

    def endless_stream():
        epoch = 0
        while True:
            yield from frames.train_batches(plan, epoch, BATCH, num_workers=1)
            epoch += 1

    stream = endless_stream()
    step_stream(next(stream))  # warm-up: first group read, worker start, allocator
    step_memory(memory[rng.integers(0, len(memory), BATCH)])
    t_stream = t_memory = 0.0
    for i in range(rounds):
        # alternate which source goes first: load from other processes and cache effects hit both alike
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            for _ in range(steps):
                if which == 0:
                    step_stream(next(stream))
                else:
                    step_memory(memory[np.sort(rng.choice(len(memory), BATCH, replace=False))])
            _sync(device)
            if which == 0:
                t_stream += time.perf_counter() - t
            else:
                t_memory += time.perf_counter() - t
    stream.close()
    n = rounds * steps * BATCH
    return {"fps_stream": n / t_stream, "fps_memory": n / t_memory}


def one_core(path: Path, steps: int) -> float:
    """The streaming pipeline on one core: one torch thread, frames read in the same process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plan = frames.TrainFrames(frames.split_episodes([path], 0.0, seed=0), 256, 32, seed=0)
        batches = frames.train_batches(plan, 0, BATCH, num_workers=0)
        step = _trainer("cpu")
        step(next(batches))
        t = time.perf_counter()
        for _ in range(steps):
            step(next(batches))
        batches.close()
        return steps * BATCH / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux: VmHWM, which starts afresh at exec (ru_maxrss would carry the parent's
    high-water mark over fork + exec and hide the figure)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(path: str, out: str) -> None:
    """Run a whole train-vae epoch over `path` (tiny VAE, streaming) and print this process's peak RSS in MB."""
    cfg = preset("carracing", "tiny")
    cfg = cfg.replace(vae_train=cfg.vae_train.replace(epochs=1, batch_size=BATCH, block_frames=256, buffer_blocks=4,
                                                      val_episodes=0.05, num_workers=0, log_steps=50))
    train_vae.run(cfg, [path], out, runtime=Runtime(seed=0, device='cpu'))
    print(json.dumps({"rss_mb": peak_rss_mb()}))


def rss(path: Path, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--rss-child", str(path), str(out)], capture_output=True,
                          text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["rss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and smaller datasets (~1 min)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per round and source")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--rss-child", nargs=2, metavar=("ROLLOUTS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    gpu = args.device == "cuda"
    steps = args.steps or (40 if gpu else 1)
    rounds = 3 if gpu else (3 if args.quick else 6)
    small, large = (1000, 8000) if args.quick else (1500, 12000)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        r_small = _rollouts(tmp / "small.h5", small, seed=1)
        r_large = _rollouts(tmp / "large.h5", large, seed=2)
        print(f"synthetic rollouts: {small} and {large} frames ({time.perf_counter() - t0:.1f} s)", flush=True)

        fig = throughput(r_small, steps, rounds, args.device)
        print(f"paper VAE, batch {BATCH}, {torch.get_num_threads()} threads, {args.device}: stream "
              f"{fig['fps_stream']:.0f} frames/s, memory {fig['fps_memory']:.0f} frames/s", flush=True)
        fps_1 = one_core(r_small, 2 if args.quick else 4)
        print(f"one core (stream, no worker): {fps_1:.0f} frames/s (best-known PyTorch port: ~106)", flush=True)

        rss_s = rss(r_small, tmp / "v_small.h5")
        rss_l = rss(r_large, tmp / "v_large.h5")
        print(f"peak RSS of a train-vae epoch: {rss_s:.0f} MB at {small} frames, {rss_l:.0f} MB at {large} frames "
              f"({large * 12288 / 2**20:.0f} MB of raw frames)", flush=True)
    result = {
        "fps_stream": round(fig["fps_stream"], 1),
        "fps_memory": round(fig["fps_memory"], 1),
        "stream_vs_memory": round(fig["fps_stream"] / fig["fps_memory"], 3),
        "fps_1core": round(fps_1, 1),
        "fps_all": round(fig["fps_stream"], 1),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "rss_small_mb": round(rss_s, 1),
        "rss_large_mb": round(rss_l, 1),
        "rss_ratio": round(rss_l / rss_s, 3),
        "frames_small": small,
        "frames_large": large,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
