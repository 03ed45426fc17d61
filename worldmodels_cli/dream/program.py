"""The batched dream (see the package doc): P members × R trials as one tensor program, its CMA-ES fitness
and the random policy's diagnostics."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..models.controller import Controller, apply_layers
from ..models.ensemble import Ensemble
from ..models.mdnrnn import MDNRNN, is_done, sample_next
from ..models.rssm import RSSM
from .fused import FusedM
from .fused_ensemble import FusedEnsemble
from .fused_rssm import FusedRSSM
from .streams import random_action, rollout_keys, step_noise

log = logging.getLogger(__name__)


_SMALL_BATCH = 64  # below this many rows the CPU program runs on one thread
# Compaction never leaves fewer rows than this (finished rows stay as padding): BLAS computes a float32 row of a
# 1-3-row matmul (and of a 1-row bmm) with other kernels than the same row in a larger batch, so a rollout's
# last steps would depend on how many others were still running beside it (and on how the rollouts are shared
# out among workers, dream/parallel.py); from 4 rows up each row's result is the same in any batch.
MIN_ROWS = 4


def reward_of(kind: str, value: Tensor | None, like: Tensor) -> Tensor:
    """Per-step dream reward: +1 without a reward head (ref §7); the regression head's value; or ±1 from the
    sign head's logit (a sign, never a survival probability: ref §C.7)."""
    if kind == "none" or value is None:
        return torch.ones_like(like)
    if kind == "regression":
        return value
    return torch.where(value > 0, 1.0, -1.0).to(like.dtype)


# ------------------------------------------------------------------------------------------ the batched program
@dataclass
class DreamResult:
    """Per rollout (P, R): returns (float64) and lengths (steps); figures of the run."""

    returns: np.ndarray
    lengths: np.ndarray
    seconds: float
    row_steps: int  # rows stepped in total (what was computed, finished-but-not-yet-compacted rows included)
    z: np.ndarray | None = field(default=None, repr=False)  # (P, R, max_steps+1, Z) with NaN after the end
    # an ensemble's dream (docs/pessimism.md): per rollout its unknown steps (over the threshold) and whether it
    # ended at one (halt); with record_disagreement the disagreement of every step (P, R, max_steps), NaN after the end
    unknown: np.ndarray | None = None
    halted: np.ndarray | None = None
    disagreement: np.ndarray | None = field(default=None, repr=False)
    threshold: float | None = None  # the ensemble's: over it a step is unknown

    @property
    def rollout_steps(self) -> int:
        return int(self.lengths.sum())


def first_parameter(mdn: MDNRNN | RSSM | Ensemble) -> Tensor:
    """A parameter of M: its device and dtype are M's."""
    return next(mdn.parameters())


def fused_model(mdn: MDNRNN | RSSM | Ensemble, dtype: torch.dtype, device, tau: float
                ) -> FusedM | FusedRSSM | FusedEnsemble:
    """M laid out for the batched program: either dynamics (`models.dynamics`), or an ensemble of MDN-RNNs, behind
    one interface."""
    if isinstance(mdn, Ensemble):
        return FusedEnsemble(mdn, dtype, device, tau)
    return FusedRSSM(mdn, dtype, device, tau) if isinstance(mdn, RSSM) else FusedM(mdn, dtype, device, tau)


def followed_members(P: int, R: int, members: int, pessimism: str, first_trial: int = 0) -> np.ndarray:
    """The member each of P × R rollouts follows (docs/pessimism.md): trial r follows member r mod K when the dream
    is pessimistic (PETS's TS∞, stratified: every candidate meets every member equally often); with pessimism off,
    member 0, as the dream of one M (the others only measure the disagreement). `first_trial`: the trials are
    first_trial, first_trial + 1, … of a larger set (a share of the rollouts run elsewhere, `dream.parallel`)."""
    if pessimism == "off":
        return np.zeros((P, R), dtype=np.int64)
    return np.broadcast_to((first_trial + np.arange(R)) % members, (P, R)).copy()


def policy_env(controller: Controller | None, mdn: MDNRNN, env: str | None) -> str:
    if controller is not None:
        return controller.env
    if env:
        return env
    return "doom" if mdn.cfg.action_dim == 1 else "carracing"


@torch.no_grad()
def dream_rollouts(
    mdn: MDNRNN,
    seeds,
    initial_mu,
    initial_logvar,
    *,
    controller: Controller | None = None,
    params=None,
    env: str | None = None,
    tau: float = 1.15,
    max_steps: int = 2100,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    compact: bool = True,
    compact_every: int = 8,
    record_z: bool = False,
    constant_action: float | None = None,
    pessimism: str = "off",
    penalty: float = 1.0,
    record_disagreement: bool = False,
    first_trial: int = 0,
) -> DreamResult:
    """P members × R trials of the dream at once -> DreamResult with (P, R) returns and lengths; M an MDN-RNN, an
    RSSM (`models.dynamics`) or an ensemble of MDN-RNNs (`models.ensemble`).

    seeds (P, R) ints, one stream per rollout; controller + params (P, n) give member p's weights to its R rows
    (without a controller: the random policy of `random_action` for `env`). initial_mu/logvar (E, Z): the first
    frames of real episodes. `compact` gathers the unfinished rows every `compact_every` steps; record_z keeps every
    z (tests, `wm dream`); constant_action holds that action in every row (a diagnostic, instead of a policy).
    Runs on `device` (default M's) in `dtype` (default M's).

    An ensemble's rows follow `followed_members`; every step its members' disagreement is measured against the
    calibrated threshold, and `pessimism` acts on the unknown steps: "halt" ends the rollout at its first one, as a
    death (the step counts, as a step the done head ends), "penalty" takes `penalty` off the return per unknown step
    (docs/pessimism.md). record_disagreement keeps the disagreement of every step. `first_trial`: the seeds' columns
    are trials first_trial, … of a larger set, which decides the members they follow (`dream.parallel`)."""
    seeds = np.asarray(seeds, dtype=np.int64)
    if seeds.ndim != 2:
        raise ValueError(f"seeds must be (P, R), got shape {seeds.shape}")
    if pessimism not in ("off", "halt", "penalty"):
        raise ValueError(f"pessimism must be off, halt or penalty, got {pessimism!r}")
    if (pessimism != "off" or record_disagreement) and not isinstance(mdn, Ensemble):
        raise ValueError("pessimism and the disagreement need an ensemble of Ms")
    P, R = seeds.shape
    n_rows = P * R
    device = torch.device(device) if device is not None else first_parameter(mdn).device
    dtype = dtype or first_parameter(mdn).dtype
    fm = fused_model(mdn, dtype, device, tau)
    layout = fm.layout
    env_name = policy_env(controller, mdn, env)
    t_start = time.perf_counter()

    keys = rollout_keys(seeds, device)  # (N,)
    mu0 = torch.as_tensor(np.asarray(initial_mu), device=device).to(dtype)
    lv0 = torch.as_tensor(np.asarray(initial_logvar), device=device).to(dtype)
    S = fm.start(keys, mu0, lv0)  # MDN-RNN: zero state, restart flag set (ref §7); RSSM: the first posterior
    ens = isinstance(fm, FusedEnsemble)
    if ens:
        follow = followed_members(P, R, fm.members, pessimism, first_trial).reshape(-1)
        fm.set_follow(S, torch.as_tensor(follow, device=device))
        unknown = torch.zeros(n_rows, dtype=torch.int64, device=device)
        halted = torch.zeros(n_rows, dtype=torch.bool, device=device)
        out_unknown, out_halted = unknown.clone(), halted.clone()
    dis = None
    if record_disagreement:
        dis = torch.full((max_steps, n_rows), math.nan, dtype=dtype, device=device)
    feats = layers = None
    if controller is not None:
        p = torch.as_tensor(np.asarray(params) if not isinstance(params, Tensor) else params, device=device)
        member_layers, feats = fm.row_layers(controller, p.to(dtype).reshape(P, controller.param_count))
        # row r runs member r // R: its weights repeated per row, so rows can be compacted freely
        layers = [(w.repeat_interleave(R, 0), None if b is None else b.repeat_interleave(R, 0))
                  for w, b in member_layers]
    buf = fm.buffers(n_rows)
    rows = torch.arange(n_rows, device=device)  # each row's rollout id
    alive = torch.ones(n_rows, dtype=torch.bool, device=device)
    ret = torch.zeros(n_rows, dtype=torch.float64, device=device)
    length = torch.zeros(n_rows, dtype=torch.int64, device=device)
    out_ret = torch.zeros(n_rows, dtype=torch.float64, device=device)
    out_len = torch.zeros(n_rows, dtype=torch.int64, device=device)
    zs = None
    if record_z:
        zs = torch.full((max_steps + 1, n_rows, fm.z_dim), math.nan, dtype=dtype, device=device)
        zs[0] = S[:, fm.z_]
    row_steps = 0

    per_step_reward = fm.reward_head != "none"  # else +1 per step: the return is the length (ref §7)
    threads = torch.get_num_threads()
    try:
        for t in range(max_steps):
            B = S.shape[0]
            row_steps += B
            if B < getattr(fm, "small_batch", _SMALL_BATCH) and device.type == "cpu":
                torch.set_num_threads(1)  # a few rows: splitting tiny ops only adds synchronisation
            j = t % compact_every
            if j == 0:  # the noise of the next `compact_every` steps at once: rows only change between such chunks
                k = min(compact_every, max_steps - t)
                U, EPS, AB = (x.view(B, k, -1) for x in step_noise(keys, t, layout, dtype, steps=k))  # (B, k, ·)
            if constant_action is not None:
                S[:, fm.a_] = constant_action
            elif layers is None:
                S[:, fm.a_] = random_action(AB[:, j], env_name, dtype)
            else:
                raw = apply_layers(layers, S[:, feats].unsqueeze(1))  # (B, 1, A): member weights per row
                S[:, fm.a_] = controller.to_action(raw.squeeze(1))
            Y = fm.step(S, buf, U[:, j])
            if t == 0 and fm.restart:
                S[:, fm.r_col] = 0.0
            if ens:
                over = (fm.disagreement > fm.threshold) & alive  # an unknown step of a rollout still running
                unknown.add_(over)
                if dis is not None:
                    dis[t, rows[alive]] = fm.disagreement[alive]
            if per_step_reward:
                ret.add_(reward_of(fm.reward_head, Y[:, 1 if fm.done_head else 0], ret).to(torch.float64) * alive)
            length.add_(alive)
            if fm.done_head:
                alive &= ~(Y[:, 0] > 0)  # done when the done logit > 0; τ plays no part (ref §7)
            if pessimism == "halt":
                halted |= over  # MOReL's HALT: the unknown step ends the rollout, as a death
                alive &= ~over
            fm.sample(Y, U[:, j], EPS[:, j], S[:, fm.z_], buf)
            if zs is not None:
                zs[t + 1, rows[alive]] = S[alive][:, fm.z_]
            if j == compact_every - 1 and t + 1 < max_steps:
                n_alive = int(alive.sum())
                if n_alive == 0:
                    break
                if compact and B - n_alive >= max(1, B // 32) and B > MIN_ROWS:
                    done_rows = (~alive).nonzero().squeeze(1)
                    out_ret[rows[done_rows]] = ret[done_rows]
                    out_len[rows[done_rows]] = length[done_rows]
                    # the rows still running, and finished ones as padding up to MIN_ROWS (their sums are frozen)
                    keep = torch.cat([alive.nonzero().squeeze(1), done_rows[: max(0, MIN_ROWS - n_alive)]])
                    if ens:
                        out_unknown[rows[done_rows]], out_halted[rows[done_rows]] = unknown[done_rows], halted[done_rows]
                        unknown, halted = unknown[keep], halted[keep]
                    S, keys, rows, ret, length = S[keep], keys[keep], rows[keep], ret[keep], length[keep]
                    alive = alive[keep]
                    if layers is not None:
                        layers = [(w[keep], None if b is None else b[keep]) for w, b in layers]
    finally:
        torch.set_num_threads(threads)
    out_ret[rows] = ret
    out_len[rows] = length
    if not per_step_reward:
        out_ret = out_len.to(torch.float64)
    if ens:
        out_unknown[rows], out_halted[rows] = unknown, halted
        if pessimism == "penalty":  # after the sum, as the per-member loop: the same float operations
            out_ret = out_ret - penalty * out_unknown.to(torch.float64)
    seconds = time.perf_counter() - t_start
    log.debug("dream: %d rollouts, %d rollout-steps (%d rows stepped) in %.2f s", n_rows, int(out_len.sum()),
              row_steps, seconds)
    return DreamResult(
        returns=out_ret.cpu().numpy().reshape(P, R),
        lengths=out_len.cpu().numpy().reshape(P, R),
        seconds=seconds,
        row_steps=row_steps,
        z=None if zs is None else zs.permute(1, 0, 2).reshape(P, R, max_steps + 1, fm.z_dim).cpu().numpy(),
        unknown=out_unknown.cpu().numpy().reshape(P, R) if ens else None,
        halted=out_halted.cpu().numpy().reshape(P, R) if ens else None,
        disagreement=None if dis is None else dis.T.reshape(P, R, max_steps).cpu().numpy(),
        threshold=fm.threshold if ens else None,
    )


def dream_fitness(mdn: MDNRNN, controller: Controller, params, seeds, initial_mu, initial_logvar, *,
                  tau: float, max_steps: int, device=None) -> np.ndarray:
    """Fitness of each member (P,): the mean dream return over its R trials (ref §6)."""
    res = dream_rollouts(mdn, seeds, initial_mu, initial_logvar, controller=controller, params=params, tau=tau,
                         max_steps=max_steps, device=device)
    return res.returns.mean(axis=1)


class DreamFitness:
    """`evolve.Fitness` in the dream: (params (P, n), seeds (P, R)) -> returns (P, R), one batched program per call.
    With an ensemble and `pessimism` halt or penalty, the pessimistic dream (docs/pessimism.md). With a `pool`
    (`dream.parallel`), each call's rollouts are shared out among its workers (which hold M: `mdn` is then None),
    the same returns, sooner."""

    def __init__(self, mdn: MDNRNN | Ensemble | None, controller: Controller, initial_mu, initial_logvar, *,
                 tau: float, max_steps: int, device=None, pessimism: str = "off", penalty: float = 1.0,
                 pool=None) -> None:
        self.mdn, self.controller = mdn, controller
        self.initial_mu, self.initial_logvar = initial_mu, initial_logvar
        self.tau, self.max_steps, self.device = tau, max_steps, device
        self.pessimism, self.penalty = pessimism, penalty
        self.pool = pool
        self.last: DreamResult | None = None

    @classmethod
    def from_artifact(cls, mdn_path: str | os.PathLike, controller: Controller, *, tau: float, max_steps: int,
                      device: str = "cpu", pessimism: str = "off", penalty: float = 1.0, workers: int = 1,
                      backend: str = "local", address: str | None = None) -> DreamFitness:
        """The dream of an mdn artifact: its one M (an ensemble's first member) with pessimism off, else every
        member of its ensemble. On the CPU with workers > 1, its rollouts run in a `dream.parallel.DreamPool` of
        that many one-thread processes (or Ray actors); on a GPU, one program."""
        from ..models.ensemble import load_ensemble
        from ..models.mdnrnn import load_initial_z, load_mdn
        from .parallel import DreamPool

        kw = {"tau": tau, "max_steps": max_steps, "pessimism": pessimism, "penalty": penalty}
        if workers > 1 and torch.device(device).type == "cpu":  # each worker loads M; this process needs none
            pool = DreamPool(str(mdn_path), controller, workers=workers, backend=backend, address=address, **kw)
            return cls(None, controller, None, None, device=device, pool=pool, **kw)
        mdn = load_mdn(mdn_path, device)[0] if pessimism == "off" else load_ensemble(mdn_path, device)
        mu, logvar = load_initial_z(mdn_path)
        return cls(mdn, controller, mu, logvar, device=device, **kw)

    def rollouts(self, params: np.ndarray, seeds: np.ndarray, first_trial: int = 0) -> DreamResult:
        """This process's program for P × R rollouts (trials first_trial, … of a larger set: `dream_rollouts`)."""
        return dream_rollouts(self.mdn, seeds, self.initial_mu, self.initial_logvar, controller=self.controller,
                              params=np.asarray(params), tau=self.tau, max_steps=self.max_steps, device=self.device,
                              pessimism=self.pessimism, penalty=self.penalty, first_trial=first_trial)

    def __call__(self, params: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        seeds = np.asarray(seeds, dtype=np.int64)
        self.last = self.pool(np.asarray(params), seeds) if self.pool is not None else self.rollouts(params, seeds)
        return self.last.returns

    def metrics(self) -> dict[str, float]:
        """What the last call's pessimism did: unknown steps per dream step, the fraction of rollouts halted."""
        return unknown_figures(self.last, "evolve/") if self.last is not None else {}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def unknown_figures(res: DreamResult, prefix: str = "") -> dict[str, float]:
    """An ensemble dream's pessimism figures: unknown steps per dream step, the fraction of rollouts halted at one,
    and, where the disagreement was recorded, its mean and the mean first unknown step (of rollouts that had one,
    counting from 1). {} for one M's dream."""
    if res.unknown is None:
        return {}
    out = {f"{prefix}unknown_per_step": float(res.unknown.sum() / max(int(res.lengths.sum()), 1)),
           f"{prefix}halted_fraction": float(res.halted.mean())}
    if res.disagreement is not None:
        d = res.disagreement.reshape(-1, res.disagreement.shape[-1])
        out[f"{prefix}mean_disagreement"] = float(np.nanmean(d))
        over = d > res.threshold  # NaN after a rollout's end is never over
        first = over.argmax(1)[over.any(1)] + 1
        out[f"{prefix}first_unknown_step"] = float(first.mean()) if len(first) else math.nan
    return out


# ------------------------------------------------------------------------------------------ diagnostics
def random_policy_done_rate(mdn: MDNRNN | Ensemble, initial_mu, initial_logvar, *, env: str | None = None,
                            episodes: int = 64, tau: float = 1.0, max_steps: int = 2100, seed: int = 0,
                            pessimism: str = "off", penalty: float = 1.0) -> dict:
    """How the dream ends under the random policy: mean ± std length, the fraction of episodes M ends by its
    done head before the cap, and done events per step. A dream that never ends (rate 0) or ends at once is a
    broken M. Shown by `wm info` on an mdn artifact. An ensemble's dream (with `pessimism`) adds how often its
    members disagree (`unknown_figures`)."""
    from ..runtime import seeding

    seeds = np.array([[seeding.derive(seed, "done-rate", i) for i in range(episodes)]], dtype=np.int64)
    ens = isinstance(mdn, Ensemble)
    res = dream_rollouts(mdn, seeds, initial_mu, initial_logvar, env=env, tau=tau, max_steps=max_steps,
                         pessimism=pessimism, penalty=penalty, record_disagreement=ens)
    lengths = res.lengths.reshape(-1).astype(np.float64)
    ended = (lengths < max_steps) if mdn.cfg.done_head else np.zeros_like(lengths, dtype=bool)
    return {"episodes": episodes, "temperature": tau, "max_steps": max_steps,
            "mean_length": float(lengths.mean()), "std_length": float(lengths.std()),
            "mean_return": float(res.returns.mean()),
            "done_fraction": float(ended.mean()), "done_per_step": float(ended.sum() / lengths.sum()),
            **unknown_figures(res)}


@torch.no_grad()
def constant_action_lengths(mdn: MDNRNN, initial_mu, initial_logvar, actions: dict[str, float], *,
                            episodes: int = 64, tau: float = 1.15, max_steps: int = 2100, seed: int = 0) -> dict:
    """Mean dream length when one action is held the whole episode (Doom: always left / none / right).

    The diagnostic of the dream exploit (ref §B): in the real game holding a direction dies at a wall in ≈150-190
    steps; an M that lets it survive far longer in the dream has not seen those deaths, and CMA-ES will find it."""
    if isinstance(mdn, RSSM):  # the batched program holding the action (its own streams, not this loop's generator)
        from ..runtime import seeding

        seeds = np.array([[seeding.derive(seed, "held-action", i) for i in range(episodes)]], dtype=np.int64)
        held = {}
        for name, value in actions.items():
            lengths = dream_rollouts(mdn, seeds, initial_mu, initial_logvar, tau=tau, max_steps=max_steps,
                                     constant_action=float(value)).lengths.astype(np.float64)
            held[name] = f"{lengths.mean():.0f} ± {lengths.std(ddof=1):.0f}"  # ddof 1: as torch's std below
        return held
    gen = torch.Generator().manual_seed(seed)
    mu0, lv0 = torch.as_tensor(initial_mu, dtype=torch.float32), torch.as_tensor(initial_logvar, dtype=torch.float32)
    out = {}
    for name, value in actions.items():
        idx = torch.randint(len(mu0), (episodes,), generator=gen)
        z = mu0[idx] + torch.exp(0.5 * lv0[idx]) * torch.randn(mu0[idx].shape, generator=gen)  # (B, Z)
        a = torch.full((episodes, mdn.cfg.action_dim), float(value))
        state, alive = mdn.initial_state(episodes), torch.ones(episodes, dtype=torch.bool)
        restart, length = torch.ones(episodes), torch.zeros(episodes)
        for _ in range(max_steps):
            step, state = mdn.step(z, a, restart if mdn.cfg.restart_input else None, state)
            length += alive.float()
            if step.done_logit is not None:
                alive &= ~is_done(step)
            if not alive.any():
                break
            restart = torch.zeros(episodes)
            z = sample_next(step, tau, gen)
        out[name] = f"{length.mean():.0f} ± {length.std():.0f}"
    return out


def mdn_dream_summary(path: str | os.PathLike, meta) -> dict | str:
    """`wm info` on an mdn artifact: the dream figures `wm train-mdn` stored in its summary when it finished, or,
    for an artifact from before that (or an unfinished one), the same figures computed now; a one-line reason
    instead when the artifact cannot dream. `wm info` never writes: a rewritten M would no longer match the
    checksum its controllers record."""
    from ..models.mdnrnn import load_initial_z, load_mdn
    from ..runtime.errors import WorldModelsError

    if isinstance(meta.summary.get(DREAM_SUMMARY), dict):
        return meta.summary[DREAM_SUMMARY]
    evolve = meta.config.get("evolve", {}) if isinstance(meta.config, dict) else {}
    tau, cap = float(evolve.get("temperature", 1.15)), int(evolve.get("max_steps", 2100))
    try:
        mdn, _ = load_mdn(path, "cpu", allow_incomplete=True)
        mu0, lv0 = load_initial_z(path)
    except WorldModelsError as exc:
        return f"n/a ({exc})"
    return dream_summary(mdn, mu0, lv0, env=meta.env or None, tau=tau, max_steps=cap)


DREAM_SUMMARY = "dream_random_policy"  # the mdn summary's key of `dream_summary`


def dream_summary(mdn: MDNRNN | Ensemble, mu0, lv0, *, env: str | None, tau: float = 1.15,
                  max_steps: int = 2100) -> dict:
    """How M's dream goes under the random policy (and, for Doom, under held actions), rounded for display. An
    ensemble's: its first member's dream, with how often the members disagree along it."""
    r = random_policy_done_rate(mdn, mu0, lv0, env=env, tau=tau, max_steps=max_steps)
    r = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
    one = mdn.members[0] if isinstance(mdn, Ensemble) else mdn
    if env == "doom" and one.cfg.done_head:
        r["held_action_length"] = constant_action_lengths(one, mu0, lv0, {"left": -1.0, "none": 0.0, "right": 1.0},
                                                          episodes=32, tau=tau, max_steps=max_steps)
    return r
