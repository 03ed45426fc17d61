"""`wm train-mdn`: train M on one or more series artifacts (ref §4). V never runs: only the stored (μ, logσ²) are
read, and z is drawn afresh from them for every batch (ref §4.1, §C.3).

Objective per batch (ref §4.1, §4.3):  loss = z_nll + done_bce (+ reward_weight·reward_loss), Adam with
lr = (lr0 − lr_min)·decay^step + lr_min, gradients clipped by value to [−c, c].

With `dynamics="rssm"` (`wm train-mdn --dynamics rssm`) M is an RSSM instead (`train_rssm`: its losses), trained
on the same batches by the same loop, checkpoints and resume, into the same artifact kind.

The output artifact (kind ``mdn``) is rewritten atomically every `checkpoint_steps`; it holds the weights, the
model config, everything an exact resume needs (optimizer, step, batcher RNG and position, carried LSTM state) and
the first-frame (μ, logσ²) of every episode (dream starts, ref §7). Rerunning the same command resumes; on CPU a
resumed run ends with the same weights as an uninterrupted one. A NaN/inf loss stops the run and keeps the last
good checkpoint; Ctrl-C checkpoints at the next step boundary and re-raises KeyboardInterrupt.

With `mdn_train.ensemble` K >= 2, `run` trains an ensemble of K MDN-RNNs instead (`train_ensemble`), each member
by this same loop (`member`: its own seed and bootstrap resample; docs/pessimism.md).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import tracking
from ..config import DYNAMICS, MDNConfig, MDNTrainConfig, Preset, RSSMConfig, RSSMTrainConfig
from ..models.mdnrnn import (
    MDNRNN,
    auto_restart_path,
    count_parameters,
    done_bce,
    load_mdn,
    mdn_nll,
    reward_loss,
)
from ..runtime import Runtime, seeding
from ..runtime import device as devices
from ..runtime.errors import ArtifactError, ConfigError, TrainingDiverged
from ..store import artifacts as A
from ..store import checkpoint, files, metrics, runs
from ..store.series_data import (
    Batch,
    SeriesData,
    bootstrap_episodes,
    load_series,
    make_batcher,
    split_episodes,
    validation_batches,
)

log = logging.getLogger(__name__)
STAGE = "mdn"


@dataclass
class MDNResult:
    out: Path
    steps: int
    parameters: int
    nll: float | None
    val_nll: float | None
    done_bce: float | None
    resumed_from: int = 0
    summary: dict = field(default_factory=dict)


def lr_at(cfg: MDNTrainConfig, step: int) -> float:
    """ref §4.1: lr = (lr0 − lr_min)·decay^step + lr_min."""
    return (cfg.lr - cfg.lr_min) * cfg.lr_decay**step + cfg.lr_min


def run(preset: Preset, series: Sequence[str | os.PathLike], out: str | os.PathLike,
        init: str | os.PathLike | None = None, *, dynamics: str = "mdnrnn", rssm: RSSMConfig | None = None,
        rssm_train: RSSMTrainConfig | None = None, on_step: Callable[[int], None] | None = None,
        runtime: Runtime = Runtime(), member: int | None = None) -> MDNResult:
    """Train (or resume training) M into `out` from `series` (several artifacts of one env are concatenated).

    `init` warm-starts the weights from another mdn artifact with the same architecture (iterative training; an
    ensemble member from the same member of an ensemble `init`).
    `dynamics` "rssm" trains an RSSM (`rssm`, `rssm_train`: default the preset scale's, `config.rssm_config`).
    `on_step(step)` is called after each completed step (tests use it to inject interruptions).
    With `mdn_train.ensemble` >= 2: an ensemble (`train_ensemble`), whose member k this trains when `member` = k:
    weights and batches from `member_seed`, on a bootstrap resample of the training episodes; the held-out
    episodes and their validation noise are the run's, shared by every member."""
    if member is None and preset.mdn_train.ensemble > 1:
        from . import train_ensemble

        return train_ensemble.run(preset, series, out, init, dynamics=dynamics, on_step=on_step, runtime=runtime)
    seed, out = runtime.seed, Path(out)
    own_seed = seed if member is None else member_seed(seed, member)  # weights and batches
    if dynamics not in DYNAMICS:
        raise ConfigError(f"dynamics must be one of {', '.join(DYNAMICS)}, got {dynamics!r}")
    files.check_writable(out)  # before any work: a missing folder is a one-line error, not a late failure
    data, mcfg, tcfg = _check_inputs(preset, [Path(p) for p in series])
    inputs = A.inputs_record({"series": series, **({"init": init} if init is not None else {})})
    dev = torch.device(devices.resolve(runtime.device))
    if dynamics == "rssm":
        from . import train_rssm

        model, model_config, run_config, rssm_train = train_rssm.build(preset, mcfg, rssm, rssm_train, own_seed)
    else:
        run_config = {"env": preset.env.name, "mdn": mcfg.to_dict(), "mdn_train": tcfg.to_dict(),
                      "scale": preset.scale}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeding.derive(own_seed, STAGE, 0))
            model = MDNRNN(mcfg)
        model_config = mcfg
    if member is not None:
        run_config["ensemble_member"] = member
    model.to(dev)
    if mcfg.restart_input:
        log.info("M on %s: batches with restarts inside run on the %s path", dev, auto_restart_path(dev))
    train_eps, val_eps = split_episodes(data.episodes, tcfg.val_episodes, seed)
    if member is not None:
        train_eps = bootstrap_episodes(train_eps, own_seed)
    batcher = make_batcher(tcfg.batching, data, train_eps, tcfg.batch_size, tcfg.seq_len, own_seed)
    if dynamics == "rssm":
        trainer = train_rssm.Trainer(model, batcher, tcfg, rssm_train, dev, own_seed)
    else:
        trainer = _Trainer(model, torch.optim.Adam(model.parameters(), lr=tcfg.lr), batcher, tcfg, dev)
    params = count_parameters(model)

    # ---- an existing output: resume, already done, or refuse (in _resume)
    start, previous = _resume(out, trainer, run_config, seed, inputs) if out.exists() else (0, {})
    if start >= tcfg.steps and previous.get("complete"):
        log.info("%s: already trained for %d steps", out, start)
        return MDNResult(out=out, steps=start, parameters=params, nll=previous.get("nll"),
                         val_nll=previous.get("val_nll"), done_bce=previous.get("done_bce"), resumed_from=start,
                         summary=previous)
    resuming = out.exists()
    writer = metrics.MetricsWriter(metrics.metrics_path(out), truncate=not resuming)
    if resuming:
        writer.truncate_after("step", start)
        log.info("resuming %s at step %d of %d", out, start, tcfg.steps)
    elif init is not None:
        _warm_start(model, Path(init), model.cfg, member)

    ckpt = _Checkpointer(out, trainer, model_config, run_config, seed, inputs, data, train_eps, val_eps, params)
    ckpt.last_step, trainer.step = start, start
    ckpt.val = previous.get("val_nll") if start else None
    done_fraction = _done_fraction(data, train_eps) if mcfg.done_head else None
    ckpt.extra = {"done_positive_fraction": done_fraction} if done_fraction is not None else {}
    with tracking.start(writer, out, runtime, stage="train-mdn", config=run_config, step_key="step",
                        first_step=start + 1 if resuming else 0):
        _train(trainer, ckpt, writer, data, val_eps, seed, on_step)
        _plot(writer, out, trainer.step, trainer.prefix)
    s = ckpt.summary
    return MDNResult(out=out, steps=trainer.step, parameters=params, nll=s.get("nll"), val_nll=s.get("val_nll"),
                     done_bce=s.get("done_bce"), resumed_from=start, summary=s)


def _check_inputs(preset: Preset, series: list[Path]) -> tuple[SeriesData, MDNConfig, MDNTrainConfig]:
    """The series, and M's config with the sizes they give; bad input fails here in one line."""
    data = load_series(series)
    if data.env and preset.env.name != data.env:
        raise ConfigError(f"{series[0]}: series of env {data.env!r}, but the preset is for {preset.env.name!r}")
    mcfg = preset.mdn.replace(z_dim=data.z_dim, action_dim=data.action_dim)  # sizes come from the data
    if mcfg.done_head and preset.mdn_train.batching != "streams" and not _ends_inside(data):
        # a row of the `episodes` layout never trains its last frame: an end is seen only where an episode was
        # recorded past it (CarRacing's data run on after leaving the playfield)
        raise ConfigError("a done head with batching 'episodes' needs episodes recorded past their end (CarRacing "
                          "with ignore_done); these end at their last frame: use --batching streams")
    return data, mcfg, preset.mdn_train


def _train(trainer: _Trainer, ckpt: _Checkpointer, writer: metrics.MetricsWriter, data: SeriesData,
           val_eps: np.ndarray, seed: int, on_step: Callable[[int], None] | None) -> None:
    """The loop: steps to `steps`, a metrics line every `log_steps`, validation and a checkpoint every
    `checkpoint_steps` and at the end; on Ctrl-C a checkpoint of the last whole step, then KeyboardInterrupt."""
    tcfg, out, p = trainer.cfg, ckpt.out, trainer.prefix
    bar = metrics.progress(tcfg.steps, "train-mdn", unit="step", initial=trainer.step)
    t0, s0 = time.perf_counter(), trainer.step
    consistent = True
    try:
        with runs.StopAfterStep() as sigint:
            while trainer.step < tcfg.steps:
                consistent = False  # from here until the step counter moves, weights and counters disagree
                losses = trainer.train_step()
                if not math.isfinite(losses[f"{p}/loss"]):
                    kept = (f"the last good checkpoint (step {ckpt.last_step}) is kept in {out}" if out.exists()
                            else "no checkpoint had been written")
                    raise TrainingDiverged(f"M loss became {losses[f'{p}/loss']} at step {trainer.step + 1}; stopped, {kept}")
                trainer.step += 1
                consistent = True
                bar.update(1)
                step = trainer.step
                if step % tcfg.log_steps == 0 or step == tcfg.steps:
                    rate = (step - s0) / max(time.perf_counter() - t0, 1e-9)
                    writer.write({"step": step, **losses, "mdn/steps_per_s": rate})
                    log.info(metrics.kv(step=step, **{k.split("/")[-1]: v for k, v in losses.items()}, steps_s=rate))
                if step % tcfg.checkpoint_steps == 0 and step < tcfg.steps:
                    val = trainer.validate(data, val_eps, seed)
                    if val is not None:
                        writer.write({"step": step, f"{p}/val_nll": val})
                    ckpt.save(losses, val, complete=False)
                if on_step is not None:
                    on_step(step)
                if sigint.requested:
                    raise KeyboardInterrupt
            val = trainer.validate(data, val_eps, seed)
            if val is not None:
                writer.write({"step": trainer.step, f"{p}/val_nll": val})
            ckpt.save(trainer.last_losses, val, complete=True)
    except KeyboardInterrupt:
        if consistent and trainer.step > ckpt.last_step:
            ckpt.save(trainer.last_losses, None, complete=False)
        # info, not warning: the CLI's own line on exit is the one line a Ctrl-C prints
        log.info("interrupted at step %d; checkpoint in %s; rerun the same command to resume", ckpt.last_step, out)
        raise
    finally:
        bar.close()


# -------------------------------------------------------------------------------------------- training
class _Trainer:
    prefix = "mdn"  # metric namespace (train_rssm.Trainer: "rssm")

    def __init__(self, model: MDNRNN, optimizer, batcher, cfg: MDNTrainConfig, dev: torch.device) -> None:
        self.model, self.optimizer, self.batcher, self.cfg, self.dev = model, optimizer, batcher, cfg, dev
        self.step = 0
        self.carried: tuple[torch.Tensor, torch.Tensor] | None = None  # streams: LSTM state across chunks
        self.last_losses: dict[str, float] = {}

    def _tensors(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(batch, k))).to(self.dev)
                for k in ("z", "actions", "rewards", "restart", "mask", "live", "death")}

    def losses(self, batch: Batch, state) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple]:
        """Teacher forcing: inputs frames [:-1], targets frames [1:] (ref §4.1)."""
        m, cfg = self.model.cfg, self.cfg
        x = self._tensors(batch)
        out, state = self.model(x["z"][:, :-1], x["actions"][:, :-1], x["restart"][:, :-1], state)
        mask = x["mask"]
        nll = mdn_nll(x["z"][:, 1:], out, mask)
        parts = {"mdn/nll": nll}
        loss = nll
        if m.done_head:
            # ref §4.3, §C.1: whether frame t+1 starts a new episode, counting deaths only (not the step cap)
            # after an episode's end (CarRacing's data run on) only its first terminated step is a death
            bce = done_bce(out.done_logit, x["death"][:, :-1], cfg.done_weight, mask * x["live"][:, :-1])
            parts["mdn/done_bce"] = bce
            loss = loss + bce
        if m.reward_head != "none":
            live = mask * x["live"][:, :-1]  # no reward after the episode's end (SeriesData.live)
            rl = reward_loss(out.reward, x["rewards"][:, :-1], m.reward_head, live)  # reward after action t
            parts["mdn/reward_loss"] = rl
            loss = loss + cfg.reward_weight * rl
        return loss, parts, state

    def train_step(self) -> dict[str, float]:
        self.model.train()
        batch = self.batcher.next()
        state = None if batch.reset or self.carried is None else self.carried
        loss, parts, state = self.losses(batch, state)
        lr = lr_at(self.cfg, self.step)
        result = {"mdn/loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}, "mdn/lr": lr}
        if not math.isfinite(result["mdn/loss"]):
            return result
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), self.cfg.grad_clip)  # ref §4.1: by value
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if self.cfg.batching == "streams":
            self.carried = (state[0].detach(), state[1].detach())  # ref §4.3: truncated BPTT
        self.last_losses = result
        return result

    @torch.no_grad()
    def validate(self, data: SeriesData, val_eps: np.ndarray, seed: int) -> float | None:
        """Mean z NLL over held-out whole episodes (position-weighted)."""
        if len(val_eps) == 0:
            return None
        self.model.eval()
        total, count = 0.0, 0.0
        for batch in validation_batches(data, val_eps, self.cfg.batch_size, seed):
            x = self._tensors(batch)
            out, _ = self.model(x["z"][:, :-1], x["actions"][:, :-1], x["restart"][:, :-1])
            n = float(x["mask"].sum())
            total += float(mdn_nll(x["z"][:, 1:], out, x["mask"])) * n
            count += n
        self.model.train()
        return total / count if count else None

    # ---- exact-resume state (stored as data via artifacts.write_tree, never pickled)
    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "optimizer": checkpoint.optimizer_state_to_tree(self.optimizer.state_dict()),
            "batcher": self.batcher.state_dict(),
            "last_losses": self.last_losses,
        }
        if self.carried is not None:
            state["carried"] = {"h": self.carried[0], "c": self.carried[1]}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.optimizer.load_state_dict(checkpoint.optimizer_state_from_tree(state["optimizer"]))
        self.batcher.load_state_dict(state["batcher"])
        # (older checkpoints also hold "torch_rng", the process's global torch state: training never draws from
        # it, and torch seeds it afresh in every process, so it is not restored)
        self.last_losses = dict(state.get("last_losses") or {})
        carried = state.get("carried")
        self.carried = None if not carried else tuple(torch.from_numpy(carried[k]).to(self.dev) for k in ("h", "c"))


# ------------------------------------------------------------------------------------------- checkpoint
class _Checkpointer:
    """Atomic rewrites of the mdn artifact (weights, model config, train state, summary, initial z)."""

    def __init__(self, out: Path, trainer: _Trainer, mcfg: MDNConfig | dict, run_config: dict, seed: int, inputs: dict,
                 data: SeriesData, train_eps: np.ndarray, val_eps: np.ndarray, params: int) -> None:
        self.out, self.trainer, self.mcfg, self.run_config, self.seed, self.inputs = out, trainer, mcfg, run_config, seed, inputs
        self.data, self.train_eps, self.val_eps, self.params = data, train_eps, val_eps, params
        self.last_step = 0
        self.complete = False
        self.losses: dict[str, float] = {}
        self.summary: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.val: float | None = None

    def save(self, losses: dict[str, float], val: float | None, *, complete: bool) -> None:
        self.losses = losses or self.losses
        self.val = val if val is not None else self.val
        self.summary = self._summary(complete)
        mu0, logvar0 = self.data.initial()
        checkpoint.save(
            self.out, "mdn", state_dict=self.trainer.model.state_dict(), model_config=self.mcfg,
            train_state=self.trainer.state_dict(), summary=self.summary, complete=complete, config=self.run_config,
            seed=self.seed, inputs=self.inputs, env=self.run_config["env"],
            extra=lambda fh: A.write_initial_z(fh, mu0, logvar0),  # ref §7: dreams start from real first frames
        )
        self.last_step, self.complete = self.trainer.step, complete

    def _summary(self, complete: bool) -> dict[str, Any]:
        ls, p = self.losses, self.trainer.prefix
        s: dict[str, Any] = {
            "parameters": self.params, "steps": self.trainer.step,
            "nll": ls.get(f"{p}/nll"), "loss": ls.get(f"{p}/loss"), "lr": ls.get(f"{p}/lr"),
            "val_nll": self.val, "episodes": int(self.data.episodes), "frames": int(self.data.index.frames),
            "train_episodes": len(self.train_eps), "val_episodes": len(self.val_eps),
        }
        if f"{p}/done_bce" in ls:
            s["done_bce"] = ls[f"{p}/done_bce"]
        if f"{p}/reward_loss" in ls:
            s["reward_loss"] = ls[f"{p}/reward_loss"]
        s.update({k.split("/", 1)[1]: v for k, v in ls.items() if k.split("/", 1)[1] not in s})  # the RSSM's KL
        if p != "mdn":
            s["dynamics"] = p
        s.update(self.extra)
        if complete:  # `wm info` shows these; computed once here rather than on every call
            from ..dream.program import DREAM_SUMMARY, dream_summary

            mu0, lv0 = self.data.initial()
            was_training = self.trainer.model.training
            self.trainer.model.eval()
            s[DREAM_SUMMARY] = dream_summary(self.trainer.model, mu0, lv0, env=self.run_config["env"])
            self.trainer.model.train(was_training)
        return s


def member_seed(seed: int, member: int) -> int:
    """Ensemble member k's seed: its initial weights, its bootstrap resample and its batches."""
    return seeding.derive(seed, "ensemble-member", member)


def _resume(out: Path, trainer: _Trainer, run_config: dict, seed: int, inputs: dict) -> tuple[int, dict]:
    """Restore the train state from an existing `out`, refusing one made by a different run; (step, summary)."""
    meta = A.validate(out, "mdn")
    free = ("mdn_train.steps",)  # more steps continue the same run
    if "ensemble_member" in run_config:  # a member is the same whatever the ensemble's size and calibration
        free += ("mdn_train.ensemble", "mdn_train.unknown_quantile")
    runs.check_same_run(str(out), runs.identity(meta.config, meta.seed, meta.inputs, free=free),
                        runs.identity(run_config, seed, inputs, free=free))
    ckpt = checkpoint.load(out, "mdn")
    if "optimizer" not in ckpt.train_state:
        raise ArtifactError(f"{out}: exists without a train state, cannot resume; use another --out")
    checkpoint.load_weights(trainer.model, ckpt.weights, out)
    trainer.load_state_dict(ckpt.train_state)
    return trainer.step, meta.summary


def _warm_start(model: MDNRNN, init: Path, mcfg: MDNConfig | RSSMConfig, member: int | None = None) -> None:
    """Iterative training (ref §9): start from another M of the same architecture (and dynamics); ensemble member
    k from member k of an ensemble `init` (k mod its size), or from a single M."""
    from ..models.ensemble import is_ensemble, load_ensemble

    if member is not None and is_ensemble(init):
        members = load_ensemble(init, "cpu").members
        other = members[member % len(members)]
    else:
        other, _ = load_mdn(init, "cpu")
    if other.cfg != mcfg:
        raise ConfigError(f"{init}: its M {other.cfg.to_dict()} differs from this run's {mcfg.to_dict()}")
    model.load_state_dict(other.state_dict())


def _ends_inside(data: SeriesData) -> bool:
    """Whether some episode terminated before its last recorded frame."""
    last = data.index.starts + data.index.lengths - 1
    inside = data.terminated.copy()
    inside[last] = False
    return bool(inside.any())


def _done_fraction(data: SeriesData, train_eps: np.ndarray) -> float:
    """Fraction of positive done targets in the training data: episodes that end in a death / frames."""
    starts, lengths = data.index.starts[train_eps], data.index.lengths[train_eps]
    deaths = sum(bool(data.terminated[s:s + n].any()) for s, n in zip(starts.tolist(), lengths.tolist(), strict=True))
    return deaths / max(int(lengths.sum()), 1)


def _plot(writer: metrics.MetricsWriter, out: Path, step: int, p: str = "mdn") -> None:
    """PNG of the loss curves beside the artifact, and to the tracker."""
    from .. import plots

    keys = ("nll", "val_nll", *(("rec_nll", "kl") if p != "mdn" else ()), "done_bce", "reward_loss", "lr")
    png = plots.loss_curves(writer.read(), tuple(f"{p}/{k}" for k in keys), checkpoint.beside(out, ".losses.png"),
                            title=f"M: {out.name}")
    writer.image(f"{p}/loss_curves", png, step)


