"""`wm train-vae`: train V (ref §3) on frames streamed from one or more rollouts artifacts.

Adam (lr 1e-4), batch 100, `epochs` passes over the training frames (a float: 0.5 is half an epoch); frames are
shuffled across the whole dataset every epoch without loading it (store/frames.py). Whole episodes are held out for a
validation loss per epoch. On CUDA the forward pass runs under autocast (bf16 where supported, else fp16 with a
gradient scaler); the loss is always computed in float32.

The output artifact is also the checkpoint: it is rewritten atomically at the start, at the end of every epoch,
every `checkpoint_minutes`, and on Ctrl-C, with `summary.complete` false until training ends. Rerunning the same
command resumes from it; on CPU a resumed run ends with exactly the weights of an uninterrupted one, because the
frame order is a function of (seed, epoch), the reparameterisation noise of step s is drawn from a generator
seeded with (seed, s), and the optimizer state is saved exactly.

An existing output is handled as follows: unfinished and made from the same settings -> resume; finished and made
from the same settings -> nothing to do (the result says `already_done`); anything else -> refused (delete it or
choose another --out). "Same settings" means the same env, architecture, training hyper-parameters (except
num_workers / checkpoint_minutes / log_steps, which do not change the result), seed and input checksums.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import plots, tracking
from ..config import Preset, VAEConfig
from ..models.vae import ConvVAE, parameter_count, reparameterize, to_input, vae_loss
from ..runtime import Runtime, seeding
from ..runtime import device as device_mod
from ..runtime.errors import ArtifactError, ConfigError, Interrupted, TrainingDiverged
from ..store import artifacts as A
from ..store import checkpoint, files, frames, metrics, runs

log = logging.getLogger(__name__)

KIND = "vae"
VOLATILE = ("num_workers", "checkpoint_minutes", "log_steps")  # do not change the result: free to differ on resume
GRID_FRAMES = 16


@dataclass(frozen=True)
class Result:
    out: Path
    steps: int
    epochs: float
    train_loss: float | None
    val_loss: float | None
    recon: float | None
    kl: float | None
    parameters: int
    frames_per_s: float
    resumed_from: int  # step the run started from (0: fresh)
    already_done: bool = False

    def line(self) -> str:
        """The one summary line `wm train-vae` prints."""
        if self.already_done:
            return f"{self.out}: already complete ({self.steps} steps, {self.epochs:g} epochs); nothing to do"
        resumed = f", resumed from step {self.resumed_from}" if self.resumed_from else ""
        val = f" val_loss={self.val_loss:.2f}" if self.val_loss is not None else ""
        return (f"{self.out}: vae {self.parameters:,} params, {self.steps} steps ({self.epochs:g} epochs{resumed}) "
                f"loss={_fmt(self.train_loss)} recon={_fmt(self.recon)} kl={_fmt(self.kl)}{val} "
                f"{self.frames_per_s:.0f} frames/s")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


# ------------------------------------------------------------------------------------------------ inputs
def _identity(train_config: dict, seed: int, env: str, model_config: dict, inputs: dict) -> dict:
    """What must match for an existing output to be resumed (or reported as done)."""
    return runs.identity({"env": env, "vae": model_config, "vae_train": train_config}, seed, inputs,
                         free=[f"vae_train.{k}" for k in VOLATILE])


def _identity_of(meta: A.Meta) -> dict:
    return _identity(meta.config.get("vae_train") or {}, meta.seed, meta.env, meta.model_config, meta.inputs)


# ------------------------------------------------------------------------------------------------ steps
@dataclass
class _Amp:
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    def autocast(self, device: str):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype=self.dtype)


def _make_amp(mode: str, device: str) -> _Amp:
    if device != "cuda" or mode == "off":
        return _Amp(None, None)
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return _Amp(torch.bfloat16, None)
    return _Amp(torch.float16, torch.amp.GradScaler("cuda"))


def _noise(shape, generator: torch.Generator, seed: int, stage: str, index: int, device: str) -> torch.Tensor:
    """ε ~ N(0, I) from a generator seeded with (seed, stage, index): the noise of a step depends on nothing else."""
    generator.manual_seed(seeding.derive(seed, stage, index))
    return torch.randn(shape, generator=generator, device=device)


def _forward_loss(model: ConvVAE, batch: torch.Tensor, eps_fn: Callable[[tuple], torch.Tensor], amp: _Amp,
                  device: str, kl_tolerance: float, detail_weight: float = 0.0):
    x = to_input(batch.to(device, non_blocking=True))  # (B, 3, 64, 64) in [0, 1]
    with amp.autocast(device):
        mu, logvar = model.encode(x)
        z = reparameterize(mu.float(), logvar.float(), eps_fn(tuple(mu.shape)))
        y = model.decode(z)
    return vae_loss(x, y.float(), mu.float(), logvar.float(), kl_tolerance, detail_weight)  # float32 (ref §3)


def train_step(model: ConvVAE, optimizer: torch.optim.Optimizer, batch: torch.Tensor, eps_fn, amp: _Amp,
               device: str, kl_tolerance: float, detail_weight: float = 0.0) -> torch.Tensor:
    """One Adam step on a uint8 batch (B, 64, 64, 3); returns the detached (loss, recon, kl) (3,)."""
    loss, r, kl = _forward_loss(model, batch, eps_fn, amp, device, kl_tolerance, detail_weight)
    optimizer.zero_grad(set_to_none=True)
    if amp.scaler is not None:
        amp.scaler.scale(loss).backward()
        amp.scaler.step(optimizer)
        amp.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return torch.stack([loss, r, kl]).detach()


@torch.no_grad()
def evaluate(model: ConvVAE, batches, *, seed: int, epoch: int, amp: _Amp, device: str,
             kl_tolerance: float, detail_weight: float = 0.0) -> dict[str, float] | None:
    """Mean loss, recon and KL over the given batches, with noise seeded by (seed, epoch): repeatable."""
    model.eval()
    gen = torch.Generator(device=device)
    gen.manual_seed(seeding.derive(seed, "vae-val-noise", epoch))
    sums, n = torch.zeros(3, dtype=torch.float64, device=device), 0
    try:
        for batch in batches:
            b = torch.from_numpy(batch)
            out = _forward_loss(model, b, lambda s: torch.randn(s, generator=gen, device=device), amp, device,
                                kl_tolerance, detail_weight)
            sums += torch.stack(out).double() * len(b)
            n += len(b)
    finally:
        model.train()
    if n == 0:
        return None
    loss, r, kl = (sums / n).tolist()
    return {"loss": loss, "recon": r, "kl": kl}


@torch.no_grad()
def reconstruct(model: ConvVAE, frames_u8: np.ndarray, device: str) -> np.ndarray:
    """Decode(mu) of uint8 frames (N, 64, 64, 3) -> uint8 (N, 64, 64, 3)."""
    model.eval()
    try:
        mu, _ = model.encode(to_input(torch.from_numpy(frames_u8).to(device)))
        y = model.decode(mu).permute(0, 2, 3, 1)  # (N, 64, 64, 3)
    finally:
        model.train()
    return (y.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


# ------------------------------------------------------------------------------------------------ run
def run(config: Preset, rollouts: Sequence[str | Path], out: str | Path, *, init: str | Path | None = None,
        on_step: Callable[[int], None] | None = None, runtime: Runtime = Runtime()) -> Result:
    """Train V on `rollouts` into the `vae` artifact `out` (resuming it if it is an unfinished run of the same
    settings). `init`: start from another VAE artifact's weights and architecture (a fresh optimizer; an unfinished
    one is accepted too). `on_step(step)` is called after every optimizer step (progress, tests); a
    KeyboardInterrupt raised there stops the run like Ctrl-C."""
    out = Path(out)
    rollouts = [Path(p) for p in rollouts]
    config, env, init_ckpt = _check_inputs(config, rollouts, out, init)
    inputs = A.inputs_record({"rollouts": rollouts, **({"init": init} if init is not None else {})})
    resume = _existing(out, _identity(config.vae_train.to_dict(), runtime.seed, env, config.vae.to_dict(), inputs))
    if isinstance(resume, Result):
        return resume
    t = _Trainer(config, rollouts, out, env, inputs, runtime, init_ckpt, resume)
    with tracking.start(t.mw, out, runtime, stage="train-vae", config=config, step_key="step",
                        first_step=t.step + 1 if resume is not None else 0):
        if resume is None:
            t.save(complete=t.total == 0)  # the file exists from the start: writable, and resumable from step 0
        with runs.StopAfterStep() as stop, metrics.progress(t.total, "train-vae", unit="step", initial=t.step) as bar:
            while t.step < t.total:
                t.train_epoch(stop, bar, on_step)  # to the epoch's end, then validation and a checkpoint
        return t.result()


def _check_inputs(config: Preset, rollouts: list[Path], out: Path, init: str | Path | None):
    """(config with --init's architecture, env, init checkpoint or None); bad input fails here in one line."""
    env = frames.rollouts_env(rollouts)
    if env != config.env.name:
        raise ConfigError(f"the rollouts are {env} data but the preset is for {config.env.name}")
    files.check_writable(out)
    if init is None:
        return config, env, None
    init_ckpt = checkpoint.load(init, KIND)
    if init_ckpt.meta.env != env:
        raise ConfigError(f"--init {init}: a {init_ckpt.meta.env} VAE, but the rollouts are {env} data")
    try:
        init_cfg = VAEConfig.from_dict(init_ckpt.meta.model_config)
    except (ConfigError, TypeError) as exc:
        raise ArtifactError(f"{init}: invalid model_config ({exc})") from None
    if init_cfg != config.vae:
        log.warning("--init %s: using its architecture %s instead of the preset's", init, init_cfg.to_json())
    return config.replace(vae=init_cfg), env, init_ckpt


def _existing(out: Path, identity: dict):
    """An existing `out`: its checkpoint to resume, or a Result when it is complete; refused when it is another
    run's. None when there is nothing at `out`."""
    if not out.exists():
        return None
    try:
        resume = checkpoint.load(out, KIND)
    except ArtifactError as exc:
        raise ArtifactError(f"{out}: exists but is not a readable VAE checkpoint ({exc}); delete it to start "
                            "over") from None
    runs.check_same_run(str(out), _identity_of(resume.meta), identity,
                        hint=" (or --init it to continue from its weights)")
    if not resume.complete:
        return resume
    s = resume.meta.summary
    return Result(out, int(s.get("steps", 0)), float(s.get("epochs", 0)), s.get("train_loss"), s.get("val_loss"),
                  s.get("recon"), s.get("kl"), int(s.get("parameters", 0)), 0.0, int(s.get("steps", 0)),
                  already_done=True)


class _Trainer:
    """V, its optimizer and the run's counters: the loop's state, checkpointed whole in the artifact."""

    def __init__(self, config: Preset, rollouts: list[Path], out: Path, env: str, inputs: dict, runtime: Runtime,
                 init_ckpt, resume) -> None:
        tc = self.tc = config.vae_train
        self.config, self.out, self.env, self.inputs, self.seed = config, out, env, inputs, runtime.seed
        self.dev = dev = device_mod.resolve(runtime.device)
        # ---- data: the frame order is a function of (seed, epoch)
        self.sources = frames.split_episodes(rollouts, tc.val_episodes, self.seed)
        self.plan = frames.TrainFrames(self.sources, tc.block_frames, tc.buffer_blocks, self.seed)
        n_train, n_val = self.plan.frames, frames.val_frames(self.sources)
        if n_train == 0:
            raise ConfigError(f"no training frames in {', '.join(map(str, rollouts))} "
                              f"({n_val} frames held out for validation)")
        self.spe = spe = math.ceil(n_train / tc.batch_size)  # steps per epoch; an epoch's last batch may be short
        self.total = math.ceil(round(tc.epochs * spe, 6))  # round: 0.3 * 10 must give 3 steps, not 4
        # ---- model, optimizer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeding.derive(self.seed, "vae-init"))
            self.model = model = ConvVAE(config.vae)
        if init_ckpt is not None:
            checkpoint.load_weights(model, init_ckpt.weights, init_ckpt.meta.path)
        if resume is not None:
            checkpoint.load_weights(model, resume.weights, out)
        model.to(dev)
        if dev == "cuda":
            model.to(memory_format=torch.channels_last)
        model.train()
        self.optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
        self.amp = _make_amp(tc.amp, dev)
        # epoch_sums: (loss, recon, kl) x frames and frames of the current epoch; window_start: step of the last log
        self.counters = {"step": 0, "epoch_sums": [0.0, 0.0, 0.0, 0.0], "window_start": 0}
        self.history: dict[str, list] = {k: [] for k in ("epoch", "train_loss", "train_recon", "train_kl",
                                                          "val_loss", "val_recon", "val_kl")}
        if resume is not None:
            self._load(resume.train_state)
        self.step = self.start_step = int(self.counters["step"])
        if resume is not None:
            log.info("resuming %s at step %d of %d", out, self.step, self.total)
        self.mw = metrics.MetricsWriter(metrics.metrics_path(out), truncate=resume is None)
        if resume is not None:
            self.mw.truncate_after("step", self.step)
        self.grid_frames = frames.sample_frames(self.sources, GRID_FRAMES, val=n_val > 0)
        self.base_summary = {"total_steps": self.total, "steps_per_epoch": spe, "train_frames": n_train,
                             "val_frames": n_val, "parameters": parameter_count(model), "z_dim": config.vae.z_dim,
                             "device": dev, "rollouts_episodes": int(sum(len(s.starts) for s in self.sources))}
        self.last_saved = self.step if resume is not None else -1
        self.gen = torch.Generator(device=dev)
        self.acc = torch.zeros(3, dtype=torch.float32, device=dev)  # window sums of (loss, recon, kl) x frames
        self.acc_frames, self.trained = 0, 0
        self.t_start = self.t_window = time.perf_counter()
        self.t_ckpt = time.monotonic()

    def _load(self, ts: dict) -> None:
        try:
            self.optimizer.load_state_dict(checkpoint.optimizer_state_from_tree(ts["optimizer"]))
            self.counters.update({k: ts["counters"][k] for k in self.counters})
            self.history.update(ts.get("history", {}))
            if self.amp.scaler is not None and "scaler" in ts:
                self.amp.scaler.load_state_dict(ts["scaler"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise ArtifactError(f"{self.out}: corrupt training state ({type(exc).__name__}: {exc}); delete it to "
                                "start over") from None

    # ---- the loop
    def train_epoch(self, stop: runs.StopAfterStep, bar, on_step) -> None:
        """Steps to the end of this epoch (or of a fractional last one), then validate, checkpoint and plot; on a
        stop request: checkpoint and raise Interrupted."""
        tc, step = self.tc, self.step
        epoch, in_epoch = divmod(step, self.spe)
        if in_epoch == 0:
            self.counters["epoch_sums"] = [0.0, 0.0, 0.0, 0.0]
        batches = frames.train_batches(self.plan, epoch, tc.batch_size, skip_frames=in_epoch * tc.batch_size,
                                       num_workers=tc.num_workers)
        try:
            for batch in batches:
                self._train_step(batch)
                bar.update(1)
                if on_step is not None:
                    try:
                        on_step(self.step)
                    except KeyboardInterrupt:
                        stop.requested = True
                if self.step % tc.log_steps == 0:
                    self.flush_window()
                if self.step % self.spe == 0 or self.step == self.total:
                    break  # epoch end: validation and checkpoint below
                if stop.requested:
                    self.flush_window()
                    self.save(complete=False)
                    raise self._interrupted()
                if tc.checkpoint_minutes > 0 and time.monotonic() - self.t_ckpt > tc.checkpoint_minutes * 60:
                    self.flush_window()
                    self.save(complete=False)
                    self.t_ckpt = time.monotonic()
        finally:
            batches.close()  # shuts the data-loader workers down
        self.end_epoch(epoch)
        if stop.requested and self.step < self.total:
            raise self._interrupted()

    def _train_step(self, batch: np.ndarray) -> None:
        b = torch.from_numpy(batch)
        if self.dev == "cuda":
            b = b.pin_memory()
        idx = self.step
        out3 = train_step(self.model, self.optimizer, b,
                          lambda s, i=idx: _noise(s, self.gen, self.seed, "vae-noise", i, self.dev), self.amp,
                          self.dev, self.tc.kl_tolerance, self.tc.detail_weight)
        self.acc += out3 * len(b)
        self.acc_frames += len(b)
        self.step += 1
        self.trained += len(b)

    def end_epoch(self, epoch: int) -> None:
        self.flush_window()
        ep, h, step, spe = self.counters["epoch_sums"], self.history, self.step, self.spe
        val = evaluate(self.model, frames.val_batches(self.sources, self.tc.batch_size, read_frames=self.tc.block_frames),
                       seed=self.seed, epoch=epoch, amp=self.amp, device=self.dev, kl_tolerance=self.tc.kl_tolerance,
                       detail_weight=self.tc.detail_weight)
        h["epoch"].append(round(step / spe, 4))
        h["train_loss"].append(ep[0] / ep[3] if ep[3] else None)
        h["train_recon"].append(ep[1] / ep[3] if ep[3] else None)
        h["train_kl"].append(ep[2] / ep[3] if ep[3] else None)
        for k in ("loss", "recon", "kl"):
            h[f"val_{k}"].append(val[k] if val else None)
        if val is not None and not math.isfinite(val["loss"]):
            raise TrainingDiverged(_diverged(self.out, f"validation loss became {val['loss']}", step, self.last_saved))
        rec = {"step": step, "epoch": round(step / spe, 4), "vae/train_loss": h["train_loss"][-1]}
        if val:
            rec.update({"vae/val_loss": val["loss"], "vae/val_recon": val["recon"], "vae/val_kl": val["kl"]})
            log.info(metrics.kv(epoch=round(step / spe, 3), val_loss=val["loss"], val_recon=val["recon"],
                                val_kl=val["kl"]))
        self.mw.write(rec)
        self.save(complete=step >= self.total)
        self.t_ckpt = time.monotonic()
        _write_plots(self.out, self.model, self.grid_frames, self.mw, self.dev, step)

    def flush_window(self) -> None:
        """A metrics line for the steps since the last one; their sums join the epoch's."""
        if self.acc_frames == 0:
            return
        n, step = self.acc_frames, self.step
        loss, r, kl = (self.acc / n).tolist()
        if not all(math.isfinite(v) for v in (loss, r, kl)):
            raise TrainingDiverged(_diverged(self.out, f"loss became {loss}", step, self.last_saved,
                                             first=int(self.counters["window_start"]) + 1))
        now = time.perf_counter()
        fps = n / max(now - self.t_window, 1e-9)
        for i, v in enumerate((loss * n, r * n, kl * n, n)):
            self.counters["epoch_sums"][i] += v
        self.mw.write({"step": step, "epoch": round(step / self.spe, 4), "vae/loss": loss, "vae/recon": r,
                       "vae/kl": kl, "vae/frames_per_s": fps})
        log.info(metrics.kv(step=step, epoch=round(step / self.spe, 3), loss=loss, recon=r, kl=kl, fps=fps))
        self.acc = torch.zeros_like(self.acc)
        self.acc_frames, self.t_window = 0, now
        self.counters["window_start"] = step

    # ---- the checkpoint: the artifact itself
    def save(self, complete: bool) -> None:
        model, h, ep, step = self.model, self.history, self.counters["epoch_sums"], self.step
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingDiverged(_diverged(self.out, f"weights became non-finite ({bad[0]})", step,
                                             self.last_saved))
        summary = {**self.base_summary, "steps": step, "epochs": round(step / self.spe, 4),
                   "train_loss": (h["train_loss"][-1] if h["train_loss"] else (ep[0] / ep[3] if ep[3] else None)),
                   "recon": (ep[1] / ep[3]) if ep[3] else _last(h, "train_recon"),
                   "kl": (ep[2] / ep[3]) if ep[3] else _last(h, "train_kl"),
                   "val_loss": _last(h, "val_loss"), "val_recon": _last(h, "val_recon"), "val_kl": _last(h, "val_kl")}
        train_state = {"optimizer": checkpoint.optimizer_state_to_tree(self.optimizer.state_dict()),
                       "counters": {**self.counters, "step": step}, "history": h}
        if self.amp.scaler is not None:
            train_state["scaler"] = self.amp.scaler.state_dict()
        checkpoint.save(self.out, KIND, state_dict=model.state_dict(), model_config=self.config.vae,
                        train_state=train_state, summary=summary, complete=complete, config=self.config,
                        seed=self.seed, inputs=self.inputs, env=self.env)
        self.last_saved = step

    def _interrupted(self) -> Interrupted:
        return Interrupted(f"interrupted at step {self.step} of {self.total}; checkpoint saved in {self.out}: "
                           "rerun the same command to resume")

    def result(self) -> Result:
        if self.total == 0:
            _write_plots(self.out, self.model, self.grid_frames, self.mw, self.dev, 0)
        elapsed = time.perf_counter() - self.t_start
        s = checkpoint.load(self.out, KIND).meta.summary
        return Result(self.out, self.step, round(self.step / self.spe, 4), s.get("train_loss"), s.get("val_loss"),
                      s.get("recon"), s.get("kl"), self.base_summary["parameters"],
                      self.trained / elapsed if self.trained else 0.0, self.start_step)


def _last(history: dict, key: str):
    v = history.get(key) or []
    return v[-1] if v else None


def _diverged(out: Path, what: str, step: int, saved: int, first: int | None = None) -> str:
    where = f"between steps {first} and {step}" if first is not None and first < step else f"at step {step}"
    kept = (f"kept the last good checkpoint in {out} (step {saved})" if saved >= 0 else "no checkpoint was written")
    return f"training diverged: {what} {where}; {kept}; try a lower vae_train.lr or check the data"


def _write_plots(out: Path, model: ConvVAE, grid_frames: np.ndarray, mw: metrics.MetricsWriter, dev: str,
                 step: int) -> None:
    """<out>.recon.png: frames (top) above their reconstructions; <out>.loss.png: the loss curves; both to the
    tracker at `step`."""
    if len(grid_frames):
        recon = checkpoint.beside(out, ".recon.png")
        mw.image("vae/reconstructions", plots.recon_grid(grid_frames, reconstruct(model, grid_frames, dev), recon), step)
    curves = ("vae/loss", "vae/val_loss", "vae/recon", "vae/kl")
    mw.image("vae/loss_curves", plots.loss_curves(mw.read(), curves, checkpoint.beside(out, ".loss.png")), step)
