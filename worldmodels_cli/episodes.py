"""Real-env episodes in workers: the fitness of real-env evolution and the episodes of `wm evaluate`.

Each worker builds its policy once (the world-model agent rebuilt from V, M and C's recorded sizes, or a random
baseline) and keeps a set of envs. A task is a chunk of up to `ENVS_PER_WORKER[env]` episodes `(params, seed)`: the
worker steps one env per episode in lockstep, and the agent acts for all running episodes at once (one V encode,
one C product, one M step per env step: `agent.BatchAgent`); an episode leaves the batch when it ends. Each
episode draws only from its own seed's streams and V encodes in batches of at least `MIN_ENCODE_ROWS`, so its
(return, length) is the same whichever episodes share its chunk, on any worker count or backend. A crashed env
fails its chunk with the episode's candidate and seed in the message; the executor retries the chunk (same seeds),
and the worker rebuilds that env.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import seeding
from .agent import AgentSpec
from .config import CollectConfig, EnvConfig
from .envs import Env, make_env
from .executor import make_executor
from .policies import baseline_policy, random_policy

POLICIES = ("agent", "random", "data")  # random: the paper's baseline; data: the data-collection policy
# envs one worker steps together. CarRacing: the small agent's cost per env step falls from 3.5 ms alone to 0.7 ms
# with 8 (V's convolutions batch); 16 gains nothing more. Doom: each env is an engine process, and the engines'
# steps slow down as more of them take turns (0.36 ms a step alone, 0.47 with 4, 0.65 with 8), so 4 is fastest
# with the agent (1.86 -> 1.08 ms a step). Measured with /tmp probes like benchmarks/carracing.py, 2-core CPU.
ENVS_PER_WORKER = {"carracing": 8, "doom": 4}


@dataclass(frozen=True)
class _Payload:
    env: EnvConfig
    policy: str
    agent: AgentSpec | None
    collect: CollectConfig


class EpisodeError(RuntimeError):
    """An env failed during one episode of a chunk; the message names it (candidate, trial, seed)."""


class _Worker:
    def __init__(self, p: _Payload) -> None:
        self.p = p
        self.envs: list[Env | None] = []
        self.agent = p.agent.build_batch() if p.policy == "agent" else None

    def env(self, i: int) -> Env:
        while len(self.envs) <= i:
            self.envs.append(None)
        if self.envs[i] is None:
            self.envs[i] = make_env(self.p.env)
        return self.envs[i]

    def drop(self, i: int) -> None:
        """Close and forget env i after it failed: the retry gets a new one (a dead Doom engine is not reused)."""
        env, self.envs[i] = self.envs[i], None
        if env is not None:
            try:
                env.close()
            except Exception:  # a crashed env may not close cleanly; it is dropped either way
                pass

    def policy(self):
        return baseline_policy(self.p.env) if self.p.policy == "random" else random_policy(self.p.env, self.p.collect)

    def close(self) -> None:
        for i in range(len(self.envs)):
            self.drop(i)


def _init(p: _Payload) -> _Worker:
    return _Worker(p)


def _chunk(w: _Worker, chunk: list[tuple[np.ndarray | None, int, str]]) -> list[tuple[float, int]]:
    """Episodes (params, seed, label) in lockstep -> [(return, length)] in chunk order. The loop is
    `collect.rollout`'s (same step order, stops, and float32 rewards summed in float64), for several envs."""
    n, max_steps = len(chunk), w.p.env.max_steps
    rngs = [seeding.generator(int(seed), "policy") for _, seed, _ in chunk]
    envs = [w.env(i) for i in range(n)]
    obs = [_guarded(w, i, chunk, lambda e=envs[i], s=int(chunk[i][1]): e.reset(s)) for i in range(n)]
    if w.agent is not None:
        params = None if chunk[0][0] is None else np.stack([p for p, _, _ in chunk])
        w.agent.start(params, rngs)
        policies = []
    else:
        policies = [w.policy() for _ in range(n)]
        for pol, rng in zip(policies, rngs, strict=True):
            pol.reset(rng)
    rewards: list[list[float]] = [[] for _ in range(n)]
    running = list(range(n))
    while running:
        if w.agent is not None:
            actions = w.agent.act(np.stack([obs[i] for i in running]), np.asarray(running))
        else:
            actions = [policies[i].act(obs[i], rngs[i]) for i in running]
        still = []
        for i, action in zip(running, actions, strict=True):
            step = _guarded(w, i, chunk, lambda e=envs[i], a=action: e.step(a))
            rewards[i].append(step.reward)
            obs[i] = step.obs
            if not (step.truncated or step.terminated or len(rewards[i]) >= max_steps):
                still.append(i)
        running = still
    return [(float(np.asarray(r, dtype=np.float32).sum(dtype=np.float64)), len(r)) for r in rewards]


def _guarded(w: _Worker, i: int, chunk: list, call):
    try:
        return call()
    except Exception as exc:
        w.drop(i)
        raise EpisodeError(f"{chunk[i][2]}: {type(exc).__name__}: {exc}") from exc


class EpisodeRunner:
    """Runs (params, seed) episodes on `workers` processes (or Ray actors); also an `evolve.Fitness`."""

    def __init__(self, env: EnvConfig, *, policy: str = "agent", agent: AgentSpec | None = None,
                 collect: CollectConfig | None = None, workers: int = 1, backend: str = "local",
                 address: str | None = None, envs_per_worker: int | None = None) -> None:
        payload = _Payload(env, policy, agent, collect or CollectConfig())
        self.workers = max(1, workers)
        self.envs_per_worker = envs_per_worker or ENVS_PER_WORKER[env.name]
        self.executor = make_executor(workers, _init, payload, backend=backend, address=address)

    def episodes(self, params: np.ndarray | None, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """params (P, n) or None (a fixed policy), seeds (P, R) -> returns (P, R) float64, lengths (P, R) int64."""
        seeds = np.asarray(seeds)
        P, R = seeds.shape
        episodes = [(None if params is None else np.asarray(params[p], dtype=np.float64), int(seeds[p, r]),
                     f"episode (candidate {p}, trial {r}, seed {int(seeds[p, r])})") for p in range(P) for r in range(R)]
        size = max(1, min(self.envs_per_worker, math.ceil(len(episodes) / self.workers)))
        chunks = [episodes[i:i + size] for i in range(0, len(episodes), size)]
        returns, lengths = np.zeros(P * R), np.zeros(P * R, dtype=np.int64)
        for k, results in self.executor.run(_chunk, chunks, describe=_describe):
            for j, (ret, length) in enumerate(results):
                returns[k * size + j], lengths[k * size + j] = ret, length
        return returns.reshape(P, R), lengths.reshape(P, R)

    def __call__(self, params: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        return self.episodes(params, seeds)[0]

    def close(self) -> None:
        self.executor.close()

    def __enter__(self) -> EpisodeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(chunk: list) -> str:
    first, last = chunk[0][2], chunk[-1][2]
    return first if len(chunk) == 1 else f"{len(chunk)} episodes from {first} to {last}"
