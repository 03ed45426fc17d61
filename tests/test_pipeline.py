"""The tiny pipeline end to end through the CLI, and the real-env agent, evolve and evaluate on the fake env."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from worldmodels_cli.config import preset
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.stages import evaluate, evolve
from worldmodels_cli.store import artifacts as A


def test_cli_pipeline_end_to_end(wm, tmp_path):
    d = tmp_path
    steps = [
        ("collect", "--env", "doom", "--preset", "tiny", "--episodes", "6", "--out", d / "r.h5"),
        ("train-vae", "--rollouts", d / "r.h5", "--preset", "tiny", "--out", d / "v.h5", "--device", "cpu"),
        ("encode", "--rollouts", d / "r.h5", "--vae", d / "v.h5", "--out", d / "s.h5", "--device", "cpu"),
        ("train-mdn", "--series", d / "s.h5", "--preset", "tiny", "--out", d / "m.h5", "--device", "cpu"),
        ("evolve", "--vae", d / "v.h5", "--mdn", d / "m.h5", "--preset", "tiny", "--out", d / "c.h5", "--eval-real", "2"),
        ("evaluate", "--controller", d / "c.h5", "--episodes", "4", "--out", d / "e.h5", "--video", d / "e.gif"),
    ]
    for args in steps:
        res = wm(*args)
        assert res.code == 0, (args[0], res.err)
        assert len(res.out.strip().splitlines()) == 1, res.out  # one summary line per command
    for name, kind in [("r", "rollouts"), ("v", "vae"), ("s", "series"), ("m", "mdn"), ("c", "controller"), ("e", "eval")]:
        assert A.validate(d / f"{name}.h5", kind).kind == kind
    meta = A.validate(d / "c.h5", "controller")
    assert meta.inputs["vae"]["sha256"] == A.sha256(d / "v.h5")
    with A.open_artifact(d / "c.h5") as fh:
        real = fh[A.HISTORY]["eval_real_score"][()]
    assert np.isfinite(real[-1]), "--eval-real scores the CMA mean in the real env at evaluation generations"
    assert (d / "e.gif").stat().st_size > 0 and (d / "c.fitness.png").exists()
    info = wm("info", d / "c.h5")
    assert info.code == 0 and "best_score" in info.out


def test_evolve_real_env_improves(tiny_car_world, tmp_path):
    # fake CarRacing rewards speed on the road: more gas (a bias) pays, wild steering does not
    p = preset("carracing", "tiny")
    p = p.replace(evolve=p.evolve.replace(in_dream=False, pop=8, trials=4, generations=10, eval_every=10, sigma0=0.1),
                  controller=p.controller.replace(features="z"))
    out = tmp_path / "c.h5"
    evolve.run(p, tiny_car_world.vae, tiny_car_world.mdn, out, runtime=Runtime(seed=0, workers=1))
    with A.open_artifact(out) as fh:
        mean = fh[A.HISTORY]["mean"][()]
    assert mean[-3:].mean() > mean[:3].mean() + 10


def test_evaluate_independent_of_workers_and_records_seeds(tiny_world, tmp_path):
    p = preset("doom", "tiny")
    p = p.replace(evolve=p.evolve.replace(generations=1))
    c = tmp_path / "c.h5"
    evolve.run(p, tiny_world.vae, tiny_world.mdn, c, runtime=Runtime(seed=0))
    one = evaluate.run(tmp_path / "e1.h5", controller=c, episodes=6, runtime=Runtime(seed=3, workers=1))
    two = evaluate.run(tmp_path / "e2.h5", controller=c, episodes=6, runtime=Runtime(seed=3, workers=2))
    np.testing.assert_array_equal(one.returns, two.returns)
    with A.open_artifact(tmp_path / "e1.h5", "eval") as fh:
        np.testing.assert_array_equal(fh[A.EPISODE_SEEDS][()], evaluate.episode_seeds(3, 6))
    rnd = evaluate.run(None, policy="random", preset=p, episodes=6, runtime=Runtime(seed=3))
    assert rnd.lengths.min() >= 1


def test_controller_refuses_a_changed_vae(tiny_world, tmp_path, wm):
    p = preset("doom", "tiny")
    v = tmp_path / "v.h5"
    shutil.copy(tiny_world.vae, v)
    c = tmp_path / "c.h5"
    evolve.run(p.replace(evolve=p.evolve.replace(generations=1)), v, tiny_world.mdn, c, runtime=Runtime(seed=0))
    shutil.copy(tiny_world.rollouts, v)  # a different file now sits at the recorded path
    res = wm("evaluate", "--controller", c, "--episodes", "2")
    assert res.code == 2 and "not the vae it was made with" in res.err and res.err.count("\n") == 1


def test_evolve_rejects_wrong_kind_and_env(tiny_world, tmp_path, wm):
    res = wm("evolve", "--vae", tiny_world.series, "--mdn", tiny_world.mdn, "--preset", "tiny", "--out", tmp_path / "c.h5")
    assert res.code == 2 and "expected a vae artifact" in res.err
    res = wm("evolve", "--vae", tiny_world.vae, "--mdn", tmp_path / "missing.h5", "--out", tmp_path / "c.h5")
    assert res.code == 2 and "no such file" in res.err
    res = wm("evaluate", "--policy", "random")
    assert res.code == 2 and "needs --env" in res.err


@pytest.mark.parametrize("bad", ["--episodes 0", "--workers 0"])
def test_evaluate_bad_numbers(wm, bad):
    res = wm("evaluate", "--policy", "random", "--env", "doom", *bad.split())
    assert res.code == 2 and res.err.startswith("error:") and res.err.count("\n") == 1


def test_info_reads_the_dream_figures_train_mdn_stored(tiny_world, monkeypatch):
    """train-mdn stores M's dream figures in its summary when it finishes; `wm info` shows them without dreaming."""
    from worldmodels_cli.dream import program
    from worldmodels_cli.stages.info import describe
    from worldmodels_cli.store import artifacts as A

    stored = A.validate(tiny_world.mdn, "mdn").summary["dream_random_policy"]
    assert stored["episodes"] == 64 and 1 <= stored["mean_length"] <= stored["max_steps"]

    def no_dream(*a, **k):
        raise AssertionError("wm info dreamed although the artifact stores the figures")

    monkeypatch.setattr(program, "random_policy_done_rate", no_dream)
    assert describe(tiny_world.mdn)["dream_random_policy"] == stored


def test_info_reports_dream_lengths_of_held_actions(tiny_world, wm):
    import json

    res = wm("info", tiny_world.mdn, "--json")
    assert res.code == 0, res.err
    dream = json.loads(res.out)["dream_random_policy"]
    assert set(dream["held_action_length"]) == {"left", "none", "right"}
    assert 1 <= dream["mean_length"] <= dream["max_steps"]
