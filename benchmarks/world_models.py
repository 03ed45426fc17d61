"""The other world model's cost against the paper's, at small Doom's sizes (z 32, A 1; MDN-RNN H 256; RSSM deter
256, 16 x 16 classes, units 256; C on [z, c, h]), on randomly initialised models and a fake series:

- M training: seconds per step of `train_mdn`'s trainer and `train_rssm`'s (batch 32 x 200 frames, streams);
- the dream: rollout-steps per second of the batched program at small's CMA-ES population (32 x 16 = 512 rows),
  no rollout ending (every row alive: the per-step cost);
- the actor-critic: seconds per step (256 lanes x horizon 15) on each M.

The ratios, measured in one run on one machine, scale the stages `make demo` measured (docs/pipeline.md) into the
comparison's cost (docs/world_models_compared.md); on a machine shared with other work the absolute figures are
upper bounds, the ratios less so.

    python benchmarks/world_models.py [--quick] [--device cpu|cuda|auto] [--threads N]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from worldmodels_cli.config import actor_critic_config, preset, rssm_config, rssm_train_config
from worldmodels_cli.dream.program import dream_rollouts
from worldmodels_cli.models.mdnrnn import MDNRNN
from worldmodels_cli.models.rssm import RSSM
from worldmodels_cli.runtime import device as devices
from worldmodels_cli.stages import train_mdn, train_rssm
from worldmodels_cli.stages.evolve import controller_for
from worldmodels_cli.store.series_data import load_series, make_batcher, write_fake_series


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _models(dev: torch.device) -> dict[str, torch.nn.Module]:
    """Small Doom's M of each dynamics, the done head's bias so low that no dream ends."""
    p = preset("doom", "small")
    torch.manual_seed(0)
    mdn = MDNRNN(p.mdn)
    rssm = RSSM(rssm_config("doom", "small").replace(z_dim=32, action_dim=1, done_head=True))
    with torch.no_grad():
        mdn.head.bias[0] = -50.0
        rssm.done_head.out.bias.fill_(-50.0)
    return {"mdnrnn": mdn.to(dev), "rssm": rssm.to(dev)}


def _seconds_a_step(trainer, steps: int, dev: torch.device) -> float:
    """Mean wall time of `steps` train steps after one warm-up step."""
    trainer.train_step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
        trainer.step += 1
    _sync(dev)
    return (time.perf_counter() - t0) / steps


def bench_train(series: Path, dev: torch.device, steps: int) -> dict[str, float]:
    p = preset("doom", "small")
    tcfg = p.mdn_train
    data = load_series([series])
    out = {}
    for name, model in _models(dev).items():
        batcher = make_batcher("streams", data, np.arange(data.episodes), tcfg.batch_size, tcfg.seq_len, seed=0)
        if name == "rssm":
            trainer = train_rssm.Trainer(model, batcher, tcfg, rssm_train_config("small"), dev, seed=0)
        else:
            trainer = train_mdn._Trainer(model, torch.optim.Adam(model.parameters()), batcher, tcfg, dev)
        out[name] = _seconds_a_step(trainer, steps, dev)
    return out


def bench_dream(dev: torch.device, steps: int) -> dict[str, float]:
    p = preset("doom", "small")
    rng = np.random.default_rng(0)
    mu0, lv0 = rng.normal(size=(64, 32)), np.full((64, 32), -2.0)
    seeds = np.arange(p.evolve.pop * p.evolve.trials).reshape(p.evolve.pop, p.evolve.trials)
    out = {}
    for name, model in _models(dev).items():
        c, _ = controller_for(p.controller, "doom", model)
        params = rng.normal(0, 0.1, (p.evolve.pop, c.param_count))
        dream_rollouts(model, seeds[:2], mu0, lv0, controller=c, params=params[:2], max_steps=5, device=dev)
        t0 = time.perf_counter()
        res = dream_rollouts(model, seeds, mu0, lv0, controller=c, params=params, max_steps=steps, device=dev)
        out[name] = res.rollout_steps / (time.perf_counter() - t0)
    return out


def bench_actor_critic(dev: torch.device, steps: int) -> dict[str, float]:
    from worldmodels_cli.stages.train_controller import _Trainer

    p = preset("doom", "small")
    ac = actor_critic_config("doom", "small")
    rng = np.random.default_rng(0)
    mu0, lv0 = rng.normal(size=(64, 32)).astype(np.float32), np.full((64, 32), -2.0, dtype=np.float32)
    out = {}
    for name, model in _models(dev).items():
        c, _ = controller_for(p.controller, "doom", model)
        trainer = _Trainer(model, c, ac, p, mu0, lv0, str(dev), seed=0)
        out[name] = _seconds_a_step(trainer, steps, dev)  # its warm-up fills the first lanes
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps: a smoke run")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); on a machine "
                                                                "shared with other work 1 gives fairer ratios")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(devices.resolve(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        series = Path(tmp) / "s.h5"
        write_fake_series(series, [200] * 40, z_dim=32, action_dim=1, env="doom")
        train = bench_train(series, dev, 1 if args.quick else 3)
    dream = bench_dream(dev, 10 if args.quick else 40)
    ac = bench_actor_critic(dev, 1 if args.quick else 3)
    result = {"device": str(dev), "threads": torch.get_num_threads(),
              "train_s_per_step": train, "dream_rollout_steps_per_s": dream, "actor_critic_s_per_step": ac,
              "rssm_over_mdnrnn": {"train": train["rssm"] / train["mdnrnn"],
                                   "dream": dream["mdnrnn"] / dream["rssm"],
                                   "actor_critic": ac["rssm"] / ac["mdnrnn"]}}
    for k in ("train_s_per_step", "dream_rollout_steps_per_s", "actor_critic_s_per_step"):
        print(f"{k}: " + ", ".join(f"{n} {v:.3g}" for n, v in result[k].items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
