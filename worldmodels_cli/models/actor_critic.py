"""C as a latent actor-critic trained by backpropagation through M's imagined rollouts (Dreamer; ref beyond.md §2),
on either dynamics (`models.dynamics`). `stages/train_controller.py` runs the loop; this module holds the pieces.

Shapes: L lanes (dream episodes imagined from), H horizon, F features, A action, Z latent.

- **Actor**: C itself (`Controller`: the same layers and flat layout, so `wm evaluate` runs it like any C) with
  its last tanh moved out: the policy is a = tanh(m(s) + σ·ε), m(s) C's last pre-activation, σ a learned std per
  action in [min_std, max_std] (V3: σ = min + (max − min)·sigmoid(ρ)). Its mode tanh(m(s)) is exactly C's output,
  which is what the artifact stores and what is evaluated. Continuous actions, so the actor's gradient is the
  dynamics' (backpropagation through M, as V1, and V2/V3 for continuous actions).
- **Critic**: an MLP (V3: SiLU, layer norm) from all of M's state [z, c, h] to the value; a target critic, moved
  toward it by `target_fraction` every `target_every` steps (V3 0.02 every step; V2 a copy every 100).
- **Imagination** (`Imagination`): from L lanes' states, H steps of M's dream with the policy's actions, M's noise
  drawn at the dream temperature τ (the same dream CMA-ES evolves in). Reward: +1 a step without a reward head;
  the regression head's value; the sign head's expected sign 2σ(logit) − 1 (the dream's ±1, made differentiable).
  Continuation c_t = 1 − σ(done logit) after step t (V3 `imag_cont: mean`); 1 without a done head.
- **λ-returns** (`lambda_returns`): R_t = r_t + γ·c_t·((1 − λ)·v(s_{t+1}) + λ·R_{t+1}), R_H = v(s_H), with the
  target critic's values (V2). Weights w_t = Π_{k<t} γ·c_k (V2/V3), no gradient.
- **Losses**: actor −Σ w_t·(R_t / S + η·H_t) with S = max(1, the EMA of the returns' 5th–95th percentile range)
  (V3 return normalisation) and H_t the policy's entropy, estimated from its sample (tanh-Gaussian: −log π(a));
  critic Σ w_t·½((v(s_t) − sg R_t)² + slow_reg·(v(s_t) − v_target(s_t))²) (V2's regression; V3's regulariser,
  not its two-hot targets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .controller import FEATURE_PARTS, Controller
from .mdnrnn import MDNRNN, sample_next
from .rssm import RSSM, sample_z

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# ------------------------------------------------------------------------------------------------- actor
class Actor(nn.Module):
    """The policy around C (module doc): `flat` is C's parameter vector, `rho` the std's raw value (A,)."""

    def __init__(self, controller: Controller, min_std: float, max_std: float, generator: torch.Generator) -> None:
        super().__init__()
        self.controller = controller
        self.min_std, self.max_std = min_std, max_std
        flat = torch.zeros(controller.param_count)
        layers = controller.unflatten(flat)  # views into `flat`
        for w, _ in layers[:-1]:  # a hidden layer starts random (zeros would never break symmetry), fan-in scaled;
            w.copy_(torch.randn(w.shape, generator=generator) / math.sqrt(w.shape[0]))  # the output at zero: C = 0
        self.flat = nn.Parameter(flat)
        self.rho = nn.Parameter(torch.zeros(controller.action_dim))

    @property
    def std(self) -> Tensor:
        return self.min_std + (self.max_std - self.min_std) * torch.sigmoid(self.rho)

    def pre_tanh(self, x: Tensor) -> Tensor:
        """C's layers on features x (B, F) without the last tanh -> m (B, A)."""
        layers = self.controller.unflatten(self.flat)
        for i, (w, b) in enumerate(layers):
            x = x @ w if b is None else x @ w + b
            if i < len(layers) - 1:
                x = torch.tanh(x)
        return x

    def sample(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """A reparameterised action and its entropy estimate: x (B, F), eps (B, A) ~ N(0, 1) -> (raw tanh action
        (B, A), −log π(a) (B,)). The raw action goes through `controller.to_action` as C's does."""
        m, std = self.pre_tanh(x), self.std
        u = m + std * eps
        # log π(a) = log N(u; m, σ) − Σ log(1 − tanh²u), with log(1 − tanh²u) = 2(log 2 − u − softplus(−2u))
        log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
        neg_logp = (0.5 * eps**2 + torch.log(std) + LOG_SQRT_2PI + log_det).sum(-1)
        return torch.tanh(u), neg_logp


# ------------------------------------------------------------------------------------------------ critic
class Critic(nn.Module):
    """v(s) from M's full state [z, c, h] (F,): `layers` × SiLU(LN(W·)) then a linear output (V3)."""

    def __init__(self, in_dim: int, units: int, layers: int) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(in_dim if i == 0 else units, units, bias=False), nn.LayerNorm(units), nn.SiLU()]
        self.net = nn.Sequential(*mods, nn.Linear(units, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[..., 0]


# ------------------------------------------------------------------------------------------------ returns
def lambda_returns(rewards: Tensor, continues: Tensor, values: Tensor, gamma: float, lam: float) -> Tensor:
    """R_t = r_t + γ·c_t·((1 − λ)·v_{t+1} + λ·R_{t+1}), R_H = v_H: rewards, continues (H, L), values (H+1, L)
    -> (H, L)."""
    horizon = rewards.shape[0]
    out = []
    ret = values[horizon]
    for t in reversed(range(horizon)):
        ret = rewards[t] + gamma * continues[t] * ((1.0 - lam) * values[t + 1] + lam * ret)
        out.append(ret)
    return torch.stack(out[::-1])


def weights(continues: Tensor, gamma: float) -> Tensor:
    """w_t = Π_{k<t} γ·c_k (H, L): how much of state t's episode is left, discounted (w_0 = 1)."""
    ones = torch.ones_like(continues[:1])
    return torch.cumprod(torch.cat([ones, gamma * continues[:-1]]), 0)


class ReturnNorm:
    """V3's return scale: S = max(1, high − low), low and high EMAs (decay d) of the 5th and 95th percentiles of
    the λ-returns; the first update sets them."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.low = self.high = None

    def update(self, returns: Tensor) -> float:
        flat = returns.detach().flatten().double()
        lo, hi = float(torch.quantile(flat, 0.05)), float(torch.quantile(flat, 0.95))
        if self.low is None:
            self.low, self.high = lo, hi
        else:
            self.low = self.decay * self.low + (1 - self.decay) * lo
            self.high = self.decay * self.high + (1 - self.decay) * hi
        return self.scale

    @property
    def scale(self) -> float:
        return 1.0 if self.low is None else max(1.0, self.high - self.low)

    def state_dict(self) -> dict:
        return {} if self.low is None else {"low": self.low, "high": self.high}

    def load_state_dict(self, state: dict) -> None:
        self.low, self.high = (state["low"], state["high"]) if state else (None, None)


# ------------------------------------------------------------------------------------------- imagination
@dataclass
class Lanes:
    """L dream episodes that run on from update to update: V's z, M's memory (h, c: an MDN-RNN's LSTM output
    and cell, an RSSM's deter and stoch), the MDN-RNN's pending restart flag, and the steps each has run."""

    z: Tensor  # (L, Z)
    h: Tensor  # (L, H) or (L, D)
    c: Tensor  # (L, H) or (L, S·K)
    restart: Tensor  # (L,) 1 until an MDN-RNN lane's first step
    steps: Tensor  # (L,) int64

    def as_dict(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in ("z", "h", "c", "restart", "steps")}


@dataclass
class Noise:
    """One update's draws (generator-seeded by the stage: an update's noise is a function of its number)."""

    action: Tensor  # (H, L, A) ~ N(0, 1)
    choice: Tensor  # (H, L, Z or S) uniforms: the mixture component (MDN-RNN) or the classes (RSSM)
    eps: Tensor  # (H, L, Z) ~ N(0, 1): z's Gaussian
    start: Tensor  # (L,) uniforms: the first frame a restarted lane starts from
    start_eps: Tensor  # (L, Z)
    start_choice: Tensor  # (L, S): an RSSM's first posterior (unused by an MDN-RNN)


def draw_noise(model: MDNRNN | RSSM, lanes: int, horizon: int, gen: torch.Generator, dtype, device) -> Noise:
    """The update's noise, drawn in a fixed order from `gen` (CPU, float64) then moved."""
    z, a = model.cfg.z_dim, model.cfg.action_dim
    choices = model.cfg.stoch if isinstance(model, RSSM) else z
    groups = model.cfg.stoch if isinstance(model, RSSM) else 0

    def draw(fn, *shape):
        return fn(shape, generator=gen, dtype=torch.float64).to(device, dtype)

    return Noise(action=draw(torch.randn, horizon, lanes, a), choice=draw(torch.rand, horizon, lanes, choices),
                 eps=draw(torch.randn, horizon, lanes, z), start=draw(torch.rand, lanes),
                 start_eps=draw(torch.randn, lanes, z), start_choice=draw(torch.rand, lanes, groups))


@dataclass
class Trajectory:
    """An imagined segment: features at each state 0..H (the actor's, the critic's), and per step rewards,
    continuations, the done logits (the dream's hard ends) and the policy's entropy estimates."""

    actor_x: Tensor  # (H, L, F_actor)
    critic_x: Tensor  # (H+1, L, F_critic)
    rewards: Tensor  # (H, L)
    continues: Tensor  # (H, L)
    done_logits: Tensor | None  # (H, L)
    entropy: Tensor  # (H, L)
    end: Lanes  # the lanes' states after H steps (with gradients: detach before keeping)


class Imagination:
    """M's dream for the actor-critic: differentiable steps of either dynamics (module doc)."""

    def __init__(self, model: MDNRNN | RSSM, controller: Controller, tau: float, mu0: Tensor, lv0: Tensor) -> None:
        self.m, self.controller, self.tau = model, controller, tau
        self.mu0, self.lv0 = mu0, lv0  # (E, Z) real first frames (ref §7)
        self.rssm = isinstance(model, RSSM)

    def start(self, lanes: Lanes | None, fresh: Tensor, noise: Noise) -> Lanes:
        """`lanes` with the rows `fresh` (L,) bool restarted from a random real first frame each (all rows when
        `lanes` is None): z0 = μ_i + exp(logσ²_i/2)·ε, then the MDN-RNN's zero state and restart flag, or the
        RSSM's first posterior."""
        e = self.mu0.shape[0]
        idx = (noise.start * e).long().clamp_max(e - 1)
        z0 = self.mu0[idx] + torch.exp(0.5 * self.lv0[idx]) * noise.start_eps  # (L, Z)
        n = z0.shape[0]
        if self.rssm:
            deter, stoch = self.m.initial_state(n)
            no_action = torch.zeros(n, self.m.cfg.action_dim, dtype=z0.dtype, device=z0.device)
            h, c, _, _ = self.m.obs_step(deter, stoch, no_action, z0, torch.ones(n, dtype=z0.dtype, device=z0.device),
                                         noise.start_choice)
        else:
            h, c = self.m.initial_state(n)
        new = Lanes(z=z0, h=h, c=c, restart=torch.ones(n, dtype=z0.dtype, device=z0.device),
                    steps=torch.zeros(n, dtype=torch.int64, device=z0.device))
        if lanes is None:
            return new
        keep = ~fresh
        return Lanes(**{k: torch.where(keep.reshape(-1, *([1] * (v.dim() - 1))), v, getattr(new, k))
                        for k, v in lanes.as_dict().items()})

    def features(self, lanes: Lanes, parts: str) -> Tensor:
        """[z], [z, h] or [z, c, h] of the lanes (C's layout)."""
        named = {"z": lanes.z, "h": lanes.h, "c": lanes.c}
        return torch.cat([named[p] for p in FEATURE_PARTS[parts]], -1)

    def rollout(self, actor: Actor, lanes: Lanes, noise: Noise, horizon: int) -> Trajectory:
        """H steps of the dream from `lanes` with the actor's sampled actions (gradients through M and C)."""
        cfg = self.m.cfg
        actor_x, critic_x, rewards, continues, dones, entropy = [], [], [], [], [], []
        state = lanes
        for t in range(horizon):
            x = self.features(state, self.controller.cfg.features)
            actor_x.append(x)
            critic_x.append(self.features(state, "zch"))
            raw, neg_logp = actor.sample(x, noise.action[t])
            action = self.controller.to_action(raw)
            if self.rssm:
                h, c = self.m.img_step(state.h, state.c, action, noise.choice[t], self.tau, straight_through=True)
                out = self.m.heads(h, c)
                z = sample_z(out, self.tau, noise.eps[t])
            else:
                restart = state.restart if cfg.restart_input else None
                out, (h, c) = self.m.step(state.z, action, restart, (state.h, state.c))
                z = sample_next(out, self.tau, u=noise.choice[t], eps=noise.eps[t])
            rewards.append(_reward(cfg.reward_head, out.reward, z))
            done = out.done_logit
            continues.append(torch.ones_like(rewards[-1]) if done is None else torch.sigmoid(-done))
            dones.append(done)
            entropy.append(neg_logp)
            state = Lanes(z=z, h=h, c=c, restart=torch.zeros_like(state.restart), steps=state.steps + 1)
        critic_x.append(self.features(state, "zch"))
        return Trajectory(actor_x=torch.stack(actor_x), critic_x=torch.stack(critic_x), rewards=torch.stack(rewards),
                          continues=torch.stack(continues),
                          done_logits=None if cfg.done_head is False else torch.stack(dones),
                          entropy=torch.stack(entropy), end=state)


def _reward(kind: str, value: Tensor | None, like: Tensor) -> Tensor:
    """The dream's reward (`program.reward_of`), the sign head's as its expected sign (module doc)."""
    if kind == "none" or value is None:
        return torch.ones(like.shape[0], dtype=like.dtype, device=like.device)
    if kind == "regression":
        return value
    return 2.0 * torch.sigmoid(value) - 1.0
