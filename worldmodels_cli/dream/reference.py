"""The plain loop: one dream rollout at a time through `MDNRNN.step`, `sample_next` and `Controller.act`, as the
original evaluated a member; the batched program must equal it (tests/test_dream.py; an ensemble's,
tests/test_ensemble.py)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..models.controller import Controller
from ..models.ensemble import Ensemble, disagreement, mixture_mean
from ..models.mdnrnn import MDNRNN, sample_next
from ..models.rssm import RSSM, sample_z
from .program import policy_env, reward_of
from .streams import NoiseLayout, random_action, rollout_keys, start_draws, start_z, step_noise


# ------------------------------------------------------------------------------------------ the plain loop
@torch.no_grad()
def reference_rollout(
    mdn: MDNRNN,
    seed: int,
    initial_mu,
    initial_logvar,
    *,
    controller: Controller | None = None,
    params=None,
    env: str | None = None,
    tau: float = 1.15,
    max_steps: int = 2100,
    record_z: bool = False,
) -> tuple[float, int, np.ndarray | None]:
    """One dream rollout, batch 1, as the original's DoomCoverRNNEnv + Model.get_action (ref §7):
    -> (return, length, z (length+1, Z) if record_z, i.e. z0 and every z the dream produced before the end).
    An RSSM runs `_rssm_rollout`, the same loop through its plain steps."""
    if isinstance(mdn, RSSM):
        return _rssm_rollout(mdn, seed, initial_mu, initial_logvar, controller=controller, params=params, env=env,
                             tau=tau, max_steps=max_steps, record_z=record_z)
    cfg, dtype = mdn.cfg, mdn.bias.dtype
    layout, keys, z, restart = _start(mdn, seed, initial_mu, initial_logvar)
    env_name = policy_env(controller, mdn, env)
    h, c = mdn.initial_state(1)  # zero state
    controller = _member(controller, params, mdn.bias.device, dtype)
    total, steps = 0.0, 0
    zs = [z[0].clone()] if record_z else None
    for t in range(max_steps):
        u, eps, abits = step_noise(keys, t, layout, dtype)
        a = _act(controller, abits, env_name, z, h, c)
        out, (h, c) = mdn.step(z, a, restart, (h, c))
        restart = torch.zeros_like(restart)
        total += float(reward_of(cfg.reward_head, out.reward, restart)[0])
        steps += 1
        if out.done_logit is not None and bool(out.done_logit[0] > 0):
            break
        z = sample_next(out, tau, eps=eps, u=u)
        if zs is not None:
            zs.append(z[0].clone())
    return total, steps, None if zs is None else torch.stack(zs).cpu().numpy()


def _start(mdn: MDNRNN, seed: int, initial_mu, initial_logvar) -> tuple[NoiseLayout, Tensor, Tensor, Tensor]:
    """An MDN-RNN rollout's noise layout, stream key, z0 (1, Z) from a random real first frame and the restart flag
    (1,) set for the first step (ref §7), on M's device and dtype."""
    cfg, dtype, device = mdn.cfg, mdn.bias.dtype, mdn.bias.device
    layout = NoiseLayout(cfg.z_dim, cfg.action_dim)
    keys = rollout_keys([seed], device)
    mu0 = torch.as_tensor(np.asarray(initial_mu), device=device).to(dtype)
    lv0 = torch.as_tensor(np.asarray(initial_logvar), device=device).to(dtype)
    z, _ = start_z(keys, mu0, lv0, layout)
    return layout, keys, z, torch.ones(1, dtype=dtype, device=device)


@dataclass
class EnsembleRollout:
    """`ensemble_rollout`'s result: the return and length, z as `reference_rollout` records it, the disagreement of
    every step, the unknown steps and whether the rollout ended at one."""

    ret: float
    length: int
    z: np.ndarray | None
    disagreement: list[float]
    unknown: int
    halted: bool


@torch.no_grad()
def ensemble_rollout(
    ensemble: Ensemble,
    seed: int,
    initial_mu,
    initial_logvar,
    *,
    follow: int = 0,
    pessimism: str = "off",
    penalty: float = 1.0,
    controller: Controller | None = None,
    params=None,
    env: str | None = None,
    tau: float = 1.15,
    max_steps: int = 2100,
    record_z: bool = False,
) -> EnsembleRollout:
    """One dream rollout of an ensemble, batch 1 (docs/pessimism.md): every member steps on the same (z, a, restart)
    from its own state; C acts on member 0's memory; the disagreement of the members' predicted means is measured;
    reward, done and z' come from member `follow`; at an unknown step (disagreement over the threshold) "halt" ends
    the rollout as a death and "penalty" costs `penalty`, taken off the return at the end."""
    members = ensemble.members
    layout, keys, z, restart = _start(members[0], seed, initial_mu, initial_logvar)
    env_name = policy_env(controller, members[0], env)
    states = [m.initial_state(1) for m in members]
    controller = _member(controller, params, members[0].bias.device, members[0].bias.dtype)
    total, steps, unknown, halted = 0.0, 0, 0, False
    zs = [z[0].clone()] if record_z else None
    ds: list[float] = []
    for t in range(max_steps):
        u, eps, abits = step_noise(keys, t, layout, z.dtype)
        a = _act(controller, abits, env_name, z, *states[0])
        outs = []
        for k, m in enumerate(members):
            out, states[k] = m.step(z, a, restart, states[k])
            outs.append(out)
        restart = torch.zeros_like(restart)
        ds.append(float(disagreement([mixture_mean(o.logpi, o.mu) for o in outs])[0]))
        out = outs[follow]
        total += float(reward_of(members[0].cfg.reward_head, out.reward, restart)[0])
        steps += 1
        over = ds[-1] > ensemble.threshold
        unknown += over
        halted = over and pessimism == "halt"
        if halted or (out.done_logit is not None and bool(out.done_logit[0] > 0)):
            break
        z = sample_next(out, tau, eps=eps, u=u)
        if zs is not None:
            zs.append(z[0].clone())
    if pessimism == "penalty":
        total -= penalty * unknown
    return EnsembleRollout(total, steps, None if zs is None else torch.stack(zs).cpu().numpy(), ds, unknown, halted)


@torch.no_grad()
def _rssm_rollout(rssm: RSSM, seed: int, initial_mu, initial_logvar, *, controller: Controller | None, params,
                  env: str | None, tau: float, max_steps: int, record_z: bool) -> tuple[float, int, np.ndarray | None]:
    """`reference_rollout` for an RSSM (models/rssm.py): the first frame's posterior from the zero state, then per
    step C on [z, stoch, deter], the prior step at τ, the heads, z' at τ."""
    cfg = rssm.cfg
    dtype, device = rssm.dtype, rssm.device
    layout = NoiseLayout(cfg.z_dim, cfg.action_dim, groups=cfg.stoch)
    env_name = policy_env(controller, rssm, env)
    keys = rollout_keys([seed], device)
    mu0 = torch.as_tensor(np.asarray(initial_mu), device=device).to(dtype)
    lv0 = torch.as_tensor(np.asarray(initial_logvar), device=device).to(dtype)
    z, _, u0 = start_draws(keys, mu0, lv0, layout)  # (1, Z), (1, S)
    deter, stoch = rssm.initial_state(1)
    first = torch.ones(1, dtype=dtype, device=device)
    deter, stoch, _, _ = rssm.obs_step(deter, stoch, torch.zeros(1, cfg.action_dim, dtype=dtype, device=device), z,
                                       first, u0)
    controller = _member(controller, params, device, dtype)
    total, steps = 0.0, 0
    zs = [z[0].clone()] if record_z else None
    for t in range(max_steps):
        u, eps, abits = step_noise(keys, t, layout, dtype)
        a = _act(controller, abits, env_name, z, deter, stoch)  # h = deter, c = stoch (models.dynamics)
        deter, stoch = rssm.img_step(deter, stoch, a, u, tau)
        out = rssm.heads(deter, stoch)
        total += float(reward_of(cfg.reward_head, out.reward, first)[0])
        steps += 1
        if out.done_logit is not None and bool(out.done_logit[0] > 0):
            break
        z = sample_z(out, tau, eps)
        if zs is not None:
            zs.append(z[0].clone())
    return total, steps, None if zs is None else torch.stack(zs).cpu().numpy()


def _act(controller: Controller | None, abits, env_name: str, z: Tensor, h: Tensor, c: Tensor) -> Tensor:
    """The member's action on [z, (c,) h], or the random policy's from the step's action bits."""
    if controller is None:
        return random_action(abits, env_name, z.dtype)
    return controller.act(controller.features(z, h, c))


def _member(controller: Controller | None, params, device, dtype) -> Controller | None:
    """A copy of `controller` holding one member's `params`, on M's device and dtype (None: the random policy)."""
    if controller is None:
        return None
    member = copy.deepcopy(controller).to(device=device, dtype=dtype)
    member.set_params(torch.as_tensor(np.asarray(params) if not isinstance(params, Tensor) else params))
    return member
