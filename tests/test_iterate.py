"""The iterative procedure, `wm demo`, `wm report` and `make -n reproduce` at the tiny scale."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from worldmodels_cli.config import iterate_config, preset
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.stages import demo, iterate, report
from worldmodels_cli.store import artifacts as A
from worldmodels_cli.video import mp4_available

ROOT = Path(__file__).resolve().parents[1]


def test_demo_two_rounds_then_rerun_continues(tmp_path):
    p = preset("doom", "tiny")
    # no rung reaches the ratio: the ladder tries both and keeps the one furthest above the random policy
    it = iterate.IterateConfig(rounds=2, controller_episodes=4, eval_episodes=5, data_eval_episodes=3,
                               final_temperatures=(1.3, 0.8), final_dream_ratio=1e9)
    rows, recs, table = demo.run(p, tmp_path / "data", tmp_path / "results", it, runtime=Runtime(seed=0, workers=1, device='cpu'))
    assert [r.round for r in recs] == [0, 1]
    assert all(r.real_mean > 0 for r in recs)
    # round 1 collected with round 0's controller, kept round 0's V, encoded only its new episodes and trained M
    # (from round 0's weights) on both rounds' series
    d = tmp_path / "data"
    r1 = A.validate(d / "round1/rollouts.h5", "rollouts")
    assert r1.inputs["controller"]["sha256"] == A.sha256(d / "round0/controller.h5")
    assert r1.config["collect"]["policy"] == "controller"
    assert not (d / "round1/vae.h5").exists() and recs[1].vae == str(d / "round0/vae.h5")
    s1 = A.validate(d / "round1/series.h5", "series")
    assert [q["sha256"] for q in s1.inputs["rollouts"]] == [A.sha256(d / "round1/rollouts.h5")]
    m1 = A.validate(d / "round1/mdn.h5", "mdn")
    assert [q["sha256"] for q in m1.inputs["series"]] == [A.sha256(d / f"round{k}/series.h5") for k in (0, 1)]
    assert m1.inputs["init"]["sha256"] == A.sha256(d / "round0/mdn.h5")
    episode = "episode.mp4" if mp4_available() else "episode.gif"  # GIF on a machine without imageio-ffmpeg
    for name in ("results.md", "results.json", "dream.gif", episode, "reconstructions.png", "fitness.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0, name
    assert "× uniform random" in table and len(rows) == 4
    # the last round evolves the final controller with final_pop, the earlier ones with the preset's population
    pops = [A.validate(d / f"round{k}/controller.h5", "controller").config["evolve"]["pop"] for k in (0, 1)]
    assert pops == [p.evolve.pop, it.final_pop] and p.evolve.pop != it.final_pop
    # the data round (0) evolves for a fraction of the generations and is evaluated on fewer episodes
    gens = [A.validate(d / f"round{k}/controller.h5", "controller").summary["generations"] for k in (0, 1)]
    assert gens == [round(p.evolve.generations * it.data_generations_fraction), p.evolve.generations]
    assert gens[0] < gens[1]
    assert [A.validate(d / f"round{k}/eval.h5", "eval").summary["episodes"] for k in (0, 1)] == [3, 5]
    # the last round climbed down its τ ladder and kept a rung; the data round evolved at the preset's τ
    ladder = recs[1].ladder
    assert [r["tau"] for r in ladder] == [1.3, 0.8]
    for r in ladder:
        rung = d / f"round1/controller.tau{r['tau']:g}.h5"
        meta = A.validate(rung, "controller")
        assert meta.config["evolve"]["temperature"] == r["tau"] and meta.config["evolve"]["pop"] == it.final_pop
        assert r["dream_score"] == meta.summary["best_score"]
        assert r["random_dream"] == iterate.random_dream_score(d / "round1/mdn.h5", r["tau"], p.evolve.max_steps,
                                                               seed=1, device="cpu")
        assert r["ratio"] == r["dream_score"] / r["random_dream"]
    kept = max(ladder, key=lambda r: r["ratio"])
    assert [r.get("kept", False) for r in ladder] == [r is kept for r in ladder]
    assert A.sha256(d / "round1/controller.h5") == A.sha256(kept["path"])
    assert A.validate(d / "round1/eval.h5", "eval").inputs["controller"]["sha256"] == A.sha256(d / "round1/controller.h5")
    taus = [A.validate(d / f"round{k}/controller.h5", "controller").config["evolve"]["temperature"] for k in (0, 1)]
    assert taus == [r.tau for r in recs] == [p.evolve.temperature, kept["tau"]]
    assert f"the last round's {kept['tau']:g}" in table and "τ ladder" in table and "(kept)" in table
    # a started round keeps its population and τ when rounds are added; a new last round gets final_pop
    assert iterate._round_evolve(d / "round0/controller.h5", p, it, last=True) == (p.evolve.pop, p.evolve.temperature)
    assert iterate._round_evolve(d / "round9/controller.h5", p, it, last=True) == (it.final_pop, p.evolve.temperature)
    assert iterate._round_evolve(d / "round9/controller.h5", p, it.replace(final_pop=0),
                                 last=True) == (p.evolve.pop, p.evolve.temperature)
    saved = json.loads((tmp_path / "data" / iterate.RECORD).read_text())
    assert [r["round"] for r in saved] == [0, 1]
    # rerunning finds every artifact complete: nothing is retrained or re-evaluated
    mtimes = [(d / f).stat().st_mtime for f in ("round1/mdn.h5", "round1/controller.tau0.8.h5", "round1/eval.h5")]
    iterate.run(p, d, it, runtime=Runtime(seed=0, workers=1, device='cpu'))
    assert [(d / f).stat().st_mtime for f in ("round1/mdn.h5", "round1/controller.tau0.8.h5", "round1/eval.h5")] == mtimes
    # a ratio the first rung reaches: the rerun replays the ladder from its rungs and keeps the first; the
    # evaluation follows the controller it keeps
    first = iterate.run(p, d, it.replace(final_dream_ratio=ladder[0]["ratio"]), runtime=Runtime(seed=0, workers=1, device='cpu'))[1]
    assert [r["tau"] for r in first.ladder] == [1.3] and first.ladder[0]["kept"] and first.tau == 1.3
    assert A.sha256(d / "round1/controller.h5") == A.sha256(d / "round1/controller.tau1.3.h5")
    assert A.validate(d / "round1/eval.h5", "eval").inputs["controller"]["sha256"] == A.sha256(d / "round1/controller.h5")
    saved = json.loads((d / iterate.RECORD).read_text())
    # a third round: round 1 becomes a data round and keeps its full evolution and evaluation
    evals = (d / "round1/eval.h5").stat().st_mtime, (d / "round1/controller.h5").stat().st_mtime
    recs = iterate.run(p, d, it.replace(rounds=3, final_dream_ratio=0), runtime=Runtime(seed=0, workers=1, device='cpu'))
    assert [r.round for r in recs] == [0, 1, 2] and recs[1].real_mean == saved[1]["real_mean"]
    assert ((d / "round1/eval.h5").stat().st_mtime, (d / "round1/controller.h5").stat().st_mtime) == evals
    r2 = A.validate(d / "round2/controller.h5", "controller")
    assert (r2.config["evolve"]["pop"], r2.summary["generations"]) == (it.final_pop, p.evolve.generations)
    # ratio 0: the hottest rung is kept at once, the colder one never evolved
    assert [r.tau for r in recs] == [p.evolve.temperature, 1.3, 1.3] and len(recs[2].ladder) == 1
    assert not (d / "round2/controller.tau0.8.h5").exists()


def test_demo_carracing_has_the_papers_rows_and_resumes(tmp_path):
    p = preset("carracing", "tiny")
    it = iterate_config("tiny", "carracing", eval_episodes=4)
    assert it.rounds == 1 and it.final_pop == 0 and it.final_temperatures == ()
    data, results = tmp_path / "data", tmp_path / "results"
    rows, recs, table = demo.run(p, data, results, it, runtime=Runtime(seed=0, workers=1, device='cpu'), scale="tiny")
    assert len(recs) == 1 and recs[0].pop == p.evolve.pop
    assert [r.paper for r in rows] == ["", "632 ± 251", "788 ± 141", "906 ± 21"]
    d = data / "round0"
    main = A.validate(d / "controller.h5", "controller").config
    evals = [d / "eval_z.h5", d / "eval_z40.h5", d / "eval.h5"]
    for name, hidden in (("z", 0), ("z40", 40)):
        meta = A.validate(d / f"controller_{name}.h5", "controller")
        assert meta.config["controller"] == {**main["controller"], "features": "z", "hidden": hidden}
        assert meta.config["evolve"] == main["evolve"]  # the same scale as the full model
        ev = A.validate(d / f"eval_{name}.h5", "eval")
        assert ev.inputs["controller"]["sha256"] == A.sha256(d / f"controller_{name}.h5")
        assert ev.summary["episodes"] == 4
    for row, e in zip(rows[1:], evals, strict=True):
        with A.open_artifact(e, "eval") as fh:
            assert row.mean == float(fh[A.RETURNS][()].mean())
        assert row.seconds > 0
    with A.open_artifact(data / "baseline_random.h5", "eval") as fh:
        assert rows[0].mean == float(fh[A.RETURNS][()].mean())
    assert "906 ± 21" in table and "C on z with 40 tanh units" in table
    for name in ("results.md", "results.json", "dream.gif", "reconstructions.png", "fitness.png"):
        assert (results / name).stat().st_size > 0, name
    # a rerun redoes nothing: every artifact is complete, the table is the same
    stamps = {f: f.stat().st_mtime_ns for f in d.glob("*.h5")}
    rows2, _, table2 = demo.run(p, data, results, it, runtime=Runtime(seed=0, workers=1, device='cpu'), scale="tiny")
    assert {f: f.stat().st_mtime_ns for f in d.glob("*.h5")} == stamps
    assert [(r.mean, r.std, r.dream) for r in rows2] == [(r.mean, r.std, r.dream) for r in rows]


def test_final_temperatures_depend_on_the_preset_scale(wm, monkeypatch, tmp_path):
    from worldmodels_cli.stages import demo as demo_stage

    seen = []
    monkeypatch.setattr(demo_stage, "run", lambda preset, data, results, it, **kw: seen.append((preset, it)) or
                        ([], [], "table"))
    for args in (["--preset", "small"], ["--preset", "tiny"], ["--temperature", "1.3", "--final-temperatures", "0.9,0.7"],
                 ["--final-temperatures", "", "--detail-weight", "10"]):
        assert wm("demo", "--data", tmp_path, "--results", tmp_path / "r", *args).code == 0
    assert [(q.evolve.temperature, it.final_temperatures, q.vae_train.detail_weight) for q, it in seen] == [
        (1.15, (1.5, 1.15, 0.8), 30.0), (1.15, (), 0.0), (1.3, (0.9, 0.7), 30.0), (1.15, (), 10.0)]
    assert [(it.final_ensemble, it.final_pessimism) for _, it in seen] == [(4, "halt"), (1, "off"), (4, "halt"),
                                                                         (4, "halt")]
    r = wm("demo", "--data", tmp_path, "--results", tmp_path / "r", "--detail-weight", "-1")
    assert r.code == 2 and "--detail-weight" in r.err and "Traceback" not in r.err, r.err
    for bad in ("1.5,x", "1.5,0", "nan"):
        r = wm("demo", "--data", tmp_path, "--results", tmp_path / "r", "--final-temperatures", bad)
        assert r.code == 2 and "--final-temperatures" in r.err and "Traceback" not in r.err, r.err
    assert len(seen) == 4


def test_screen_flashes_reach_the_preset(wm, monkeypatch, tmp_path):
    """--screen-flashes over small's (off) for the whole demo; refused for CarRacing, which has none."""
    from worldmodels_cli.stages import demo as demo_stage

    seen = []
    monkeypatch.setattr(demo_stage, "run", lambda preset, data, results, it, **kw: seen.append(preset) or
                        ([], [], "table"))
    for args in ([], ["--screen-flashes"], ["--preset", "paper", "--no-screen-flashes"]):
        assert wm("demo", "--data", tmp_path, "--results", tmp_path / "r", *args).code == 0
    assert [q.env.doom_screen_flashes for q in seen] == [False, True, False]
    r = wm("demo", "--env", "carracing", "--data", tmp_path, "--screen-flashes")
    assert r.code == 2 and "Doom setting" in r.err and "Traceback" not in r.err, r.err
    assert len(seen) == 3


def test_iterate_later_vae_epochs_retrains_v_on_all_rollouts(tmp_path):
    p = preset("doom", "tiny")
    it = iterate.IterateConfig(rounds=2, controller_episodes=3, eval_episodes=2, later_vae_epochs=0.5)
    recs = iterate.run(p, tmp_path, it, runtime=Runtime(seed=0, workers=1, device='cpu'))
    v1 = A.validate(tmp_path / "round1/vae.h5", "vae")
    assert len(v1.inputs["rollouts"]) == 2 and v1.inputs["init"]["sha256"] == A.sha256(tmp_path / "round0/vae.h5")
    assert recs[1].vae == str(tmp_path / "round1/vae.h5")
    s1 = A.validate(tmp_path / "round1/series.h5", "series")
    assert s1.summary["episodes"] == 6 + 3 and len(s1.inputs["rollouts"]) == 2


def test_report_fills_rows_that_ran(tiny_world, tmp_path):
    from worldmodels_cli.stages import evaluate

    doom = tmp_path / "doom"
    doom.mkdir()
    shutil.copy(tiny_world.vae, doom / "vae.h5")
    evaluate.run(doom / "eval_random.h5", policy="random", preset=preset("doom", "tiny"), episodes=3)
    text = report.build(tmp_path)
    assert "| random policy (uniform per tic) | N/A | 210 ± 108 | N/A |" in text
    line = next(x for x in text.splitlines() if x.startswith("| random policy (uniform"))
    assert "not run" not in line and "(3 episodes)" in line
    assert "| 1.15 | 918 ± 546 | 1092 ± 556 | not run | not run |" in text
    assert "doom/vae" in text


def test_make_n_reproduce_lists_every_stage():
    out = subprocess.run(["make", "-n", "reproduce", "WM=wm", "VENV=/nonexistent"], cwd=ROOT, capture_output=True,
                         text=True, check=False, timeout=60)
    cmds = [line for line in out.stdout.splitlines() if line.startswith("wm ")]
    verbs = [c.split()[1] for c in cmds]
    assert verbs.count("collect") == 2 and verbs.count("train-vae") == 2 and verbs.count("encode") == 2
    assert verbs.count("train-mdn") == 2
    assert verbs.count("evolve") == 5 + 3  # Doom tau sweep; CarRacing full model and the two V-only rows
    assert verbs.count("evaluate") == 5 + 2 + 3 + 1
    assert cmds[-1].startswith("wm report")
    assert any("--temperature 1.15" in c for c in out.stdout.replace("\\\n", " ").splitlines())


def test_wm_demo_command_passes_its_iterate_options(tmp_path):
    from click.testing import CliRunner

    from worldmodels_cli.cli import cli

    res = CliRunner().invoke(cli, ["demo", "--preset", "tiny", "--data", str(tmp_path / "d"), "--results",
                                   str(tmp_path / "r"), "--rounds", "1", "--eval-episodes", "3", "--workers", "1",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert A.validate(tmp_path / "d/round0/eval.h5", "eval").summary["episodes"] == 3
    assert "world model, round 0" in res.output and not (tmp_path / "d/round1").exists()


def test_controller_frames_budget_sizes_later_collection(tmp_path):
    p = preset("doom", "tiny")
    it = iterate.IterateConfig(rounds=2, controller_episodes=50, controller_frames=90, eval_episodes=3)
    iterate.run(p, tmp_path, it, runtime=Runtime(seed=0, workers=1, device='cpu'))
    with A.open_artifact(tmp_path / "round0/eval.h5", "eval") as fh:
        mean_length = fh[A.LENGTHS][()].mean()
    expected = int(np.ceil(90 / mean_length))
    assert 1 <= expected < 50
    assert A.validate(tmp_path / "round1/rollouts.h5", "rollouts").summary["episodes"] == expected
    assert iterate.controller_episodes(it.replace(controller_frames=0), tmp_path / "round0/eval.h5") == 50
    assert iterate.controller_episodes(it.replace(controller_frames=10**9), tmp_path / "round0/eval.h5") == 50


def test_no_ladder_when_c_evolves_in_the_real_env(tmp_path):
    p = preset("doom", "tiny")
    p = p.replace(evolve=p.evolve.replace(in_dream=False, generations=2))
    it = iterate.IterateConfig(rounds=1, eval_episodes=2, final_temperatures=(1.3, 0.8), final_dream_ratio=1e9)
    rec = iterate.run(p, tmp_path, it, runtime=Runtime(seed=0, workers=1, device='cpu'))[0]
    assert rec.ladder == [] and not list(tmp_path.glob("round0/controller.tau*"))
    meta = A.validate(tmp_path / "round0/controller.h5", "controller")
    assert not meta.config["evolve"]["in_dream"] and meta.config["evolve"]["pop"] == it.final_pop
