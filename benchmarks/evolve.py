"""Real-env evolution benchmark: Doom rollouts/s with 1 and 2 workers, and the per-step cost of the
agent (V encode + z sample + C + M step) over the bare env step.

- A randomly initialised world model at the small preset's sizes (V z=32 half width, M H=256) is written to a temp
  folder; its controller params are random. Episodes use the real Doom env (vizdoom) at the paper's settings.
- rollouts_1 / rollouts_2: `EpisodeRunner` (the fitness of `wm evolve --real`) over the same seeds, after a
  warm-up call that starts the workers, so the figure is steady-state throughput.
- bare: the same episodes with the uniform random policy in one process, env steps only.

    python benchmarks/evolve.py [--episodes N] [--env doom|fake-doom]

Last line: JSON with `scaling` = rollouts_2 / rollouts_1 (target >= 1.8) and `agent_overhead` =
agent ms/step / bare ms/step - 1.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--env", default="doom", choices=["doom", "fake-doom"])
    args = ap.parse_args()

    from worldmodels_cli.config import preset
    from worldmodels_cli.game.agent import AgentSpec
    from worldmodels_cli.game.episodes import EpisodeRunner
    from worldmodels_cli.models.controller import build_controller
    from worldmodels_cli.testing import random_world

    env_cfg = preset("doom", "paper").env.replace(fake=args.env == "fake-doom")
    with tempfile.TemporaryDirectory() as d:
        vae, mdn, mc = random_world(Path(d), "doom")
        spec = AgentSpec(str(vae), str(mdn), mc)
        n = build_controller(mc).param_count
        params = np.random.default_rng(0).normal(0, 0.1, (1, n))
        seeds = np.arange(args.episodes)[None, :]
        figures = {}
        for workers in (1, 2):
            with EpisodeRunner(env_cfg, agent=spec, workers=workers) as runner:
                runner.episodes(params, np.arange(1000, 1000 + workers)[None, :])  # start workers, warm caches
                t0 = time.perf_counter()
                _, lengths = runner.episodes(params, seeds)
                dt = time.perf_counter() - t0
            figures[f"rollouts_per_s_{workers}"] = args.episodes / dt
            figures[f"steps_per_s_{workers}"] = float(lengths.sum()) / dt
        with EpisodeRunner(env_cfg, policy="random", workers=1) as runner:
            t0 = time.perf_counter()
            _, blen = runner.episodes(None, seeds)
            bare_dt = time.perf_counter() - t0
        agent_ms = 1000 / figures["steps_per_s_1"]
        bare_ms = 1000 * bare_dt / float(blen.sum())
        figures.update({
            "env": args.env, "episodes": args.episodes, "cpus": os.cpu_count(),
            "agent_ms_per_step": agent_ms, "bare_ms_per_step": bare_ms,
            "agent_overhead": agent_ms / bare_ms - 1,
            "scaling": figures["steps_per_s_2"] / figures["steps_per_s_1"],
        })
    for k, v in figures.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
