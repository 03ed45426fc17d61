"""M benchmark: training sequence-steps/s at CarRacing paper size (H 256, Z 32, A 3, K 5) reading only a series
artifact (V never runs); at Doom paper size (H 512, Z 64, restart input, done head, streams of episodes of the
random policy's lengths, ≈ 210 frames) on each restart path (`split`: one LSTM call per restart time; `packed`:
one variable-length call a batch, cuDNN's on CUDA; models/mdnrnn.py); and one-step latency at batch 1 and 1024.

Baseline measured in the same run: a ctallec/world-models-style MDRNN (torch nn.LSTM + linear GMM head, latents
given as tensors, no re-encoding) on the same batch shape. For reference, that port trains at 127 seq-steps/s when it
re-encodes frames with V and 12.4k/s without.

    python benchmarks/mdn.py [--quick] [--device cpu|cuda|auto] [--batch 8] [--seq-len 1000]

The last line is one JSON object: train_steps_per_s, baseline_train_steps_per_s, doom_split_steps_per_s,
doom_packed_steps_per_s (Doom seq-steps/s on each path), doom_auto_path (the path `auto` takes on this device),
step_latency_b1_ms, step_latency_b1024_ms (and the settings).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from worldmodels_cli.config import MDNConfig, preset
from worldmodels_cli.models.mdnrnn import MDNRNN, auto_restart_path
from worldmodels_cli.runtime import device as devices
from worldmodels_cli.stages import train_mdn
from worldmodels_cli.store.series_data import load_series, make_batcher, write_fake_series


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench_train(series: Path, dev: torch.device, batch: int, seq_len: int, steps: int) -> float:
    """Sequence-steps (B × T inputs) per second of train_mdn's trainer on batches read from the series artifact."""
    p = preset("carracing", "paper")
    tcfg = p.mdn_train.replace(batch_size=batch, seq_len=seq_len)
    data = load_series([series])
    model = MDNRNN(p.mdn.replace(z_dim=data.z_dim, action_dim=data.action_dim)).to(dev)
    batcher = make_batcher("episodes", data, np.arange(data.episodes), batch, seq_len, seed=0)
    trainer = train_mdn._Trainer(model, torch.optim.Adam(model.parameters()), batcher, tcfg, dev)
    trainer.train_step()  # warm-up (allocations, cuDNN plans)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    _sync(dev)
    return steps * batch * (seq_len - 1) / (time.perf_counter() - t0)


def doom_series(path: Path, frames: int, seed: int = 0) -> None:
    """A fake Doom series of ≈ `frames` frames in episodes of the random policy's lengths (> 100, mean ≈ 210)."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(101 + rng.geometric(1 / 110, size=frames // 210 + 2), 2100)
    write_fake_series(path, lengths.tolist(), z_dim=64, action_dim=1, env="doom")


def bench_doom_paths(series: Path, dev: torch.device, batch: int, steps: int, paths=("split", "packed"),
                     seq_len: int = 500) -> dict[str, float]:
    """Doom paper-size training seq-steps/s on each restart path (same model, same batches)."""
    p = preset("doom", "paper")
    data = load_series([series])
    tcfg = p.mdn_train.replace(batch_size=batch, seq_len=seq_len)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MDNRNN(p.mdn.replace(z_dim=data.z_dim, action_dim=data.action_dim)).to(dev)
    batcher = make_batcher("streams", data, np.arange(data.episodes), batch, seq_len, seed=0)
    trainer = train_mdn._Trainer(model, torch.optim.Adam(model.parameters()), batcher, tcfg, dev)
    rates = {}
    for path in paths:
        model.restart_path = path
        trainer.train_step()  # warm-up (cuDNN plans for this path)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        _sync(dev)
        rates[path] = steps * batch * (seq_len - 1) / (time.perf_counter() - t0)
    model.restart_path = "auto"
    return rates


class _CtallecMDRNN(nn.Module):
    """The baseline: nn.LSTM + one linear layer to (2·Z + 1)·K + 2 outputs, as ctallec/world-models' MDRNN."""

    def __init__(self, z: int, a: int, h: int, k: int) -> None:
        super().__init__()
        self.z, self.k = z, k
        self.rnn = nn.LSTM(z + a, h)
        self.gmm = nn.Linear(h, (2 * z + 1) * k + 2)

    def loss(self, z_in, a_in, z_next):
        out, _ = self.rnn(torch.cat([a_in, z_in], -1))  # (T, B, H)
        g = self.gmm(out)
        t, b = z_in.shape[:2]
        s = self.z * self.k
        mus = g[..., :s].view(t, b, self.k, self.z)
        sigmas = torch.exp(g[..., s : 2 * s]).view(t, b, self.k, self.z)
        logpi = torch.log_softmax(g[..., 2 * s : 2 * s + self.k], -1)
        normal = torch.distributions.Normal(mus, sigmas)
        lp = normal.log_prob(z_next.unsqueeze(-2)).sum(-1) + logpi  # shared component over dims (their design)
        return -torch.logsumexp(lp, -1).mean() / self.z


def bench_baseline(dev: torch.device, batch: int, seq_len: int, steps: int) -> float:
    torch.manual_seed(0)
    model = _CtallecMDRNN(32, 3, 256, 5).to(dev)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9)
    t = seq_len - 1
    z = torch.randn(t + 1, batch, 32, device=dev)
    a = torch.rand(t, batch, 3, device=dev)

    def step():
        loss = model.loss(z[:-1], a, z[1:])
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return steps * batch * t / (time.perf_counter() - t0)


@torch.no_grad()
def bench_step(dev: torch.device, batch: int, iters: int) -> float:
    """Milliseconds per M.step (Doom paper size: H 512, Z 64, restart input, done head) at `batch`."""
    cfg: MDNConfig = preset("doom", "paper").mdn
    model = MDNRNN(cfg).to(dev).eval()
    z = torch.randn(batch, cfg.z_dim, device=dev)
    a = torch.rand(batch, cfg.action_dim, device=dev)
    r = torch.zeros(batch, device=dev)
    state = model.initial_state(batch, dev)
    for _ in range(5):
        _, state = model.step(z, a, r, state)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        _, state = model.step(z, a, r, state)
    _sync(dev)
    return (time.perf_counter() - t0) / iters * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (a quick run on a laptop CPU)")
    ap.add_argument("--device", default="auto", choices=devices.DEVICES)
    ap.add_argument("--batch", type=int, default=None, help="episodes per batch (default 4 on CPU, 100 on CUDA)")
    ap.add_argument("--seq-len", type=int, default=1000, help="frames per row incl. the target (paper: 1000)")
    ap.add_argument("--steps", type=int, default=None, help="timed optimizer steps")
    args = ap.parse_args()
    dev = torch.device(devices.resolve(args.device))
    batch = args.batch or (100 if dev.type == "cuda" else 4)
    steps = args.steps or (2 if args.quick else 5) * (4 if dev.type == "cuda" else 1)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        series = Path(tmp) / "car.series.h5"
        episodes = max(batch, 8)
        write_fake_series(series, [args.seq_len] * episodes, z_dim=32, action_dim=3, env="carracing")
        ours = bench_train(series, dev, batch, args.seq_len, steps)
        doom = Path(tmp) / "doom.series.h5"
        doom_batch = 100 if dev.type == "cuda" else 4
        doom_series(doom, 3 * doom_batch * 500)
        paths = bench_doom_paths(doom, dev, doom_batch, 4 if dev.type == "cuda" else 1)
    base = bench_baseline(dev, batch, args.seq_len, steps)
    iters = 50 if args.quick else 200
    b1 = bench_step(dev, 1, iters)
    b1024 = bench_step(dev, 1024, max(10, iters // 4))

    print(f"device {dev}, threads {torch.get_num_threads()}, batch {batch} x {args.seq_len - 1} steps, H 256")
    print(f"train (series artifact, fresh z, Adam, value clip): {ours:,.0f} seq-steps/s")
    print(f"baseline ctallec-style nn.LSTM MDRNN (latents in memory): {base:,.0f} seq-steps/s "
          f"(ratio {ours / base:.2f}); their published figures: 127/s re-encoding frames, 12.4k/s without")
    auto = auto_restart_path(dev)
    print(f"Doom paper size (H 512, batch {doom_batch} x 499, streams with restarts): split {paths['split']:,.0f}, "
          f"packed {paths['packed']:,.0f} seq-steps/s (packed/split {paths['packed'] / paths['split']:.2f}; "
          f"auto takes {auto} here)")
    print(f"one step (Doom size H 512): batch 1 {b1:.3f} ms, batch 1024 {b1024:.3f} ms")
    print(json.dumps({
        "train_steps_per_s": round(ours, 1), "baseline_train_steps_per_s": round(base, 1),
        "doom_split_steps_per_s": round(paths["split"], 1), "doom_packed_steps_per_s": round(paths["packed"], 1),
        "doom_auto_path": auto, "doom_batch": doom_batch,
        "step_latency_b1_ms": round(b1, 4), "step_latency_b1024_ms": round(b1024, 4),
        "device": str(dev), "batch": batch, "seq_len": args.seq_len,
        "threads": torch.get_num_threads(), "ok": all(math.isfinite(x) for x in (ours, base, b1, b1024)),
    }))


if __name__ == "__main__":
    main()
