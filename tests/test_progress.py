"""Progress as a user sees it: bars and log lines on a real pseudo-terminal, periodic lines in a log file, one
numbering of generations."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from worldmodels_cli.store.metrics import LogProgress, metrics_path

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


def _on_a_terminal(args: list[str], cwd: Path) -> str:
    """`wm ARGS` under a pseudo-terminal (util-linux `script`), as a user at a terminal sees it."""
    # a pseudo-terminal starts 0 columns wide, and tqdm draws nothing in 0 columns
    cmd = " ".join(["stty cols 100 rows 40;", sys.executable, "-m", "worldmodels_cli", *map(str, args)])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(["script", "-qec", cmd, "/dev/null"], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:]
    return out.stdout


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script for a pseudo-terminal")
def test_log_lines_never_share_a_line_with_a_bar(tiny_world, tmp_path):
    shown = _on_a_terminal(["train-mdn", "--series", tiny_world.series, "--out", tmp_path / "m.h5", "--steps", "12",
                            "--log-steps", "3", "--device", "cpu"], tmp_path)
    assert "train-mdn:" in shown and "step/s" in shown  # the bar drew, with its rate
    logged = 0
    for line in shown.replace("\r\n", "\n").split("\n"):
        visible = line.split("\r")[-1]  # what stays on screen after the carriage returns
        if " INFO " in visible:
            logged += 1
            assert STAMP.match(visible), repr(line)  # starts at the line's start: no bar before it
    assert logged >= 4


def test_without_a_terminal_progress_is_k_of_n_rate_and_eta(wm, monkeypatch, caplog):
    monkeypatch.setenv("WM_PROGRESS_SECONDS", "0")
    caplog.set_level("INFO", logger="worldmodels_cli")
    res = wm("evaluate", "--policy", "random", "--env", "doom", "--preset", "tiny", "--episodes", "10")
    assert res.code == 0, res.err
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluate:")]
    assert lines and lines[-1].startswith("evaluate: 10 of 10 (100%), ") and "ep/s" in lines[-1]
    assert sum(line.startswith("evaluate: 10 of 10") for line in lines) == 1  # the end is said once
    assert any("ETA 0:00:" in line for line in lines[:-1])


def test_log_progress_counts_only_this_runs_work_for_rate(monkeypatch, caplog):
    monkeypatch.setenv("WM_PROGRESS_SECONDS", "3600")
    caplog.set_level("INFO")
    bar = LogProgress(10, "train-vae", "step", initial=6)
    bar.update(1)
    assert not caplog.records  # not yet due
    bar.close()
    assert caplog.records[-1].getMessage().startswith("train-vae: 7 of 10 (70%), ")
    assert LogProgress(None, "collect", "ep").line().startswith("collect: 0 ep, ")


def test_generations_count_from_one_in_metrics_and_logs(tiny_world, wm, tmp_path, caplog):
    caplog.set_level("INFO", logger="worldmodels_cli")
    out = tmp_path / "c.h5"
    assert wm("evolve", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--out", out, "--device", "cpu").code == 0
    records = [json.loads(x) for x in metrics_path(out).read_text().splitlines()]
    gens = [r["generation"] for r in records if "generation" in r]
    assert gens == [1, 2, 3]
    assert {"evolve/pop_best", "evolve/pop_mean", "evolve/eval_score"} <= set(records[-1])
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gen=")]
    assert [m.split()[0] for m in logged] == ["gen=1/3", "gen=2/3", "gen=3/3"]
    assert all("pop_best=" in m and " best=" not in m for m in logged)


def test_iterate_announces_each_round_and_stage(wm, tmp_path, caplog):
    caplog.set_level("INFO", logger="worldmodels_cli")
    res = wm("iterate", "--env", "doom", "--preset", "tiny", "--data", tmp_path / "it", "--rounds", "1",
             "--device", "cpu")
    assert res.code == 0, res.err
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("==== round 0 (1 of 1)") for m in msgs)
    stages = [m[5:] for m in msgs if m.startswith("---- ")]
    assert stages[:4] == ["collect", "train-vae", "encode", "train-mdn"] and "evolve" in stages
    assert any(m.startswith("==== round 0 done: dream ") for m in msgs)
