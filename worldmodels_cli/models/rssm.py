"""M as an RSSM (PlaNet, DreamerV2/V3; ref beyond.md §2): a deterministic recurrent path and a stochastic state of
categorical variables, over V's latents. V's z is the RSSM's observation: no image decoder, the "decoder" is a
head that predicts z.

Shapes: B batch, T time, Z V's latent, A action, D deter, S stochastic variables, K classes (S·K the flat stoch),
U units.

The state is (deter (B, D), stoch (B, S·K)), stoch a one-hot sample per variable, flattened.

- Transition (prior, `img_step`): x = SiLU(LN(W_in [stoch, a])); deter' = GRU(x, deter);
  prior logits = W_p SiLU(LN(W_d deter')). The GRU is V2/V3's: [r, c, u] = LN(W [x, deter]), r = σ(r),
  c = tanh(r·c), u = σ(u − 1), deter' = u·c + (1 − u)·deter.
- Posterior (`obs_step`): logits = W_q SiLU(LN(W_qd deter' + W_qz z)) on the transition's deter' and the observed z.
- Every categorical mixes in `unimix` of the uniform (V3): p = (1 − α)·softmax(logits/τ) + α/K, at temperature τ
  (τ = 1 in training; τ = 0: the most likely class). A class is drawn by inverse CDF from one uniform u per
  variable, so callers pass their own noise (the dream's counter-based streams); training passes gradients
  straight through the sample (one-hot + p − sg(p), V2/V3).
- Heads on the features [deter, stoch], each `head_layers` × SiLU(LN(W·)) then a linear layer: z (μ, logσ of a
  diagonal Gaussian over V's z), the done logit, the reward.

Alignment with the data (a_t follows frame t; death_t: the step after frame t ended the episode by a death):
s_0 = post(transition from the zero state and zero action, z_0), at every episode start (`first`);
s_t = post(transition(s_{t−1}, a_{t−1}), z_t). The z head on s_t reconstructs z_t (trained on posterior states, as
Dreamer's decoder). The done and reward heads on the prior state ŝ_{t+1} = (deter from (s_t, a_t), stoch drawn from
the prior) predict death_t and r_t: no frame after an episode's last step is stored, so no posterior state follows
a death, and the dream applies these heads to prior states.

In the dream (`dream/fused_rssm.py`) a rollout starts at s_0 from a real first frame's z_0; each step C acts on
[z_t, stoch_t, deter_t], the prior step with a_t gives s_{t+1} (stoch drawn at τ), the heads give done and reward,
and z_{t+1} = μ + exp(logσ)·√τ·ε. A real-env agent filters with the posterior (Dreamer's agent, `game/agent.py`).

Parameters (`parameter_count`): in (SK+A)U + 2U; GRU (U+D)·3D + 6D; prior DU + 2U + U·SK + SK; posterior
(D+Z)U + 2U + U·SK + SK; each head (D+SK)U + 2U + (L−1)(U² + 2U) + U·O + O with O = 2Z (z), 1 (done, reward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RSSMConfig

DYNAMICS = "rssm"  # model_config["dynamics"] of an RSSM's mdn artifact (an MDN-RNN's has none)
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class _Dense(nn.Module):
    """SiLU(LN(W x)): V3's hidden layer (the norm's shift is the bias)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out, bias=False)
        self.norm = nn.LayerNorm(n_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(self.norm(self.linear(x)))


class _Head(nn.Module):
    """`layers` dense layers then a linear output."""

    def __init__(self, n_in: int, units: int, layers: int, n_out: int) -> None:
        super().__init__()
        self.hidden = nn.Sequential(*[_Dense(n_in if i == 0 else units, units) for i in range(layers)])
        self.out = nn.Linear(units, n_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.hidden(x))


@dataclass
class RSSMHeads:
    """What the heads read from features (..., D + S·K)."""

    mu: Tensor | None  # (..., Z); None where the z head was not asked for
    logsigma: Tensor | None  # (..., Z)
    done_logit: Tensor | None = None  # (...) when cfg.done_head
    reward: Tensor | None = None  # (...) when cfg.reward_head != 'none'


@dataclass
class RSSMSequence:
    """`RSSM.observe` over T frames. Posterior side per frame t: deter, stoch (B, T, ·), post/prior logits
    (B, T, S, K), z head (B, T, Z). Transition side per step t -> t+1 (t < T−1): the prior states ŝ_{t+1}
    (step_deter, step_stoch (B, T−1, ·)) and the done and reward heads on them (z's: `step_z`). Final: the state
    after frame T−1 and its action, to carry into the next chunk."""

    deter: Tensor
    stoch: Tensor
    post_logits: Tensor
    prior_logits: Tensor
    heads: RSSMHeads
    step_deter: Tensor
    step_stoch: Tensor
    step_heads: RSSMHeads
    final: tuple[Tensor, Tensor, Tensor]  # deter (B, D), stoch (B, S·K), action (B, A)


class RSSM(nn.Module):
    """The world model M as an RSSM: (z_t, a_t) -> state -> z_{t+1}, done, reward (module doc)."""

    def __init__(self, cfg: RSSMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, s, k, u, z, a = cfg.deter, cfg.stoch, cfg.classes, cfg.units, cfg.z_dim, cfg.action_dim
        self.stoch_dim = s * k
        feat = d + s * k
        self.img_in = _Dense(s * k + a, u)
        self.gru = nn.Linear(u + d, 3 * d, bias=False)
        self.gru_norm = nn.LayerNorm(3 * d)
        self.prior = nn.Sequential(_Dense(d, u), nn.Linear(u, s * k))
        self.post_deter = nn.Linear(d, u, bias=False)  # the posterior's first layer, split so that a sequence
        self.post_obs = nn.Linear(z, u, bias=False)  # projects all its z at once (`observe`)
        self.post_norm = nn.LayerNorm(u)
        self.post_out = nn.Linear(u, s * k)
        self.z_head = _Head(feat, u, cfg.head_layers, 2 * z)
        self.done_head = _Head(feat, u, cfg.head_layers, 1) if cfg.done_head else None
        self.reward_head = _Head(feat, u, cfg.head_layers, 1) if cfg.reward_head != "none" else None

    # ------------------------------------------------------------------------------------------ pieces
    @property
    def dtype(self) -> torch.dtype:
        return self.post_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.post_out.weight.device

    def initial_state(self, batch: int, device=None) -> tuple[Tensor, Tensor]:
        """The zero state (deter (B, D), stoch (B, S·K)) an episode's first transition starts from."""
        device = self.device if device is None else device
        return (torch.zeros(batch, self.cfg.deter, device=device, dtype=self.dtype),
                torch.zeros(batch, self.stoch_dim, device=device, dtype=self.dtype))

    def transition(self, deter: Tensor, stoch: Tensor, action: Tensor) -> Tensor:
        """The deterministic path: deter (B, D), stoch (B, S·K), action (B, A) -> deter' (B, D) (V2/V3's GRU)."""
        x = self.img_in(torch.cat([stoch, action], -1))  # (B, U)
        parts = self.gru_norm(self.gru(torch.cat([x, deter], -1)))  # (B, 3D)
        reset, cand, update = parts.chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)  # V2/V3: an update bias of -1 keeps the state at first
        return update * cand + (1.0 - update) * deter

    def first_deter(self, batch: int) -> Tensor:
        """deter of every episode's first frame: the transition from the zero state with a zero action (B, D)."""
        deter, stoch = self.initial_state(1)
        return self.transition(deter, stoch, torch.zeros(1, self.cfg.action_dim, dtype=self.dtype,
                                                         device=self.device)).expand(batch, -1)

    def prior_logits(self, deter: Tensor) -> Tensor:
        """(..., D) -> (..., S, K)."""
        return self.prior(deter).unflatten(-1, (self.cfg.stoch, self.cfg.classes))

    def post_logits(self, deter: Tensor, obs_proj: Tensor) -> Tensor:
        """deter (..., D) and `post_obs(z)` (..., U) -> (..., S, K)."""
        x = F.silu(self.post_norm(self.post_deter(deter) + obs_proj))
        return self.post_out(x).unflatten(-1, (self.cfg.stoch, self.cfg.classes))

    def heads(self, deter: Tensor, stoch: Tensor, *, z: bool = True) -> RSSMHeads:
        """The heads on features [deter, stoch] (..., D + S·K); without the z head when not `z`."""
        feat = torch.cat([deter, stoch], -1)
        mu, logsigma = self.z_head(feat).chunk(2, -1) if z else (None, None)
        return RSSMHeads(mu=mu, logsigma=logsigma,
                         done_logit=None if self.done_head is None else self.done_head(feat)[..., 0],
                         reward=None if self.reward_head is None else self.reward_head(feat)[..., 0])

    # ------------------------------------------------------------------------------------------ one step
    def obs_step(self, deter: Tensor, stoch: Tensor, prev_action: Tensor, z: Tensor, first: Tensor, u: Tensor,
                 *, straight_through: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Filter one frame: the transition from (deter, stoch) with the previous action, or from the zero state
        where `first` (B,) is 1; then the posterior on z (B, Z), sampled with uniforms u (B, S).
        -> deter' (B, D), stoch' (B, S·K), posterior logits, prior logits (B, S, K)."""
        d = self.transition(deter, stoch, prev_action)
        d = torch.where(first.reshape(-1, 1) > 0, self.first_deter(d.shape[0]), d)
        post = self.post_logits(d, self.post_obs(z))
        sample = sample_stoch(post, u, 1.0, self.cfg.unimix, straight_through=straight_through)
        return d, sample.flatten(-2), post, self.prior_logits(d)

    def img_step(self, deter: Tensor, stoch: Tensor, action: Tensor, u: Tensor, tau: float = 1.0, *,
                 straight_through: bool = False) -> tuple[Tensor, Tensor]:
        """Imagine one step: the transition with `action` (B, A), then stoch drawn from the prior at τ with
        uniforms u (B, S) -> deter' (B, D), stoch' (B, S·K)."""
        d = self.transition(deter, stoch, action)
        sample = sample_stoch(self.prior_logits(d), u, tau, self.cfg.unimix, straight_through=straight_through)
        return d, sample.flatten(-2)

    # ------------------------------------------------------------------------------------------ sequence
    def observe(self, z: Tensor, actions: Tensor, first: Tensor, u: Tensor, prior_u: Tensor,
                state: tuple[Tensor, Tensor, Tensor] | None = None, *, straight_through: bool = True
                ) -> RSSMSequence:
        """Filter a sequence: z (B, T, Z), actions (B, T, A) (a_t follows frame t), first (B, T) (1 where frame t
        starts an episode), u (B, T, S) the posterior's uniforms, prior_u (B, T−1, S) those of the prior samples
        the transition heads read; `state` = (deter, stoch, action) carried from a previous chunk (None: zeros).

        The same function as `obs_step` frame after frame (tests/test_rssm.py): only the recurrence loops; the
        posterior's z projection, the prior and every head run once on the whole sequence."""
        b, t = z.shape[:2]
        if state is None:
            deter, stoch = self.initial_state(b)
            prev = torch.zeros(b, self.cfg.action_dim, dtype=z.dtype, device=z.device)
        else:
            deter, stoch, prev = state
        obs_proj = self.post_obs(z)  # (B, T, U)
        d0 = self.first_deter(b)
        raw, deters, stochs, posts = [], [], [], []
        for i in range(t):
            d = self.transition(deter, stoch, prev)
            raw.append(d)
            d = torch.where(first[:, i].reshape(-1, 1) > 0, d0, d)
            post = self.post_logits(d, obs_proj[:, i])
            stoch = sample_stoch(post, u[:, i], 1.0, self.cfg.unimix, straight_through=straight_through).flatten(-2)
            deter, prev = d, actions[:, i]
            deters.append(d)
            stochs.append(stoch)
            posts.append(post)
        deter_seq, stoch_seq = torch.stack(deters, 1), torch.stack(stochs, 1)  # (B, T, D), (B, T, S·K)
        step_deter = torch.stack(raw[1:], 1) if t > 1 else deter_seq[:, :0]  # (B, T−1, D): before any reset
        step_stoch = sample_stoch(self.prior_logits(step_deter), prior_u, 1.0, self.cfg.unimix,
                                  straight_through=straight_through).flatten(-2)
        return RSSMSequence(
            deter=deter_seq, stoch=stoch_seq, post_logits=torch.stack(posts, 1),
            prior_logits=self.prior_logits(deter_seq), heads=self.heads(deter_seq, stoch_seq),
            step_deter=step_deter, step_stoch=step_stoch, step_heads=self.heads(step_deter, step_stoch, z=False),
            final=(deter, stoch, prev),
        )


# ---------------------------------------------------------------------------------------------- sampling
def mixed_probs(logits: Tensor, tau: float, unimix: float) -> Tensor:
    """(1 − α)·softmax(logits/τ) + α/K over the last dim (V3's unimix; τ = 1 in training)."""
    probs = torch.softmax(logits / tau if tau != 1.0 else logits, -1)
    return probs if unimix <= 0 else (1.0 - unimix) * probs + unimix / logits.shape[-1]


def sample_stoch(logits: Tensor, u: Tensor, tau: float, unimix: float, *, straight_through: bool = False) -> Tensor:
    """One-hot (..., S, K) of the class k drawn per variable by inverse CDF at u (..., S): k = #{j : cdf_j <= u}
    (the rule of `mdnrnn.sample_next`); τ <= 0: the most likely class. With `straight_through` the gradient
    flows through the probabilities (one-hot + p − sg(p), V2/V3)."""
    k = logits.shape[-1]
    if tau <= 0:
        return F.one_hot(logits.argmax(-1), k).to(logits.dtype)
    probs = mixed_probs(logits, tau, unimix)
    idx = (probs.cumsum(-1) <= u.unsqueeze(-1)).sum(-1).clamp_max(k - 1)  # (..., S)
    onehot = F.one_hot(idx, k).to(logits.dtype)
    return onehot + (probs - probs.detach()) if straight_through else onehot  # exactly the one-hot's value


def sample_z(heads: RSSMHeads, tau: float, eps: Tensor) -> Tensor:
    """z' (..., Z) = μ + exp(logσ)·√τ·ε (the MDN-RNN's rule for one component); τ <= 0: μ."""
    if tau <= 0:
        return heads.mu
    return heads.mu + torch.exp(heads.logsigma) * math.sqrt(tau) * eps


# ------------------------------------------------------------------------------------------------ losses
def kl_categorical(p_logits: Tensor, q_logits: Tensor, unimix: float) -> Tensor:
    """KL[p || q] of the unimix'ed categoricals (..., S, K), summed over the S variables -> (...)."""
    logp = torch.log(mixed_probs(p_logits, 1.0, unimix))
    logq = torch.log(mixed_probs(q_logits, 1.0, unimix))
    return (logp.exp() * (logp - logq)).sum((-2, -1))


def kl_loss(post: Tensor, prior: Tensor, unimix: float, dyn: float, rep: float, free: float,
            mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """V3's KL terms (ref beyond §2), per position then averaged over the valid ones:

        dyn · max(free, KL[sg(post) || prior]) + rep · max(free, KL[post || sg(prior)])

    (V2's balancing α with scale β is dyn = αβ, rep = (1 − α)β.) -> (loss, the KL's mean value)."""
    kl_dyn = kl_categorical(post.detach(), prior, unimix)  # (B, T): trains the prior
    kl_rep = kl_categorical(post, prior.detach(), unimix)  # the same value; trains the posterior
    loss = dyn * kl_dyn.clamp_min(free) + rep * kl_rep.clamp_min(free)
    return masked_mean(loss, mask), masked_mean(kl_dyn.detach(), mask)


def gaussian_nll(y: Tensor, mu: Tensor, logsigma: Tensor) -> Tensor:
    """−log N(y; μ, σ) per dimension (..., Z): ½((y − μ)/σ)² + log σ + ½ log 2π."""
    return 0.5 * ((y - mu) * torch.exp(-logsigma)) ** 2 + logsigma + LOG_SQRT_2PI


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of x (B, T) over positions where mask (B, T) is 1 (all when None)."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def parameter_count(cfg: RSSMConfig) -> int:
    """The module doc's count, for tests and `wm info`."""
    d, sk, u, z, a, L = cfg.deter, cfg.stoch * cfg.classes, cfg.units, cfg.z_dim, cfg.action_dim, cfg.head_layers

    def head(o: int) -> int:
        return (d + sk) * u + 2 * u + (L - 1) * (u * u + 2 * u) + u * o + o

    n = (sk + a) * u + 2 * u + (u + d) * 3 * d + 6 * d + d * u + 2 * u + u * sk + sk + (d + z) * u + 2 * u + u * sk + sk
    n += head(2 * z)
    n += head(1) if cfg.done_head else 0
    n += head(1) if cfg.reward_head != "none" else 0
    return n


def model_config(cfg: RSSMConfig) -> dict:
    """What an RSSM's mdn artifact records: its config and the `dynamics` tag `models.dynamics.build` reads."""
    return {"dynamics": DYNAMICS, **cfg.to_dict()}
