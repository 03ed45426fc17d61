"""`wm encode`: μ/logσ² per frame in episode order, boundaries and step data kept, several inputs, resume, errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from synthetic import write_rollouts

from worldmodels_cli.cli import main
from worldmodels_cli.config import preset
from worldmodels_cli.models.vae import load_vae, to_input
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.runtime.errors import ArtifactError, ConfigError, Interrupted
from worldmodels_cli.stages import encode, train_vae
from worldmodels_cli.store import artifacts as A


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    r1 = write_rollouts(d / "r1.h5", lengths=(30, 25, 40, 20), seed=1)
    r2 = write_rollouts(d / "r2.h5", lengths=(15, 22, 18), seed=2, first_id=3)
    v = d / "v.h5"
    cfg = preset("carracing", "tiny")
    train_vae.run(cfg.replace(vae_train=cfg.vae_train.replace(epochs=0.3)), [r1], v, runtime=Runtime(seed=0, device='cpu'))
    return d, r1, r2, v


def _read(path):
    with A.open_artifact(path, "series") as fh:
        return {k: fh[k][()] for k in (*A.REQUIRED["series"],)}


def test_encode_keeps_order_shapes_and_boundaries(data, tmp_path):
    _, r1, _, v = data
    out = tmp_path / "s.h5"
    res = encode.run([r1], v, out, runtime=Runtime(device='cpu'), batch_size=7, block_frames=50)
    assert (res.episodes, res.frames, res.z_dim) == (4, 115, 8) and res.blocks == 2  # (30+25), (40+20)
    s = _read(out)
    model, _ = load_vae(v)
    with A.open_artifact(r1, "rollouts") as fh:
        frames = fh[A.FRAMES][()]
        with torch.no_grad():
            mu, logvar = model.encode(to_input(torch.from_numpy(frames)))
        assert s[A.MU].shape == (115, 8) and s[A.MU].dtype == np.float32 and s[A.LOGVAR].shape == (115, 8)
        np.testing.assert_allclose(s[A.MU], mu.numpy(), atol=1e-5)
        np.testing.assert_allclose(s[A.LOGVAR], logvar.numpy(), atol=1e-5)
        for key in (*A.STEP_DATA, *A.EPISODE_INDEX):
            assert np.array_equal(s[key], fh[key][()]), key
    meta = A.validate(out, "series")
    assert meta.env == "carracing" and meta.model_config["z_dim"] == 8
    assert meta.inputs["vae"]["sha256"] == A.sha256(v)
    assert not out.with_name("s.h5.parts").exists()
    assert encode.run([r1], v, out, runtime=Runtime(device='cpu')).already_done


def test_several_inputs_are_concatenated_and_renumbered(data, tmp_path):
    _, r1, r2, v = data
    out = tmp_path / "s.h5"
    encode.run([r1, r2], v, out, runtime=Runtime(device='cpu'), block_frames=40)
    s = _read(out)
    assert np.array_equal(s[A.EPISODE_LENGTHS], [30, 25, 40, 20, 15, 22, 18])
    assert np.array_equal(s[A.EPISODE_STARTS], np.concatenate([[0], np.cumsum([30, 25, 40, 20, 15, 22])]))
    # r1 ids 0..3; r2's ids 3..5 are offset by r1's max id + 1 = 4, so they stay unique
    assert np.array_equal(s[A.EPISODE_IDS], [0, 1, 2, 3, 7, 8, 9])
    with A.open_artifact(r2, "rollouts") as fh:
        assert np.array_equal(s[A.EPISODE_SEEDS][4:], fh[A.EPISODE_SEEDS][()])
        assert np.array_equal(s[A.ACTIONS][115:], fh[A.ACTIONS][()])


def test_encode_resumes_after_a_kill(data, tmp_path, monkeypatch):
    _, r1, r2, v = data
    ref = tmp_path / "ref.h5"
    encode.run([r1, r2], v, ref, runtime=Runtime(device='cpu'), block_frames=30)
    out = tmp_path / "s.h5"
    real, calls = encode._encode_block, {"n": 0}

    def dying(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(encode, "_encode_block", dying)
    with pytest.raises(KeyboardInterrupt):
        encode.run([r1, r2], v, out, runtime=Runtime(device='cpu'), block_frames=30)
    assert not out.exists() and len(list(out.with_name("s.h5.parts").glob("*.h5"))) == 3
    monkeypatch.setattr(encode, "_encode_block", real)
    res = encode.run([r1, r2], v, out, runtime=Runtime(device='cpu'), block_frames=30)
    assert res.blocks_reused == 3 and res.blocks > 3
    a, b = _read(ref), _read(out)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_encode_rejects_bad_inputs(data, tmp_path):
    d, r1, r2, v = data
    doom = write_rollouts(tmp_path / "d.h5", env="doom", lengths=(12, 12))
    with pytest.raises(ConfigError, match="trained on carracing"):
        encode.run([doom], v, tmp_path / "s.h5", runtime=Runtime(device='cpu'))
    with pytest.raises(ArtifactError, match="expected a vae artifact"):
        encode.run([r1], r1, tmp_path / "s.h5", runtime=Runtime(device='cpu'))
    with pytest.raises(ArtifactError, match="expected a rollouts artifact"):
        encode.run([v], v, tmp_path / "s.h5", runtime=Runtime(device='cpu'))
    # an unfinished VAE checkpoint is not used by mistake
    cfg = preset("carracing", "tiny")
    unfinished = tmp_path / "u.h5"
    with pytest.raises(Interrupted):
        train_vae.run(cfg, [r1], unfinished, runtime=Runtime(device='cpu'),
                      on_step=lambda s: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(ArtifactError, match="unfinished"):
        encode.run([r1], unfinished, tmp_path / "s.h5", runtime=Runtime(device='cpu'))
    # an existing output from other inputs is refused, not overwritten
    out = tmp_path / "s.h5"
    encode.run([r2], v, out, runtime=Runtime(device='cpu'))
    with pytest.raises(ArtifactError, match="another run"):
        encode.run([r1], v, out, runtime=Runtime(device='cpu'))
    with h5py.File(out, "r") as fh:
        assert fh[A.MU].shape[0] == 55


def test_cli_encode(data, tmp_path, capsys):
    _, r1, _, v = data
    out = tmp_path / "s.h5"
    main(["encode", "--rollouts", str(r1), "--vae", str(v), "--out", str(out), "--device", "cpu"])
    io = capsys.readouterr()
    assert len(io.out.strip().splitlines()) == 1 and "115 frames" in io.out
    with pytest.raises(SystemExit) as exc:
        main(["encode", "--rollouts", str(r1), "--vae", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "x.h5")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.h5: no such file" in err


def test_mirror_appends_each_episode_flipped_with_left_and_right_swapped(tiny_world, tmp_path):
    """--mirror: the inputs as they are, then each again with frames flipped left-right and actions mirrored."""
    out = tmp_path / "s.h5"
    res = encode.run([tiny_world.rollouts], tiny_world.vae, out, runtime=Runtime(device='cpu'), batch_size=7, block_frames=50, mirror=True)
    plain = _read(tiny_world.series)
    s = _read(out)
    n, eps = len(plain[A.MU]), len(plain[A.EPISODE_LENGTHS])
    assert (res.frames, res.episodes) == (2 * n, 2 * eps)
    np.testing.assert_allclose(s[A.MU][:n], plain[A.MU], atol=1e-5)  # the originals first, unchanged
    model, _ = load_vae(tiny_world.vae)
    with A.open_artifact(tiny_world.rollouts, "rollouts") as fh:
        frames, env_actions = fh[A.FRAMES][()], fh[A.ENV_ACTIONS][()]
    with torch.no_grad():
        mu, _ = model.encode(to_input(torch.from_numpy(np.ascontiguousarray(frames[:, :, ::-1]))))
    np.testing.assert_allclose(s[A.MU][n:], mu.numpy(), atol=1e-5)
    assert not np.allclose(s[A.MU][n:], plain[A.MU], atol=1e-3)  # the fake frames are not symmetric
    assert np.array_equal(s[A.ACTIONS][n:], -plain[A.ACTIONS]) and np.abs(plain[A.ACTIONS]).max() > 0.5
    with h5py.File(out, "r") as fh:
        mirrored = fh[A.ENV_ACTIONS][n:]
    assert set(np.unique(env_actions)) == {0, 1, 2}
    assert np.array_equal(mirrored, np.choose(env_actions, [0, 2, 1]))
    for key in (A.REWARDS, A.TERMINATED, A.TRUNCATED, A.EPISODE_LENGTHS, A.EPISODE_SEEDS):
        assert np.array_equal(s[key][len(s[key]) // 2:], plain[key]), key
    assert len(np.unique(s[A.EPISODE_IDS])) == 2 * eps
    assert A.validate(out, "series").summary["mirror"] is True
    assert encode.run([tiny_world.rollouts], tiny_world.vae, out, runtime=Runtime(device='cpu'), mirror=True).already_done
    with pytest.raises(ArtifactError, match="another run"):
        encode.run([tiny_world.rollouts], tiny_world.vae, out, runtime=Runtime(device='cpu'), mirror=False)


def test_mirror_actions_carracing_negates_steering_only():
    from worldmodels_cli.game.envs import mirror_actions

    a = np.array([[0.5, 0.25, 0.125], [-1.0, 1.0, 0.0]], np.float32)
    m, none = mirror_actions("carracing", a)
    assert none is None and np.array_equal(m, [[-0.5, 0.25, 0.125], [1.0, 1.0, 0.0]]) and a[0, 0] == 0.5
