"""`wm train-mdn --ensemble K`: an ensemble of K MDN-RNNs in one mdn artifact, and the threshold of their
disagreement, calibrated on held-out real sequences (docs/pessimism.md).

Member k is trained by `train_mdn.run` (the single-M loop, its checkpoints and resume) into
`<out>.members/member<k>.h5`, a complete mdn artifact of its own: seed `train_mdn.member_seed(seed, k)`, trained on
a bootstrap resample of the run's training episodes; the held-out episodes are the run's, the same for every member,
and enter none. A rerun after Ctrl-C or a kill resumes the member it stopped in and skips the finished ones.
With `--workers W` > 1 on the CPU, W members train at once, each in a process of one torch thread (or a Ray actor):
M's step is a chain of small matmuls along the sequence that a second thread hardly speeds up, so W members side by
side take about 1/W of the time, with the same weights (a member's result does not depend on the thread count).

Then every member runs teacher-forced along the held-out episodes (z drawn from their (μ, logσ²) with the
validation noise), and the disagreement of every held-out step (`models.ensemble`: the largest L2 distance between
two members' predicted mean of z_{t+1}) gives the quantiles stored in the artifact; the threshold is the
`unknown_quantile` one. The ensemble artifact (kind mdn, schema 2: member 0's weights where one M's are, the others
in its `ensemble` group) is written once, at the end; the member files stay (each is an M `wm evolve` takes).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .. import tracking
from ..models.ensemble import Ensemble, disagreement, mixture_mean
from ..models.mdnrnn import MDNRNN, load_mdn
from ..runtime import Runtime
from ..runtime import device as devices
from ..runtime.errors import ConfigError
from ..runtime.executor import make_executor
from ..store import artifacts as A
from ..store import checkpoint, files, metrics, runs
from ..store.series_data import SeriesData, split_episodes, validation_batches
from . import train_mdn

log = logging.getLogger(__name__)

QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)  # of the held-out disagreement, stored and shown by `wm info`


def member_path(out: str | os.PathLike, k: int) -> Path:
    """Where member k is trained: `<out>.members/member<k>.h5`."""
    out = Path(out)
    return out.with_name(out.name + ".members") / f"member{k}.h5"


def run(preset, series: Sequence[str | os.PathLike], out: str | os.PathLike, init: str | os.PathLike | None = None,
        *, dynamics: str = "mdnrnn", on_step: Callable[[int], None] | None = None,
        runtime: Runtime = Runtime()) -> train_mdn.MDNResult:
    """Train (or resume) the K members, calibrate their disagreement on the held-out episodes, write `out`."""
    k_members, tcfg, out = preset.mdn_train.ensemble, preset.mdn_train, Path(out)
    if k_members < 2:
        raise ConfigError(f"an ensemble needs 2 or more Ms, got --ensemble {k_members}")
    if dynamics != "mdnrnn":
        raise ConfigError(f"--ensemble trains MDN-RNNs; an ensemble of {dynamics} Ms is not supported")
    if tcfg.val_episodes <= 0:
        raise ConfigError("--ensemble calibrates its threshold on held-out episodes: --val-episodes must be > 0")
    files.check_writable(out)
    data, mcfg, _ = train_mdn._check_inputs(preset, [Path(p) for p in series])
    run_config = {"env": preset.env.name, "mdn": mcfg.to_dict(), "mdn_train": tcfg.to_dict(), "scale": preset.scale}
    inputs = A.inputs_record({"series": series, **({"init": init} if init is not None else {})})
    if out.exists():
        meta = A.validate(out, "mdn")
        free = ("mdn_train.steps",)  # more steps continue the members, then the ensemble is written again
        runs.check_same_run(str(out), runs.identity(meta.config, meta.seed, meta.inputs, free=free),
                            runs.identity(run_config, runtime.seed, inputs, free=free))
        if meta.summary.get("steps", 0) >= tcfg.steps:
            log.info("%s: an ensemble of %d Ms already trained for %d steps", out, k_members, meta.summary["steps"])
            return _result(out, meta.summary)
    member_path(out, 0).parent.mkdir(exist_ok=True)
    results = _train_members(preset, series, out, init, on_step, runtime)
    members = [load_mdn(member_path(out, k), "cpu")[0] for k in range(k_members)]
    _, val_eps = split_episodes(data.episodes, tcfg.val_episodes, runtime.seed)  # every member's held-out episodes
    calibration = calibrate(members, data, val_eps, tcfg.batch_size, runtime.seed, tcfg.unknown_quantile)
    summary = _summary(results, calibration, Ensemble(members, calibration), data, run_config["env"])
    mu0, lv0 = data.initial()

    def extra(fh) -> None:
        A.write_initial_z(fh, mu0, lv0)
        A.write_ensemble(fh, [m.state_dict() for m in members[1:]], calibration)

    checkpoint.save(out, "mdn", state_dict=members[0].state_dict(), model_config=mcfg, train_state=None,
                    summary=summary, complete=True, config=run_config, seed=runtime.seed, inputs=inputs,
                    env=run_config["env"], extra=extra, schema=A.ENSEMBLE_SCHEMA_VERSION)
    writer = metrics.MetricsWriter(metrics.metrics_path(out), truncate=True)
    with tracking.start(writer, out, runtime, stage="train-mdn", config=run_config, step_key="step"):
        writer.write({"step": summary["steps"], "ensemble/threshold": calibration["threshold"],
                      "ensemble/unknown_episodes": calibration["unknown_episodes"],
                      **{f"ensemble/q{q}": v for q, v in calibration["quantiles"].items()}})
    log.info("%s: %d Ms, disagreement threshold %.4g (the %g quantile of %d held-out steps)", out, k_members,
             calibration["threshold"], tcfg.unknown_quantile, calibration["steps"])
    return _result(out, summary)


def _train_members(preset, series: Sequence, out: Path, init, on_step, runtime: Runtime
                   ) -> list[train_mdn.MDNResult]:
    """Train (or resume) every member: one after another in this process, or side by side in a pool of
    `runtime.workers` one-thread processes (on the CPU, without an `on_step` hook)."""
    k_members = preset.mdn_train.ensemble
    workers = min(runtime.workers, k_members)
    if workers <= 1 or on_step is not None or devices.resolve(runtime.device) != "cpu":
        results = []
        for k in range(k_members):
            log.info("---- ensemble member %d of %d: %s", k + 1, k_members, member_path(out, k))
            results.append(train_mdn.run(preset, series, member_path(out, k), init, on_step=on_step,
                                         runtime=runtime, member=k))
        return results
    log.info("---- ensemble members 1-%d, %d at a time: %s", k_members, workers, member_path(out, 0).parent)
    payload = {"preset": preset, "series": [str(p) for p in series], "out": str(out),
               "init": None if init is None else str(init), "runtime": runtime.replace(workers=1),
               "log_level": logging.getLogger("worldmodels_cli").getEffectiveLevel()}
    results: dict[int, train_mdn.MDNResult] = {}
    with make_executor(workers, _member_state, payload, backend=runtime.backend, address=runtime.address) as ex:
        for k, res in ex.run(_train_member, list(range(k_members)), describe=lambda k: f"ensemble member {k}"):
            results[k] = res
            log.info("ensemble member %d of %d trained: %s", k + 1, k_members, member_path(out, k))
    return [results[k] for k in range(k_members)]


_MEMBER = [0]  # the member a worker trains now: its log lines name it


def _member_state(payload: dict) -> dict:
    """A member worker logs as the driver does (a spawned process starts with no handler), each line naming the
    member, and its progress as lines (two bars cannot share a terminal's line)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler.addFilter(_name_member)
        root.addHandler(handler)
        logging.getLogger("worldmodels_cli").setLevel(payload["log_level"])
    os.environ[metrics.LOG_PROGRESS] = "1"
    return payload


def _name_member(record: logging.LogRecord) -> bool:
    record.msg = f"member {_MEMBER[0]}: {record.msg}"
    return True


def _train_member(p: dict, k: int) -> train_mdn.MDNResult:
    _MEMBER[0] = k
    return train_mdn.run(p["preset"], p["series"], member_path(p["out"], k), p["init"], runtime=p["runtime"], member=k)


@torch.no_grad()
def calibrate(members: Sequence[MDNRNN], data: SeriesData, val_eps: np.ndarray, batch_size: int, seed: int,
              quantile: float) -> dict:
    """The members' disagreement at every held-out step (teacher forcing, `validation_batches`): its quantiles,
    the threshold (its `quantile` quantile) and the fraction of held-out episodes with a step over it."""
    steps, episode_max = [], []
    for batch in validation_batches(data, val_eps, batch_size, seed):
        z, a, r = (torch.from_numpy(np.ascontiguousarray(x)) for x in (batch.z, batch.actions, batch.restart))
        means = []
        for m in members:
            out, _ = m(z[:, :-1], a[:, :-1], r[:, :-1])
            means.append(mixture_mean(out.logpi, out.mu))  # (B, T, Z): the predicted mean of z_{t+1}
        d = disagreement(means).numpy()  # (B, T)
        mask = batch.mask.astype(bool)
        steps.append(d[mask])
        episode_max += [float(row[keep].max()) for row, keep in zip(d, mask, strict=True) if keep.any()]
    values = np.concatenate(steps) if steps else np.zeros(0)
    if len(values) == 0:
        raise ConfigError("no held-out step to calibrate the ensemble on (held-out episodes of one frame only?)")
    threshold = float(np.quantile(values, quantile))
    return {"threshold": threshold, "quantile": quantile, "steps": int(len(values)), "episodes": len(episode_max),
            "quantiles": {f"{q:g}": float(np.quantile(values, q)) for q in QUANTILES},
            "unknown_episodes": float(np.mean(np.asarray(episode_max) > threshold)),
            "disagreement": "largest L2 distance between two members' predicted mean of z_{t+1} (mixture mean, "
                            "tau 1), over held-out real steps"}


def _summary(results: list[train_mdn.MDNResult], calibration: dict, ensemble: Ensemble, data: SeriesData,
             env: str) -> dict:
    """The ensemble's key figures: the members' mean losses, each member's, the calibration and the dream."""
    from ..dream.program import DREAM_SUMMARY, dream_summary

    def mean(key: str) -> float | None:
        vals = [getattr(r, key) for r in results if getattr(r, key) is not None]
        return float(np.mean(vals)) if vals else None

    mu0, lv0 = data.initial()
    s = results[0].summary
    return {"parameters": results[0].parameters, "steps": results[0].steps, "nll": mean("nll"),
            "val_nll": mean("val_nll"), "done_bce": mean("done_bce"), "episodes": s.get("episodes"),
            "frames": s.get("frames"), "train_episodes": s.get("train_episodes"), "val_episodes": s.get("val_episodes"),
            "ensemble": {"members": len(results), "threshold": calibration["threshold"],
                         "quantile": calibration["quantile"], "held_out_quantiles": calibration["quantiles"],
                         "held_out_steps": calibration["steps"],
                         "held_out_episodes_unknown": calibration["unknown_episodes"],
                         "member_nll": [r.nll for r in results], "member_val_nll": [r.val_nll for r in results]},
            DREAM_SUMMARY: dream_summary(ensemble, mu0, lv0, env=env)}


def _result(out: Path, summary: dict) -> train_mdn.MDNResult:
    return train_mdn.MDNResult(out=out, steps=int(summary.get("steps", 0)), parameters=summary.get("parameters", 0),
                               nll=summary.get("nll"), val_nll=summary.get("val_nll"),
                               done_bce=summary.get("done_bce"), summary=summary)
