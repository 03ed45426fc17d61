"""CarRacing at the speed limit: the fast renderer and batched agents against the stock path, on one core.

- render_speedup: steps/s of CarRacing-v3 drawn by `carracing_render` (its default drawing: compiled, where numba
  is installed; fast_drawing says which) ÷ gymnasium's own CarRacing-v3, the same random actions and seeds,
  episode by episode in turn (target >= 5); render_speedup_pygame_drawing: the same for the fast renderer's pygame
  drawing (the fallback); physics_fraction: the share of a fast step spent in the physics alone (the same actions
  replayed on the car and world without drawing); frames_equal: every frame of the three equal.
- rollout_speedup: real-env episode steps/s of a `small` CarRacing world model agent (random weights, its real
  sizes) in one worker's tasks (`chunk_size` episodes on ENVS_PER_WORKER[env] envs in lockstep, the next episode
  taking the env of one that ended) with the fast renderer ÷ the path before it:
  one env per worker, gymnasium's renderer, the agent at batch 1 (V encode of one frame, M's full step with its
  mixture head, as game/agent.py did) (target >= 5).
- agent_overhead: the agent's time per env step ÷ the bare env step (the same runner with the random policy),
  for CarRacing and for Doom (target <= 0.5); the two runners take turns task by task (a worker's chunk of
  episodes, the same seeds), so a busy machine's load falls on both alike.

One torch thread, one process. `python benchmarks/carracing.py [--episodes N] [--steps T] [--render-only]`; last line
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


def render_figures(episodes: int, steps: int) -> dict:
    from worldmodels_cli.config import EnvConfig
    from worldmodels_cli.game.envs import CarRacingEnv

    rng = np.random.default_rng(0)
    actions = rng.uniform([-1.0, 0.0, 0.0], [1.0, 1.0, 0.3], size=(episodes, steps, 3))
    cfg = EnvConfig(name="carracing", max_steps=steps)
    renderers = ("gym", "fast", "pygame")  # gymnasium's; the default (compiled where numba is); its pygame drawing
    envs = {r: CarRacingEnv(cfg, renderer=r)._env for r in renderers}
    for env in envs.values():  # untimed: the first compiled frame loads (or compiles) the numba kernels
        env.reset(seed=10_000)
        env.step(actions[0, 0])
    seconds, frames = dict.fromkeys(renderers, 0.0), {r: [] for r in renderers}
    for e in range(episodes):  # episode by episode, each renderer in turn: the machine's load falls on all alike
        for renderer, env in envs.items():
            t0 = time.perf_counter()
            out = [env.reset(seed=e)[0]]
            for a in actions[e]:
                out.append(env.step(a)[0])
            seconds[renderer] += time.perf_counter() - t0
            frames[renderer] += out
    drawing = envs["fast"].unwrapped.drawing
    for env in envs.values():
        env.close()
    # the physics alone: the same actions on a fresh env's car and world, nothing drawn
    env = CarRacingEnv(cfg, renderer="fast")._env
    u, physics = env.unwrapped, 0.0
    for e in range(episodes):
        env.reset(seed=e)
        t0 = time.perf_counter()
        for a in actions[e]:
            u.car.steer(-a[0])
            u.car.gas(a[1])
            u.car.brake(a[2])
            u.car.step(1.0 / 50)
            u.world.Step(1.0 / 50, 6 * 30, 2 * 30)
            u.t += 1.0 / 50
        physics += time.perf_counter() - t0
    env.close()
    n = episodes * (steps + 1)
    stock = np.asarray(frames["gym"])
    return {"stock_ms_per_step": 1e3 * seconds["gym"] / n, "fast_ms_per_step": 1e3 * seconds["fast"] / n,
            "fast_drawing": drawing, "fast_pygame_ms_per_step": 1e3 * seconds["pygame"] / n,
            "render_speedup": seconds["gym"] / seconds["fast"],
            "render_speedup_pygame_drawing": seconds["gym"] / seconds["pygame"],
            "physics_fraction": physics / seconds["fast"] * n / (episodes * steps),
            "frames_equal": bool(np.array_equal(stock, frames["fast"]) and np.array_equal(stock, frames["pygame"]))}


LEGACY_EPISODES = 8  # the path before is slow: its rate from this many episodes


class LegacyAgent:
    """The agent before batching (game/agent.py before batching): one frame, M's full step with its head."""

    def __init__(self, spec) -> None:
        import torch

        self.torch, self.b = torch, spec.build_batch()

    def set_params(self, params) -> None:
        self.b.controller.set_params(params)

    def reset(self, rng) -> None:
        self.state, self.restart = self.b.mdn.initial_state(1), 1.0

    def act(self, obs, rng):
        torch, b = self.torch, self.b
        from worldmodels_cli.models.vae import to_input

        with torch.no_grad():
            mu, logvar = b.vae.encode(to_input(torch.tensor(obs).unsqueeze(0)))
            z = mu + torch.exp(0.5 * logvar) * torch.from_numpy(rng.standard_normal(mu.shape).astype(np.float32))
            h, c = self.state
            action = b.controller.act(b.controller.features(z, h, c)).float()
            restart = torch.full((1,), self.restart) if b.mdn.cfg.restart_input else None
            _, self.state = b.mdn.step(z, action, restart, self.state)
            self.restart = 0.0
        return action[0].numpy()


def rollout_figures(env_name: str, episodes: int, steps: int, legacy: bool) -> dict:
    import torch

    from worldmodels_cli.config import preset
    from worldmodels_cli.game.agent import AgentSpec
    from worldmodels_cli.game.envs import CarRacingEnv, make_env
    from worldmodels_cli.game.episodes import ENVS_PER_WORKER, EpisodeRunner, chunk_size
    from worldmodels_cli.models.controller import build_controller
    from worldmodels_cli.stages.collect import rollout
    from worldmodels_cli.testing import random_world

    torch.set_num_threads(1)
    cfg = preset(env_name, "small").env.replace(max_steps=steps)
    seeds = np.arange(episodes)[None, :] + 1000
    out = {}
    with tempfile.TemporaryDirectory() as d:
        vae, mdn, mc = random_world(Path(d), env_name)
        spec = AgentSpec(str(vae), str(mdn), mc)
        params = np.random.default_rng(0).normal(0, 0.1, (1, build_controller(mc).param_count))
        envs = ENVS_PER_WORKER[env_name]
        size = chunk_size(episodes, 1, envs)  # one worker's task: its envs, each running several episodes in turn
        policies = {"agent": params, "random": None}
        seconds, steps = dict.fromkeys(policies, 0.0), dict.fromkeys(policies, 0)
        with EpisodeRunner(cfg, policy="agent", agent=spec, envs_per_worker=envs) as with_agent, \
                EpisodeRunner(cfg, policy="random", envs_per_worker=envs) as bare:
            runners = {"agent": with_agent, "random": bare}
            for name, runner in runners.items():
                runner.episodes(policies[name], seeds[:, :envs] + 10_000)  # warm up: every env built, kernels chosen
            for lo in range(0, episodes, size):  # chunk by chunk, each policy in turn: the load falls on both alike
                for name, runner in runners.items():
                    t0 = time.perf_counter()
                    _, lengths = runner.episodes(policies[name], seeds[:, lo:lo + size])
                    seconds[name] += time.perf_counter() - t0
                    steps[name] += int(lengths.sum())
        for name in policies:
            out[f"{name}_ms_per_step"], out[f"{name}_steps"] = 1e3 * seconds[name] / steps[name], steps[name]
        if legacy:  # the path before: one env, stock renderer, batch-1 agent
            agent, env = LegacyAgent(spec), CarRacingEnv(cfg, renderer="gym") if env_name == "carracing" else make_env(cfg)
            agent.set_params(params[0])
            t0, n = time.perf_counter(), 0
            for s in seeds[0, :LEGACY_EPISODES]:
                n += len(rollout(env, agent, int(s), cfg.max_steps)["rewards"])
            out["legacy_ms_per_step"] = 1e3 * (time.perf_counter() - t0) / n
            env.close()
    out["agent_overhead"] = out["agent_ms_per_step"] / out["random_ms_per_step"] - 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=32, help="episodes per measurement (the path before: at most "
                    f"{LEGACY_EPISODES})")
    ap.add_argument("--steps", type=int, default=500, help="CarRacing episode cap (the paper's: 1000)")
    ap.add_argument("--render-only", action="store_true", help="the renderer's figures alone (no agents)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    figures = {"episodes": args.episodes, "steps": args.steps}
    figures.update(render_figures(max(2, args.episodes // 4), args.steps))
    if not args.render_only:
        car = rollout_figures("carracing", args.episodes, args.steps, legacy=True)
        doom = rollout_figures("doom", args.episodes, 2100, legacy=False)
        figures.update({f"carracing_{k}": v for k, v in car.items()})
        figures.update({f"doom_{k}": v for k, v in doom.items()})
        figures["rollout_speedup"] = car["legacy_ms_per_step"] / car["agent_ms_per_step"]
        figures["agent_overhead_carracing"] = car["agent_overhead"]
        figures["agent_overhead_doom"] = doom["agent_overhead"]
    for k, v in figures.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
