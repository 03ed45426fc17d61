"""Training M (store/series_data.py, stages/train_mdn.py, `wm train-mdn`): batching as the reference (ref §4.2, §4.3), the
silent mismatches of ref §C (1: done labels, 2: done weighting, 3: fresh z), exact resume, NaN and Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from worldmodels_cli.cli import cli
from worldmodels_cli.config import preset
from worldmodels_cli.models.mdnrnn import MDNRNN, done_bce, load_initial_z, load_mdn, mdn_nll
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.runtime.errors import ArtifactError, ConfigError, TrainingDiverged
from worldmodels_cli.stages import train_mdn
from worldmodels_cli.store import artifacts as A
from worldmodels_cli.store.checkpoint import load
from worldmodels_cli.store.metrics import MetricsWriter, metrics_path
from worldmodels_cli.store.series_data import (
    EpisodeBatcher,
    StreamBatcher,
    load_series,
    split_episodes,
    write_fake_series,
)

LENGTHS = [40, 55, 60, 33, 50, 47, 60, 41]


@pytest.fixture
def doom_series(tmp_path):
    p = tmp_path / "doom.series.h5"
    write_fake_series(p, LENGTHS, z_dim=8, action_dim=1, env="doom")
    return p


@pytest.fixture
def car_series(tmp_path):
    p = tmp_path / "car.series.h5"
    write_fake_series(p, LENGTHS, z_dim=8, action_dim=3, env="carracing", seed=1)
    return p


def _hand_made(path, lengths=(3, 2, 4), logvar=-30.0):
    """μ[:, 0] = global frame number, so z (≈ μ) tells which frame a batch position holds."""
    write_fake_series(path, lengths, z_dim=2, action_dim=1, env="doom", logvar=logvar)
    with h5py.File(path, "r+") as fh:
        n = fh[A.MU].shape[0]
        fh[A.MU][:, 0] = np.arange(n, dtype=np.float32)
    return load_series([path])


def _weights(path):
    return load(path, "mdn").weights


# ------------------------------------------------------------------------------------------ data
def test_several_series_are_concatenated(tmp_path, doom_series):
    other = tmp_path / "new.h5"
    write_fake_series(other, [10, 20], z_dim=8, action_dim=1, env="doom", seed=5)
    data = load_series([doom_series, other])
    assert data.episodes == len(LENGTHS) + 2
    assert data.index.frames == sum(LENGTHS) + 30 == len(data.mu)
    with h5py.File(other) as fh:
        np.testing.assert_array_equal(data.mu[sum(LENGTHS) + 10], fh[A.MU][10])
    assert data.index.starts[-1] == sum(LENGTHS) + 10


def test_series_mismatches_are_refused(tmp_path, doom_series, car_series):
    wide = tmp_path / "wide.h5"
    write_fake_series(wide, [10], z_dim=4, action_dim=1, env="doom")
    with pytest.raises(ArtifactError, match="latent/action sizes"):
        load_series([doom_series, wide])
    other_env = tmp_path / "car1.h5"
    write_fake_series(other_env, [10], z_dim=8, action_dim=3, env="carracing")  # CarRacing's actions are 3 wide
    with pytest.raises(ArtifactError, match="latent/action sizes"):
        load_series([doom_series, other_env])
    with pytest.raises(ArtifactError, match="1-wide actions, but carracing takes 3"):  # checked where it is opened
        write_fake_series(tmp_path / "car2.h5", [10], z_dim=8, action_dim=1, env="carracing")
        load_series([tmp_path / "car2.h5"])
    with pytest.raises(ArtifactError, match="no such file"):
        load_series([tmp_path / "missing.h5"])
    with pytest.raises(ConfigError):
        load_series([])


def test_validation_split_is_seeded_and_disjoint():
    train, val = split_episodes(20, 0.2, seed=3)
    assert len(val) == 4 and set(train).isdisjoint(val) and set(train) | set(val) == set(range(20))
    assert np.array_equal(val, split_episodes(20, 0.2, seed=3)[1])
    assert len(split_episodes(1, 0.5, 0)[1]) == 0 and len(split_episodes(3, 0.01, 0)[1]) == 1


def test_stream_batches_done_targets_mark_the_last_frame_of_each_episode(tmp_path):
    """ref §4.3, §C.1: the target of input t is whether frame t+1 starts a new episode."""
    data = _hand_made(tmp_path / "s.h5")  # episodes: frames 0-2, 3-4, 5-8
    batch = StreamBatcher(data, np.arange(3), batch_size=1, seq_len=9, seed=0).next()
    frames = np.rint(batch.z[0, :, 0]).astype(int)  # the concatenated (shuffled) stream
    assert sorted(frames) == list(range(9))
    firsts = set(data.index.starts.tolist())
    lasts = set((data.index.starts + data.index.lengths - 1).tolist())
    assert [bool(r) for r in batch.restart[0]] == [f in firsts for f in frames]
    # input position t (frame frames[t]) has done target 1 exactly when it is its episode's last frame
    assert [bool(d) for d in batch.done_target[0]] == [f in lasts for f in frames[:-1]]


def test_an_episode_cut_at_the_step_cap_is_not_a_death(tmp_path):
    """Issue 22: the done target is 1 at the end of an episode that died, 0 at the end of one cut at the cap
    (truncated); the restart flag (the LSTM reset) still marks every episode's start."""
    path = tmp_path / "s.h5"
    _hand_made(path)  # episodes: frames 0-2, 3-4, 5-8
    with h5py.File(path, "r+") as fh:  # episode 1 survived to the cap
        fh[A.TERMINATED][4], fh[A.TRUNCATED][4] = False, True
    data = load_series([path])
    batch = StreamBatcher(data, np.arange(3), batch_size=1, seq_len=9, seed=0).next()
    frames = np.rint(batch.z[0, :, 0]).astype(int)
    assert [bool(r) for r in batch.restart[0]] == [f in {0, 3, 5} for f in frames]
    assert [bool(d) for d in batch.done_target[0]] == [f in {2, 8} for f in frames[:-1]]
    assert train_mdn._done_fraction(data, np.arange(3)) == 2 / 9


def test_trainer_aligns_and_weights_the_done_loss(tmp_path):
    """ref §C.1 + §C.2: the loss the trainer optimises = NLL + mean((1 + 9·y)·BCE) with y[t] = 'frame t is its
    episode's last', computed here independently of the batcher's flags."""
    data = _hand_made(tmp_path / "s.h5", logvar=-2.0)
    p = preset("doom", "tiny")
    assert p.mdn_train.done_weight == 10
    mcfg = p.mdn.replace(z_dim=2, action_dim=1)
    tcfg = p.mdn_train.replace(batch_size=1, seq_len=9)
    batcher = StreamBatcher(data, np.arange(3), 1, 9, seed=0)
    model = MDNRNN(mcfg)
    trainer = train_mdn._Trainer(model, torch.optim.Adam(model.parameters()), batcher, tcfg, torch.device("cpu"))
    batch = batcher.next()
    loss, parts, _ = trainer.losses(batch, None)

    frames = np.rint(data.mu[:, 0]).astype(int)
    mu_frames = [int(np.argmin(np.abs(frames - v))) for v in batch.z[0, :, 0]]  # z ≈ μ ± e^-1: nearest frame
    lasts = set((data.index.starts + data.index.lengths - 1).tolist())
    y = torch.tensor([[float(f in lasts) for f in mu_frames[:-1]]])
    z = torch.from_numpy(batch.z)
    a = torch.from_numpy(batch.actions)
    r = torch.from_numpy(batch.restart)
    out, _ = model(z[:, :-1], a[:, :-1], r[:, :-1])
    logit = out.done_logit
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none")
    want = ((1 + 9 * y) * bce).mean()
    torch.testing.assert_close(parts["mdn/done_bce"], want)
    torch.testing.assert_close(loss, mdn_nll(z[:, 1:], out) + done_bce(logit, y))
    assert y.sum() == 2  # two episode ends inside the 8 inputs (the third is the stream's last frame)


def _left_the_playfield(tmp_path, **heads):
    """CarRacing data that run past the end: episode 0 (12 steps) leaves the playfield at step 5 and runs on,
    terminated and paid -100 at every later step (gymnasium's way); episode 1 (9 steps) ends at its last frame.
    -> (losses, model outputs, tensors, batch, the row holding episode 0)."""
    p = tmp_path / "car.h5"
    write_fake_series(p, [12, 9], z_dim=4, action_dim=3, env="carracing", seed=2)
    with h5py.File(p, "r+") as fh:
        fh[A.TERMINATED][5:12] = True
        fh[A.REWARDS][5:12] = -100.0
    data = load_series([p])
    assert data.live.tolist() == [True] * 6 + [False] * 6 + [True] * 9
    mcfg = preset("carracing", "tiny").mdn.replace(z_dim=4, action_dim=3, **heads)
    tcfg = preset("carracing", "tiny").mdn_train.replace(batch_size=2, seq_len=12)
    model = MDNRNN(mcfg)
    trainer = train_mdn._Trainer(model, torch.optim.Adam(model.parameters()), None, tcfg, torch.device("cpu"))
    batch = EpisodeBatcher(data, np.arange(2), batch_size=2, seq_len=12, seed=0).next()
    _, parts, _ = trainer.losses(batch, None)
    x = trainer._tensors(batch)
    out, _ = model(x["z"][:, :-1], x["actions"][:, :-1], x["restart"][:, :-1])
    return parts, out, x, batch, int(np.argmax(batch.mask.sum(1)))


def test_the_reward_loss_ends_with_the_episode(tmp_path):
    """The reward head learns the step that terminated (-100 once, as the real game pays it), nothing after."""
    parts, out, x, batch, row = _left_the_playfield(tmp_path, reward_head="regression")
    keep = torch.from_numpy(batch.mask.copy())
    keep[row, 6:] = 0  # its rewards after step 5 are not targets
    err = (out.reward - x["rewards"][:, :-1]) ** 2
    torch.testing.assert_close(parts["mdn/reward_loss"], (err * keep).sum() / keep.sum())
    assert batch.rewards[row, 5] == -100.0 and keep[row, 5] == 1


def test_a_carracing_done_head_learns_where_the_car_left_the_playfield(tmp_path):
    """Issue 20: CarRacing's dream ends where M predicts the end: the done target is 1 at the first terminated
    step only, and the steps after it are no targets at all."""
    parts, out, _, batch, row = _left_the_playfield(tmp_path, done_head=True)
    y = torch.zeros_like(out.done_logit)
    y[row, 5] = 1.0
    keep = torch.from_numpy(batch.mask.copy())
    keep[row, 6:] = 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out.done_logit, y, reduction="none")
    torch.testing.assert_close(parts["mdn/done_bce"], ((1 + 9 * y) * bce * keep).sum() / keep.sum())


def test_a_done_head_on_episode_rows_needs_ends_inside_the_episodes(tmp_path):
    p = tmp_path / "car.h5"
    write_fake_series(p, [12, 9], z_dim=4, action_dim=3, env="carracing", seed=2)  # each ends at its last frame
    cfg = preset("carracing", "tiny")
    cfg = cfg.replace(mdn=cfg.mdn.replace(done_head=True))
    with pytest.raises(ConfigError, match="recorded past their end"):
        train_mdn.run(cfg, [p], tmp_path / "m.h5", runtime=Runtime(device="cpu"))
    with h5py.File(p, "r+") as fh:
        fh[A.TERMINATED][5:12] = True
    train_mdn.run(cfg, [p], tmp_path / "m.h5", runtime=Runtime(device="cpu"))
    assert A.validate(tmp_path / "m.h5", "mdn").summary["done_positive_fraction"] > 0


def test_z_is_sampled_afresh_from_mu_logvar_every_batch(tmp_path):
    """ref §4.1, §C.3: never μ; a new ε per batch; z ~ N(μ, exp(logσ²))."""
    p = tmp_path / "s.h5"
    write_fake_series(p, [50], z_dim=6, action_dim=3, env="carracing", logvar=float(np.log(0.25)))
    data = load_series([p])
    batcher = EpisodeBatcher(data, np.arange(1), batch_size=2, seq_len=50, seed=0)
    batches = [batcher.next() for _ in range(40)]
    mu = data.mu[None]  # every row is the whole single episode
    assert not np.allclose(batches[0].z, batches[1].z)
    eps = np.stack([(b.z - mu) / 0.5 for b in batches])
    assert abs(eps.mean()) < 0.02 and abs(eps.var() - 1) < 0.03
    assert np.abs(eps).max() > 1  # not μ


def test_episode_batches_start_at_episode_starts_and_mask_padding(tmp_path):
    data = _hand_made(tmp_path / "s.h5")
    batch = EpisodeBatcher(data, np.arange(3), batch_size=3, seq_len=10, seed=0).next()
    assert batch.z.shape[:2] == (3, 4) and batch.reset
    starts = set(data.index.starts.tolist())
    for row, mask in zip(batch.z[:, :, 0], batch.mask, strict=True):
        first = int(round(row[0]))
        assert first in starts
        length = int(data.index.lengths[list(data.index.starts).index(first)])
        np.testing.assert_allclose(row[:length], np.arange(first, first + length), atol=1e-4)
        assert mask.tolist() == [1.0] * (length - 1) + [0.0] * (4 - length)
    assert (batch.restart[:, 0] == 1).all() and (batch.restart[:, 1:] == 0).all()


def test_stream_chunks_continue_each_other_and_epochs_reshuffle(tmp_path):
    data = _hand_made(tmp_path / "s.h5", lengths=(7, 5, 9, 6, 8, 5))  # 40 frames
    b = StreamBatcher(data, np.arange(6), batch_size=2, seq_len=5, seed=0)
    assert b.steps_per_epoch == 4
    epoch0 = [b.next() for _ in range(4)]
    assert [x.reset for x in epoch0] == [True, False, False, False]
    stream0 = np.concatenate([np.rint(x.z[..., 0]) for x in epoch0], axis=1)  # (B, 20)
    assert sorted(stream0.flatten().astype(int)) == list(range(40))
    epoch1 = [b.next() for _ in range(4)]
    assert epoch1[0].reset
    assert not np.array_equal(stream0, np.concatenate([np.rint(x.z[..., 0]) for x in epoch1], axis=1))


def test_too_little_data_for_streams_is_a_clear_error(tmp_path):
    data = _hand_made(tmp_path / "s.h5")
    with pytest.raises(ConfigError, match="too few"):
        StreamBatcher(data, np.arange(3), batch_size=4, seq_len=30, seed=0)


# -------------------------------------------------------------------------------------- training
def test_tiny_training_reduces_the_loss(tmp_path, car_series):
    p = preset("carracing", "tiny")
    p = p.replace(mdn_train=p.mdn_train.replace(steps=60, lr=3e-3, log_steps=5, checkpoint_steps=60))
    res = train_mdn.run(p, [car_series], tmp_path / "m.h5", runtime=Runtime(device='cpu'))
    recs = [r for r in MetricsWriter(metrics_path(tmp_path / "m.h5")).read() if "mdn/nll" in r]
    assert recs[-1]["mdn/nll"] < recs[0]["mdn/nll"] - 0.2
    assert res.steps == 60 and res.val_nll is not None
    assert {"mdn/lr", "mdn/steps_per_s"} <= set(recs[0])


def test_artifact_rebuilds_the_model_and_stores_first_frames(tmp_path, doom_series):
    out = tmp_path / "m.h5"
    res = train_mdn.run(preset("doom", "tiny"), [doom_series], out, runtime=Runtime(device='cpu'))
    model, meta = load_mdn(out)
    assert meta.kind == "mdn" and model.cfg.done_head and model.cfg.z_dim == 8
    assert res.parameters == sum(p.numel() for p in model.parameters()) == meta.summary["parameters"]
    assert 0 < meta.summary["done_positive_fraction"] < 0.05 and meta.summary["done_bce"] > 0
    mu0, logvar0 = load_initial_z(out)
    data = load_series([doom_series])
    np.testing.assert_array_equal(mu0, data.mu[data.index.starts])
    np.testing.assert_array_equal(logvar0, data.logvar[data.index.starts])
    assert meta.inputs["series"][0]["sha256"] == A.sha256(doom_series)


@pytest.mark.parametrize(("env", "fixture"), [("doom", "doom_series"), ("carracing", "car_series")])
@pytest.mark.parametrize("how", ["ctrl-c", "sigint", "crash"])
def test_resume_ends_with_the_same_weights(tmp_path, env, fixture, how, request):
    """Interrupted at step 7 (Ctrl-C checkpoints there; a crash leaves the step-5 checkpoint), then rerun."""
    series = request.getfixturevalue(fixture)
    p = preset(env, "tiny")
    p = p.replace(mdn_train=p.mdn_train.replace(steps=12, log_steps=1))
    ref = train_mdn.run(p, [series], tmp_path / "ref.h5", runtime=Runtime(device='cpu'))
    out = tmp_path / "m.h5"
    err = RuntimeError if how == "crash" else KeyboardInterrupt

    def stop(step):
        if step == 7 and how == "sigint":
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: deferred to the end of the step
        elif step == 7:
            raise err("injected")

    with pytest.raises(err):
        train_mdn.run(p, [series], out, runtime=Runtime(device='cpu'), on_step=stop)
    ckpt = load(out, "mdn")
    assert ckpt.meta.summary["steps"] == (5 if how == "crash" else 7) and not ckpt.complete
    res = train_mdn.run(p, [series], out, runtime=Runtime(device='cpu'))
    assert res.resumed_from == ckpt.meta.summary["steps"] and res.steps == 12
    a, b = _weights(tmp_path / "ref.h5"), _weights(out)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    steps = [r["step"] for r in MetricsWriter(metrics_path(out)).read() if "mdn/nll" in r]
    assert steps == list(range(1, 13))
    assert res.nll == ref.nll


def test_training_resumes_across_restart_paths(tmp_path, doom_series, monkeypatch):
    """A run checkpointed on the split path (the CPU's) resumes on the packed one (one cuDNN call a batch on
    CUDA) and ends where the uninterrupted run does, within float error; the artifact is the same either way."""
    from worldmodels_cli.models import mdnrnn

    p = preset("doom", "tiny")
    p = p.replace(mdn_train=p.mdn_train.replace(steps=12))
    monkeypatch.setattr(mdnrnn, "auto_restart_path", lambda device: "split")
    train_mdn.run(p, [doom_series], tmp_path / "ref.h5", runtime=Runtime(device="cpu"))
    out = tmp_path / "m.h5"

    def stop(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_mdn.run(p, [doom_series], out, runtime=Runtime(device="cpu"), on_step=stop)
    packed_calls = []
    real = MDNRNN._run_packed
    monkeypatch.setattr(mdnrnn, "auto_restart_path", lambda device: "packed")
    monkeypatch.setattr(MDNRNN, "_run_packed", lambda self, *a: packed_calls.append(1) or real(self, *a))
    res = train_mdn.run(p, [doom_series], out, runtime=Runtime(device="cpu"))
    assert res.resumed_from == 7 and res.steps == 12 and len(packed_calls) >= 5  # restarts inside every batch
    a, b = _weights(tmp_path / "ref.h5"), _weights(out)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)


def test_rerun_of_a_finished_run_is_a_no_op_and_more_steps_continue(tmp_path, car_series):
    p = preset("carracing", "tiny")
    out = tmp_path / "m.h5"
    train_mdn.run(p, [car_series], out, runtime=Runtime(device='cpu'))
    before = out.stat().st_mtime_ns
    assert train_mdn.run(p, [car_series], out, runtime=Runtime(device='cpu')).steps == 10
    assert out.stat().st_mtime_ns == before
    more = p.replace(mdn_train=p.mdn_train.replace(steps=15))
    res = train_mdn.run(more, [car_series], out, runtime=Runtime(device='cpu'))
    assert res.resumed_from == 10 and res.steps == 15


def test_a_different_run_into_the_same_output_is_refused(tmp_path, car_series, doom_series):
    p = preset("carracing", "tiny")
    out = tmp_path / "m.h5"
    train_mdn.run(p, [car_series], out, runtime=Runtime(device='cpu'))
    with pytest.raises(ArtifactError, match="another run.*seed"):
        train_mdn.run(p, [car_series], out, runtime=Runtime(seed=1, device='cpu'))
    lr = p.replace(mdn_train=p.mdn_train.replace(lr=0.1))
    with pytest.raises(ArtifactError, match="mdn_train"):
        train_mdn.run(lr, [car_series], out, runtime=Runtime(device='cpu'))
    with pytest.raises(ArtifactError, match="is a series artifact"):
        train_mdn.run(p, [car_series], car_series, runtime=Runtime(device='cpu'))


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, car_series):
    p = preset("carracing", "tiny")
    out = tmp_path / "m.h5"
    holder = {}

    def poison(step):
        if step == 6:
            with torch.no_grad():
                holder["model"].head.bias.fill_(float("nan"))

    orig = train_mdn._Trainer.__init__

    def spy(self, model, *args, **kw):
        holder["model"] = model
        orig(self, model, *args, **kw)

    train_mdn._Trainer.__init__ = spy
    try:
        with pytest.raises(TrainingDiverged, match=r"step 7.*step 5"):
            train_mdn.run(p, [car_series], out, runtime=Runtime(device='cpu'), on_step=poison)
    finally:
        train_mdn._Trainer.__init__ = orig
    ckpt = load(out, "mdn")
    assert ckpt.meta.summary["steps"] == 5
    assert all(np.isfinite(w).all() for w in ckpt.weights.values())


def test_warm_start_from_another_m(tmp_path, car_series):
    p = preset("carracing", "tiny")
    first = tmp_path / "m0.h5"
    train_mdn.run(p, [car_series], first, runtime=Runtime(device='cpu'))
    zero = p.replace(mdn_train=p.mdn_train.replace(steps=0))
    train_mdn.run(zero, [car_series], tmp_path / "m1.h5", runtime=Runtime(device='cpu'), init=first)
    a, b = _weights(first), _weights(tmp_path / "m1.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    bigger = p.replace(mdn=p.mdn.replace(hidden=20))
    with pytest.raises(ConfigError, match="differs"):
        train_mdn.run(bigger, [car_series], tmp_path / "m2.h5", runtime=Runtime(device='cpu'), init=first)


def test_config_errors(tmp_path, car_series, doom_series):
    p = preset("carracing", "tiny")
    with pytest.raises(ConfigError, match="done head"):
        train_mdn.run(p.replace(mdn=p.mdn.replace(done_head=True)), [car_series], tmp_path / "m.h5", runtime=Runtime(device='cpu'))
    with pytest.raises(ConfigError, match="preset is for"):
        train_mdn.run(p, [doom_series], tmp_path / "m.h5", runtime=Runtime(device='cpu'))
    assert not (tmp_path / "m.h5").exists()


def test_reward_head_trains(tmp_path, car_series):
    p = preset("carracing", "tiny")
    p = p.replace(mdn=p.mdn.replace(reward_head="sign"))
    res = train_mdn.run(p, [car_series], tmp_path / "m.h5", runtime=Runtime(device='cpu'))
    assert res.summary["reward_loss"] > 0


# ------------------------------------------------------------------------------------------- CLI
def test_cli_trains_and_info_shows_the_figures(tmp_path, doom_series):
    out = tmp_path / "m.h5"
    runner = CliRunner()
    res = runner.invoke(cli, ["train-mdn", "--series", str(doom_series), "--series", str(doom_series),
                              "--out", str(out), "--preset", "tiny", "--steps", "6", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "6 steps" in res.output and "parameters" in res.output and "done_bce" in res.output
    info = runner.invoke(cli, ["info", "--json", str(out)])
    report = json.loads(info.output)
    assert report["parameters"] > 0 and report["steps"] == 6 and "val_nll" in report
    assert len(load(out, "mdn").meta.inputs["series"]) == 2


def test_cli_error_paths_are_one_line(tmp_path, doom_series):
    from worldmodels_cli.runtime.errors import WorldModelsError

    runner = CliRunner()
    res = runner.invoke(cli, ["train-mdn", "--series", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "m.h5")],
                        standalone_mode=False)
    assert isinstance(res.exception, ArtifactError) and "no such file" in str(res.exception)
    shutil.copy(doom_series, tmp_path / "copy.h5")
    res = runner.invoke(cli, ["train-mdn", "--series", str(doom_series), "--out", str(tmp_path / "none" / "m.h5"),
                              "--preset", "tiny", "--device", "cpu"], standalone_mode=False)
    assert isinstance(res.exception, WorldModelsError) and "does not exist" in str(res.exception)
