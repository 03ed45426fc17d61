"""Fault suite, slow part (`make test-faults`): every stage run as the real console command in a
subprocess, killed with SIGKILL at seeded random points and rerun, interrupted with SIGINT (Ctrl-C: the whole
process group) and rerun, and run out of disk mid-write (a small RLIMIT_FSIZE).

What is asserted: a rerun after any number of kills ends with exactly the artifact of an uninterrupted run
(datasets compared bit for bit; on CPU every stage is deterministic, evolve's wall-time `seconds` aside); between
kills the output path holds either nothing or a complete artifact, and no worker process outlives its driver; a
Ctrl-C exits with status 130 and one line (no traceback); a full disk exits with status 2 and one line, leaves
the previous artifact byte-identical and no temp file. The fast cases (bad inputs, no code from artifacts) are in
tests/test_faults.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from worldmodels_cli.runtime import Runtime
from worldmodels_cli.store import artifacts as A
from worldmodels_cli.store.metrics import metrics_path

pytestmark = pytest.mark.faults

# one torch thread, as a busy 2-core machine wants; both the reference and the resumed runs use it
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+ [A-Z]+ ")  # log records (progress, retries)


def delays(stage: str, n: int, low: float, high: float) -> list[float]:
    """Kill delays for `stage`: random, but the same every run (seeded by the stage's name)."""
    rng = np.random.default_rng([9, zlib.crc32(stage.encode())])
    return [round(float(x), 3) for x in rng.uniform(low, high, n)]


# ------------------------------------------------------------------------------------------------- processes
@dataclass
class Done:
    rc: int
    out: str
    err: str


def launch(args: Sequence, cwd: Path, fsize: int | None = None) -> subprocess.Popen:
    """`wm ARGS` as its own process group (a terminal's Ctrl-C reaches the whole group)."""
    def setup() -> None:
        # as from a terminal: a background job of a non-interactive shell (`make test-faults &`) ignores SIGINT,
        # and so would every command it starts
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if fsize:  # out of disk: writes past `fsize` bytes fail with EFBIG (instead of SIGXFSZ killing us)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.Popen([sys.executable, "-m", "worldmodels_cli", *map(str, args)], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=setup)


def finish(p: subprocess.Popen, timeout: float = 300) -> Done:
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        reap(p.pid)
    return Done(p.returncode, out, err)


def run(args: Sequence, cwd: Path, fsize: int | None = None) -> Done:
    return finish(launch(args, cwd, fsize))


def run_ok(args: Sequence, cwd: Path) -> Done:
    done = run(args, cwd)
    assert done.rc == 0, f"wm {args[0]} failed ({done.rc}): {done.err[-2000:]}"
    return done


def live_members(sid: int) -> list[int]:
    """Processes of the run that still run (zombies excluded): its session, which `launch` starts. The session,
    not the process group: each worker leads a group of its own with the engines it starts."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _, _, session = stat.rsplit(")", 1)[1].split()[:4]
        if int(session) == sid and state not in "ZX":
            pids.append(int(entry))
    return pids


def reap(sid: int, grace: float = 20.0) -> None:
    """Workers (and their engines) must not outlive their driver: wait for the session to empty, then fail (after
    cleaning up)."""
    deadline = time.monotonic() + grace
    while live_members(sid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = live_members(sid)
    if left:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"processes {left} outlived their driver by {grace:.0f}s")


def messages(err: str) -> list[str]:
    """stderr without the progress log records the CLI prints by default."""
    return [line for line in err.splitlines() if line.strip() and not LOG_RECORD.match(line)]


def assert_one_line(done: Done, rc: int, start: str, what: str) -> None:
    assert "Traceback" not in done.err, f"{what}: traceback on stderr: {done.err[-3000:]}"
    assert done.rc == rc, f"{what}: exit {done.rc}, expected {rc}: {done.err[-2000:]}"
    msgs = messages(done.err)
    assert len(msgs) == 1 and msgs[0].startswith(start), f"{what}: not one '{start}' line: {msgs}"


def lines(path: Path) -> int:
    """Metric records so far: the header record that starts each invocation is no progress."""
    return sum(b'"header"' not in line for line in path.read_bytes().splitlines()) if path.exists() else 0


def files(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern))) if folder.exists() else 0


def kill_at(args: Sequence, cwd: Path, delay: float, progress: Callable[[], int] | None = None, grow: int = 1,
            sig: signal.Signals = signal.SIGKILL) -> tuple[bool, Done]:
    """Start `wm ARGS`, wait until `progress()` grew by `grow` (else: just the delay), sleep `delay`, send `sig`
    (SIGKILL to the driver alone, like the OOM killer; SIGINT to the whole group, like a terminal's Ctrl-C)."""
    base = progress() if progress else 0
    p = launch(args, cwd)
    deadline = time.monotonic() + 120
    while progress and p.poll() is None and progress() < base + grow and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    landed = p.poll() is None
    if landed:
        if sig == signal.SIGKILL:
            os.kill(p.pid, sig)
        else:
            os.killpg(p.pid, sig)
    return landed, finish(p)


def sweep(args: Sequence, cwd: Path, delays_: list[float], check: Callable[[], None],
          progress: Callable[[], int] | None = None, grow: int = 1) -> int:
    """SIGKILL the command at each delay in turn (each run resumes the previous one); `check()` the state on disk
    after each kill. Returns how many kills landed while the command ran."""
    landed = 0
    for delay in delays_:
        hit, done = kill_at(args, cwd, delay, progress, grow)
        if hit:
            landed += 1
            assert done.rc == -signal.SIGKILL, (done.rc, done.err[-2000:])
        check()
    return landed


# ------------------------------------------------------------------------------------------------- state
def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def datasets(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as fh:
        fh.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def assert_same(ref: Path, got: Path, skip: Sequence[str] = ()) -> None:
    """Every dataset equal, bit for bit (NaN == NaN), except those named in `skip`."""
    a, b = datasets(ref), datasets(got)
    assert sorted(a) == sorted(b), f"{got}: other datasets than {ref}"
    for name in a:
        if name not in skip:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{got}: {name} differs from {ref}")


def no_temps(*folders: Path) -> None:
    left = [p for f in folders if f.exists() for p in f.iterdir() if ".tmp" in p.name]
    assert not left, f"temp files left: {left}"


def complete_or_absent(out: Path, kind: str) -> Callable[[], None]:
    """After a kill the output path holds nothing or a whole artifact, never a damaged one."""
    def check() -> None:
        if out.exists():
            A.validate(out, kind)
    return check


def out_of_disk(args: Sequence, cwd: Path, out: Path, fsize: int) -> None:
    """Run with writes capped at `fsize` bytes: one-line error, exit 2, the file at `out` unchanged, no temp file."""
    before = sha(out) if out.exists() else None
    done = run(args, cwd, fsize=fsize)
    assert_one_line(done, 2, "error: ", f"wm {args[0]} out of disk")
    assert "write failed" in done.err or "too large" in done.err, done.err[-500:]
    if before is None:
        assert not out.exists(), f"{out} written although the disk was full"
    else:
        assert sha(out) == before, f"{out} changed by a write that failed"
    no_temps(out.parent, out.with_name(out.name + ".parts"))


def interrupted(args: Sequence, cwd: Path, progress: Callable[[], int] | None, grow: int = 1,
                delay: float = 0.0) -> None:
    """Ctrl-C mid-run: exit 130, one line (no traceback)."""
    hit, done = kill_at(args, cwd, delay, progress, grow, sig=signal.SIGINT)
    assert hit, f"wm {args[0]} ended before the Ctrl-C"
    assert_one_line(done, 130, "interrupted", f"wm {args[0]} Ctrl-C")


# ------------------------------------------------------------------------------------------------- inputs
BIG_EPISODES = 600


@pytest.fixture(scope="module")
def big_rollouts(tmp_path_factory) -> Path:
    """600 tiny Doom episodes (≈ 21k frames): what `wm collect --episodes 600` makes, and the input of encode."""
    from worldmodels_cli.config import preset
    from worldmodels_cli.stages import collect

    p = preset("doom", "tiny")
    path = tmp_path_factory.mktemp("big") / "rollouts.h5"
    collect.run(p.replace(collect=p.collect.replace(episodes=BIG_EPISODES)), path, runtime=Runtime(seed=0, workers=2))
    return path


@pytest.fixture(scope="module")
def controller(tiny_world) -> Path:
    from worldmodels_cli.config import preset
    from worldmodels_cli.stages import evolve

    p = preset("doom", "tiny")
    c = tiny_world.root / "faults-controller.h5"
    if not c.exists():
        evolve.run(p.replace(evolve=p.evolve.replace(generations=2)), tiny_world.vae, tiny_world.mdn, c, runtime=Runtime(seed=0, device='cpu'))
    return c


# ------------------------------------------------------------------------------------------------- stages
def test_collect(tmp_path, big_rollouts):
    def args(out):
        return ("collect", "--env", "doom", "--preset", "tiny", "--episodes", BIG_EPISODES, "--workers", "2",
                "--out", out)

    out = tmp_path / "r.h5"
    landed = sweep(args(out), tmp_path, delays("collect", 3, 0.0, 0.6), complete_or_absent(out, "rollouts"),
                   progress=lambda: lines(metrics_path(out)), grow=30)
    assert landed >= 2
    run_ok(args(out), tmp_path)
    assert_same(big_rollouts, out)  # nothing lost, nothing twice: the episodes of an uninterrupted run
    assert not (tmp_path / "r.h5.parts").exists()
    no_temps(tmp_path)

    out2 = tmp_path / "r2.h5"
    interrupted(args(out2), tmp_path, lambda: lines(metrics_path(out2)), grow=30)
    run_ok(args(out2), tmp_path)
    assert_same(big_rollouts, out2)


def test_collect_out_of_disk(tmp_path, tiny_world):
    def args(out, n):
        return ("collect", "--env", "doom", "--preset", "tiny", "--episodes", n, "--out", out)

    out = tmp_path / "r.h5"
    run_ok(args(out, 6), tmp_path)
    # appending rewrites the artifact: the rewrite fails, the 6 episodes stay; the new episodes' shards stay too
    out_of_disk(args(out, 12), tmp_path, out, fsize=(out.stat().st_size + tiny_world.rollouts.stat().st_size) // 2)
    run_ok(args(out, 12), tmp_path)
    assert_same(tiny_world.rollouts, out)  # = 12 episodes collected in one go
    # no room even for one episode's shard: the workers' failure is one line too
    out_of_disk(args(tmp_path / "r3.h5", 2), tmp_path, tmp_path / "r3.h5", fsize=2048)


def test_train_vae(tmp_path, tiny_world):
    def args(out):
        return ("train-vae", "--rollouts", tiny_world.rollouts, "--preset", "tiny", "--out", out, "--device", "cpu",
                "--epochs", "8")

    ref, out = tmp_path / "ref.h5", tmp_path / "v.h5"
    run_ok(args(ref), tmp_path)
    landed = sweep(args(out), tmp_path, delays("train-vae", 3, 0.0, 1.0), complete_or_absent(out, "vae"),
                   progress=lambda: lines(metrics_path(out)), grow=3)
    assert landed >= 2
    run_ok(args(out), tmp_path)
    assert_same(ref, out)  # weights and optimizer state: exact resume on CPU

    out2 = tmp_path / "v2.h5"
    interrupted(args(out2), tmp_path, lambda: lines(metrics_path(out2)), grow=3)
    out_of_disk(args(out2), tmp_path, out2, fsize=out2.stat().st_size // 2)  # the next checkpoint cannot be written
    run_ok(args(out2), tmp_path)
    assert_same(ref, out2)


def test_encode(tmp_path, tiny_world, big_rollouts):
    def args(out):
        return ("encode", "--rollouts", big_rollouts, "--rollouts", big_rollouts, "--vae", tiny_world.vae,
                "--out", out, "--device", "cpu")

    ref, out = tmp_path / "ref.h5", tmp_path / "s.h5"
    run_ok(args(ref), tmp_path)
    parts = tmp_path / "s.h5.parts"
    landed = sweep(args(out), tmp_path, delays("encode", 3, 0.0, 0.8), complete_or_absent(out, "series"),
                   progress=lambda: files(parts, "*.h5"), grow=1)
    assert landed >= 2
    run_ok(args(out), tmp_path)
    assert_same(ref, out)  # mu, logvar, steps and episode index
    assert not parts.exists()

    out2 = tmp_path / "s2.h5"
    interrupted(args(out2), tmp_path, lambda: files(tmp_path / "s2.h5.parts", "*.h5"), grow=1)
    out_of_disk(args(out2), tmp_path, out2, fsize=ref.stat().st_size // 3)  # parts fit, the merged series not
    run_ok(args(out2), tmp_path)
    assert_same(ref, out2)


# torch's global RNG state, saved for resume: torch seeds it at random in every process and M's training never
# draws from it (its noise comes from seeded generators), so it differs between any two runs, resumed or not
MDN_VOLATILE = ("train_state/torch_rng",)


def test_train_mdn(tmp_path, tiny_world):
    def args(out):
        return ("train-mdn", "--series", tiny_world.series, "--preset", "tiny", "--out", out, "--device", "cpu",
                "--steps", "400")

    ref, out = tmp_path / "ref.h5", tmp_path / "m.h5"
    run_ok(args(ref), tmp_path)
    landed = sweep(args(out), tmp_path, delays("train-mdn", 3, 0.0, 1.0), complete_or_absent(out, "mdn"),
                   progress=lambda: lines(metrics_path(out)), grow=2)
    assert landed >= 2
    run_ok(args(out), tmp_path)
    assert_same(ref, out, skip=MDN_VOLATILE)  # weights, optimizer and batcher states: exact resume on CPU

    out2 = tmp_path / "m2.h5"
    interrupted(args(out2), tmp_path, lambda: lines(metrics_path(out2)), grow=2)
    out_of_disk(args(out2), tmp_path, out2, fsize=out2.stat().st_size // 2)
    run_ok(args(out2), tmp_path)
    assert_same(ref, out2, skip=MDN_VOLATILE)


EVOLVE_VOLATILE = ("history/seconds",)  # wall time per generation


def test_evolve_in_dream(tmp_path, tiny_world):
    def args(out):
        return ("evolve", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--preset", "tiny", "--out", out,
                "--generations", "150", "--device", "cpu")

    ref, out = tmp_path / "ref.h5", tmp_path / "c.h5"
    run_ok(args(ref), tmp_path)
    landed = sweep(args(out), tmp_path, delays("evolve", 3, 0.0, 1.0), complete_or_absent(out, "controller"),
                   progress=lambda: lines(metrics_path(out)), grow=5)
    assert landed >= 2
    run_ok(args(out), tmp_path)
    assert_same(ref, out, skip=EVOLVE_VOLATILE)  # CMA mean, best, every generation's fitness and history

    out2 = tmp_path / "c2.h5"
    interrupted(args(out2), tmp_path, lambda: lines(metrics_path(out2)), grow=5)
    out_of_disk(args(out2), tmp_path, out2, fsize=out2.stat().st_size // 2)
    run_ok(args(out2), tmp_path)
    assert_same(ref, out2, skip=EVOLVE_VOLATILE)


def test_evolve_real_env_workers(tmp_path, tiny_world):
    def args(out):
        return ("evolve", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--preset", "tiny", "--out", out,
                "--real", "--generations", "10", "--workers", "2", "--device", "cpu")

    ref, out = tmp_path / "ref.h5", tmp_path / "c.h5"
    run_ok(args(ref), tmp_path)
    landed = sweep(args(out), tmp_path, delays("evolve-real", 2, 0.0, 1.0), complete_or_absent(out, "controller"),
                   progress=lambda: lines(metrics_path(out)), grow=1)
    assert landed >= 1
    run_ok(args(out), tmp_path)
    assert_same(ref, out, skip=EVOLVE_VOLATILE)

    out2 = tmp_path / "c2.h5"
    interrupted(args(out2), tmp_path, lambda: lines(metrics_path(out2)), grow=1)  # workers get the Ctrl-C too
    run_ok(args(out2), tmp_path)
    assert_same(ref, out2, skip=EVOLVE_VOLATILE)


def test_evolve_in_dream_workers(tmp_path, tiny_world):
    """The dream shared out among two worker processes (dream/parallel.py): kills and Ctrl-C of the driver end
    its pool too, and the reruns end with the artifact of one uninterrupted run with one worker."""
    def args(out, workers="2"):
        return ("evolve", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--preset", "tiny", "--out", out,
                "--in-dream", "--generations", "60", "--workers", workers, "--device", "cpu")

    ref, out = tmp_path / "ref.h5", tmp_path / "c.h5"
    run_ok(args(ref, "1"), tmp_path)
    landed = sweep(args(out), tmp_path, delays("evolve-dream-workers", 2, 1.0, 3.0),
                   complete_or_absent(out, "controller"), progress=lambda: lines(metrics_path(out)), grow=2)
    assert landed >= 1
    run_ok(args(out), tmp_path)
    assert_same(ref, out, skip=EVOLVE_VOLATILE)

    out2 = tmp_path / "c2.h5"
    interrupted(args(out2), tmp_path, lambda: lines(metrics_path(out2)), grow=2)
    run_ok(args(out2), tmp_path)
    assert_same(ref, out2, skip=EVOLVE_VOLATILE)


def test_train_mdn_ensemble_workers(tmp_path, tiny_world):
    """Ensemble members trained side by side in two processes: a kill or Ctrl-C of the driver leaves each member
    resumable, and the rerun ends with the ensemble of an uninterrupted run with one worker."""
    def args(out, workers="2"):
        return ("train-mdn", "--series", tiny_world.series, "--preset", "tiny", "--out", out, "--device", "cpu",
                "--steps", "300", "--ensemble", "2", "--val-episodes", "0.2", "--checkpoint-steps", "20",
                "--workers", workers)

    def member_lines(out):  # the members' metric records so far (the ensemble's own come at the end)
        return sum(lines(metrics_path(out.with_name(out.name + ".members") / f"member{k}.h5")) for k in range(2))

    ref, out = tmp_path / "ref.h5", tmp_path / "m.h5"
    run_ok(args(ref, "1"), tmp_path)
    landed = sweep(args(out), tmp_path, delays("train-mdn-ensemble", 2, 3.0, 8.0), complete_or_absent(out, "mdn"),
                   progress=lambda: member_lines(out), grow=2)
    assert landed >= 1
    run_ok(args(out), tmp_path)
    assert_same(ref, out, skip=MDN_VOLATILE)

    out2 = tmp_path / "m2.h5"
    interrupted(args(out2), tmp_path, lambda: member_lines(out2), grow=2)
    run_ok(args(out2), tmp_path)
    assert_same(ref, out2, skip=MDN_VOLATILE)


def test_evaluate(tmp_path, controller):
    def args(out):
        return ("evaluate", "--controller", controller, "--episodes", "150", "--workers", "2", "--out", out)

    ref, out = tmp_path / "ref.h5", tmp_path / "e.h5"
    run_ok(args(ref), tmp_path)
    # not resumable (one write at the end): a kill leaves nothing, a rerun evaluates the same seeds again
    landed = sweep(args(out), tmp_path, delays("evaluate", 2, 1.0, 3.0), complete_or_absent(out, "eval"))
    assert landed >= 1
    assert not out.exists()
    run_ok(args(out), tmp_path)
    assert_same(ref, out)

    interrupted(args(tmp_path / "e2.h5"), tmp_path, None, delay=2.5)
    assert not (tmp_path / "e2.h5").exists()
    out_of_disk(args(out), tmp_path, out, fsize=out.stat().st_size // 2)  # a re-evaluation cannot be written


def test_dream(tmp_path, tiny_world, controller):
    def args(out):
        return ("dream", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--controller", controller, "--out", out,
                "--episodes", "16", "--max-steps", "400", "--device", "cpu")

    ref, out = tmp_path / "ref.gif", tmp_path / "d.gif"
    run_ok(args(ref), tmp_path)

    def check() -> None:
        assert not out.exists() or sha(out) == sha(ref)

    landed = sweep(args(out), tmp_path, delays("dream", 2, 0.5, 1.5), check)
    assert landed >= 1
    run_ok(args(out), tmp_path)
    assert sha(out) == sha(ref)
    no_temps(tmp_path)
    out_of_disk(args(out), tmp_path, out, fsize=out.stat().st_size // 2)


def test_iterate(tmp_path):
    def args(data):
        # a two-rung τ ladder that no rung passes: both evolve, then the better one is copied in
        return ("iterate", "--env", "doom", "--preset", "tiny", "--rounds", "1", "--controller-episodes", "4",
                "--eval-episodes", "4", "--final-temperatures", "1.3,0.8", "--final-dream-ratio", "1e9",
                "--data", data, "--device", "cpu")

    ref, data = tmp_path / "ref", tmp_path / "data"
    run_ok(args(ref), tmp_path)

    def check() -> None:
        for name, kind in (("rollouts", "rollouts"), ("vae", "vae"), ("series", "series"), ("mdn", "mdn"),
                           ("controller.tau1.3", "controller"), ("controller.tau0.8", "controller"),
                           ("controller", "controller"), ("eval", "eval")):
            complete_or_absent(data / "round0" / f"{name}.h5", kind)()

    landed = sweep(args(data), tmp_path, delays("iterate", 3, 2.0, 6.0), check)
    assert landed >= 2
    run_ok(args(data), tmp_path)
    for name in ("rollouts", "vae", "series", "mdn", "controller.tau1.3", "controller.tau0.8", "controller", "eval"):
        assert_same(ref / "round0" / f"{name}.h5", data / "round0" / f"{name}.h5",
                    skip=EVOLVE_VOLATILE if name.startswith("controller") else {"mdn": MDN_VOLATILE}.get(name, ()))
    no_temps(data, data / "round0")


def test_stale_temp_of_a_killed_writer_is_removed(tmp_path, tiny_world):
    """A kill during a checkpoint write leaves `.<name>.tmp-<pid>`; the next write of that output removes it (but
    not the temp of a writer that still runs, nor another output's)."""
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, timeout=60).stdout)
    stale, alive, other = (tmp_path / f".m.h5.tmp-{dead}", tmp_path / f".m.h5.tmp-{os.getpid()}",
                           tmp_path / f".other.h5.tmp-{dead}")
    for p in (stale, alive, other):
        p.write_bytes(b"half an HDF5 file")
    run_ok(("train-mdn", "--series", tiny_world.series, "--preset", "tiny", "--out", tmp_path / "m.h5", "--device",
            "cpu", "--steps", "5"), tmp_path)
    assert not stale.exists() and alive.exists() and other.exists()
