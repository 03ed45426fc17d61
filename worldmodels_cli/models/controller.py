"""C: the controller (ref §5). A single layer (optionally with one tanh hidden layer) from the features
[z], [z, h] or [z, c, h] to the action, squashed by tanh.

Shapes: B batch, P population members, R rollouts per member, F features, A action, Z latent, H hidden.

- CarRacing (ref §5.1): [z, h] -> 3, tanh, with bias: 288·3 + 3 = 867 parameters at Z=32, H=256. The action M and
  the env receive is steer = a0, gas = (a1 + 1)/2, brake = clip(a2, 0, 1).
- Doom (ref §5.2): [z, c, h] -> 1, tanh, no bias: 1088 parameters at Z=64, H=512. M receives the continuous tanh
  output; the env (not C) thresholds it at ±1/3.
- V-only variants of the paper's table: z only, 32·3 + 3 = 99; z plus a 40-unit tanh hidden layer,
  (32 + 1)·40 + 40·3 + 3 = 1443 (ref §5.1).

Flat parameter layout (what CMA-ES searches; ref §5.1 `model.py:131-132`): layer after layer, each as its bias
(when it has one) followed by its weight W (in, out) in row-major order, so W[i, j] = flat[off + i·out + j] and
row i is feature i. Features are ordered [z, c, h] (whichever of them the config uses). For the 99-parameter car
controller that is exactly the original's `params[0:3] = b, params[3:] = W.reshape(in, 3)`; for the hidden-layer
variant it is the original's `[bias_hidden, weight_hidden, bias_output, weight_output]`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ControllerConfig

FEATURE_PARTS = {"z": ("z",), "zh": ("z", "h"), "zch": ("z", "c", "h")}


def feature_dim(features: str, z_dim: int, hidden: int, cell: int | None = None) -> int:
    """Width of the feature vector: Z, Z + H or Z + 2H; with an RSSM, whose "c" (stoch) is `cell` wide and "h"
    (deter) `hidden` (`models.dynamics`): Z, Z + D or Z + S·K + D."""
    widths = {"z": z_dim, "h": hidden, "c": hidden if cell is None else cell}
    return sum(widths[p] for p in FEATURE_PARTS[features])


class Controller(nn.Module):
    """C with its parameters held as one flat vector `params` (n,), the vector CMA-ES evolves."""

    def __init__(self, cfg: ControllerConfig, z_dim: int, hidden: int, action_dim: int, env: str,
                 cell: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.hidden, self.action_dim, self.env = z_dim, hidden, action_dim, env
        self.cell = hidden if cell is None else cell  # width of "c": M's cell, or an RSSM's stoch
        self.dynamics = "mdnrnn" if cell is None else "rssm"  # the M it reads: only an RSSM's C records a cell
        self.in_dim = feature_dim(cfg.features, z_dim, hidden, self.cell)
        widths = (self.in_dim, cfg.hidden, action_dim) if cfg.hidden else (self.in_dim, action_dim)
        self.shapes = tuple(zip(widths[:-1], widths[1:], strict=True))  # ((in, out), ...) per layer
        self.param_count = sum(i * o + (o if cfg.bias else 0) for i, o in self.shapes)
        self.register_buffer("params", torch.zeros(self.param_count))

    # ------------------------------------------------------------------------------------------ layout
    def unflatten(self, params: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """Flat params (..., n) -> per layer (W (..., in, out), b (..., out) or None): views, no copy."""
        if params.shape[-1] != self.param_count:
            raise ValueError(f"controller has {self.param_count} parameters, got a vector of {params.shape[-1]}")
        lead = params.shape[:-1]
        layers, off = [], 0
        for i, o in self.shapes:
            b = None
            if self.cfg.bias:
                b, off = params[..., off : off + o], off + o
            w = params[..., off : off + i * o].reshape(*lead, i, o)  # (..., in, out), row-major
            off += i * o
            layers.append((w, b))
        return layers

    def flatten(self, layers: list[tuple[Tensor, Tensor | None]]) -> Tensor:
        """Inverse of `unflatten`: per layer (W (..., in, out), b (..., out) or None) -> (..., n)."""
        parts = []
        for (w, b), (i, o) in zip(layers, self.shapes, strict=True):
            if self.cfg.bias:
                parts.append(b)
            parts.append(w.reshape(*w.shape[:-2], i * o))  # (..., in·out)
        return torch.cat(parts, dim=-1)

    def set_params(self, params: Tensor | np.ndarray) -> None:
        """Load a flat vector (n,) into this controller (as its buffer's dtype and device)."""
        p = torch.as_tensor(np.asarray(params) if not isinstance(params, Tensor) else params)
        if p.shape != (self.param_count,):
            raise ValueError(f"controller has {self.param_count} parameters, got shape {tuple(p.shape)}")
        self.params.copy_(p.to(self.params.dtype))

    # ------------------------------------------------------------------------------------------ forward
    def features(self, z: Tensor, h: Tensor, c: Tensor) -> Tensor:
        """[z], [z, h] or [z, c, h] (B, F) from z (B, Z), the LSTM output h (B, H) and cell c (B, H) (ref §5); an
        RSSM's deter (B, D) and stoch (B, S·K) (`models.dynamics`)."""
        parts = {"z": z, "h": h, "c": c}
        return torch.cat([parts[p] for p in FEATURE_PARTS[self.cfg.features]], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Features (B, F) -> raw tanh outputs (B, A) with this controller's own `params`."""
        return self.forward_batched(self.params.unsqueeze(0), x.unsqueeze(0))[0]

    def forward_batched(self, params: Tensor, x: Tensor) -> Tensor:
        """Every member at once: params (P, n), features (P, R, F) -> raw tanh outputs (P, R, A).

        A batched matmul per layer (member p's weights on its R rows). With R = 1 (one row per weight vector, as
        the dream's per-rollout rows) the same product is a multiply-and-sum over F, which is faster there."""
        return apply_layers(self.unflatten(params), x)

    def to_action(self, raw: Tensor) -> Tensor:
        """The action M and the env receive (ref §5): CarRacing steer = a0, gas = (a1+1)/2, brake = clip(a2, 0, 1);
        Doom the continuous value itself (the env thresholds it, ref §5.2)."""
        if self.env != "carracing":
            return raw
        return car_action(raw)

    def act(self, x: Tensor) -> Tensor:
        """Features (B, F) -> action (B, A) as M and the env receive it."""
        return self.to_action(self.forward(x))


def apply_layers(layers: list[tuple[Tensor, Tensor | None]], x: Tensor) -> Tensor:
    """`Controller.forward_batched` on already unflattened layers (P, in, out) / (P, out): x (P, R, F) -> (P, R, A)."""
    y = x
    for w, b in layers:
        if y.shape[-2] == 1:
            y = (y.transpose(-1, -2) * w).sum(dim=-2, keepdim=True)  # (P, 1, out)
        else:
            y = torch.bmm(y, w)  # (P, R, out)
        if b is not None:
            y = y + b.unsqueeze(-2)
        y = torch.tanh(y)
    return y


def car_action(raw: Tensor) -> Tensor:
    """CarRacing mapping of tanh outputs (..., 3) -> (steer, gas, brake) (ref §5.1 `model.py:111-114`)."""
    return torch.stack([raw[..., 0], (raw[..., 1] + 1.0) / 2.0, raw[..., 2].clamp(0.0, 1.0)], dim=-1)


def build_controller(model_config: dict) -> Controller:
    """C from a controller artifact's model_config: {"controller": ControllerConfig dict, "env", "z_dim",
    "hidden", "action_dim"[, "cell"]} (what `evolve.controller_model_config` writes; "cell" for an RSSM's M)."""
    cfg = ControllerConfig.from_dict(dict(model_config["controller"]))
    cell = model_config.get("cell")
    return Controller(cfg, int(model_config["z_dim"]), int(model_config["hidden"]), int(model_config["action_dim"]),
                      str(model_config["env"]), None if cell is None else int(cell))


def load_controller(path: str | os.PathLike, which: str = "best") -> tuple[Controller, np.ndarray, object]:
    """Rebuild C from a `controller` artifact -> (controller holding the parameters, params (n,) float64, Meta).

    Expects the artifact's `model_config` as `build_controller` describes and the flat vectors `best_params`
    (which="best": the best evaluated CMA mean so far) or `mean` (which="mean": the current CMA mean)."""
    from ..runtime.errors import ArtifactError, WorldModelsError
    from ..store import artifacts as A

    meta = A.validate(path, "controller")
    try:
        controller = build_controller(meta.model_config)
    except (KeyError, TypeError, ValueError, WorldModelsError) as exc:
        raise ArtifactError(f"{path}: invalid controller model_config ({A._first_line(exc)})") from None
    key = {"best": A.BEST_PARAMS, "mean": A.MEAN}.get(which)
    if key is None:
        raise ValueError(f"which must be 'best' or 'mean', got {which!r}")
    with A.open_artifact(path, "controller") as fh:
        params = np.asarray(fh[key][()], dtype=np.float64)
    if not np.isfinite(params).all():
        raise ArtifactError(f"{path}: {key} holds NaN or inf (damaged artifact)")
    if params.shape != (controller.param_count,):
        raise ArtifactError(f"{path}: {key} holds {params.size} values, the recorded controller has "
                            f"{controller.param_count} parameters")
    controller.set_params(params)
    return controller, params, meta
