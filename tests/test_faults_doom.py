"""Fault suite on the real game (`make test-faults`): vizdoom runs each game's engine as a child process that
ignores SIGTERM and would inherit its worker's pipes. With 2 workers, `wm collect`, real-env `wm evolve` and
`wm evaluate` are hit with kill -9 of a worker, of an engine and of the driver, and with Ctrl-C and SIGTERM to the
process group. Asserted each time: the command ends within a time limit (a hang fails), with the exit status the
signal calls for (a killed worker or engine is retried: the command still succeeds), no process of the run is
left (`reap` checks the run's whole session), and a rerun ends with the artifact of an uninterrupted run, bit for
bit."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from test_faults_kill import (
    EVOLVE_VOLATILE,
    assert_one_line,
    assert_same,
    finish,
    launch,
    live_members,
    run_ok,
)

from worldmodels_cli.testing import random_world

pytestmark = pytest.mark.faults

LIMIT = 240  # seconds any one command may take here; past it the test fails as a hang


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_for(p, what: str, count: int, timeout: float = 60.0) -> list[int]:
    """The run's processes whose command line contains `what`, once there are `count` (one per worker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        found = [pid for pid in live_members(p.pid) if what in _cmdline(pid)]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    pytest.fail(f"no {count} '{what}' processes appeared (exit {p.poll()})")


def hit(args, cwd: Path, how: str, settle: float = 1.5, workers: int = 2):
    """Start `wm ARGS`, wait for every worker's engine, let it run `settle` s, then deliver `how`."""
    p = launch(args, cwd)
    engines = _wait_for(p, "vizdoom/vizdoom", workers)
    time.sleep(settle)
    if how == "worker":
        workers = [pid for pid in live_members(p.pid) if "spawn_main" in _cmdline(pid)]
        os.kill(workers[0], signal.SIGKILL)
    elif how == "engine":
        os.kill(engines[0], signal.SIGKILL)
    elif how == "driver":
        os.kill(p.pid, signal.SIGKILL)
    else:
        os.killpg(p.pid, {"ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM}[how])
    return finish(p, timeout=LIMIT)  # reaps: fails if any process of the session is left


def check(done, how: str, what: str) -> None:
    if how in ("worker", "engine"):  # retried in a new worker / on a new engine
        assert done.rc == 0, f"{what}: exit {done.rc}: {done.err[-2000:]}"
    elif how == "driver":
        assert done.rc == -signal.SIGKILL
    elif how == "ctrl-c":
        assert_one_line(done, 130, "interrupted", what)
    else:
        assert_one_line(done, 143, "terminated", what)


HOWS = ["worker", "engine", "driver", "ctrl-c", "sigterm"]


@pytest.mark.parametrize("how", HOWS)
def test_collect(tmp_path, how):
    def args(out):
        return ("collect", "--env", "doom", "--preset", "small", "--episodes", "60", "--workers", "2", "--seed", "3",
                "--out", out)

    ref, out = tmp_path / "ref.h5", tmp_path / "r.h5"
    run_ok(args(ref), tmp_path)
    check(hit(args(out), tmp_path, how), how, f"collect, {how}")
    run_ok(args(out), tmp_path)
    assert_same(ref, out)


@pytest.mark.parametrize("how", ["driver", "ctrl-c", "sigterm"])
def test_collect_in_one_process(tmp_path, how):
    """--workers 1 runs the game in the driver itself: a kill -9 of it must not orphan the engine (a watchdog
    `sh` kills it), and a Ctrl-C must reach the driver, not kill the engine under it (exit 130, not 2)."""
    def args(out):
        return ("collect", "--env", "doom", "--preset", "small", "--episodes", "30", "--workers", "1", "--seed", "5",
                "--out", out)

    ref, out = tmp_path / "ref.h5", tmp_path / "r.h5"
    run_ok(args(ref), tmp_path)
    for _ in range(2 if how == "ctrl-c" else 1):  # the engine used to die first only now and then
        check(hit(args(out), tmp_path, how, workers=1), how, f"collect --workers 1, {how}")
        time.sleep(0.5)  # the watchdog, in a session of its own, is gone too
        assert not [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if "= stop ]" in _cmdline(pid)]
    run_ok(args(out), tmp_path)
    assert_same(ref, out)


@pytest.fixture(scope="module")
def doom_world(tmp_path_factory):
    return random_world(tmp_path_factory.mktemp("doom_world"), "doom")


@pytest.mark.parametrize("how", HOWS)
def test_evolve_real(tmp_path, how, doom_world):
    vae, mdn, _ = doom_world

    def args(out):
        return ("evolve", "--vae", vae, "--mdn", mdn, "--preset", "small", "--real", "--pop", "4", "--trials", "4",
                "--generations", "4", "--eval-every", "2", "--eval-episodes", "4", "--workers", "2", "--device", "cpu",
                "--out", out)

    ref, out = tmp_path / "ref.h5", tmp_path / "c.h5"
    run_ok(args(ref), tmp_path)
    check(hit(args(out), tmp_path, how, settle=0.5), how, f"evolve --real, {how}")
    run_ok(args(out), tmp_path)
    assert_same(ref, out, skip=EVOLVE_VOLATILE)


@pytest.mark.parametrize("how", HOWS)
def test_evaluate(tmp_path, how, doom_world):
    vae, mdn, _ = doom_world
    c = tmp_path / "c.h5"
    run_ok(("evolve", "--vae", vae, "--mdn", mdn, "--preset", "small", "--real", "--pop", "4", "--trials", "1",
            "--generations", "1", "--eval-episodes", "1", "--out", c), tmp_path)

    def args(out):
        return ("evaluate", "--controller", c, "--episodes", "24", "--workers", "2", "--out", out)

    ref, out = tmp_path / "ref.h5", tmp_path / "e.h5"
    run_ok(args(ref), tmp_path)
    check(hit(args(out), tmp_path, how, settle=0.5), how, f"evaluate, {how}")
    run_ok(args(out), tmp_path)
    assert_same(ref, out)
