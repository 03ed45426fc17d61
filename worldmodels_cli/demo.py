"""`wm demo` (`make demo`): the `small` Doom pipeline end to end on a laptop, with baselines, a table and pictures.

iterate (collect -> train-vae -> encode -> train-mdn -> evolve --in-dream -> evaluate, then rounds with the
controller's own data) -> the two random baselines on the same 100 real seeds (the paper's uniform policy and the
data-collection policy) -> a table (mean ± std over the real episodes, dream score, wall time per stage) ->
`results/demo/`: reconstructions, a dream GIF, an episode video, training curves, results.md and results.json.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import artifacts as A
from .config import DreamConfig, Preset
from .iterate import IterateConfig, RoundRecord, round_dir
from .video import mp4_available

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    policy: str
    mean: float
    std: float
    dream: float | None
    ratio: float | None  # mean / the uniform random policy's mean on the same seeds


def run(preset: Preset, data: Path, results: Path, it: IterateConfig, *, seed: int = 0, workers: int = 2,
        device: str = "auto", scale: str = "small") -> tuple[list[Row], list[RoundRecord], str]:
    """Everything `make demo` shows; returns the table rows, the round records and the table as markdown."""
    from . import evaluate, iterate

    data, results = Path(data), Path(results)
    results.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    records = iterate.run(preset, data, it, seed=seed, workers=workers, device=device)
    base = {}
    for policy in ("random", "data"):
        out = data / f"baseline_{policy}.h5"
        if not out.exists():
            evaluate.run(out, policy=policy, preset=preset, episodes=it.eval_episodes, seed=seed, workers=workers)
        with A.open_artifact(out, "eval") as fh:
            r = fh[A.RETURNS][()]
        base[policy] = (float(r.mean()), float(r.std()))
    uniform = base["random"][0]
    rows = [Row("random (uniform left/none/right per tic; the paper's baseline)", *base["random"], None, 1.0),
            Row("random (data-collection policy, action held 1-10 tics)", *base["data"], None, base["data"][0] / uniform)]
    for rec in records:
        rows.append(Row(f"world model, round {rec.round} (C trained only in the dream)", rec.real_mean, rec.real_std,
                        rec.dream_score, rec.real_mean / uniform))
    table = _markdown(rows, records, preset, scale)
    (results / "results.md").write_text(table)  # before the pictures: a picture that fails cannot cost the table
    (results / "results.json").write_text(json.dumps(
        {"rows": [r.__dict__ for r in rows], "rounds": [r.__dict__ for r in records], "seed": seed}, indent=2))
    last = round_dir(data, len(records) - 1)
    _pictures(last, Path(records[-1].vae or last / "vae.h5"), results, records[-1].tau, seed, device)
    return rows, records, table


def _pictures(last: Path, v: Path, results: Path, tau: float, seed: int, device: str) -> None:
    from . import dream, evaluate

    for src, name in [(v.with_suffix(".recon.png"), "reconstructions.png"), (v.with_suffix(".loss.png"), "vae_loss.png"),
                      (last / "mdn.losses.png", "mdn_losses.png"), (last / "controller.fitness.png", "fitness.png")]:
        if src.exists():
            shutil.copy(src, results / name)
    c, m = last / "controller.h5", last / "mdn.h5"
    dcfg = DreamConfig(temperature=tau, episodes=4, max_steps=300)
    dream.run(dcfg, v, m, results / "dream.gif", controller_path=c, seed=seed, device=device)
    video = results / ("episode.mp4" if mp4_available() else "episode.gif")  # GIF where imageio-ffmpeg is missing
    evaluate.run(None, controller=c, episodes=1, seed=seed, video=video)


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
    pops = f"population {preset.evolve.pop}, the last round's {records[-1].pop}"
    tau = records[-1].tau  # iterate.run sets the τ of every round it returns
    taus = f"τ = {preset.evolve.temperature}" + ("" if tau == preset.evolve.temperature else f", the last round's {tau:g}")
    lines += ["", f"Preset: {preset.env.name} {scale}, {taus}, {len(records)} round(s), CMA-ES "
              f"{pops}; every policy ran on the same real-episode seeds."]
    if records[-1].ladder:
        rungs = "; ".join(f"τ {r['tau']:g}: {r['dream_score']:.0f} / {r['random_dream']:.0f} = {r['ratio']:.2f}×"
                          + (" (kept)" if r.get("kept") else "") for r in records[-1].ladder)
        lines += ["", "The last round's τ ladder, hottest first (C's dream score / the uniform random policy's dream "
                  f"length at that τ): {rungs}."]
    return "\n".join(lines) + "\n"


def _stage_order(stage: str) -> int:
    order = ["collect", "train-vae", "encode", "train-mdn", "evolve", "evaluate"]
    return order.index(stage) if stage in order else len(order)
