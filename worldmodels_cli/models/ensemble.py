"""An ensemble of MDN-RNNs (`wm train-mdn --ensemble K`; docs/pessimism.md): K Ms, each trained with its own seed
on its own bootstrap resample of the training episodes, and how far apart they are.

Disagreement, MOReL's (beyond.md §1): the largest L2 distance between any two members' predicted means of
z_{t+1}, each member's the mean of its mixture, Σ_k π_k·μ_k per dimension, with π = softmax(logπ) (τ = 1).
It measures what the members were not taught alike (the data's gaps), not the noise each of them predicts (MOPO's
std also grows where the data are merely noisy), and it is taken at τ = 1 so that a threshold calibrated on real
sequences holds at any dream temperature.

Member 0 is the primary: its weights are the artifact's `weights`, so every stage that loads one M (`load_mdn`:
the real-game agent, `wm evaluate`, exports) gets it, and a controller reads its memory in the dream too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..runtime.errors import ArtifactError
from .mdnrnn import MDNRNN


@dataclass
class Ensemble:
    """K MDN-RNNs of one architecture and their calibration (`calibration["threshold"]`: over it a step is
    unknown)."""

    members: list[MDNRNN]
    calibration: dict = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return float(self.calibration["threshold"])

    @property
    def cfg(self):
        """The members' config (M's sizes and heads), as `MDNRNN.cfg`."""
        return self.members[0].cfg

    def parameters(self):
        """The primary's parameters (their device and dtype are every member's)."""
        return self.members[0].parameters()

    def __len__(self) -> int:
        return len(self.members)


def mixture_mean(logpi: Tensor, mu: Tensor) -> Tensor:
    """The mean of each dimension's mixture: Σ_k softmax(logπ)_k·μ_k; logpi, mu (..., Z, K) -> (..., Z)."""
    return (torch.softmax(logpi, dim=-1) * mu).sum(-1)


def disagreement(means: Sequence[Tensor]) -> Tensor:
    """max over member pairs k < l of ||mean_k − mean_l||₂: K tensors (..., Z) -> (...). Pairs in a fixed order, so
    the batched dream and the per-member loop compute the same sums."""
    out = None
    for k in range(len(means)):
        for j in range(k + 1, len(means)):
            d = (means[k] - means[j]).square().sum(-1).sqrt()
            out = d if out is None else torch.maximum(out, d)
    return out


def load_ensemble(path: str | os.PathLike, device: str | torch.device = "cpu") -> Ensemble:
    """Every member of an mdn ensemble artifact, in eval mode on `device`; ArtifactError for one M."""
    from ..store import artifacts as A
    from ..store import checkpoint
    from .mdnrnn import load_mdn

    primary, _ = load_mdn(path, device)
    with A.open_artifact(path, "mdn") as fh:
        got = A.read_ensemble(fh)
    if got is None or not isinstance(primary, MDNRNN):
        raise ArtifactError(f"{path}: holds one M, not an ensemble of MDN-RNNs (wm train-mdn --ensemble K)")
    others, calibration = got
    members = [primary]
    for k, weights in enumerate(others, start=1):
        if any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in weights.values()):
            raise ArtifactError(f"{path}: ensemble member {k}'s weights hold NaN or inf (damaged)")
        m = MDNRNN(primary.cfg)
        checkpoint.load_weights(m, weights, path)
        members.append(m.to(device).eval())
    return Ensemble(members, calibration)


def is_ensemble(path: str | os.PathLike) -> bool:
    """Whether an mdn artifact holds an ensemble of Ms."""
    from ..store import artifacts as A

    with A.open_artifact(path, "mdn") as fh:
        return A.ENSEMBLE in fh
