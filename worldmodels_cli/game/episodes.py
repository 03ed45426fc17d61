"""Real-env episodes in workers: the fitness of real-env evolution and the episodes of `wm evaluate`.

Each worker builds its policy once (the world-model agent rebuilt from V, M and C's recorded sizes, or a random
baseline) and keeps `ENVS_PER_WORKER[env]` envs. A task is a chunk of episodes `(params, seed)` (`chunk_size`): the
worker steps its envs in lockstep, one episode on each, and the agent acts for all running episodes at once (one V
encode, one C product, one M step per env step: `agent.BatchAgent`); when an episode ends, the chunk's next one
takes its env and row. Each episode draws only from its own seed's streams and the agent's matmuls run on one
thread and at least `encoder.MIN_ROWS` rows, so its (return, length) is the same whichever episodes share its
chunk or row, on any worker count or backend. A crashed env fails its chunk with the episode's candidate and seed in
the message; the executor retries the chunk (same seeds), on new envs. `lockstep` is the episode loop itself, shared
with collection (`collect.rollout` is its one-env case).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import CollectConfig, EnvConfig
from ..runtime import seeding
from ..runtime.errors import raise_if_signalled
from ..runtime.executor import make_executor
from ..store import artifacts as A
from .agent import AgentSpec
from .envs import FRAME_SHAPE, Env, make_env
from .policies import Actor, PolicyBatch, baseline_policy, random_policy

log = logging.getLogger(__name__)

POLICIES = ("agent", "random", "data")  # random: the paper's baseline; data: the data-collection policy
# envs one worker steps together. CarRacing: the small agent's cost per env step falls from 3.5 ms alone to 0.7 ms
# with 8 (V's convolutions batch); 16 gains nothing more. Doom: each env is an engine process, and the engines'
# steps slow down as more of them take turns (0.36 ms a step alone, 0.47 with 4, 0.65 with 8), so 4 is fastest
# with the agent (1.86 -> 1.08 ms a step). Measured with /tmp probes like benchmarks/carracing.py, 2-core CPU.
ENVS_PER_WORKER = {"carracing": 8, "doom": 4}
# a task runs up to this many times a worker's envs of episodes: as one ends the next takes its env, so the agent's
# batch stays full but at the task's end (Doom episodes vary in length 10x, and half of the steps ran part-empty
# when a task was one episode per env)
EPISODES_PER_ENV = 4
STALLED = "stalled"  # in a lockstep episode's arrays: the steps a stalled episode was cut short of its cap


@dataclass(frozen=True)
class _Payload:
    env: EnvConfig
    policy: str
    agent: AgentSpec | None
    collect: CollectConfig
    stall_steps: int = 0
    envs: int = 1  # envs the worker steps together (`ENVS_PER_WORKER`)


class EpisodeError(RuntimeError):
    """An env failed during one episode of a chunk; the message names it (candidate, trial, seed)."""


class EnvSet:
    """The envs a worker keeps across tasks, one per episode of its largest chunk so far (a Doom engine takes a
    while to start). After an env failed, `close` them all: the retry starts on new ones (a dead engine is not
    reused)."""

    def __init__(self, cfg: EnvConfig) -> None:
        self.cfg, self.envs = cfg, []

    def take(self, n: int) -> list[Env]:
        while len(self.envs) < n:
            self.envs.append(make_env(self.cfg))
        return self.envs[:n]

    def close(self) -> None:
        envs, self.envs = self.envs, []
        for env in envs:
            try:
                env.close()
            except Exception:  # a crashed env may not close cleanly; it is dropped either way
                log.debug("closing an env", exc_info=True)


class _Worker:
    def __init__(self, p: _Payload) -> None:
        self.p = p
        self.envs = EnvSet(p.env)
        if p.policy == "agent":
            self.actor: Actor = p.agent.build_batch()
        elif p.policy == "random":
            self.actor = PolicyBatch(lambda: baseline_policy(p.env))
        else:
            self.actor = PolicyBatch(lambda: random_policy(p.env, p.collect))

    def close(self) -> None:
        self.envs.close()


def _init(p: _Payload) -> _Worker:
    return _Worker(p)


def lockstep(envs: list[Env], actor: Actor, seeds: list[int], max_steps: int, *, params: np.ndarray | None = None,
             labels: list[str] | None = None, record: bool = False, ignore_done: bool = False, stall_steps: int = 0,
             on_end: Callable[[int, dict[str, np.ndarray]], None] | None = None,
             on_frame: Callable[[int, int, np.ndarray], None] | None = None) -> list[dict[str, np.ndarray]]:
    """Episode i from seeds[i], the episodes stepped together on the envs, `actor` acting for the running ones at once.

    The first len(envs) episodes start on envs 0, 1, ...; as an episode ends, the next one not yet started takes its
    env and the actor's row (`Actor.renew`), so the actor's batch stays full until the last episodes run out (an
    episode's result depends only on its seed, not on which env or row ran it).

    Per episode, the per-step arrays keyed by the artifact's dataset names (record=True: frames, actions, rewards,
    terminated, truncated, and Doom's env_actions; else rewards only). frames[t] is the frame before actions[t]
    (ref §2.1); the frame after the last action is not kept. An episode ends at its env's termination (unless
    `ignore_done`: CarRacing runs on to the cap as the original's full_episode did, ref §2.1; vizdoom cannot step
    after a death), its truncation or `max_steps`; `on_end(i, arrays)` is called then. With record, `on_frame(i, t,
    frames)` is called as frame t of episode i is recorded: `frames` is the episode's whole frames array, whose rows
    0..t are never written again (`on_end`'s frames are its first rows), so a caller can take them a stretch at a
    time. Each episode draws only from its own stream `seeding.generator(seed, "policy")`. An env that raises fails
    the call with `labels[i]`.

    `stall_steps` > 0 (real-env fitness only) also ends an episode after that many steps in a row without a positive
    reward; its arrays then hold `STALLED`, the steps it was cut short of `max_steps` (`fitness_return`)."""
    n, slots = len(seeds), min(len(envs), len(seeds))
    labels = labels or [f"episode (seed {s})" for s in seeds]
    env, action_dim = envs[0], envs[0].action_dim
    go_on = ignore_done and env.name == "carracing"
    cap = max_steps if record else 0
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    rngs, obs = [None] * n, [None] * n
    frames, actions, env_actions, rewards, flags = {}, {}, {}, {}, {}  # per started episode
    t, since = [0] * n, [0] * n  # steps; steps since the last positive reward

    def begin(i: int, j: int) -> None:  # episode i on env j (the actor's row j is begun by the caller)
        rngs[i] = seeding.generator(int(seeds[i]), "policy")
        obs[i] = _guarded(labels[i], lambda e=envs[j], s=int(seeds[i]): e.reset(s))
        frames[i] = np.empty((cap, *FRAME_SHAPE), dtype=np.uint8)
        actions[i] = np.empty((cap, action_dim), dtype=np.float32)
        env_actions[i] = np.empty(cap, dtype=np.int8)
        rewards[i] = np.empty(max_steps, dtype=np.float32)
        flags[i] = np.zeros((max_steps, 2), dtype=bool)  # terminated, truncated

    for j in range(slots):
        begin(j, j)
    actor.start(None if params is None else params[:slots], rngs[:slots])
    episode = list(range(slots))  # the episode on env (and actor row) j
    waiting = slots  # the next episode to start
    running = list(range(slots))  # rows with an episode running, ascending
    while running:
        raise_if_signalled()
        # one running episode (collect's random policies): its frame as a batch of one, a view, not a copy
        now = obs[episode[running[0]]][None] if len(running) == 1 else np.stack([obs[episode[j]] for j in running])
        acts = actor.act(now, np.asarray(running))
        still = []
        for j, action in zip(running, acts, strict=True):
            i = episode[j]
            step = _guarded(labels[i], lambda e=envs[j], a=action: e.step(a))
            k = t[i]
            if record:
                frames[i][k], actions[i][k], env_actions[i][k] = obs[i], action, step.env_action
                if on_frame is not None:
                    on_frame(i, k, frames[i])
            rewards[i][k], flags[i][k] = step.reward, (step.terminated, step.truncated)
            t[i], obs[i] = k + 1, step.obs
            since[i] = 0 if step.reward > 0 else since[i] + 1
            stalled = 0 < stall_steps <= since[i]
            if not (step.truncated or (step.terminated and not go_on) or t[i] >= max_steps or stalled):
                still.append(j)
                continue
            out[i] = _arrays(i, t[i], record, env.name, frames, actions, rewards, flags, env_actions)
            if stalled and not (step.truncated or step.terminated) and t[i] < max_steps:
                out[i][STALLED] = np.int64(max_steps - t[i])
            if on_end is not None:
                on_end(i, out[i])
            obs[i] = None
            for d in (frames, actions, env_actions, rewards, flags):  # out[i] keeps what it needs
                del d[i]
            if waiting < n:  # the next episode takes this env and row
                i, waiting = waiting, waiting + 1
                begin(i, j)
                actor.renew(j, None if params is None else params[i], rngs[i])
                episode[j] = i
                still.append(j)
        running = still
    return out


def fitness_return(steps: dict[str, np.ndarray], stall_steps: int) -> float:
    """An episode's return (float32 rewards summed in float64, as a rollouts artifact's); a stalled one's goes on
    at its stalled stretch's mean reward for the steps it was cut short of (CarRacing: the -0.1 a step a car that
    gains no more tiles pays to the cap, so a cut return estimates the full one)."""
    rewards = steps[A.REWARDS]
    ret = float(rewards.sum(dtype=np.float64))
    if STALLED in steps:
        ret += int(steps[STALLED]) * float(rewards[-stall_steps:].mean(dtype=np.float64))
    return ret


def _arrays(i, length, record, env_name, frames, actions, rewards, flags, env_actions) -> dict[str, np.ndarray]:
    steps = {A.REWARDS: rewards[i][:length]}
    if record:
        steps.update({A.FRAMES: frames[i][:length], A.ACTIONS: actions[i][:length],
                      A.TERMINATED: flags[i][:length, 0].copy(), A.TRUNCATED: flags[i][:length, 1].copy()})
        if env_name == "doom":
            steps[A.ENV_ACTIONS] = env_actions[i][:length]
    return steps


def _guarded(label: str, call):
    try:
        return call()
    except Exception as exc:
        raise EpisodeError(f"{label}: {type(exc).__name__}: {exc}") from exc


def _chunk(w: _Worker, chunk: list[tuple[np.ndarray | None, int, str]]) -> list[tuple[float, int]]:
    """Episodes (params, seed, label) in lockstep -> [(return, length)] in chunk order (`fitness_return`)."""
    params = None if chunk[0][0] is None else np.stack([p for p, _, _ in chunk])
    try:
        steps = lockstep(w.envs.take(min(len(chunk), w.p.envs)), w.actor, [s for _, s, _ in chunk], w.p.env.max_steps,
                         params=params, labels=[label for _, _, label in chunk], stall_steps=w.p.stall_steps)
    except EpisodeError:
        w.envs.close()
        raise
    return [(fitness_return(s, w.p.stall_steps), len(s[A.REWARDS])) for s in steps]


class EpisodeRunner:
    """Runs (params, seed) episodes on `workers` processes (or Ray actors); also an `evolve.Fitness`."""

    def __init__(self, env: EnvConfig, *, policy: str = "agent", agent: AgentSpec | None = None,
                 collect: CollectConfig | None = None, workers: int = 1, backend: str = "local",
                 address: str | None = None, envs_per_worker: int | None = None, stall_steps: int = 0) -> None:
        self.workers = max(1, workers)
        self.envs_per_worker = envs_per_worker or ENVS_PER_WORKER[env.name]
        payload = _Payload(env, policy, agent, collect or CollectConfig(), stall_steps, self.envs_per_worker)
        self.executor = make_executor(workers, _init, payload, backend=backend, address=address)

    def episodes(self, params: np.ndarray | None, seeds: np.ndarray,
                 progress: Callable[[int], object] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """params (P, n) or None (a fixed policy), seeds (P, R) -> returns (P, R) float64, lengths (P, R) int64;
        `progress(k)` after each chunk of k finished episodes."""
        seeds = np.asarray(seeds)
        P, R = seeds.shape
        episodes = [(None if params is None else np.asarray(params[p], dtype=np.float64), int(seeds[p, r]),
                     f"episode (candidate {p}, trial {r}, seed {int(seeds[p, r])})") for p in range(P) for r in range(R)]
        size = chunk_size(len(episodes), self.workers, self.envs_per_worker)
        chunks = [episodes[i:i + size] for i in range(0, len(episodes), size)]
        returns, lengths = np.zeros(P * R), np.zeros(P * R, dtype=np.int64)
        for k, results in self.executor.run(_chunk, chunks, describe=_describe):
            for j, (ret, length) in enumerate(results):
                returns[k * size + j], lengths[k * size + j] = ret, length
            if progress is not None:
                progress(len(results))
        return returns.reshape(P, R), lengths.reshape(P, R)

    def __call__(self, params: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        return self.episodes(params, seeds)[0]

    def close(self) -> None:
        self.executor.close()

    def __enter__(self) -> EpisodeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chunk_size(episodes: int, workers: int, envs: int) -> int:
    """Episodes a task: half a worker's share (two tasks each balance the workers and report progress), at least
    one per env and at most EPISODES_PER_ENV per env (a failed task is rerun whole)."""
    return max(1, min(EPISODES_PER_ENV * envs, max(envs, math.ceil(episodes / (2 * workers)))))


def _describe(chunk: list) -> str:
    first, last = chunk[0][2], chunk[-1][2]
    return first if len(chunk) == 1 else f"{len(chunk)} episodes from {first} to {last}"
