"""`wm train-controller --method actor-critic`: C trained by backpropagation through M's imagined rollouts, the
latent actor-critic of Dreamer (models/actor_critic.py; ref beyond.md §2), on either dynamics, in the dream
CMA-ES evolves in (`EvolveConfig`'s τ and episode cap) and scored the way `wm evolve --in-dream` scores.

Each step imagines `horizon` steps ahead of `lanes` dream episodes with the policy's sampled actions, computes
λ-returns with the target critic, and takes one Adam step for the actor (the returns through M, normalised, plus
the entropy) and one for the critic. The lanes then run on from where they stopped; a lane whose dream ended (M's
done logit > 0, the dream's rule) or reached the cap restarts from a random real first frame. Dreamer starts its
imagination from the posterior states of replayed real sequences; here C, as the paper's, sees nothing of the real
game but the first frames M stores, so it trains on the dream's own states, like CMA-ES in the dream.

Every `eval_every` steps the actor's mode (tanh of C's output: the C the artifact stores) is scored on
`EvolveConfig.eval_episodes` dream episodes with the fixed seeds `wm evolve` uses (and, with `eval_real`, on real
episodes); the best is kept as `best_params`, which `wm evaluate` runs like any C. The artifact is a `controller`
(C's model_config, `mean` = the current C) that also holds the training state: it is rewritten at every
evaluation and on Ctrl-C, and rerunning the same command resumes it. Every draw of a step comes from a generator
seeded by (seed, step), so a resumed run ends with the C an uninterrupted one makes (on the same machine).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import tracking
from ..config import METHODS, ActorCriticConfig, Preset
from ..models.actor_critic import (
    Actor,
    Critic,
    Imagination,
    Lanes,
    ReturnNorm,
    draw_noise,
    lambda_returns,
    weights,
)
from ..models.controller import feature_dim
from ..runtime import Runtime, seeding
from ..runtime import device as devices
from ..runtime.errors import ArtifactError, ConfigError, TrainingDiverged
from ..store import artifacts as A
from ..store import checkpoint, files, runs
from ..store.metrics import MetricsWriter, kv, metrics_path, progress

log = logging.getLogger(__name__)
STAGE = "actor-critic"
HISTORY_KEYS = ("step", "eval_score", "eval_std", "eval_real_score", "eval_real_std", "seconds")  # one row per eval
FREE = ("actor_critic.steps", "actor_critic.log_steps")  # a rerun may extend the run or log more often


@dataclass
class ACResult:
    out: Path
    steps: int
    best_score: float
    best_step: int
    last_score: float
    summary: dict = field(default_factory=dict)

    def line(self, tau: float) -> str:
        return (f"{self.out}: {self.steps} actor-critic steps (dream tau={tau}), best evaluation "
                f"{self.best_score:.1f} at step {self.best_step}, last {self.last_score:.1f}")


def run(preset: Preset, ac: ActorCriticConfig, vae: str | Path, mdn: str | Path, out: str | Path, *,
        method: str = "actor-critic", on_step: Callable[[int], None] | None = None,
        runtime: Runtime = Runtime()) -> ACResult:
    """Train (or resume) C into `out` with the actor-critic in M's dream (module doc)."""
    from ..models.dynamics import name
    from ..models.mdnrnn import load_initial_z, load_mdn
    from ..models.vae import load_vae
    from .evolve import controller_for

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)} (CMA-ES is `wm evolve`), got {method!r}")
    out = Path(out)
    files.check_writable(out)
    vae_meta, mdn_meta = A.validate(vae, "vae"), A.validate(mdn, "mdn")
    for meta in (vae_meta, mdn_meta):
        if meta.env != preset.env.name:
            raise ConfigError(f"{meta.path}: made for {meta.env}, but the preset is for {preset.env.name}")
    dev = devices.resolve(runtime.device)
    model, _ = load_mdn(mdn, dev)
    load_vae(vae)  # a damaged V fails here in one line, not at evaluation
    if model.cfg.z_dim != vae_meta.model_config.get("z_dim", model.cfg.z_dim):
        raise ConfigError(f"{vae} (z={vae_meta.model_config.get('z_dim')}) and {mdn} (z={model.cfg.z_dim}) do not "
                          "match")
    if not model.cfg.done_head and model.cfg.reward_head == "none":
        raise ConfigError(f"{mdn}: training in the dream needs an M with a done or reward head (this one predicts "
                          "only z)")
    controller, model_config = controller_for(preset.controller, preset.env.name, model)
    mu0, lv0 = load_initial_z(mdn)
    config = {**A._loads(A._to_json(preset)), "actor_critic": ac.to_dict(), "method": method,
              "dynamics": name(model)}
    inputs = A.inputs_record({"vae": vae, "mdn": mdn})
    trainer = _Trainer(model, controller, ac, preset, mu0, lv0, dev, runtime.seed)
    st = _State(best_params=trainer.params(), history={k: [] for k in HISTORY_KEYS})
    if out.exists():
        _resume(out, trainer, st, config, runtime.seed, inputs)
        if trainer.step >= ac.steps and st.complete:
            log.info("%s: already trained for %d steps", out, trainer.step)
            return _result(out, trainer, st)
        log.info("resuming %s at step %d of %d", out, trainer.step, ac.steps)
    writer = MetricsWriter(metrics_path(out), truncate=not out.exists())
    writer.truncate_after("step", trainer.step)
    real = None
    if preset.evolve.eval_real:
        from ..game.agent import AgentSpec
        from ..game.episodes import EpisodeRunner

        real = EpisodeRunner(preset.env, agent=AgentSpec(str(vae), str(mdn), model_config), workers=runtime.workers,
                             backend=runtime.backend, address=runtime.address)
    save = _Saver(out, trainer, st, config, runtime.seed, inputs, model_config, preset.env.name)
    try:
        with tracking.start(writer, out, runtime, stage="train-controller", config=config, step_key="step",
                            first_step=trainer.step + 1 if trainer.step else 0):
            _train(trainer, st, save, writer, real, on_step)
            _plot(writer, out, trainer.step)
    finally:
        if real is not None:
            real.close()
    return _result(out, trainer, st)


# ------------------------------------------------------------------------------------------------ the loop
@dataclass
class _State:
    """What the artifact keeps besides the trainer: the best evaluated C and the evaluations."""

    best_params: np.ndarray
    history: dict[str, list[float]]
    best_score: float = -math.inf
    best_step: int = -1
    complete: bool = False


def _train(trainer: _Trainer, st: _State, save: _Saver, writer: MetricsWriter, real, on_step) -> None:
    """Steps to `steps`, a metrics line every `log_steps`, an evaluation and a checkpoint every `eval_every` and
    at the end; on Ctrl-C a checkpoint of the last whole step, then KeyboardInterrupt."""
    ac = trainer.ac
    bar = progress(ac.steps, "train-controller", unit="step", initial=trainer.step)
    t0, s0, last_save = time.perf_counter(), trainer.step, trainer.step
    try:
        with runs.StopAfterStep() as sigint:
            while trainer.step < ac.steps:
                losses = trainer.train_step()
                if not all(math.isfinite(v) for v in losses.values()):
                    kept = f"the last checkpoint (step {last_save}) is kept" if save.out.exists() else "nothing kept"
                    raise TrainingDiverged(f"actor-critic loss became {losses} at step {trainer.step + 1}; {kept}")
                trainer.step += 1
                bar.update(1)
                step = trainer.step
                if step % ac.log_steps == 0 or step == ac.steps:
                    rate = (step - s0) / max(time.perf_counter() - t0, 1e-9)
                    writer.write({"step": step, **losses, "ac/steps_per_s": rate})
                    log.info(kv(step=step, **{k.split("/")[-1]: v for k, v in losses.items()}, steps_s=rate))
                if step % ac.eval_every == 0 or step == ac.steps:
                    _evaluate(trainer, st, writer, real)
                    st.complete = step >= ac.steps
                    save.write()
                    last_save = step
                if on_step is not None:
                    on_step(step)
                if sigint.requested:
                    raise KeyboardInterrupt
            if not st.complete:  # stopped right after its last step, or its steps lowered: finish it
                if not st.history["step"] or st.history["step"][-1] != trainer.step:
                    _evaluate(trainer, st, writer, real)
                st.complete = True
                save.write()
    except KeyboardInterrupt:
        if trainer.step > last_save:
            save.write()
        log.info("interrupted at step %d; checkpoint in %s; rerun the same command to resume", trainer.step, save.out)
        raise
    finally:
        bar.close()


def _evaluate(trainer: _Trainer, st: _State, writer: MetricsWriter, real) -> None:
    """Score the actor's mode in the dream on the fixed seeds (and in the real game); keep the best."""
    t0 = time.perf_counter()
    params = trainer.params()
    score, std = trainer.dream_score(params)
    row = {"step": trainer.step, "eval_score": score, "eval_std": std, "eval_real_score": math.nan,
           "eval_real_std": math.nan}
    if real is not None:
        rv = np.asarray(real(params[None, :], np.arange(trainer.evolve.eval_real)[None, :]), dtype=np.float64)[0]
        row["eval_real_score"], row["eval_real_std"] = float(rv.mean()), float(rv.std())
    if score > st.best_score:
        st.best_score, st.best_step, st.best_params = score, trainer.step, params.copy()
    row["seconds"] = time.perf_counter() - t0
    for k in HISTORY_KEYS:
        st.history[k].append(float(row[k]))
    writer.write({"step": trainer.step, **{f"ac/{k}": v for k, v in row.items() if k != "step"}})
    log.info(kv(step=trainer.step, eval=score, eval_real=row["eval_real_score"], best=st.best_score))


class _Trainer:
    """Actor, critic, target critic, their optimisers, the return scale and the lanes (models/actor_critic.py)."""

    def __init__(self, model, controller, ac: ActorCriticConfig, preset: Preset, mu0: np.ndarray, lv0: np.ndarray,
                 dev: str, seed: int) -> None:
        from ..models.dynamics import memory_widths

        self.model, self.controller, self.ac, self.evolve, self.seed = model, controller, ac, preset.evolve, seed
        self.dev = torch.device(dev)
        self.mu0_np, self.lv0_np = mu0, lv0
        dtype = next(model.parameters()).dtype
        for p in model.parameters():
            p.requires_grad_(False)  # M is fixed: the actor's gradient flows through it, never into it
        model.train()  # no dropout or batch norm anywhere: the same function; cuDNN's LSTM backward needs it
        gen = torch.Generator().manual_seed(seeding.derive(seed, STAGE, 0))
        self.actor = Actor(controller, ac.min_std, ac.max_std, gen).to(self.dev, dtype)
        h, c = memory_widths(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeding.derive(seed, STAGE, 1))
            self.critic = Critic(feature_dim("zch", model.cfg.z_dim, h, c), ac.critic_units, ac.critic_layers)
        self.critic.to(self.dev, dtype)
        self.target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=ac.actor_lr, eps=ac.adam_eps)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=ac.critic_lr, eps=ac.adam_eps)
        self.norm = ReturnNorm(ac.return_decay)
        mu0_t = torch.as_tensor(mu0, device=self.dev).to(dtype)
        lv0_t = torch.as_tensor(lv0, device=self.dev).to(dtype)
        self.imag = Imagination(model, controller, self.evolve.temperature, mu0_t, lv0_t)
        self.lanes: Lanes | None = None
        self.step = 0
        self.dtype = dtype

    def params(self) -> np.ndarray:
        """C's flat parameters (n,) float64: the actor's mode."""
        return self.actor.flat.detach().cpu().double().numpy().copy()

    def _noise(self, step: int):
        gen = torch.Generator().manual_seed(seeding.derive(self.seed, STAGE, 2, step))
        return draw_noise(self.model, self.ac.lanes, self.ac.horizon, gen, self.dtype, self.dev)

    def train_step(self) -> dict[str, float]:
        ac = self.ac
        with devices.few_rows_one_thread(ac.lanes, self.dev):
            if self.lanes is None:  # the first lanes: their own draws, not any step's
                first = torch.Generator().manual_seed(seeding.derive(self.seed, STAGE, 3))
                self.lanes = self.imag.start(None, None, draw_noise(self.model, ac.lanes, 1, first, self.dtype,
                                                                     self.dev))
            noise = self._noise(self.step)
            traj = self.imag.rollout(self.actor, self.lanes, noise, ac.horizon)
            values = self.target(traj.critic_x)  # (H+1, L): gradients flow through the states, not the target
            returns = lambda_returns(traj.rewards, traj.continues, values, ac.gamma, ac.lam)  # (H, L)
            w = weights(traj.continues, ac.gamma).detach()
            scale = self.norm.update(returns) if ac.return_norm else 1.0
            actor_loss = -(w * (returns / scale + ac.entropy * traj.entropy)).mean()
            x = traj.critic_x[:-1].detach()
            v, v_slow = self.critic(x), self.target(x)
            target = returns.detach()
            critic_loss = (w * 0.5 * ((v - target) ** 2 + ac.slow_reg * (v - v_slow) ** 2)).mean()
            for loss, opt, net in ((actor_loss, self.actor_opt, self.actor), (critic_loss, self.critic_opt,
                                                                              self.critic)):
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if ac.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), ac.grad_clip)
                opt.step()
            if (self.step + 1) % ac.target_every == 0:
                with torch.no_grad():
                    for t, s in zip(self.target.parameters(), self.critic.parameters(), strict=True):
                        t.lerp_(s, ac.target_fraction)
            self._advance(traj, noise)
        return {"ac/actor_loss": float(actor_loss.detach()), "ac/critic_loss": float(critic_loss.detach()),
                "ac/return": float(returns.detach().mean()), "ac/value": float(v.detach().mean()),
                "ac/entropy": float(traj.entropy.detach().mean()), "ac/return_scale": float(scale),
                "ac/std": float(self.actor.std.detach().mean()),
                "ac/continue": float(traj.continues.detach().mean())}

    def _advance(self, traj, noise) -> None:
        """The lanes run on from the segment's end; those whose dream ended or hit the cap restart."""
        end = Lanes(**{k: v.detach() for k, v in traj.end.as_dict().items()})
        ended = end.steps >= self.evolve.max_steps
        if traj.done_logits is not None:
            ended |= (traj.done_logits.detach() > 0).any(0)
        with torch.no_grad():
            self.lanes = self.imag.start(end, ended, noise)

    @torch.no_grad()
    def dream_score(self, params: np.ndarray) -> tuple[float, float]:
        """The mean (and std) dream return of C = `params` on the evaluation seeds (`evolve.eval_seeds`)."""
        from ..dream.program import dream_rollouts
        from .evolve import eval_seeds

        res = dream_rollouts(self.model, eval_seeds(self.evolve), self.mu0_np, self.lv0_np,
                             controller=self.controller, params=params[None, :], tau=self.evolve.temperature,
                             max_steps=self.evolve.max_steps, device=self.dev)
        self.model.train()  # the RSSM's fused program set eval mode: no difference, but keep one mode
        return float(res.returns.mean()), float(res.returns.std())

    # ---- exact-resume state (stored as data, never pickled)
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": self.step, "flat": self.actor.flat.detach(), "rho": self.actor.rho.detach(),
            "critic": dict(self.critic.state_dict()), "target": dict(self.target.state_dict()),
            "actor_opt": checkpoint.optimizer_state_to_tree(self.actor_opt.state_dict()),
            "critic_opt": checkpoint.optimizer_state_to_tree(self.critic_opt.state_dict()),
            "norm": self.norm.state_dict(),
        }
        if self.lanes is not None:
            state["lanes"] = self.lanes.as_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def t(x):
            return torch.from_numpy(np.asarray(x)).to(self.dev)

        self.step = int(state["step"])
        with torch.no_grad():
            self.actor.flat.copy_(t(state["flat"]))
            self.actor.rho.copy_(t(state["rho"]))
        self.critic.load_state_dict({k: t(v) for k, v in state["critic"].items()})
        self.target.load_state_dict({k: t(v) for k, v in state["target"].items()})
        self.actor_opt.load_state_dict(checkpoint.optimizer_state_from_tree(state["actor_opt"]))
        self.critic_opt.load_state_dict(checkpoint.optimizer_state_from_tree(state["critic_opt"]))
        self.norm.load_state_dict(state.get("norm") or {})
        lanes = state.get("lanes")
        self.lanes = None if not lanes else Lanes(**{k: t(v) for k, v in lanes.items()})


# ------------------------------------------------------------------------------------------------ the artifact
class _Saver:
    """Atomic rewrites of the controller artifact: C (mean, best_params, model_config), the evaluations and the
    training state."""

    def __init__(self, out: Path, trainer: _Trainer, st: _State, config: dict, seed: int, inputs: dict,
                 model_config: dict, env: str) -> None:
        self.out, self.trainer, self.st, self.config, self.seed = out, trainer, st, config, seed
        self.inputs, self.model_config, self.env = inputs, model_config, env

    def write(self) -> None:
        st, tr = self.st, self.trainer
        with A.atomic_write(self.out, "controller", config=self.config, seed=self.seed, inputs=self.inputs,
                            env=self.env) as fh:
            fh.create_dataset(A.MEAN, data=tr.params())
            fh.create_dataset(A.BEST_PARAMS, data=np.asarray(st.best_params, dtype=np.float64))
            hist = fh.create_group(A.HISTORY)
            for k in HISTORY_KEYS:
                hist.create_dataset(k, data=np.asarray(st.history[k], dtype=np.float64))
            A.write_tree(fh.create_group(A.TRAIN_STATE), tr.state_dict())
            fh.attrs[A.BEST_SCORE] = st.best_score
            fh.attrs[A.BEST_GENERATION] = st.best_step
            A.set_model_config(fh, self.model_config)
            scores = st.history["eval_score"]
            A.set_summary(fh, {
                "method": self.config["method"], "dynamics": self.config["dynamics"], "steps": tr.step,
                "complete": st.complete, "best_score": st.best_score, "best_step": st.best_step,
                "last_eval": scores[-1] if scores else None, "parameters": int(tr.controller.param_count),
                "std": [float(s) for s in tr.actor.std.detach().cpu()],
            })


def _resume(out: Path, trainer: _Trainer, st: _State, config: dict, seed: int, inputs: dict) -> None:
    """Restore a previous run of the same command from `out`, refusing one made by another run."""
    meta = A.validate(out, "controller")
    runs.check_same_run(str(out), runs.identity(meta.config, meta.seed, meta.inputs, free=FREE),
                        runs.identity(config, seed, inputs, free=FREE))
    try:
        with A.open_artifact(out, "controller") as fh:
            if A.TRAIN_STATE not in fh:
                raise ArtifactError(f"{out}: exists without a train state, cannot resume; use another --out")
            state = A.read_tree(fh[A.TRAIN_STATE])
            history = {k: [float(x) for x in fh[A.HISTORY][k][()]] for k in HISTORY_KEYS}
            best = np.asarray(fh[A.BEST_PARAMS][()], dtype=np.float64)
            best_score, best_step = float(fh.attrs[A.BEST_SCORE]), int(fh.attrs[A.BEST_GENERATION])
        if best.shape != st.best_params.shape or not np.isfinite(best).all():
            raise ArtifactError(f"{out}: best_params do not fit this controller or hold NaN (damaged)")
        trainer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{out}: unreadable actor-critic state ({A._first_line(exc)}); delete it to start "
                            "over") from None
    st.history, st.best_params, st.best_score, st.best_step = history, best, best_score, best_step
    st.complete = bool(meta.summary.get("complete"))


def _result(out: Path, trainer: _Trainer, st: _State) -> ACResult:
    scores = st.history["eval_score"]
    return ACResult(out, trainer.step, st.best_score, st.best_step, scores[-1] if scores else math.nan,
                    {"method": "actor-critic"})


def _plot(writer: MetricsWriter, out: Path, step: int) -> None:
    """`<out>.fitness.png`: the evaluations and the training figures per step; to the tracker too."""
    from ..plots import loss_curves

    keys = ["ac/eval_score", "ac/eval_real_score", "ac/return", "ac/value", "ac/actor_loss", "ac/critic_loss",
            "ac/entropy", "ac/std"]
    png = loss_curves(writer.read(), keys, Path(out).with_suffix(".fitness.png"), x_key="step",
                      title=f"actor-critic: {Path(out).name}")
    writer.image("ac/fitness", png, step)
