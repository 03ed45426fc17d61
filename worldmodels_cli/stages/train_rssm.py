"""`wm train-mdn --dynamics rssm`: M as an RSSM (models/rssm.py; ref beyond.md §2), trained by `train_mdn`'s loop,
batches, checkpoints and resume; this module holds what differs, the model it builds and its losses.

The same batches as the MDN-RNN's (`store/series_data.py`: z drawn afresh from the stored μ, logσ²; streams with the
state carried across chunks for Doom), so a comparison spends the same data budget. Per batch of T+1 frames:

    loss = Σ_z NLL(z_t | posterior s_t)                          (the z head reconstructs V's z, per frame)
         + kl_dyn·max(free, KL[sg(post) || prior]) + kl_rep·max(free, KL[post || sg(prior)])   (V3, per frame)
         + done_bce(done head on ŝ_{t+1}, death_t)              (the MDN-RNN's weighted BCE, ref §4.3)
         + reward_weight·reward_loss(reward head on ŝ_{t+1}, r_t)

with ŝ_{t+1} the prior state after (s_t, a_t) (module doc of models/rssm.py). Adam at a constant `rssm_lr`, the
gradients' global norm clipped to `rssm_clip` (V3's model optimiser). Unlike the MDN-RNN, the carried state
continues into the next chunk with the frame and action that follow (no transition is skipped at a chunk's end).

Metrics (`rssm/...`): `nll` is the one-step prediction NLL per dimension, of z_{t+1} under the z head on ŝ_{t+1}
(one prior sample; an upper bound of the marginal), the figure comparable to the MDN-RNN's `mdn/nll`; `rec_nll`
the reconstruction NLL per dimension; `kl` the KL per frame (nats, summed over the variables). Every random draw
of a step comes from a generator seeded by (seed, step), so a resumed run draws what an uninterrupted one did.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..config import (
    MDNConfig,
    MDNTrainConfig,
    Preset,
    RSSMConfig,
    RSSMTrainConfig,
    rssm_config,
    rssm_train_config,
)
from ..models.mdnrnn import done_bce, reward_loss
from ..models.rssm import RSSM, gaussian_nll, kl_loss, masked_mean, model_config
from ..runtime import device as devices
from ..runtime import seeding
from ..store import checkpoint
from ..store.series_data import Batch, SeriesData, validation_batches

STAGE = "mdn"  # the same seed stream for M's initial weights as the MDN-RNN's stage


def build(preset: Preset, mcfg: MDNConfig, rssm: RSSMConfig | None, rssm_train: RSSMTrainConfig | None, seed: int
          ) -> tuple[RSSM, dict, dict, RSSMTrainConfig]:
    """The RSSM for M's settings `mcfg` (sizes from the data, done and reward heads) -> (model, its model_config,
    the run's config: what a resume must find the same, the training settings; None: the preset scale's)."""
    rcfg = (rssm or rssm_config(preset.env.name, preset.scale)).replace(
        z_dim=mcfg.z_dim, action_dim=mcfg.action_dim, done_head=mcfg.done_head, reward_head=mcfg.reward_head)
    rtcfg = rssm_train or rssm_train_config(preset.scale)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.derive(seed, STAGE, 0))
        model = RSSM(rcfg)
    run_config = {"env": preset.env.name, "dynamics": "rssm", "rssm": rcfg.to_dict(), "rssm_train": rtcfg.to_dict(),
                  "mdn_train": preset.mdn_train.to_dict(), "scale": preset.scale}
    return model, model_config(rcfg), run_config, rtcfg


class Trainer:
    """`train_mdn._Trainer`'s interface for an RSSM (module doc)."""

    prefix = "rssm"

    def __init__(self, model: RSSM, batcher, cfg: MDNTrainConfig, rcfg: RSSMTrainConfig, dev: torch.device,
                 seed: int) -> None:
        self.model, self.batcher, self.cfg, self.rcfg, self.dev, self.seed = model, batcher, cfg, rcfg, dev, seed
        self.optimizer = torch.optim.Adam(model.parameters(), lr=rcfg.rssm_lr, eps=rcfg.rssm_eps)
        self.step = 0
        self.carried: tuple[torch.Tensor, ...] | None = None  # streams: (deter, stoch, action) across chunks
        self.last_losses: dict[str, float] = {}

    def _tensors(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(batch, k))).to(self.dev)
                for k in ("z", "actions", "rewards", "restart", "mask", "live", "death")}

    def _uniforms(self, b: int, t: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        s, dtype = self.model.cfg.stoch, self.model.dtype
        u = torch.rand((b, t, s), generator=gen, dtype=torch.float64).to(self.dev, dtype)
        prior_u = torch.rand((b, t - 1, s), generator=gen, dtype=torch.float64).to(self.dev, dtype)
        return u, prior_u

    def losses(self, batch: Batch, state, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple]:
        m, cfg, rc = self.model.cfg, self.cfg, self.rcfg
        x = self._tensors(batch)
        z, mask = x["z"], x["mask"]
        b, t1 = z.shape[:2]
        seq = self.model.observe(z, x["actions"], x["restart"], *self._uniforms(b, t1, gen), state)
        frames = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)  # (B, T+1): the real frames (padding excluded)
        rec = masked_mean(gaussian_nll(z, seq.heads.mu, seq.heads.logsigma).sum(-1), frames)  # summed over Z
        kl, kl_value = kl_loss(seq.post_logits, seq.prior_logits, m.unimix, rc.kl_dyn, rc.kl_rep, rc.kl_free, frames)
        with torch.no_grad():  # a figure, not a loss: Dreamer trains its decoder on posterior states only
            pred = _prediction_nll(self.model, seq, z, mask * (1.0 - x["restart"][:, 1:]))
        loss = rec + kl
        parts = {"rssm/nll": pred, "rssm/rec_nll": rec.detach() / m.z_dim, "rssm/kl": kl_value}
        if m.done_head:  # ref §4.3, §C.1: deaths only, never the step cap
            bce = done_bce(seq.step_heads.done_logit, x["death"][:, :-1], cfg.done_weight, mask)
            parts["rssm/done_bce"] = bce
            loss = loss + bce
        if m.reward_head != "none":
            rl = reward_loss(seq.step_heads.reward, x["rewards"][:, :-1], m.reward_head, mask * x["live"][:, :-1])
            parts["rssm/reward_loss"] = rl
            loss = loss + cfg.reward_weight * rl
        return loss, parts, seq.final

    def train_step(self) -> dict[str, float]:
        self.model.train()
        batch = self.batcher.next()
        state = None if batch.reset or self.carried is None else self.carried
        gen = torch.Generator().manual_seed(seeding.derive(self.seed, "rssm-noise", self.step))
        with devices.few_rows_one_thread(batch.z.shape[0], self.dev):
            loss, parts, final = self._step(batch, state, gen)
        return self._finish(loss, parts, final)

    def _step(self, batch: Batch, state, gen: torch.Generator):
        loss, parts, final = self.losses(batch, state, gen)
        if math.isfinite(float(loss.detach())):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.rcfg.rssm_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.rcfg.rssm_clip)  # V3: global norm
            self.optimizer.step()
        return loss, parts, final

    def _finish(self, loss: torch.Tensor, parts: dict, final: tuple) -> dict[str, float]:
        result = {"rssm/loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()},
                  "rssm/lr": self.rcfg.rssm_lr}
        if not math.isfinite(result["rssm/loss"]):
            return result  # no update was made: the loop stops with the last good checkpoint
        if self.cfg.batching == "streams":
            self.carried = tuple(s.detach() for s in final)  # truncated backpropagation through time
        self.last_losses = result
        return result

    @torch.no_grad()
    def validate(self, data: SeriesData, val_eps: np.ndarray, seed: int) -> float | None:
        """The one-step prediction NLL per dimension (`rssm/nll`) over held-out whole episodes, with fixed
        draws so the figure is comparable across checkpoints."""
        if len(val_eps) == 0:
            return None
        self.model.eval()
        gen = torch.Generator().manual_seed(seeding.derive(seed, "rssm-val-noise"))
        total, count = 0.0, 0.0
        for batch in validation_batches(data, val_eps, self.cfg.batch_size, seed):
            x = self._tensors(batch)
            b, t1 = x["z"].shape[:2]
            with devices.few_rows_one_thread(b, self.dev):
                seq = self.model.observe(x["z"], x["actions"], x["restart"], *self._uniforms(b, t1, gen),
                                         straight_through=False)
                nll = _prediction_nll(self.model, seq, x["z"], x["mask"])  # whole episodes: no restart inside
            n = float(x["mask"].sum())
            total += float(nll) * n
            count += n
        self.model.train()
        return total / count if count else None

    # ---- exact-resume state (stored as data, never pickled)
    def state_dict(self) -> dict[str, Any]:
        state = {"step": self.step, "optimizer": checkpoint.optimizer_state_to_tree(self.optimizer.state_dict()),
                 "batcher": self.batcher.state_dict(), "last_losses": self.last_losses}
        if self.carried is not None:
            state["carried"] = dict(zip(("deter", "stoch", "action"), self.carried, strict=True))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.optimizer.load_state_dict(checkpoint.optimizer_state_from_tree(state["optimizer"]))
        self.batcher.load_state_dict(state["batcher"])
        self.last_losses = dict(state.get("last_losses") or {})
        carried = state.get("carried")
        self.carried = None if not carried else tuple(
            torch.from_numpy(carried[k]).to(self.dev) for k in ("deter", "stoch", "action"))


def _prediction_nll(model: RSSM, seq, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per dimension, the NLL of z_{t+1} (B, T, Z) under the z head on the prior state ŝ_{t+1}, over the positions
    `mask` (B, T) where z_{t+1} follows z_t in its episode: M's one-step prediction, as the MDN-RNN's `mdn/nll`."""
    heads = model.heads(seq.step_deter, seq.step_stoch)
    return masked_mean(gaussian_nll(z[:, 1:], heads.mu, heads.logsigma).mean(-1), mask)
