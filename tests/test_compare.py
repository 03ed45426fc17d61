"""`wm compare` (stages/compare.py) at the tiny scale: every combination of M (MDN-RNN, RSSM) and C (CMA-ES,
actor-critic) on the same data and the same real episodes, the table, and a rerun that trains nothing again."""

from __future__ import annotations

import json
import math

from worldmodels_cli.config import preset
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.stages import compare
from worldmodels_cli.store import artifacts as A


def test_tiny_comparison_of_the_four_world_models(tmp_path):
    data, results = tmp_path / "data", tmp_path / "results"
    rows, table = compare.run(preset("doom", "tiny"), data, results, seeds=[0], episodes=3,
                              runtime=Runtime(device="cpu", workers=1))
    assert [r.name for r in rows] == ["mdnrnn + cma-es", "rssm + cma-es", "rssm + actor-critic",
                                      "mdnrnn + actor-critic", "uniform random policy"]
    d = data / "seed0"
    seeds = set()
    for r in rows:
        assert r.seeds == [0] and all(math.isfinite(x) for x in r.real_mean)
        e = d / (f"eval-{r.dynamics}-{r.method}.h5" if r.method else "eval-random.h5")
        with A.open_artifact(e, "eval") as fh:
            seeds.add(tuple(fh[A.EPISODE_SEEDS][()].tolist()))
        if r.method:
            c = A.validate(d / f"controller-{r.dynamics}-{r.method}.h5", "controller")
            assert r.dream == [c.summary["best_score"]]
            assert A.validate(c.inputs["mdn"]["path"], "mdn").model_config.get("dynamics", "mdnrnn") == r.dynamics
            assert set(r.minutes) == {"M", "C", "evaluate"}
    assert len(seeds) == 1  # every row met the same real episodes
    # both Ms trained on the same series
    m = [A.validate(d / f"{k}.h5", "mdn").inputs["series"] for k in ("mdnrnn", "rssm")]
    assert m[0] == m[1]
    assert (results / "compare.md").read_text() == table and "| rssm + actor-critic |" in table
    saved = json.loads((results / "compare.json").read_text())
    assert saved["seeds"] == [0] and len(saved["rows"]) == 5
    timings = json.loads((data / compare.RECORD).read_text())["0"]["seconds"]
    assert {"collect", "train-vae", "encode", "train-mdn rssm", "C rssm actor-critic"} <= set(timings)
    # a rerun finds every artifact complete: nothing is trained or evaluated again
    files = sorted(d.glob("*.h5"))
    mtimes = [f.stat().st_mtime for f in files]
    compare.run(preset("doom", "tiny"), data, results, seeds=[0], episodes=3, runtime=Runtime(device="cpu", workers=1))
    assert [f.stat().st_mtime for f in files] == mtimes
    assert json.loads((data / compare.RECORD).read_text())["0"]["seconds"] == timings  # and adds no time


def test_bad_seeds_are_a_usage_error(wm, tmp_path):
    for bad in ("a,b", "1,1", "-1", ""):
        r = wm("compare", "--seeds", bad, "--data", tmp_path / "d")
        assert r.code == 2 and r.err.startswith("error: Invalid value") and r.err.count("\n") == 1, r.err


def test_tiny_carracing_comparison(tmp_path):
    """CarRacing's Ms get a reward head (the actor-critic dreams rewards); its CMA-ES rows evolve in the real game,
    as the preset says, and the table marks their score as the real game's."""
    rows, table = compare.run(preset("carracing", "tiny"), tmp_path / "data", tmp_path / "results", seeds=[0],
                              episodes=2, runtime=Runtime(device="cpu", workers=1))
    assert len(rows) == 5 and all(math.isfinite(r.real_mean[0]) for r in rows)
    for dyn in ("mdnrnn", "rssm"):
        assert A.validate(tmp_path / f"data/seed0/{dyn}.h5", "mdn").model_config["reward_head"] == "regression"
    assert table.count("(real)") == 2
