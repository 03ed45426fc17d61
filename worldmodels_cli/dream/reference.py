"""The plain loop: one dream rollout at a time through `MDNRNN.step`, `sample_next` and `Controller.act`, as the
original evaluated a member; the batched program must equal it (tests/test_dream.py)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from ..models.controller import Controller
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
    cfg = mdn.cfg
    dtype, device = mdn.bias.dtype, mdn.bias.device
    layout = NoiseLayout(cfg.z_dim, cfg.action_dim)
    env_name = policy_env(controller, mdn, env)
    keys = rollout_keys([seed], device)
    mu0 = torch.as_tensor(np.asarray(initial_mu), device=device).to(dtype)
    lv0 = torch.as_tensor(np.asarray(initial_logvar), device=device).to(dtype)
    z, _ = start_z(keys, mu0, lv0, layout)  # (1, Z)
    h, c = mdn.initial_state(1, device)  # zero state
    restart = torch.ones(1, dtype=dtype, device=device)  # restart flag at the first step
    controller = _member(controller, params, device, dtype)
    total, steps = 0.0, 0
    zs = [z[0].clone()] if record_z else None
    for t in range(max_steps):
        u, eps, abits = step_noise(keys, t, layout, dtype)
        if controller is None:
            a = random_action(abits, env_name, dtype)
        else:
            a = controller.act(controller.features(z, h, c))
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
        if controller is None:
            a = random_action(abits, env_name, dtype)
        else:
            a = controller.act(controller.features(z, deter, stoch))  # h = deter, c = stoch (models.dynamics)
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


def _member(controller: Controller | None, params, device, dtype) -> Controller | None:
    """A copy of `controller` holding one member's `params`, on M's device and dtype (None: the random policy)."""
    if controller is None:
        return None
    member = copy.deepcopy(controller).to(device=device, dtype=dtype)
    member.set_params(torch.as_tensor(np.asarray(params) if not isinstance(params, Tensor) else params))
    return member
