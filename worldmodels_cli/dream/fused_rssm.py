"""An RSSM laid out for the batched dream: `FusedM`'s interface (start, step, sample, row_layers), so
`program.dream_rollouts` runs either dynamics with one loop. The same function as the plain steps of
`models/rssm.py` (`RSSM.obs_step`, `img_step`, `heads`, `sample_z`), on every row at once."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from ..models.controller import Controller
from ..models.rssm import RSSM, RSSMHeads, sample_z
from .fused import slice_layers
from .streams import NoiseLayout, start_draws


class FusedRSSM:
    """Each row's state in one buffer S (B, Z + S·K + D + A) = [z | stoch | deter | a], so C's [z, c, h] =
    [z, stoch, deter] (`models.dynamics`) is one contiguous slice, and gathering unfinished rows is one index.

    A step: the prior transition from (deter, stoch) with a, stoch drawn at τ from the choice uniforms, then the
    heads; `sample` draws z' = μ + exp(logσ)·√τ·ε. Y's columns: [done?, reward?, μ (Z), logσ (Z)] (FusedM's
    order of done and reward)."""

    restart = False  # an RSSM starts from the posterior of the first frame, no restart flag
    r_col = -1
    # a step is a dozen small matmuls (FusedM's: two big ones), so the CPU program stays on one thread longer
    small_batch = 256

    def __init__(self, rssm: RSSM, dtype: torch.dtype, device: torch.device | str, tau: float = 1.0) -> None:
        cfg = rssm.cfg
        if rssm.dtype != dtype or rssm.device != torch.device(device):
            rssm = copy.deepcopy(rssm).to(device=device, dtype=dtype)
        self.m = rssm.eval()
        z, a, d, sk = cfg.z_dim, cfg.action_dim, cfg.deter, rssm.stoch_dim
        self.z_dim, self.action_dim, self.tau = z, a, tau
        self.layout = NoiseLayout(z, a, groups=cfg.stoch)
        self.z_, self.c_, self.h_, self.a_ = slice(0, z), slice(z, z + sk), slice(z + sk, z + sk + d), \
            slice(z + sk + d, z + sk + d + a)
        self.width = z + sk + d + a
        self.done_head, self.reward_head = cfg.done_head, cfg.reward_head
        self.mix0 = (1 if cfg.done_head else 0) + (1 if cfg.reward_head != "none" else 0)
        self.dtype, self.device = dtype, torch.device(device)

    def start(self, keys: Tensor, initial_mu: Tensor, initial_logvar: Tensor) -> Tensor:
        """S for rows starting from a random real first frame each: z0 as `streams.start_z`, then the posterior
        on z0 from the zero state (an episode's first frame), drawn with the start block's uniforms."""
        z0, _, u0 = start_draws(keys, initial_mu, initial_logvar, self.layout)
        b = z0.shape[0]
        deter, stoch = self.m.initial_state(b)
        first = torch.ones(b, dtype=self.dtype, device=self.device)
        no_action = torch.zeros(b, self.action_dim, dtype=self.dtype, device=self.device)
        deter, stoch, _, _ = self.m.obs_step(deter, stoch, no_action, z0, first, u0)
        S = torch.zeros(b, self.width, dtype=self.dtype, device=self.device)
        S[:, self.z_], S[:, self.c_], S[:, self.h_] = z0, stoch, deter
        return S

    def buffers(self, batch: int) -> dict[str, Tensor]:
        return {}

    def step(self, S: Tensor, buf: dict[str, Tensor], u: Tensor | None = None) -> Tensor:
        """Advance every row of S in place with its action S[:, a_] and choice uniforms u (B, S); -> Y (B, O)."""
        deter, stoch = self.m.img_step(S[:, self.h_], S[:, self.c_], S[:, self.a_], u, self.tau)
        heads = self.m.heads(deter, stoch)
        S[:, self.h_], S[:, self.c_] = deter, stoch
        cols = [x.unsqueeze(1) for x in (heads.done_logit, heads.reward) if x is not None]
        return torch.cat([*cols, heads.mu, heads.logsigma], 1)

    def sample(self, Y: Tensor, u: Tensor, eps: Tensor, out: Tensor, buf: dict[str, Tensor]) -> None:
        """z' (B, Z) into `out` from the z head in Y (`rssm.sample_z`); u was the step's."""
        z, m0 = self.z_dim, self.mix0
        out.copy_(sample_z(RSSMHeads(mu=Y[:, m0 : m0 + z], logsigma=Y[:, m0 + z : m0 + 2 * z]), self.tau, eps))

    def row_layers(self, controller: Controller, params: Tensor) -> tuple[list, slice]:
        return slice_layers(controller, params, {"z": self.z_, "c": self.c_, "h": self.h_})
