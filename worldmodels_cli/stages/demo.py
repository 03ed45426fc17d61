"""`wm demo` (`make demo`, `make demo-carracing`): a `small` pipeline end to end on a laptop, with baselines, a
table and pictures.

Doom: iterate (collect -> train-vae -> encode -> train-mdn -> evolve --in-dream -> evaluate, then rounds with the
controller's own data) -> the two random baselines on the same 100 real seeds (the paper's uniform policy and the
data-collection policy) -> a table (mean ± std over the real episodes, dream score, wall time per stage).

CarRacing: iterate's one round (C evolved in the real game, ref §6) -> the random agent and the paper's two V-only
rows at the same scale (C on z; C on z with a 40-unit tanh layer, evolved on the same V and M: ref §8) on the same
real seeds -> a table beside the paper's (906 ± 21; 632 ± 251; 788 ± 141).

Either way `results/demo*/` gets reconstructions, a dream GIF (C driving M's dream), an episode video, training
curves, results.md and results.json. Every step resumes or skips itself, so rerunning the command continues it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import DreamConfig, Preset
from ..runtime import Runtime
from ..store import artifacts as A
from ..store import files
from ..video import mp4_available
from .iterate import IterateConfig, RoundRecord, complete_eval, round_dir, timed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    policy: str
    mean: float
    std: float
    dream: float | None
    ratio: float | None  # mean / the uniform random policy's mean on the same seeds
    paper: str = ""  # the paper's figure for this row, where it has one
    seconds: float | None = None  # wall time of the row's own stages (evolve + evaluate), where it has them


# CarRacing's V-only rows (ref §8): (name, C's features, hidden units, the paper's score)
V_ONLY = (("z", "z", 0, "632 ± 251"), ("z40", "z", 40, "788 ± 141"))
PAPER_FULL_CARRACING = "906 ± 21"


def run(preset: Preset, data: Path, results: Path, it: IterateConfig, *, scale: str = "small",
        runtime: Runtime = Runtime()) -> tuple[list[Row], list[RoundRecord], str]:
    """Everything `make demo` shows; returns the table rows, the round records and the table as markdown."""
    from . import evaluate, iterate

    data, results = Path(data), Path(results)
    results.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    records = iterate.run(preset, data, it, runtime=runtime)
    car = preset.env.name == "carracing"
    base = {}
    for policy in ("random",) if car else ("random", "data"):  # CarRacing's random agent is its data policy
        out = data / f"baseline_{policy}.h5"
        if not out.exists():
            evaluate.run(out, policy=policy, preset=preset, episodes=it.eval_episodes, runtime=runtime)
        base[policy] = _score(out)
    if car:
        last = records[-1]
        rows = [Row("random agent (the original's data-collection policy)", *base["random"], None, None)]
        rows += _v_only_rows(preset, data, records, it, runtime)
        rows.append(Row("full world model, C on [z, h] (ref §6)", last.real_mean, last.real_std, last.dream_score, None,
                        PAPER_FULL_CARRACING, last.seconds.get("evolve", 0.0) + last.seconds.get("evaluate", 0.0)))
        table = _markdown_carracing(rows, records, preset, scale, it.eval_episodes)
    else:
        uniform = base["random"][0]
        rows = [Row("random (uniform left/none/right per tic; the paper's baseline)", *base["random"], None, 1.0),
                Row("random (data-collection policy, action held 1-10 tics)", *base["data"], None,
                    base["data"][0] / uniform)]
        for rec in records:
            rows.append(Row(f"world model, round {rec.round} (C trained only in the dream)", rec.real_mean,
                            rec.real_std, rec.dream_score, rec.real_mean / uniform))
        table = _markdown(rows, records, preset, scale)
    (results / "results.md").write_text(table)  # before the pictures: a picture that fails cannot cost the table
    (results / "results.json").write_text(json.dumps(
        {"rows": [r.__dict__ for r in rows], "rounds": [r.__dict__ for r in records], "seed": runtime.seed}, indent=2))
    last = round_dir(data, len(records) - 1)
    _pictures(last, Path(records[-1].vae or last / "vae.h5"), results, records[-1].tau, runtime)
    return rows, records, table


def _score(eval_path: Path) -> tuple[float, float]:
    with A.open_artifact(eval_path, "eval") as fh:
        r = fh[A.RETURNS][()]
    return float(r.mean()), float(r.std())


def _v_only_rows(preset: Preset, data: Path, records: list[RoundRecord], it: IterateConfig,
                 runtime: Runtime) -> list[Row]:
    """The paper's V-only CarRacing rows (ref §8): C on z alone, linear and with 40 tanh units, evolved in the real
    game on the last round's V and M with the same population, trials and generations as the full model, then
    scored on the same real seeds. Their wall times are kept in `<data>/v_only.json` (a rerun skips what is done)."""
    from . import evaluate, evolve

    last, rec = round_dir(data, len(records) - 1), records[-1]
    v, m = Path(rec.vae or last / "vae.h5"), last / "mdn.h5"
    times_path = data / "v_only.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    rows = []
    for name, features, hidden, paper in V_ONLY:
        c, e = last / f"controller_{name}.h5", last / f"eval_{name}.h5"
        q = preset.replace(controller=preset.controller.replace(features=features, hidden=hidden),
                           evolve=preset.evolve.replace(pop=rec.pop))
        seconds = times.setdefault(name, {})
        ev = timed(seconds, "evolve", evolve.run, q, v, m, c, runtime=runtime)
        if not complete_eval(e, it.eval_episodes, c):
            timed(seconds, "evaluate", evaluate.run, e, controller=c, episodes=it.eval_episodes, runtime=runtime)
        files.write_text_atomic(times_path, json.dumps(times, indent=2))
        what = "C on z" + (f" with {hidden} tanh units" if hidden else "") + " (V only, ref §8)"
        rows.append(Row(what, *_score(e), ev.best_score, None, paper, sum(seconds.values())))
    return rows


def _pictures(last: Path, v: Path, results: Path, tau: float, runtime: Runtime) -> None:
    from . import dream, evaluate

    for src, name in [(v.with_suffix(".recon.png"), "reconstructions.png"), (v.with_suffix(".loss.png"), "vae_loss.png"),
                      (last / "mdn.losses.png", "mdn_losses.png"), (last / "controller.fitness.png", "fitness.png")]:
        if src.exists():
            shutil.copy(src, results / name)
    c, m = last / "controller.h5", last / "mdn.h5"
    dcfg = DreamConfig(temperature=tau, episodes=4, max_steps=300)
    dream.run(dcfg, v, m, results / "dream.gif", controller_path=c, runtime=runtime)
    video = results / ("episode.mp4" if mp4_available() else "episode.gif")  # GIF where imageio-ffmpeg is missing
    evaluate.run(None, controller=c, episodes=1, video=video, runtime=runtime.replace(workers=1))


def _markdown(rows: list[Row], records: list[RoundRecord], preset: Preset, scale: str) -> str:
    n = "steps survived in the real game"
    lines = [f"| policy | {n} (mean ± std) | × uniform random | dream score |", "|---|---|---|---|"]
    for r in rows:
        dream = "—" if r.dream is None else f"{r.dream:.0f}"
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}"
        lines.append(f"| {r.policy} | {r.mean:.0f} ± {r.std:.0f} | {ratio} | {dream} |")
    stages = sorted({s for rec in records for s in rec.seconds}, key=_stage_order)
    lines += ["", "| round | " + " | ".join(stages) + " | total |", "|---" * (len(stages) + 2) + "|"]
    for rec in records:
        secs = [rec.seconds.get(s, 0.0) for s in stages]
        lines.append(f"| {rec.round} | " + " | ".join(f"{x / 60:.1f} min" for x in secs) + f" | {sum(secs) / 60:.1f} min |")
    pops = (f"CMA-ES population {preset.evolve.pop}, the last round's {records[-1].pop}"
            if records[-1].method == "cma-es" else "C by the latent actor-critic (wm train-controller)")
    tau = records[-1].tau  # iterate.run sets the τ of every round it returns
    taus = f"τ = {preset.evolve.temperature}" + ("" if tau == preset.evolve.temperature else f", the last round's {tau:g}")
    lines += ["", f"Preset: {preset.env.name} {scale}, {taus}, {len(records)} round(s), "
              f"{pops}; every policy ran on the same real-episode seeds."]
    if records[-1].members > 1:
        lines += ["", f"The last round's M: an ensemble of {records[-1].members} MDN-RNNs; C evolved in its dream with "
                  f"pessimism {records[-1].pessimism} (docs/pessimism.md)."]
    if records[-1].ladder:
        rungs = "; ".join(f"τ {r['tau']:g}: {r['dream_score']:.0f} / {r['random_dream']:.0f} = {r['ratio']:.2f}×"
                          + (" (kept)" if r.get("kept") else "") for r in records[-1].ladder)
        lines += ["", "The last round's τ ladder, hottest first (C's dream score / the uniform random policy's dream "
                  f"length at that τ): {rungs}."]
    return "\n".join(lines) + "\n"


def _markdown_carracing(rows: list[Row], records: list[RoundRecord], preset: Preset, scale: str,
                        episodes: int) -> str:
    ev = preset.evolve
    lines = [f"| policy | return over {episodes} real episodes (mean ± std) | paper (100 episodes) | CMA-ES evaluation "
             f"({ev.eval_episodes} episodes) | evolve + evaluate |", "|---|---|---|---|---|"]
    for r in rows:
        fit = "—" if r.dream is None else f"{r.dream:.0f}"
        secs = "—" if r.seconds is None else f"{r.seconds / 60:.0f} min"
        lines.append(f"| {r.policy} | {r.mean:.0f} ± {r.std:.0f} | {r.paper or '—'} | {fit} | {secs} |")
    stages = sorted({s for rec in records for s in rec.seconds}, key=_stage_order)
    rec = records[-1]
    lines += ["", "Wall time of the full world model's pipeline:", "", "| " + " | ".join(stages) + " | total |", "|---" * (len(stages) + 1) + "|",
              "| " + " | ".join(f"{rec.seconds[s] / 60:.1f} min" for s in stages)
              + f" | {sum(rec.seconds.values()) / 60:.1f} min |"]
    lines += ["", f"Preset: carracing {scale}: C evolved in the real game by CMA-ES, population {rec.pop} × "
              f"{ev.trials} trials, {ev.generations} generations"
              + (f", a trial ending after {ev.stall_steps} steps without a new tile (its return extrapolated)"
                 if ev.stall_steps else "")
              + "; the CMA-ES evaluation is the best of the CMA mean's periodic scores on fixed seeds; every "
              "policy ran on the same real-episode seeds, each to the end of its episode."]
    return "\n".join(lines) + "\n"


def _stage_order(stage: str) -> int:
    order = ["collect", "train-vae", "encode", "train-mdn", "evolve", "train-controller", "evaluate"]
    return order.index(stage) if stage in order else len(order)
