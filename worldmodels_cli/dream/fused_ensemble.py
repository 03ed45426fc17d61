"""An ensemble of MDN-RNNs laid out for the batched dream (docs/pessimism.md): `FusedM`'s interface over K fused
members, plus the members' disagreement at every step."""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.controller import Controller
from ..models.ensemble import Ensemble, disagreement
from .fused import FusedM

# what the program reads of a fused M: the ensemble's are member 0's (its columns come first in S)
_SHARED = ("z_dim", "action_dim", "hidden", "mixtures", "tau", "layout", "restart", "done_head", "reward_head",
           "one_col", "r_col", "z_", "a_", "c_", "h_", "mix0", "out_dim")


class FusedEnsemble:
    """K fused members side by side in one buffer S (B, K·W + 1) = [S_0 | S_1 | … | S_{K-1} | follow]: S_k is member
    k's `FusedM` buffer, `follow` the member whose mixture, done and reward the row takes (in S, so compacting the
    rows carries it along).

    Every member steps on the same (z, a, restart), member 0's columns, copied to the others at each step: one
    trajectory, K predictions of where it goes next. C reads member 0's memory (z_, c_, h_ are member 0's), as the
    real-game agent runs member 0. After `step`, `disagreement` (B,) holds the members' disagreement about z_{t+1}
    (`models.ensemble`): the mean of each member's mixture at τ = 1 (the head's logits are stored divided by τ, so
    they are multiplied back)."""

    def __init__(self, ensemble: Ensemble, dtype: torch.dtype, device: torch.device | str, tau: float = 1.0) -> None:
        self.parts = [FusedM(m, dtype, device, tau) for m in ensemble.members]
        first = self.parts[0]
        for name in _SHARED:
            setattr(self, name, getattr(first, name))
        self.members, self.member_width = len(self.parts), first.width
        self.width = self.members * first.width + 1
        self.follow_col = self.width - 1
        self.inputs_ = slice(first.z_.start, first.one_col)  # [z, a, restart]: what every member steps on
        self.threshold = ensemble.threshold
        self.disagreement: Tensor | None = None

    def start(self, keys: Tensor, initial_mu: Tensor, initial_logvar: Tensor) -> Tensor:
        """S for rows starting from a random real first frame each, every member from the same start; all rows
        follow member 0 until `set_follow`."""
        s0 = self.parts[0].start(keys, initial_mu, initial_logvar)  # (B, W)
        return torch.cat([s0] * self.members + [s0.new_zeros(s0.shape[0], 1)], 1)

    def set_follow(self, S: Tensor, follow: Tensor) -> None:
        """The member (B,) each row follows."""
        S[:, self.follow_col] = follow.to(S.dtype)

    def buffers(self, batch: int) -> dict:
        return {"members": [p.buffers(batch) for p in self.parts]}

    def step(self, S: Tensor, buf: dict, u: Tensor | None = None) -> Tensor:
        """Advance every member of every row in place; -> the head Y (B, O) of the member each row follows."""
        w, inputs = self.member_width, S[:, self.inputs_]
        heads = []
        for k, part in enumerate(self.parts):
            sk = S[:, k * w : (k + 1) * w]
            if k:
                sk[:, self.inputs_] = inputs
            heads.append(part.step(sk, buf["members"][k]))
        self.disagreement = disagreement([self._mean(y) for y in heads])
        b, o = heads[0].shape
        follow = S[:, self.follow_col].long().view(1, b, 1).expand(1, b, o)
        return torch.stack(heads).gather(0, follow)[0]

    def _mean(self, Y: Tensor) -> Tensor:
        """Member's predicted mean of z_{t+1} (B, Z) from its head: Σ_k softmax(logits)_k·μ_k at τ = 1."""
        b, z, k, m0 = Y.shape[0], self.z_dim, self.mixtures, self.mix0
        logits = Y[:, m0 : m0 + k * z].view(b, k, z)
        if self.tau > 0:
            logits = logits * self.tau  # FusedM stores them divided by τ
        mu = Y[:, m0 + k * z : m0 + 2 * k * z].view(b, k, z)
        return (torch.softmax(logits, dim=1) * mu).sum(1)

    def sample(self, Y: Tensor, u: Tensor, eps: Tensor, out: Tensor, buf: dict) -> None:
        """z' (B, Z) into `out` (member 0's z: the next step copies it to the others) from the followed heads Y."""
        self.parts[0].sample(Y, u, eps, out, buf["members"][0])

    def row_layers(self, controller: Controller, params: Tensor) -> tuple[list, slice]:
        return self.parts[0].row_layers(controller, params)
