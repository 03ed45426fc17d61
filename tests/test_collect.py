"""`wm collect`: determinism across worker counts, resume after an interruption or kill -9, append, refusals,
and the CLI's happy and error paths. Fake envs, tiny preset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from worldmodels_cli.cli import main
from worldmodels_cli.config import preset
from worldmodels_cli.game.envs import doom_button, make_env
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.runtime.errors import ArtifactError, ConfigError
from worldmodels_cli.stages import collect
from worldmodels_cli.stages.info import describe
from worldmodels_cli.store import artifacts as A
from worldmodels_cli.store import runs
from worldmodels_cli.store.metrics import MetricsWriter


def _cfg(env="doom", **changes):
    p = preset(env, "tiny")
    return p.replace(collect=p.collect.replace(**changes))


def _data(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as fh:
        return {k: fh[k][()] for k in fh}


def _assert_same(a, b):
    da, db = _data(a), _data(b)
    assert sorted(da) == sorted(db)
    for k in da:
        assert np.array_equal(da[k], db[k]), k


def _chunks(path) -> list[bytes]:
    """The frames dataset's chunks as stored (compressed) bytes."""
    with h5py.File(path, "r") as fh:
        ds = fh[A.FRAMES]
        return [A.read_frames_chunk(ds, first) for first in range(0, ds.shape[0], ds.chunks[0])]


def test_collect_writes_a_valid_rollouts_artifact(tmp_path):
    out = tmp_path / "doom.h5"
    res = collect.run(_cfg(episodes=5), out, runtime=Runtime(seed=3))
    meta = A.validate(out, "rollouts")
    assert meta.env == "doom" and meta.seed == 3 and meta.config["collect"]["episodes"] == 5
    d = _data(out)
    idx = A.EpisodeIndex(d[A.EPISODE_STARTS], d[A.EPISODE_LENGTHS], d[A.EPISODE_SEEDS], d[A.EPISODE_IDS])
    n = int(idx.lengths.sum())
    assert res.episodes == 5 and res.frames == n and list(idx.ids) == [0, 1, 2, 3, 4]
    assert d[A.FRAMES].shape == (n, 64, 64, 3) and d[A.FRAMES].dtype == np.uint8
    assert d[A.ACTIONS].shape == (n, 1) and d[A.ACTIONS].dtype == np.float32
    assert np.array_equal(idx.starts, np.concatenate([[0], np.cumsum(idx.lengths)[:-1]]))
    assert list(idx.seeds) == [collect.episode_seed(3, i) for i in range(5)]
    # Doom: the button the env received is the thresholded continuous action (ref §5.2)
    assert np.array_equal(d[A.ENV_ACTIONS], [doom_button(a, 1 / 3) for a in d[A.ACTIONS][:, 0]])
    ends = idx.starts + idx.lengths - 1
    assert np.all(d[A.TERMINATED][ends] | d[A.TRUNCATED][ends])
    assert not np.any(np.delete(d[A.TERMINATED] | d[A.TRUNCATED], ends))
    assert not np.any(d[A.TERMINATED] & d[A.TRUNCATED])
    assert res.mean_return == pytest.approx(d[A.REWARDS].sum() / 5)
    info = describe(out)
    assert info["valid"] and info["episodes"] == 5 and info["frames"] == n
    assert not runs.parts_dir(out).exists()
    records = MetricsWriter(tmp_path / "doom.metrics.jsonl").read()  # the header record aside
    assert sum("collect/episode" in r for r in records) == 5


def test_frames_are_the_frame_before_each_action(tmp_path):
    """Replaying the stored actions from the stored seed reproduces the stored frames (ref §2.1)."""
    out = tmp_path / "car.h5"
    cfg = _cfg("carracing", episodes=2)
    collect.run(cfg, out, runtime=Runtime(seed=0))
    d = _data(out)
    env = make_env(cfg.env)
    for e in range(2):
        lo, n = d[A.EPISODE_STARTS][e], d[A.EPISODE_LENGTHS][e]
        assert n == cfg.env.max_steps  # ignore_done: every episode runs to the cap (ref §2.1)
        frames = [env.reset(int(d[A.EPISODE_SEEDS][e]))]
        for a in d[A.ACTIONS][lo:lo + n - 1]:
            frames.append(env.step(a).obs)
        assert np.array_equal(np.stack(frames), d[A.FRAMES][lo:lo + n])
    assert A.ENV_ACTIONS not in d and d[A.ACTIONS].shape[1] == 3
    # the summary's return stops at the env's own end, not at the cap ignore_done ran on to
    returns = []
    for lo, n in zip(d[A.EPISODE_STARTS], d[A.EPISODE_LENGTHS], strict=True):
        end = d[A.TERMINATED][lo:lo + n] | d[A.TRUNCATED][lo:lo + n]
        returns.append(d[A.REWARDS][lo:lo + np.argmax(end) + 1].sum(dtype=np.float64))
    assert A.validate(out).summary["mean_return"] == pytest.approx(np.mean(returns))


def test_same_seed_same_data_with_1_and_2_workers(tmp_path):
    # min_length discards some episodes: the kept set must not depend on the workers either (ref §2.2)
    cfg = _cfg(episodes=8, min_length=40)
    r1 = collect.run(cfg, tmp_path / "w1.h5", runtime=Runtime(seed=5, workers=1))
    r2 = collect.run(cfg, tmp_path / "w2.h5", runtime=Runtime(seed=5, workers=2))
    _assert_same(tmp_path / "w1.h5", tmp_path / "w2.h5")
    assert _chunks(tmp_path / "w1.h5") == _chunks(tmp_path / "w2.h5")  # the same bytes, not only the same frames
    ids = _data(tmp_path / "w1.h5")[A.EPISODE_IDS]
    assert r1.ran > 8 and len(ids) == 8 and ids[-1] > 7  # some were discarded
    assert np.all(_data(tmp_path / "w1.h5")[A.EPISODE_LENGTHS] > 40)
    assert r2.episodes == 8
    other = collect.run(cfg, tmp_path / "s6.h5", runtime=Runtime(seed=6))
    assert not np.array_equal(_data(tmp_path / "s6.h5")[A.FRAMES][:10], _data(tmp_path / "w1.h5")[A.FRAMES][:10])
    assert other.episodes == 8


def test_collect_equals_the_plain_loop(tmp_path):
    """What collect stores (frames handed to the encoder in blocks, lockstep's one-episode shortcuts) is exactly
    the plain loop's: env.reset/step and the data policy with each episode's own stream, frame by frame, and the
    stored chunks are those of each episode's frames compressed whole (frame_codec.encode)."""
    from worldmodels_cli.game.policies import random_policy
    from worldmodels_cli.runtime import seeding
    from worldmodels_cli.store import frame_codec

    p = _cfg(episodes=6, min_length=30)
    cfg = p.replace(env=p.env.replace(max_steps=200))  # long enough to span several of the encoder's blocks
    out = tmp_path / "c.h5"
    collect.run(cfg, out, runtime=Runtime(seed=2, workers=1))
    d = _data(out)
    env, policy = make_env(cfg.env), random_policy(cfg.env, cfg.collect)
    encoded = []
    for lo, n, seed in zip(d[A.EPISODE_STARTS], d[A.EPISODE_LENGTHS], d[A.EPISODE_SEEDS], strict=True):
        rng = seeding.generator(int(seed), "policy")
        obs, plain = env.reset(int(seed)), {k: [] for k in (A.FRAMES, A.ACTIONS, A.REWARDS, A.TERMINATED,
                                                           A.TRUNCATED, A.ENV_ACTIONS)}
        policy.reset(rng)
        for _ in range(cfg.env.max_steps):
            action = policy.act(obs, rng)
            step = env.step(action)
            for k, v in ((A.FRAMES, obs), (A.ACTIONS, action), (A.REWARDS, step.reward),
                         (A.TERMINATED, step.terminated), (A.TRUNCATED, step.truncated), (A.ENV_ACTIONS, step.env_action)):
                plain[k].append(v)
            obs = step.obs
            if step.terminated or step.truncated:
                break
        assert len(plain[A.FRAMES]) == n
        for k, v in plain.items():
            assert np.array_equal(np.asarray(v, dtype=d[k].dtype), d[k][lo:lo + n]), k
        encoded.append(frame_codec.encode(np.stack(plain[A.FRAMES])))
    assert _chunks(out) == frame_codec.build_chunks(encoded, cfg.collect.chunk_frames)


def test_resume_after_interruption_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = _cfg(episodes=9, min_length=30)
    ref = tmp_path / "ref.h5"
    collect.run(cfg, ref, runtime=Runtime(seed=1))

    out = tmp_path / "out.h5"
    real, calls = collect._run_chunk, []

    def dies_after_4(state, chunk):
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        calls.extend(chunk)  # the random policy: one episode a chunk
        return real(state, chunk)

    monkeypatch.setattr(collect, "_run_chunk", dies_after_4)
    with pytest.raises(KeyboardInterrupt):
        collect.run(cfg, out, runtime=Runtime(seed=1))
    monkeypatch.setattr(collect, "_run_chunk", real)
    parts = runs.parts_dir(out)
    assert not out.exists() and len([p for p in parts.iterdir() if p.name.startswith("episode-")]) == 4
    # what a kill -9 leaves: a half-written shard (temp name only) and a half-written merge
    (parts / ".episode-000005.h5.tmp-99999").write_bytes(b"\x89HDF half")
    (tmp_path / ".out.h5.tmp-99999").write_bytes(b"half")

    kept_before = sum(1 for p in parts.iterdir() if p.name.startswith("episode-") and p.suffix == ".h5")
    res = collect.run(cfg, out, runtime=Runtime(seed=1))
    _assert_same(ref, out)
    assert res.reused == kept_before and res.ran > 0 and calls == [0, 1, 2, 3]
    assert not parts.exists() and not (tmp_path / ".out.h5.tmp-99999").exists()


def test_kill_9_then_rerun_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "k.h5"
    script = (
        "import sys; from worldmodels_cli.stages import collect; from worldmodels_cli.config import preset\n"
        "p = preset('doom', 'tiny'); p = p.replace(collect=p.collect.replace(episodes=150))\n"
        "from worldmodels_cli.runtime import Runtime\n"
        f"collect.run(p, {str(out)!r}, runtime=Runtime(seed=2))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    parts = runs.parts_dir(out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and sum(1 for p in parts.iterdir() if p.suffix == ".h5") >= 20:
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.skip("the collection finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not out.exists()
    cfg = _cfg(episodes=150)
    res = collect.run(cfg, out, runtime=Runtime(seed=2))
    assert res.reused >= 20 and res.reused + res.ran == 150
    collect.run(cfg, tmp_path / "ref.h5", runtime=Runtime(seed=2))
    _assert_same(tmp_path / "ref.h5", out)


def test_append_equals_a_fresh_larger_run(tmp_path):
    cfg = _cfg(episodes=4, min_length=30)
    out = tmp_path / "a.h5"
    collect.run(cfg, out, runtime=Runtime(seed=4))
    first = _data(out)
    res = collect.run(_cfg(episodes=7, min_length=30), out, runtime=Runtime(seed=4))
    assert res.appended_to == 4 and res.episodes == 7
    collect.run(_cfg(episodes=7, min_length=30), tmp_path / "fresh.h5", runtime=Runtime(seed=4))
    _assert_same(tmp_path / "fresh.h5", out)
    assert _chunks(tmp_path / "fresh.h5") == _chunks(out)  # old chunks copied, the tail re-encoded: same bytes
    after = _data(out)
    n = first[A.FRAMES].shape[0]
    assert np.array_equal(after[A.FRAMES][:n], first[A.FRAMES])
    assert A.validate(out, "rollouts").config["collect"]["episodes"] == 7
    # the same command again: nothing to do, nothing changed
    sha = A.sha256(out)
    again = collect.run(_cfg(episodes=7, min_length=30), out, runtime=Runtime(seed=4))
    assert again.ran == 0 and again.episodes == 7 and A.sha256(out) == sha


def test_refuses_to_mix_or_shrink(tmp_path):
    out = tmp_path / "r.h5"
    collect.run(_cfg(episodes=3), out, runtime=Runtime(seed=0))
    sha = A.sha256(out)
    with pytest.raises(ArtifactError, match="seed 0 vs 1"):
        collect.run(_cfg(episodes=5), out, runtime=Runtime(seed=1))
    with pytest.raises(ArtifactError, match="min_length 0 vs 5"):
        collect.run(_cfg(episodes=5, min_length=5), out, runtime=Runtime(seed=0))
    with pytest.raises(ArtifactError, match="env.name 'doom' vs 'carracing'"):
        collect.run(_cfg("carracing", episodes=5), out, runtime=Runtime(seed=0))
    with pytest.raises(ConfigError, match="already holds 3 episodes"):
        collect.run(_cfg(episodes=2), out, runtime=Runtime(seed=0))
    assert A.sha256(out) == sha and not runs.parts_dir(out).exists()


def test_refuses_an_unfinished_collection_with_other_settings(tmp_path, monkeypatch):
    out = tmp_path / "u.h5"

    def interrupted(state, chunk):
        raise KeyboardInterrupt

    monkeypatch.setattr(collect, "_run_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        collect.run(_cfg(episodes=3), out, runtime=Runtime(seed=0))
    monkeypatch.undo()
    with pytest.raises(ArtifactError, match="unfinished collection.*seed 0 vs 9"):
        collect.run(_cfg(episodes=3), out, runtime=Runtime(seed=9))


def test_refuses_to_overwrite_other_files(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(ArtifactError, match="not an HDF5 file.*refusing to overwrite"):
        collect.run(_cfg(episodes=2), junk, runtime=Runtime(seed=0))
    assert junk.read_text() == "not hdf5"
    with pytest.raises(ConfigError, match="min_length"):
        collect.run(_cfg(episodes=2, min_length=60), tmp_path / "x.h5", runtime=Runtime(seed=0))


# ---------------------------------------------------------------------------------------------------- CLI
def _wm(*args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        sys.exit(0)
    out, err = capsys.readouterr()
    return exc.value.code or 0, out, err


def test_cli_happy_path(tmp_path, capsys):
    out = tmp_path / "c.h5"
    code, stdout, err = _wm("collect", "--env", "doom", "--preset", "tiny", "--episodes", "3", "--seed", "2",
                            "--out", str(out), capsys=capsys)
    assert code == 0, err
    assert stdout.count("\n") == 1 and "3 episodes" in stdout and str(out) in stdout
    assert A.validate(out, "rollouts").seed == 2
    code, stdout, _ = _wm("info", str(out), capsys=capsys)
    assert code == 0 and "episodes: 3" in stdout
    for flag in ("--screen-flashes", "--no-screen-flashes"):  # over the preset's (tiny: paper's, on)
        code, _, err = _wm("collect", "--env", "doom", "--preset", "tiny", "--episodes", "2", flag,
                           "--out", str(tmp_path / f"{flag}.h5"), capsys=capsys)
        assert code == 0, err
    assert [A.validate(tmp_path / f"{flag}.h5", "rollouts").config["env"]["doom_screen_flashes"]
            for flag in ("--screen-flashes", "--no-screen-flashes")] == [True, False]


@pytest.mark.parametrize("args,message", [
    (["--episodes", "0"], "--episodes"),
    (["--workers", "0"], "--workers"),
    (["--env", "pong"], "--env"),
    (["--out", "{tmp}/missing/x.h5"], "does not exist"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    argv = {"--env": "doom", "--preset": "tiny", "--out": str(tmp_path / "e.h5")}
    for k, v in zip(args[::2], args[1::2], strict=True):
        argv[k] = v.format(tmp=tmp_path)
    flat = ["collect"] + [x for kv in argv.items() for x in kv]
    code, stdout, err = _wm(*flat, capsys=capsys)
    assert code == 2 and stdout == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "e.h5").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_cli_read_only_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = _wm("collect", "--env", "doom", "--preset", "tiny", "--out", str(ro / "x.h5"), capsys=capsys)
    finally:
        ro.chmod(0o755)
    assert code == 2 and "not writable" in err and err.count("\n") == 1


def test_frames_are_compressed_once(tmp_path, monkeypatch):
    """The worker compresses each frame of a kept episode once (a short one's never) and its shard holds them so;
    the merge compresses nothing again but the first frame of a chunk that was compressed against the frame
    before it (and the zero padding of the last chunk)."""
    from worldmodels_cli.store import frame_codec

    added, deflated = [], []
    real_add, real_deflate = frame_codec.StreamEncoder.add, frame_codec.deflate_frame
    monkeypatch.setattr(frame_codec.StreamEncoder, "add",
                        lambda self, k, f: added.extend([k] * len(f)) or real_add(self, k, f))
    monkeypatch.setattr(frame_codec, "deflate_frame", lambda *a: deflated.append(1) or real_deflate(*a))
    frame_codec._padding.cache_clear()
    cfg, out = _cfg(episodes=6, min_length=30), tmp_path / "c.h5"
    res = collect.run(cfg, out, runtime=Runtime(seed=3, workers=1))  # one worker runs inline: spies see it
    assert res.ran > res.episodes  # some episodes were short
    assert len(added) == res.frames
    chunks = -(-res.frames // cfg.collect.chunk_frames)
    assert res.frames < len(deflated) <= res.frames + chunks + 1
    data = _data(out)
    starts = data[A.EPISODE_STARTS]
    assert len(data[A.FRAMES]) == res.frames and np.all(data[A.FRAMES][starts].reshape(len(starts), -1).any(1))


def test_a_shard_of_the_previous_format_is_merged(tmp_path, monkeypatch):
    """A collection interrupted by a previous version (shards of raw frames, gzip-1) resumes into the same
    artifact, byte for byte, as a fresh one."""
    cfg, out = _cfg(episodes=4), tmp_path / "o.h5"
    real, calls = collect._run_chunk, []

    def dies_after_3(state, chunk):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.extend(chunk)
        return real(state, chunk)

    monkeypatch.setattr(collect, "_run_chunk", dies_after_3)
    with pytest.raises(KeyboardInterrupt):
        collect.run(cfg, out, runtime=Runtime(seed=0))
    monkeypatch.undo()
    shard = collect.shard_path(runs.parts_dir(out), 1)
    old = A.read_episode_shard(shard)
    raw = np.stack([np.frombuffer(old.frames.raw(k), np.uint8).reshape(64, 64, 3) for k in range(len(old.frames))])
    with h5py.File(shard, "w") as fh:  # what the previous version wrote
        fh.create_dataset(A.FRAMES, data=raw, chunks=(min(len(raw), 64), 64, 64, 3), compression="gzip", compression_opts=1)
        for key, arr in old.steps.items():
            fh.create_dataset(key, data=arr)
        fh.attrs[A.SHARD_EPISODE_ID], fh.attrs[A.SHARD_EPISODE_SEED] = old.episode_id, old.seed
    res = collect.run(cfg, out, runtime=Runtime(seed=0))
    assert res.reused == 3 and res.ran == 1
    collect.run(cfg, tmp_path / "ref.h5", runtime=Runtime(seed=0))
    _assert_same(tmp_path / "ref.h5", out)
    assert _chunks(tmp_path / "ref.h5") == _chunks(out)


def test_a_damaged_shard_is_removed_and_recollected(tmp_path, monkeypatch):
    cfg, out = _cfg(episodes=4), tmp_path / "d.h5"
    real, calls = collect._run_chunk, []

    def dies_after_3(state, chunk):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.extend(chunk)
        return real(state, chunk)

    monkeypatch.setattr(collect, "_run_chunk", dies_after_3)
    with pytest.raises(KeyboardInterrupt):
        collect.run(cfg, out, runtime=Runtime(seed=0))
    monkeypatch.undo()
    shard = collect.shard_path(runs.parts_dir(out), 1)
    shard.write_bytes(shard.read_bytes()[:100])  # what an OS crash could leave under the final name
    with pytest.raises(ArtifactError, match="episode-000001.h5: unreadable.*removed it"):
        collect.run(cfg, out, runtime=Runtime(seed=0))
    assert not shard.exists() and not out.exists()
    res = collect.run(cfg, out, runtime=Runtime(seed=0))
    assert res.reused == 3 and res.ran == 1  # only the damaged episode is run again
    collect.run(cfg, tmp_path / "ref.h5", runtime=Runtime(seed=0))
    _assert_same(tmp_path / "ref.h5", out)


def test_a_shard_whose_compressed_frames_changed_is_refused(tmp_path):
    """The merge copies a shard's compressed frames without inflating them: a CRC-32 catches a changed byte."""
    from worldmodels_cli.store import frame_codec

    frames = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    steps = {A.REWARDS: np.zeros(5, np.float32)}
    path = tmp_path / "episode-000000.h5"
    A.write_episode_shard(path, steps, frame_codec.encode(frames), episode_id=0, seed=7)
    assert A.read_episode_shard(path).frames.raw(4) == frames[4].tobytes()
    with h5py.File(path, "r+") as fh:
        fh[A.SHARD_SEGMENTS][100] ^= 1
    with pytest.raises(ArtifactError, match="episode-000000.h5: unreadable.*CRC-32"):
        A.read_episode_shard(path)


@pytest.mark.slow
def test_real_doom_same_data_with_1_and_2_workers(tmp_path):
    p = preset("doom", "paper")
    cfg = p.replace(env=p.env.replace(max_steps=200), collect=p.collect.replace(episodes=3, min_length=0))
    collect.run(cfg, tmp_path / "a.h5", runtime=Runtime(seed=1, workers=1))
    collect.run(cfg, tmp_path / "b.h5", runtime=Runtime(seed=1, workers=2))
    _assert_same(tmp_path / "a.h5", tmp_path / "b.h5")


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_controller_collection_in_lockstep_equals_one_episode_at_a_time(tiny_world, tmp_path, monkeypatch, noise):
    """With a controller, a worker steps ENVS_PER_WORKER envs together (one batched agent); the data are those
    of the episodes collected one by one, exploration noise included."""
    from worldmodels_cli.stages import evolve

    p = preset("doom", "tiny")
    c = tmp_path / "c.h5"
    evolve.run(p.replace(evolve=p.evolve.replace(generations=1)), tiny_world.vae, tiny_world.mdn, c, runtime=Runtime(seed=0))
    cfg = _cfg(episodes=7, min_length=5, policy="controller", noise=noise)
    collect.run(cfg, tmp_path / "lockstep.h5", runtime=Runtime(seed=4), controller=c)
    monkeypatch.setattr(collect, "chunk_size", lambda col, env: 1)
    collect.run(cfg, tmp_path / "alone.h5", runtime=Runtime(seed=4), controller=c)
    _assert_same(tmp_path / "lockstep.h5", tmp_path / "alone.h5")
    lengths = _data(tmp_path / "alone.h5")[A.EPISODE_LENGTHS]
    assert len(set(lengths.tolist())) > 1  # episodes ended at different steps inside one chunk


def test_a_huge_request_is_run_batch_by_batch():
    """`--episodes 10**20` once built a list of every index up front and grew until the kernel killed it."""
    batch = collect._next_batch({}, 0, 10**20, workers=2)
    assert batch == list(range(collect.MAX_BATCH + 2))
    assert len(collect._next_batch({0: True, 1: False}, 0, 10**9, workers=2)) <= collect.MAX_BATCH + 2


def test_a_controllers_collection_is_the_same_run_wherever_the_controller_lies(tiny_world, tmp_path):
    """The controller counts by its checksum: a copy elsewhere (a data folder moved or copied, as iterate's rounds
    are) finds the collection done; another controller is another run, refused in one line."""
    import shutil

    from worldmodels_cli.stages import evolve

    p = preset("doom", "tiny")
    c = tmp_path / "c.h5"
    evolve.run(p.replace(evolve=p.evolve.replace(generations=1)), tiny_world.vae, tiny_world.mdn, c, runtime=Runtime(seed=0))
    cfg = _cfg(episodes=3, min_length=0, policy="controller")
    out = tmp_path / "r.h5"
    collect.run(cfg, out, runtime=Runtime(seed=4), controller=c)
    before = A.sha256(out)
    (tmp_path / "moved").mkdir()
    moved = shutil.copy(c, tmp_path / "moved" / "c.h5")
    collect.run(cfg, out, runtime=Runtime(seed=4), controller=moved)
    assert A.sha256(out) == before
    other = tmp_path / "other.h5"
    evolve.run(p.replace(evolve=p.evolve.replace(generations=1)), tiny_world.vae, tiny_world.mdn, other,
               runtime=Runtime(seed=1))
    with pytest.raises(ArtifactError, match=r"exists from another run \(controller.sha256"):
        collect.run(cfg, out, runtime=Runtime(seed=4), controller=other)
