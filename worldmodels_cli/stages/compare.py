"""`wm compare`: the world models of issue 25 side by side on the same data, envs and real evaluation.

For each seed s, in `<data>/seed<s>/`: random-policy episodes -> V -> series (the preset's stages, run seed s), then
M twice on the same batches (`mdnrnn.h5`, the paper's MDN-RNN; `rssm.h5`, an RSSM: `wm train-mdn --dynamics`),
then C four times in M's dream:

| row | M | C |
|---|---|---|
| mdnrnn + cma-es | MDN-RNN | `wm evolve` (today's pipeline, one round on random data) |
| rssm + cma-es | RSSM | `wm evolve` |
| rssm + actor-critic | RSSM | `wm train-controller --method actor-critic` |
| mdnrnn + actor-critic | MDN-RNN | `wm train-controller --method actor-critic` |

and every C (and the uniform random policy) plays the same `episodes` real episodes: `wm evaluate` with run seed s,
so all rows of a seed meet the same games. CarRacing's M gets a reward head (regression) so that it can dream
rewards for the actor-critic; its CMA-ES rows evolve where the preset says (small: the real game).

The wall time of each stage is measured here and kept in `<data>/compare.json` (a stage interrupted and resumed
counts both parts); the dream score is each C's best evaluation in the dream (`best_score`, the same fixed
evaluation seeds for both methods). The table (`<results>/compare.md`, `compare.json`): per row, the real score
(mean over seeds of each seed's mean ± std over its episodes, and per seed), the dream score, and the minutes of
M, C and evaluation, beside the stages the rows share (collect, V, encode). Every stage resumes or skips itself,
so rerunning the command continues where it stopped, and more seeds extend it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import ActorCriticConfig, Preset, RSSMConfig, actor_critic_config
from ..runtime import Runtime
from ..store import artifacts as A
from ..store import files

log = logging.getLogger(__name__)

RECORD = "compare.json"
COMBOS = (("mdnrnn", "cma-es"), ("rssm", "cma-es"), ("rssm", "actor-critic"), ("mdnrnn", "actor-critic"))
SHARED = ("collect", "train-vae", "encode")


@dataclass
class Row:
    """One combination over the seeds."""

    dynamics: str
    method: str
    seeds: list[int] = field(default_factory=list)
    real_mean: list[float] = field(default_factory=list)  # per seed: the mean over its real episodes
    real_std: list[float] = field(default_factory=list)
    dream: list[float] = field(default_factory=list)  # per seed: C's best dream evaluation
    minutes: dict[str, list[float]] = field(default_factory=dict)  # "M", "C", "evaluate": per seed

    @property
    def name(self) -> str:
        return f"{self.dynamics} + {self.method}" if self.method else self.dynamics


def run(preset: Preset, data: Path, results: Path, *, seeds: list[int], episodes: int = 100,
        rssm: RSSMConfig | None = None, ac: ActorCriticConfig | None = None,
        runtime: Runtime = Runtime()) -> tuple[list[Row], str]:
    """Run (or continue) the comparison for `seeds`; write and return the table (module doc)."""
    from . import collect, encode, evaluate, evolve, train_controller, train_mdn, train_vae
    from .iterate import complete_eval

    data, results = Path(data), Path(results)
    data.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    env = preset.env.name
    p = preset
    if env == "carracing":  # the actor-critic needs rewards in the dream
        p = p.replace(mdn=p.mdn.replace(reward_head="regression"))
    ac = ac or actor_critic_config(env, preset.scale)
    record_path = data / RECORD
    records = _load(record_path)
    rows = {(d, m): Row(d, m) for d, m in COMBOS}
    random_row = Row("uniform random policy", "")
    for s in seeds:
        d = data / f"seed{s}"
        d.mkdir(exist_ok=True)
        rt = runtime.replace(seed=s)
        sec = records.setdefault(str(s), {"seconds": {}})["seconds"]
        timed = _Timer(records, record_path, s)
        r, v, series = d / "rollouts.h5", d / "vae.h5", d / "series.h5"
        timed("collect", r, collect.run, p, r, runtime=rt)
        timed("train-vae", v, train_vae.run, p, [r], v, runtime=rt)
        timed("encode", series, encode.run, [r], v, series, batch_size=p.encode.batch_size, mirror=p.encode.mirror,
              runtime=rt)
        models = {dyn: d / f"{dyn}.h5" for dyn in ("mdnrnn", "rssm")}
        for dyn, m in models.items():
            timed(f"train-mdn {dyn}", m, train_mdn.run, p, [series], m, dynamics=dyn, rssm=rssm, runtime=rt)
        for dyn, method in COMBOS:
            c, e = d / f"controller-{dyn}-{method}.h5", d / f"eval-{dyn}-{method}.h5"
            if method == "cma-es":
                res = timed(f"C {dyn} {method}", c, evolve.run, p, v, models[dyn], c, runtime=rt)
            else:
                res = timed(f"C {dyn} {method}", c, train_controller.run, p, ac, v, models[dyn], c, runtime=rt)
            if not complete_eval(e, episodes, c):
                timed(f"evaluate {dyn} {method}", e, evaluate.run, e, controller=c, episodes=episodes, runtime=rt)
            row = rows[(dyn, method)]
            _add(row, s, e, res.best_score, {"M": sec[f"train-mdn {dyn}"], "C": sec[f"C {dyn} {method}"],
                                            "evaluate": sec.get(f"evaluate {dyn} {method}", 0.0)})
        e = d / "eval-random.h5"
        if not _evaluated(e, episodes):
            timed("evaluate random", e, evaluate.run, e, policy="random", preset=p, episodes=episodes, runtime=rt)
        _add(random_row, s, e, math.nan, {"evaluate": sec.get("evaluate random", 0.0)})
    table = _markdown([*rows.values(), random_row], records, seeds, p, episodes)
    files.write_text_atomic(results / "compare.md", table)
    files.write_text_atomic(results / "compare.json", json.dumps(
        {"env": env, "preset": preset.scale, "episodes": episodes, "seeds": seeds,
         "rows": [asdict(r) for r in [*rows.values(), random_row]], "seconds": records}, indent=2,
        default=_jsonable))
    return [*rows.values(), random_row], table


class _Timer:
    """timed(stage, out, fn, *args, **kwargs): fn's result, its wall time added to the seed's record and saved,
    unless `out` was complete already (then fn only found it so: a rerun adds nothing)."""

    def __init__(self, records: dict, path: Path, seed: int) -> None:
        self.records, self.path, self.seed = records, path, seed

    def __call__(self, stage: str, out: Path, fn, *args, **kwargs):
        log.info("---- seed %d: %s", self.seed, stage)
        sec = self.records[str(self.seed)]["seconds"]
        before = out.stat().st_mtime_ns if out.exists() else None
        t0 = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:  # an interrupted stage's part counts too: its rerun resumes
            if before is None or not out.exists() or out.stat().st_mtime_ns != before:
                sec[stage] = round(sec.get(stage, 0.0) + time.monotonic() - t0, 1)
                _save(self.path, self.records)


def _evaluated(path: Path, episodes: int) -> bool:
    """A baseline's eval artifact of at least `episodes` episodes (its seeds follow from the run seed)."""
    try:
        return path.exists() and A.validate(path, "eval").summary.get("episodes", 0) >= episodes
    except A.ArtifactError:
        return False


def _add(row: Row, seed: int, eval_path: Path, dream: float, seconds: dict[str, float]) -> None:
    with A.open_artifact(eval_path, "eval") as fh:
        returns = fh[A.RETURNS][()]
    row.seeds.append(seed)
    row.real_mean.append(float(returns.mean()))
    row.real_std.append(float(returns.std()))
    row.dream.append(float(dream))
    for k, v in seconds.items():
        row.minutes.setdefault(k, []).append(round(v / 60.0, 2))


def _markdown(rows: list[Row], records: dict, seeds: list[int], p: Preset, episodes: int) -> str:
    what = "steps survived" if p.env.name == "doom" else "return"
    lines = [f"# World models compared: {p.env.name}, preset {p.scale}, seeds {', '.join(map(str, seeds))}", "",
             f"Real score: {what} over {episodes} real episodes per seed, every row on the same episode seeds "
             "(mean over seeds of each seed's mean ± std; then per seed). Dream score: C's best evaluation in the "
             f"dream at τ {p.evolve.temperature:g}"
             + ("" if p.evolve.in_dream else " (CMA-ES evolves in the real game here: its rows show the best "
                                            "real-game evaluation while evolving, marked 'real')")
             + ". Minutes: wall time of the row's own stages, mean over seeds.", "",
             "| M + C | real score | per seed | dream score | M min | C min | evaluate min |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        real = f"{np.mean(r.real_mean):.0f} ± {np.mean(r.real_std):.0f}" if r.real_mean else "—"
        per = ", ".join(f"{m:.0f}" for m in r.real_mean) or "—"
        dream = f"{np.mean(r.dream):.0f}" if r.dream and all(math.isfinite(x) for x in r.dream) else "—"
        if r.method == "cma-es" and not p.evolve.in_dream and dream != "—":
            dream += " (real)"
        mins = {k: f"{np.mean(v):.1f}" for k, v in r.minutes.items()}
        lines.append(f"| {r.name} | {real} | {per} | {dream} | {mins.get('M', '—')} | {mins.get('C', '—')} | "
                     f"{mins.get('evaluate', '—')} |")
    shared = {k: np.mean([records[str(s)]["seconds"].get(k, 0.0) for s in seeds]) / 60.0 for k in SHARED}
    lines += ["", "Shared by every row (minutes, mean over seeds): "
              + ", ".join(f"{k} {v:.1f}" for k, v in shared.items()) + "."]
    return "\n".join(lines) + "\n"


def _load(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s is unreadable; timings start afresh (artifacts are reused)", path)
        return {}


def _save(path: Path, records: dict) -> None:
    files.write_text_atomic(path, json.dumps(records, indent=2, sort_keys=True))


def _jsonable(x):
    return float(x) if isinstance(x, np.floating) else str(x)
