"""V: the model (ref §3), its loss, the streaming frame loader, `wm train-vae` (resume, divergence, errors)."""

from __future__ import annotations

import json
import os
import signal

import h5py
import numpy as np
import pytest
import torch
from synthetic import frame_ids, write_rollouts

from worldmodels_cli.cli import main
from worldmodels_cli.config import VAEConfig, preset
from worldmodels_cli.models.vae import (
    ConvVAE,
    detail_weights,
    kl_divergence,
    load_vae,
    parameter_count,
    to_input,
    vae_loss,
)
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.runtime.errors import ArtifactError, ConfigError, Interrupted, TrainingDiverged
from worldmodels_cli.stages import train_vae
from worldmodels_cli.store import artifacts as A
from worldmodels_cli.store import checkpoint, frames


# ------------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize(("z", "expected"), [(32, 4_348_547), (64, 4_446_915)])
def test_parameter_count_matches_the_paper(z, expected):
    assert parameter_count(ConvVAE(VAEConfig(z_dim=z))) == expected  # ref §3


def test_shapes_and_range():
    model = ConvVAE(VAEConfig(z_dim=32))
    x = to_input(torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8))
    assert x.shape == (2, 3, 64, 64) and 0 <= x.min() and x.max() <= 1
    recon, mu, logvar = model(x)
    assert recon.shape == (2, 3, 64, 64) and mu.shape == (2, 32) and logvar.shape == (2, 32)
    assert 0 < recon.min() and recon.max() < 1  # sigmoid output
    assert torch.equal(model.encode(x)[0], mu)
    assert all(float(m.bias.detach().abs().sum()) == 0 for m in model.modules() if hasattr(m, "bias") and m.bias is not None)


def test_to_input_is_pixel_over_255_in_nchw():
    frames_u8 = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    x = to_input(frames_u8)
    assert torch.equal(x[1, 2, 5, 7], frames_u8[1, 5, 7, 2].float() / 255)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(kl_divergence(mu, logvar), expected, rtol=1e-5, atol=1e-5)


def test_loss_floor_is_per_sample_and_recon_is_summed():
    z = 8
    x = torch.rand(2, 3, 64, 64)
    y = torch.rand(2, 3, 64, 64)
    # sample 0 sits at the prior (KL 0, floored to 0.5*z); sample 1 has a large KL (kept as is)
    mu = torch.stack([torch.zeros(z), torch.full((z,), 3.0)])
    logvar = torch.zeros(2, z)
    loss, r, kl = vae_loss(x, y, mu, logvar, kl_tolerance=0.5)
    assert torch.isclose(r, ((x - y) ** 2).sum(dim=(1, 2, 3)).mean())
    assert torch.isclose(kl, torch.tensor((0.5 * z + 0.5 * 9 * z) / 2))
    assert torch.isclose(loss, r + kl)
    _, _, kl0 = vae_loss(x, y, mu, logvar, kl_tolerance=0.0)
    assert torch.isclose(kl0, torch.tensor(0.5 * 9 * z / 2))


def test_detail_weight_moves_the_loss_onto_pixels_that_stand_out():
    z = 8
    mu, logvar = torch.zeros(1, z), torch.zeros(1, z)
    x = torch.full((1, 3, 64, 64), 0.4)
    x[:, 0, 30:32, 20:22] = 1.0  # a 2x2 red dot on a flat wall: a distant fireball
    flat = x.clone()
    flat[:, 0, 30:32, 20:22] = 0.4  # the reconstruction that leaves it out
    loss0, r0, _ = vae_loss(x, flat, mu, logvar, kl_tolerance=0.5)
    loss, r, kl = vae_loss(x, flat, mu, logvar, kl_tolerance=0.5, detail_weight=20.0)
    assert torch.equal(r, r0)  # recon_loss stays the plain sum (comparable between Vs)
    assert torch.isclose(loss0, r0 + kl)
    assert loss - kl > 3 * r  # the dot's error now weighs several times its pixel count
    w = detail_weights(x, 20.0)
    assert w.shape == (1, 1, 64, 64)
    assert torch.isclose(w.mean(), torch.tensor(1.0))
    assert w[0, 0, 30, 20] > 3 * w[0, 0, 5, 5]
    # an error spread evenly keeps its size: the weights average 1 per frame
    even = x + 0.1
    _, r_even, kl_even = vae_loss(x, even, mu, logvar, kl_tolerance=0.5)
    loss_even, _, _ = vae_loss(x, even, mu, logvar, kl_tolerance=0.5, detail_weight=20.0)
    assert torch.isclose(loss_even - kl_even, r_even, rtol=1e-5)
    # a flat frame has no detail: every weight is 1
    assert torch.allclose(detail_weights(torch.full((2, 3, 64, 64), 0.3), 20.0), torch.ones(2, 1, 64, 64))


def test_detail_weight_trains_and_is_part_of_the_run(rollouts, tmp_path):
    out = tmp_path / "v.h5"
    train_vae.run(_tiny(detail_weight=10.0), [rollouts], out, runtime=Runtime(seed=0, device='cpu'))
    meta = A.validate(out, "vae")
    assert meta.config["vae_train"]["detail_weight"] == 10.0
    plain = tmp_path / "plain.h5"
    train_vae.run(_tiny(), [rollouts], plain, runtime=Runtime(seed=0, device='cpu'))
    assert _weights(out)[0]["encoder.0.weight"].tolist() != _weights(plain)[0]["encoder.0.weight"].tolist()
    with pytest.raises(ArtifactError, match="detail_weight"):  # another run's output is refused, not resumed
        train_vae.run(_tiny(), [rollouts], out, runtime=Runtime(seed=0, device='cpu'))


# ------------------------------------------------------------------------------------------------ data
LENGTHS = (30, 25, 40, 20, 35, 28, 33, 17)


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory):
    return write_rollouts(tmp_path_factory.mktemp("data") / "r.h5", lengths=LENGTHS)


def _val_ids(sources):
    src = sources[0]
    return {int(i) for s, n in zip(src.starts[src.val], src.lengths[src.val], strict=True) for i in range(s, s + n)}


def test_split_holds_out_whole_episodes_deterministically(rollouts):
    a = frames.split_episodes([rollouts], 0.25, seed=1)
    assert a[0].val.sum() == 2
    assert np.array_equal(a[0].val, frames.split_episodes([rollouts], 0.25, seed=1)[0].val)
    assert frames.val_frames(a) == sum(np.asarray(LENGTHS)[a[0].val])
    assert frames.split_episodes([rollouts], 0.0, seed=1)[0].val.sum() == 0


@pytest.mark.parametrize("block", [7, 16])
def test_stream_emits_every_training_frame_once_per_epoch(rollouts, block):
    sources = frames.split_episodes([rollouts], 0.25, seed=3)
    plan = frames.TrainFrames(sources, block_frames=block, buffer_blocks=3, seed=3)
    val = _val_ids(sources)
    train = set(range(sum(LENGTHS))) - val
    assert plan.frames == len(train)
    orders = []
    for epoch in range(2):
        batches = list(frames.train_batches(plan, epoch, 16))
        assert all(len(b) == 16 for b in batches[:-1]) and 0 < len(batches[-1]) <= 16
        ids = np.concatenate([frame_ids(b) for b in batches])
        assert len(ids) == len(train) and set(ids.tolist()) == train  # each exactly once, nothing from validation
        orders.append(ids)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch
    # the order is a pure function of (seed, epoch)
    again = np.concatenate([frame_ids(b) for b in frames.train_batches(plan, 1, 16)])
    assert np.array_equal(again, orders[1])
    # frames are mixed across the file, not left in episode order
    assert np.mean(np.abs(np.diff(orders[0]))) > 10


def test_stream_skip_and_workers_give_the_same_order(rollouts):
    sources = frames.split_episodes([rollouts], 0.25, seed=0)
    plan = frames.TrainFrames(sources, block_frames=16, buffer_blocks=2, seed=0)
    full = [frame_ids(b) for b in frames.train_batches(plan, 0, 10)]
    tail = [frame_ids(b) for b in frames.train_batches(plan, 0, 10, skip_frames=70)]
    assert all(np.array_equal(a, b) for a, b in zip(full[7:], tail, strict=True))
    workers = [frame_ids(b) for b in frames.train_batches(plan, 0, 10, num_workers=2)]
    assert all(np.array_equal(a, b) for a, b in zip(full, workers, strict=True)) and len(workers) == len(full)


def test_val_batches_cover_validation_frames(rollouts):
    sources = frames.split_episodes([rollouts], 0.25, seed=3)
    ids = np.concatenate([frame_ids(b) for b in frames.val_batches(sources, 16)])
    assert sorted(ids.tolist()) == sorted(_val_ids(sources))


# ------------------------------------------------------------------------------------------------ training
def _tiny(**train):
    cfg = preset("carracing", "tiny")
    return cfg.replace(vae_train=cfg.vae_train.replace(**train))


def _weights(path):
    with h5py.File(path, "r") as fh:
        return A.read_state_dict(fh[A.WEIGHTS]), A.read_tree(fh[A.TRAIN_STATE])["optimizer"]


def test_train_writes_artifact_metrics_and_pictures(rollouts, tmp_path):
    out = tmp_path / "v.h5"
    res = train_vae.run(_tiny(), [rollouts], out, runtime=Runtime(seed=0, device='cpu'))
    assert res.epochs == 1.0 and res.val_loss is not None and not res.already_done
    meta = A.validate(out, "vae")
    assert meta.summary["complete"] is True and meta.env == "carracing"
    assert meta.summary["steps"] == res.steps == meta.summary["steps_per_epoch"] and meta.summary["val_loss"] == pytest.approx(res.val_loss)
    assert meta.inputs["rollouts"][0]["sha256"] == A.sha256(rollouts)
    model, meta2 = load_vae(out)
    assert model.config == preset("carracing", "tiny").vae and meta2.kind == "vae"
    lines = (tmp_path / "v.metrics.jsonl").read_text().splitlines()
    keys = set().union(*(json.loads(x).keys() for x in lines))
    assert {"vae/loss", "vae/recon", "vae/kl", "vae/val_loss", "vae/frames_per_s"} <= keys
    assert (tmp_path / "v.recon.png").stat().st_size > 0 and (tmp_path / "v.loss.png").stat().st_size > 0
    # rerunning the same command: nothing to do
    assert train_vae.run(_tiny(), [rollouts], out, runtime=Runtime(seed=0, device='cpu')).already_done
    # other settings: refused, the artifact untouched
    with pytest.raises(ArtifactError, match="another run"):
        train_vae.run(_tiny(epochs=2), [rollouts], out, runtime=Runtime(seed=0, device='cpu'))
    with pytest.raises(ArtifactError, match="another run"):
        train_vae.run(_tiny(), [rollouts], out, runtime=Runtime(seed=1, device='cpu'))


def test_resume_equals_uninterrupted(rollouts, tmp_path):
    cfg = _tiny(epochs=1.5)  # a mid-epoch and a second-epoch interruption, and a fractional last epoch
    ref = tmp_path / "ref.h5"
    # the reference also checkpoints inside epochs at every step (checkpoint_minutes ~ 0): saving changes nothing
    train_vae.run(cfg.replace(vae_train=cfg.vae_train.replace(checkpoint_minutes=1e-9)), [rollouts], ref, runtime=Runtime(seed=5, device='cpu'))

    out = tmp_path / "v.h5"

    def interrupt_at(k, how):
        def hook(step):
            if step == k:
                if how == "signal":
                    os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: handled after the step completes
                else:
                    raise KeyboardInterrupt
        return hook

    with pytest.raises(Interrupted, match="rerun the same command"):
        train_vae.run(cfg, [rollouts], out, runtime=Runtime(seed=5, device='cpu'), on_step=interrupt_at(3, "signal"))
    meta = A.validate(out, "vae")
    assert meta.summary["complete"] is False and meta.summary["steps"] == 3
    with pytest.raises(ArtifactError, match="unfinished"):
        load_vae(out)
    with pytest.raises(Interrupted):
        train_vae.run(cfg, [rollouts], out, runtime=Runtime(seed=5, device='cpu'), on_step=interrupt_at(14, "raise"))
    res = train_vae.run(cfg, [rollouts], out, runtime=Runtime(seed=5, device='cpu'))
    assert res.resumed_from == 14 and res.steps == A.validate(ref).summary["steps"]
    (w_ref, opt_ref), (w, opt) = _weights(ref), _weights(out)
    for k in w_ref:
        assert np.array_equal(w_ref[k], w[k]), k
    for p in opt_ref["state"]:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert np.array_equal(opt_ref["state"][p][k], opt["state"][p][k])
    assert A.validate(out).summary["val_loss"] == A.validate(ref).summary["val_loss"]


def test_nan_loss_stops_and_keeps_the_last_checkpoint(rollouts, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = train_vae.vae_loss

    def poisoned(*args, **kw):
        loss, r, kl = real(*args, **kw)
        calls["n"] += 1
        return (loss * float("nan"), r, kl) if calls["n"] > 12 else (loss, r, kl)

    monkeypatch.setattr(train_vae, "vae_loss", poisoned)
    out = tmp_path / "v.h5"
    with pytest.raises(TrainingDiverged, match=r"kept the last good checkpoint .*\(step \d+\)"):
        train_vae.run(_tiny(epochs=3), [rollouts], out, runtime=Runtime(seed=0, device='cpu'))
    meta = A.validate(out, "vae")
    assert meta.summary["complete"] is False
    weights, _ = _weights(out)
    assert all(np.isfinite(v).all() for v in weights.values())


def test_init_starts_from_another_vae(rollouts, tmp_path):
    v0 = tmp_path / "v0.h5"
    train_vae.run(_tiny(), [rollouts], v0, runtime=Runtime(seed=0, device='cpu'))
    v1 = tmp_path / "v1.h5"
    train_vae.run(_tiny(epochs=0), [rollouts], v1, runtime=Runtime(seed=9, device='cpu'), init=v0)
    (a, _), (b, _) = _weights(v0), _weights(v1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert "init" in A.validate(v1).inputs


def test_corrupt_training_state_is_a_one_line_error(rollouts, tmp_path):
    out = tmp_path / "v.h5"
    with pytest.raises(Interrupted):
        train_vae.run(_tiny(), [rollouts], out, runtime=Runtime(seed=0, device='cpu'),
                      on_step=lambda s: (_ for _ in ()).throw(KeyboardInterrupt) if s == 2 else None)
    with h5py.File(out, "a") as fh:
        del fh[A.TRAIN_STATE]["optimizer"]
    with pytest.raises(ArtifactError, match="corrupt training state"):
        train_vae.run(_tiny(), [rollouts], out, runtime=Runtime(seed=0, device='cpu'))


def test_bad_inputs(rollouts, tmp_path):
    doom = write_rollouts(tmp_path / "d.h5", env="doom", lengths=(20, 20))
    with pytest.raises(ConfigError, match="different envs"):
        train_vae.run(_tiny(), [rollouts, doom], tmp_path / "v.h5", runtime=Runtime(device='cpu'))
    with pytest.raises(ConfigError, match="preset is for"):
        train_vae.run(preset("doom", "tiny"), [rollouts], tmp_path / "v.h5", runtime=Runtime(device='cpu'))
    with pytest.raises(ArtifactError, match="no such file"):
        train_vae.run(_tiny(), [tmp_path / "missing.h5"], tmp_path / "v.h5", runtime=Runtime(device='cpu'))
    with pytest.raises(ArtifactError, match="expected a vae artifact"):
        load_vae(rollouts)
    with pytest.raises(ArtifactError, match="expected a vae artifact"):
        train_vae.run(_tiny(), [rollouts], tmp_path / "v.h5", runtime=Runtime(device='cpu'), init=rollouts)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ArtifactError, match="not a readable VAE checkpoint"):
        train_vae.run(_tiny(), [rollouts], tmp_path / "junk.h5", runtime=Runtime(device='cpu'))


# ------------------------------------------------------------------------------------------------ CLI
def _wm(capsys, *args):
    """Run the real entry point in-process -> (exit code, captured output)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    return code, capsys.readouterr()


def test_cli_train_vae_and_info(rollouts, tmp_path, capsys):
    out = tmp_path / "v.h5"
    code, io = _wm(capsys, "train-vae", "--rollouts", str(rollouts), "--out", str(out), "--preset", "tiny",
                   "--epochs", "0.5", "--device", "cpu")
    assert code == 0, io.err
    assert len(io.out.strip().splitlines()) == 1 and "params" in io.out and "val_loss" in io.out
    code, io = _wm(capsys, "info", str(out))
    assert "parameters: 21435" in io.out and "train_loss:" in io.out and "val_loss:" in io.out
    code, io = _wm(capsys, "train-vae", "--rollouts", str(out), "--out", str(tmp_path / "x.h5"), "--preset", "tiny")
    assert code == 2 and io.err.count("\n") == 1 and "expected a rollouts artifact" in io.err


def test_cli_sets_v_architecture(rollouts, tmp_path, capsys):
    """--z-dim / --enc-channels / --dec-channels build that V (and the artifact says so); nonsense and a clash with
    --init are one-line errors."""
    out = tmp_path / "v.h5"
    code, io = _wm(capsys, "train-vae", "--rollouts", str(rollouts), "--out", str(out), "--preset", "tiny",
                   "--epochs", "0.2", "--device", "cpu", "--z-dim", "5", "--enc-channels", "2,4,4,6",
                   "--dec-channels", "6,4,2")
    assert code == 0, io.err
    model, meta = load_vae(out)
    assert (model.config.z_dim, model.config.enc_channels, model.config.dec_channels) == (5, (2, 4, 4, 6), (6, 4, 2))
    assert meta.config["vae"]["enc_channels"] == [2, 4, 4, 6]
    for bad, says in ((("--enc-channels", "2,4,4"), "needs 4 values"), (("--enc-channels", "2,4.5,4,6"), "whole"),
                      (("--z-dim", "3", "--init", str(out)), "--init brings its own architecture")):
        code, io = _wm(capsys, "train-vae", "--rollouts", str(rollouts), "--out", str(tmp_path / "x.h5"),
                       "--preset", "tiny", *bad)
        assert code == 2 and io.err.count("\n") == 1 and says in io.err, io.err
    assert not (tmp_path / "x.h5").exists()


def test_checkpoint_optimizer_round_trip():
    model = ConvVAE(VAEConfig(z_dim=4, enc_channels=(2, 2, 2, 2), dec_channels=(2, 2, 2)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 3, 64, 64))[0].sum().backward()
    opt.step()
    sd = checkpoint.optimizer_state_from_tree(checkpoint.optimizer_state_to_tree(opt.state_dict()))
    opt2 = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt2.load_state_dict(sd)
    for p in opt.state:
        for k, v in opt.state[p].items():
            assert torch.equal(v, opt2.state[p][k])
