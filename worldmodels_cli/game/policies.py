"""Data policies: what acts in the real env while `wm collect` records, and the random evaluation baseline.

Interface: ``reset(rng)`` once per episode, then ``act(obs, rng) -> action`` every step, where ``obs`` is the
uint8 (64, 64, 3) frame and the action is the continuous one the env and M see (CarRacing (3,), Doom (1,)),
float32. All randomness comes from the ``rng`` the caller derives from (seed, episode), so an episode's data do
not depend on which worker ran it.

- ``CarRacingRandom``: the original's randomly parameterised agent (ref §2.1).
- ``DoomHeldRandom``: the original's held-uniform action (ref §2.2), the Doom data policy.
- ``DoomUniformRandom``: left / none / right uniformly every tic, the paper's random baseline (ref §B).

Episodes run in lockstep (``episodes.lockstep``) through an *actor*: ``start(params, rngs)`` begins B episodes in
rows 0..B-1, ``renew(row, params, rng)`` begins a new one in a row whose episode ended (a worker's envs run more
episodes than they are), ``act(frames, rows)`` returns the actions of the running rows for their frames
(R, 64, 64, 3).
``agent.BatchAgent`` is one; ``PolicyBatch`` makes one of per-episode policies; ``NoisyActor`` adds Gaussian
exploration noise around another actor, clipped to the env's bounds (``wm collect --controller C --noise σ``,
ref §9). ``make_actor`` builds the data actor ``wm collect`` runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from ..config import CollectConfig, EnvConfig
from ..runtime.errors import ConfigError


class Policy(Protocol):
    def reset(self, rng: np.random.Generator) -> None: ...

    def act(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


class CarRacingRandom:
    """ref §2.1: per episode s ~ U(0, 0.01), W (3x288) and b ~ Cauchy·s; per step z ~ N(0, I_32), h = 0,
    a = tanh(W[z, h] + b), steer = a0, gas = (a1 + 1)/2, brake = clip(a2, 0, 1).

    The original drew random V and M weights too, scaled by 1e-4, so z was fresh N(0, I) noise and h ≈ 0."""

    Z, H = 32, 256

    def __init__(self) -> None:
        self.w = np.zeros((3, self.Z + self.H))
        self.b = np.zeros(3)

    def reset(self, rng: np.random.Generator) -> None:
        s = rng.uniform(0.0, 0.01)
        self.w = rng.standard_cauchy((3, self.Z + self.H)) * s
        self.b = rng.standard_cauchy(3) * s

    def act(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        z = rng.standard_normal(self.Z)
        a = np.tanh(self.w[:, : self.Z] @ z + self.b)  # h = 0: its columns contribute nothing
        return np.array([a[0], (a[1] + 1.0) / 2.0, np.clip(a[2], 0.0, 1.0)], dtype=np.float32)


class DoomHeldRandom:
    """ref §2.2, the original's logic: ``repeat = randint(1, 11)``; at every frame with ``frame % repeat == 0``
    draw a ∈ U(-1, 1) and a new repeat. An action is thus held for 1..repeat_max frames."""

    def __init__(self, repeat_min: int = 1, repeat_max: int = 10) -> None:
        self.repeat_min, self.repeat_max = repeat_min, repeat_max
        self.frame, self.repeat, self.action = 0, 1, 0.0

    def _draw_repeat(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.repeat_min, self.repeat_max + 1))

    def reset(self, rng: np.random.Generator) -> None:
        self.frame, self.repeat, self.action = 0, self._draw_repeat(rng), 0.0

    def act(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.frame % self.repeat == 0:
            self.action = rng.uniform(-1.0, 1.0)
            self.repeat = self._draw_repeat(rng)
        self.frame += 1
        return np.array([self.action], dtype=np.float32)


class DoomUniformRandom:
    """ref §B: a uniform choice of left / none / right every tic (as -1, 0, 1): the paper's random baseline."""

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def act(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.array([rng.integers(-1, 2)], dtype=np.float32)


class Actor(Protocol):
    def start(self, params: np.ndarray | None, rngs: list[np.random.Generator]) -> None: ...

    def renew(self, row: int, params: np.ndarray | None, rng: np.random.Generator) -> None: ...

    def act(self, frames: np.ndarray, rows: np.ndarray) -> np.ndarray: ...


class PolicyBatch:
    """Per-episode policies as one actor: `make()` gives a fresh policy per episode; each acts on its own frame
    with its own episode's stream, exactly as it would alone."""

    def __init__(self, make: Callable[[], Policy]) -> None:
        self.make = make
        self.policies: list[Policy] = []
        self.rngs: list[np.random.Generator] = []

    @classmethod
    def of(cls, policy: Policy) -> PolicyBatch:
        """One episode at a time with this very policy object."""
        return cls(lambda: policy)

    def start(self, params: np.ndarray | None, rngs: list[np.random.Generator]) -> None:
        if params is not None:
            raise ConfigError("a fixed policy takes no parameters")
        self.rngs, self.policies = list(rngs), [None] * len(rngs)
        for row, rng in enumerate(rngs):
            self.renew(row, None, rng)

    def renew(self, row: int, params: np.ndarray | None, rng: np.random.Generator) -> None:
        if params is not None:
            raise ConfigError("a fixed policy takes no parameters")
        self.rngs[row], self.policies[row] = rng, self.make()
        self.policies[row].reset(rng)

    def act(self, frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 1:  # one episode (collect's random policies): np.stack's work for one row, for less
            i = int(rows[0])
            return np.asarray(self.policies[i].act(frames[0], self.rngs[i]))[None]
        return np.stack([self.policies[i].act(frame, self.rngs[i]) for frame, i in zip(frames, rows, strict=True)])


class NoisyActor:
    """`base`'s actions plus N(0, sigma²) noise per component from each episode's own stream (after whatever the
    base drew from it), clipped to [low, high] (ref §9: exploration while collecting with a controller)."""

    def __init__(self, base: Actor, sigma: float, low: np.ndarray, high: np.ndarray) -> None:
        self.base, self.sigma, self.low, self.high = base, sigma, low, high
        self.rngs: list[np.random.Generator] = []

    def start(self, params: np.ndarray | None, rngs: list[np.random.Generator]) -> None:
        self.rngs = list(rngs)
        self.base.start(params, rngs)

    def renew(self, row: int, params: np.ndarray | None, rng: np.random.Generator) -> None:
        self.rngs[row] = rng
        self.base.renew(row, params, rng)

    def act(self, frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
        a = self.base.act(frames, rows)  # (R, A) float32
        if self.sigma > 0:
            a = a + np.stack([self.rngs[i].normal(0.0, self.sigma, size=a.shape[1:]) for i in rows])
        return np.clip(a, self.low, self.high).astype(np.float32)


def random_policy(env: EnvConfig, collect: CollectConfig | None = None) -> Policy:
    """The original's random data policy for `env` (ref §2.1, §2.2)."""
    if env.name == "carracing":
        return CarRacingRandom()
    collect = collect or CollectConfig()
    return DoomHeldRandom(collect.repeat_min, collect.repeat_max)


def baseline_policy(env: EnvConfig) -> Policy:
    """The random policy the paper's results compare with (`wm evaluate --policy random`)."""
    return DoomUniformRandom() if env.name == "doom" else CarRacingRandom()


def make_actor(env: EnvConfig, collect: CollectConfig, controller: str | None = None) -> Actor:
    """The data actor `collect.policy` names: the random data policy, or the controller artifact `controller`
    (V + M + C as one BatchAgent) with `collect.noise` (ref §9)."""
    if collect.policy == "random":
        if controller is not None:
            raise ConfigError("--controller given but CollectConfig.policy is 'random'")
        return PolicyBatch(lambda: random_policy(env, collect))
    if controller is None:
        raise ConfigError("CollectConfig.policy 'controller' needs a controller artifact (--controller PATH)")
    from .agent import agent_spec
    from .envs import CarRacingEnv, DoomEnv

    spec, params, meta = agent_spec(controller)
    if meta.env != env.name:
        raise ConfigError(f"{controller}: a controller for {meta.env}, but collecting {env.name}")
    agent = spec.build_batch()
    agent.controller.set_params(params)
    bounds = CarRacingEnv if env.name == "carracing" else DoomEnv
    return NoisyActor(agent, collect.noise, bounds.action_low, bounds.action_high)
