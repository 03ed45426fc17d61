"""The world-model agent in a real env: V encodes each frame, M carries memory, C acts (ref §5.1, §5.2).

Step order (ref §5.1 `model.py:98-118`; §5.2 `doomreal.py:64-115`): encode the frame and *sample* z_t (not μ);
a_t = C([z_t, (c_t,) h_t]); advance M with (z_t, a_t, restart) before the env steps; then env.step(a_t). M always
receives the continuous action (CarRacing: the mapped steer/gas/brake; Doom: the tanh output the env thresholds).
No forced no-op steps at the start (ref §C.8). The agent is a `policies.Policy`, so collection, real-env fitness
and evaluation all run it through the same episode loop (`collect.rollout`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import artifacts as A
from .errors import ArtifactError
from .models.controller import Controller, build_controller, load_controller
from .models.mdnrnn import MDNRNN, load_mdn
from .models.vae import ConvVAE, load_vae, to_input


class WorldModelAgent:
    """Policy interface: `reset(rng)` per episode, `act(frame, rng) -> action` per step."""

    def __init__(self, vae: ConvVAE, mdn: MDNRNN, controller: Controller) -> None:
        if vae.config.z_dim != mdn.cfg.z_dim:
            raise ArtifactError(f"V has z={vae.config.z_dim} but M expects z={mdn.cfg.z_dim}: not a matching pair")
        if controller.z_dim != mdn.cfg.z_dim or controller.hidden != mdn.cfg.hidden:
            raise ArtifactError(
                f"the controller expects z={controller.z_dim}, H={controller.hidden}; M has z={mdn.cfg.z_dim}, "
                f"H={mdn.cfg.hidden}"
            )
        self.vae, self.mdn, self.controller = vae.eval(), mdn.eval(), controller
        self.state: tuple[torch.Tensor, torch.Tensor] = mdn.initial_state(1)
        self.restart = 1.0
        self.last_mu: torch.Tensor | None = None

    def set_params(self, params: np.ndarray) -> None:
        self.controller.set_params(params)

    def reset(self, rng: np.random.Generator) -> None:
        self.state = self.mdn.initial_state(1)  # ref §5.2: zero state and restart = 1 at reset
        self.restart = 1.0

    @torch.no_grad()
    def act(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        mu, logvar = self.vae.encode(to_input(torch.tensor(obs).unsqueeze(0)))  # (1, Z); a copy: env frames are read-only
        self.last_mu = mu
        eps = torch.from_numpy(rng.standard_normal(mu.shape).astype(np.float32))
        z = mu + torch.exp(0.5 * logvar) * eps  # ref §5.1: C sees a sample, not μ
        h, c = self.state
        action = self.controller.act(self.controller.features(z, h, c).to(self.controller.params.dtype)).float()
        restart = torch.full((1,), self.restart) if self.mdn.cfg.restart_input else None
        _, self.state = self.mdn.step(z, action, restart, self.state)
        self.restart = 0.0
        return action[0].numpy().astype(np.float32)


@dataclass(frozen=True)
class AgentSpec:
    """Everything a worker needs to rebuild the agent: paths and the controller's recorded sizes (picklable)."""

    vae: str
    mdn: str
    controller_config: dict

    def build(self) -> WorldModelAgent:
        vae, _ = load_vae(self.vae)
        mdn, _ = load_mdn(self.mdn)
        return WorldModelAgent(vae, mdn, build_controller(self.controller_config))


def recorded_input(meta: A.Meta, role: str, override: str | os.PathLike | None) -> Path:
    """The V or M a controller was evolved with: `override` if given, else the recorded path, whose bytes must
    still be the recorded ones (a retrained file at the same path would silently change the agent)."""
    rec = meta.inputs.get(role)
    if override is not None:
        env = A.validate(override, role).env
        if meta.env and env != meta.env:
            raise ArtifactError(f"{override}: a {env} {role}, but {meta.path} is a {meta.env} controller")
        return Path(override)
    if not rec:
        raise ArtifactError(f"{meta.path}: records no {role} artifact; pass --{role} explicitly")
    path = Path(rec["path"])
    if not path.exists():
        raise ArtifactError(f"{meta.path}: its {role} {path} is missing; pass --{role} PATH")
    if A.sha256(path) != rec["sha256"]:
        raise ArtifactError(f"{meta.path}: {path} is not the {role} it was evolved with (checksum differs); "
                            f"pass --{role} PATH to use it anyway")
    return path


def agent_spec(controller_path: str | os.PathLike, *, which: str = "best", vae: str | None = None,
               mdn: str | None = None) -> tuple[AgentSpec, np.ndarray, A.Meta]:
    """Resolve a controller artifact into (spec, params, meta), rebuilding V and M from what it records."""
    controller, params, meta = load_controller(controller_path, which)
    spec = AgentSpec(str(recorded_input(meta, "vae", vae)), str(recorded_input(meta, "mdn", mdn)), meta.model_config)
    return spec, params, meta
