"""Real-env episodes in workers: the fitness of real-env evolution and the episodes of `wm evaluate`.

Each worker builds its env and its policy once (the world-model agent rebuilt from V, M and C's recorded sizes,
or a random baseline) and then runs tasks `(params, seed)`: one episode from `seed` through the same loop as
collection (`collect.rollout`), returning (return, length). Results depend only on (params, seed), never on the
worker count or backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .agent import AgentSpec
from .config import CollectConfig, EnvConfig
from .envs import make_env
from .executor import make_executor
from .policies import baseline_policy, random_policy

POLICIES = ("agent", "random", "data")  # random: the paper's baseline; data: the data-collection policy


@dataclass(frozen=True)
class _Payload:
    env: EnvConfig
    policy: str
    agent: AgentSpec | None
    collect: CollectConfig


class _Worker:
    def __init__(self, p: _Payload) -> None:
        self.p = p
        self.env = make_env(p.env)
        if p.policy == "agent":
            assert p.agent is not None
            self.policy = p.agent.build()
        elif p.policy == "random":
            self.policy = baseline_policy(p.env)
        else:
            self.policy = random_policy(p.env, p.collect)

    def close(self) -> None:
        self.env.close()


def _init(p: _Payload) -> _Worker:
    return _Worker(p)


def _episode(w: _Worker, task: tuple[np.ndarray | None, int]) -> tuple[float, int]:
    from .collect import rollout

    params, seed = task
    if params is not None:
        w.policy.set_params(params)
    steps = rollout(w.env, w.policy, int(seed), w.p.env.max_steps)
    from . import artifacts as A

    return float(steps[A.REWARDS].sum(dtype=np.float64)), len(steps[A.REWARDS])


class EpisodeRunner:
    """Runs (params, seed) episodes on `workers` processes (or Ray actors); also an `evolve.Fitness`."""

    def __init__(self, env: EnvConfig, *, policy: str = "agent", agent: AgentSpec | None = None,
                 collect: CollectConfig | None = None, workers: int = 1, backend: str = "local",
                 address: str | None = None) -> None:
        payload = _Payload(env, policy, agent, collect or CollectConfig())
        self.executor = make_executor(workers, _init, payload, backend=backend, address=address)

    def episodes(self, params: np.ndarray | None, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """params (P, n) or None (a fixed policy), seeds (P, R) -> returns (P, R) float64, lengths (P, R) int64."""
        seeds = np.asarray(seeds)
        P, R = seeds.shape
        tasks = [(None if params is None else np.asarray(params[p], dtype=np.float64), int(seeds[p, r]))
                 for p in range(P) for r in range(R)]
        returns, lengths = np.zeros(P * R), np.zeros(P * R, dtype=np.int64)
        for i, (ret, length) in self.executor.run(_episode, tasks, describe=_describe(tasks, R)):
            returns[i], lengths[i] = ret, length
        return returns.reshape(P, R), lengths.reshape(P, R)

    def __call__(self, params: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        return self.episodes(params, seeds)[0]

    def close(self) -> None:
        self.executor.close()

    def __enter__(self) -> EpisodeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(tasks: list, trials: int):
    def describe(task: tuple) -> str:
        i = next(k for k, t in enumerate(tasks) if t is task)
        return f"episode (candidate {i // trials}, trial {i % trials}, seed {task[1]})"
    return describe
