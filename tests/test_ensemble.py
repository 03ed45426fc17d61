"""Pessimistic dreaming (docs/pessimism.md): an ensemble of Ms trained on bootstrap resamples (stages/train_ensemble.py),
its held-out calibration, the artifact (schema 2), the batched ensemble dream against the per-member loop
(dream/fused_ensemble.py, dream/reference.py) with halt and penalty, and the commands that take it."""

from __future__ import annotations

import itertools

import h5py
import numpy as np
import pytest
import torch

from worldmodels_cli.config import ControllerConfig, MDNConfig, iterate_config, preset
from worldmodels_cli.dream import program, reference
from worldmodels_cli.models.controller import Controller
from worldmodels_cli.models.ensemble import Ensemble, load_ensemble
from worldmodels_cli.models.mdnrnn import MDNRNN, load_mdn
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.runtime.errors import ArtifactError, ConfigError
from worldmodels_cli.stages import demo, train_ensemble, train_mdn
from worldmodels_cli.store import artifacts as A
from worldmodels_cli.store import runs
from worldmodels_cli.store.checkpoint import load
from worldmodels_cli.store.series_data import (
    bootstrap_episodes,
    load_series,
    split_episodes,
    write_fake_series,
)

DOOM = MDNConfig(z_dim=6, action_dim=1, hidden=12, mixtures=3, done_head=True, restart_input=True)
CAR = MDNConfig(z_dim=5, action_dim=3, hidden=10, mixtures=2, done_head=True, reward_head="regression")
LENGTHS = [40, 55, 60, 33, 50, 47, 60, 41, 52, 38]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: a second thread only adds contention


@pytest.fixture
def series(tmp_path):
    p = tmp_path / "s.h5"
    write_fake_series(p, LENGTHS, z_dim=8, action_dim=1, env="doom")
    return p


def _tiny(k: int = 3, **train):
    p = preset("doom", "tiny")
    return p.replace(mdn_train=p.mdn_train.replace(**{"ensemble": k, "val_episodes": 0.3, **train}))


def _members(cfg: MDNConfig, k: int = 3) -> list[MDNRNN]:
    """Random float64 Ms that disagree, whose done heads fire now and then (dreams end at varied times)."""
    done_bias = -0.5 if cfg is DOOM else -1.0
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        m = MDNRNN(cfg).double().eval()
        with torch.no_grad():
            m.head.bias.normal_(0, 0.3)
            m.head.weight[0] *= 4.0
            m.head.bias[0] = done_bias
        out.append(m)
    return out


def _starts(z_dim: int):
    rng = np.random.default_rng(1)
    return rng.normal(size=(5, z_dim)), rng.normal(-1.0, 0.3, size=(5, z_dim))


# ------------------------------------------------------------------------------------------ training
def test_bootstrap_resamples_differ_per_member_and_exclude_held_out_episodes():
    train, val = split_episodes(40, 0.2, seed=0)
    draws = [bootstrap_episodes(train, train_mdn.member_seed(0, k)) for k in range(4)]
    for d in draws:
        assert len(d) == len(train) and set(d) <= set(train) and not set(d) & set(val)
        assert len(set(d)) < len(train)  # drawn with replacement: some episodes twice, some not at all
    assert all(not np.array_equal(a, b) for a, b in itertools.combinations(draws, 2))
    assert np.array_equal(draws[1], bootstrap_episodes(train, train_mdn.member_seed(0, 1)))  # seeded


def test_ensemble_artifact_round_trip(tmp_path, series):
    out = tmp_path / "m.h5"
    res = train_mdn.run(_tiny(3), [series], out, runtime=Runtime(seed=0, device="cpu"))
    meta = A.validate(out, "mdn")
    assert meta.schema_version == A.ENSEMBLE_SCHEMA_VERSION and meta.config["mdn_train"]["ensemble"] == 3
    ens = load_ensemble(out)
    assert len(ens) == 3 and ens.threshold == meta.summary["ensemble"]["threshold"] == res.summary["ensemble"]["threshold"]
    primary, _ = load_mdn(out)  # one M's reader (evaluate, the real-game agent) gets member 0
    for k, m in enumerate(ens.members):
        member = load(train_ensemble.member_path(out, k), "mdn")
        assert member.meta.config["ensemble_member"] == k and member.meta.seed == 0
        for name, w in m.state_dict().items():
            np.testing.assert_array_equal(w.numpy(), member.weights[name], err_msg=f"member {k} {name}")
    for name, w in primary.state_dict().items():
        assert torch.equal(w, ens.members[0].state_dict()[name])
    assert not torch.equal(ens.members[0].bias, ens.members[1].bias)  # own seeds
    # a version that reads schema 1 refuses it in one line; an mdn claiming 2 without an ensemble is refused too
    with h5py.File(out, "r+") as fh:
        del fh[A.ENSEMBLE]
    with pytest.raises(ArtifactError, match="newer than this worldmodels_cli reads"):
        A.validate(out, "mdn")
    assert res.steps == 10 and res.val_nll is not None


def test_a_damaged_member_is_refused(tmp_path, series):
    out = tmp_path / "m.h5"
    train_mdn.run(_tiny(2), [series], out, runtime=Runtime(seed=0, device="cpu"))
    with h5py.File(out, "r+") as fh:
        fh[A.ENSEMBLE]["1"]["bias"][0] = np.nan
    with pytest.raises(ArtifactError, match="member 1's weights hold NaN"):
        load_ensemble(out)
    single = tmp_path / "one.h5"
    train_mdn.run(preset("doom", "tiny"), [series], single, runtime=Runtime(seed=0, device="cpu"))
    with pytest.raises(ArtifactError, match="holds one M"):
        load_ensemble(single)


def test_calibration_on_held_out_episodes_gives_the_stored_quantiles(tmp_path, series):
    """Recomputed by hand: each member teacher-forced along each held-out episode, the largest distance between two
    members' mixture means at every step, the quantiles of those."""
    p = _tiny(3)
    out = tmp_path / "m.h5"
    train_mdn.run(p, [series], out, runtime=Runtime(seed=0, device="cpu"))
    cal = A.validate(out, "mdn").summary["ensemble"]
    data = load_series([series])
    train, val = split_episodes(data.episodes, p.mdn_train.val_episodes, 0)
    members = load_ensemble(out).members
    from worldmodels_cli.store.series_data import validation_batches

    values = []
    with torch.no_grad():
        for batch in validation_batches(data, val, p.mdn_train.batch_size, 0):  # the held-out z, as calibrated
            z, a, r = (torch.from_numpy(x) for x in (batch.z, batch.actions, batch.restart))
            means = []
            for m in members:
                o, _ = m(z[:, :-1], a[:, :-1], r[:, :-1])
                means.append((o.logpi.exp() * o.mu).sum(-1).numpy())  # (B, T, Z)
            gaps = [np.linalg.norm(x - y, axis=-1) for x, y in itertools.combinations(means, 2)]
            values.append(np.max(gaps, axis=0)[batch.mask.astype(bool)])  # padding is no step
    values = np.concatenate(values)
    assert cal["held_out_steps"] == len(values) == int(data.index.lengths[val].sum() - len(val))
    for q, v in cal["held_out_quantiles"].items():
        assert v == pytest.approx(np.quantile(values, float(q)), rel=1e-5), q
    assert cal["threshold"] == pytest.approx(np.quantile(values, 0.99), rel=1e-5)
    assert cal["members"] == 3 and 0 <= cal["held_out_episodes_unknown"] <= 1


def test_an_interrupted_ensemble_resumes_to_the_same_weights(tmp_path, series):
    p = _tiny(2)
    ref = tmp_path / "ref.h5"
    train_mdn.run(p, [series], ref, runtime=Runtime(seed=0, device="cpu"))
    out, calls = tmp_path / "m.h5", []

    def stop(step):
        calls.append(step)
        if len(calls) == 17:  # member 1, step 7
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_mdn.run(p, [series], out, on_step=stop, runtime=Runtime(seed=0, device="cpu"))
    assert not out.exists() and load(train_ensemble.member_path(out, 0), "mdn").complete
    assert load(train_ensemble.member_path(out, 1), "mdn").meta.summary["steps"] == 7
    train_mdn.run(p, [series], out, runtime=Runtime(seed=0, device="cpu"))
    a, b = load_ensemble(ref), load_ensemble(out)
    for ma, mb in zip(a.members, b.members, strict=True):
        for (name, wa), wb in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
            assert torch.equal(wa, wb), name
    assert a.calibration == b.calibration
    with pytest.raises(ArtifactError, match="exists from another run"):  # another K into the same output
        train_mdn.run(_tiny(3), [series], out, runtime=Runtime(seed=0, device="cpu"))


def test_members_trained_side_by_side_are_the_members_trained_in_turn(tmp_path, series, caplog):
    """--workers 2: the members in two one-thread processes, the same weights and threshold as one by one; a half
    done member (here member 1's first steps, trained alone beforehand) is resumed, not restarted."""
    p = _tiny(3)
    ref, out = tmp_path / "ref.h5", tmp_path / "m.h5"
    train_mdn.run(p, [series], ref, runtime=Runtime(seed=0, device="cpu"))
    half = p.replace(mdn_train=p.mdn_train.replace(steps=4))
    train_ensemble.member_path(out, 1).parent.mkdir()
    train_mdn.run(half, [series], train_ensemble.member_path(out, 1), runtime=Runtime(seed=0, device="cpu"), member=1)
    with caplog.at_level("INFO", logger="worldmodels_cli"):
        train_mdn.run(p, [series], out, runtime=Runtime(seed=0, device="cpu", workers=2))
    assert "ensemble members 1-3, 2 at a time" in caplog.text
    assert load(train_ensemble.member_path(out, 1), "mdn").meta.summary["steps"] == p.mdn_train.steps
    a, b = load_ensemble(ref), load_ensemble(out)
    for ma, mb in zip(a.members, b.members, strict=True):
        for (name, wa), wb in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
            assert torch.equal(wa, wb), name
    assert a.calibration == b.calibration


def test_training_errors_are_one_line(tmp_path, series):
    with pytest.raises(ConfigError, match="val-episodes must be > 0"):
        train_mdn.run(_tiny(2, val_episodes=0.0), [series], tmp_path / "m.h5", runtime=Runtime(device="cpu"))
    with pytest.raises(ConfigError, match="ensemble of rssm Ms is not supported"):
        train_mdn.run(_tiny(2), [series], tmp_path / "m.h5", dynamics="rssm", runtime=Runtime(device="cpu"))
    with pytest.raises(ConfigError, match="needs an ensemble of Ms"):
        iterate_config("tiny", pessimism="halt")


def test_runs_made_before_ensembles_keep_their_identity():
    p = preset("doom", "tiny")
    old = p.to_dict()
    for key in ("ensemble", "unknown_quantile"):
        del old["mdn_train"][key]
    for key in ("pessimism", "pessimism_penalty"):
        del old["evolve"][key]
    assert runs.identity(old, 0) == runs.identity(p.to_dict(), 0)
    assert runs.identity(old, 0) != runs.identity(_tiny(2).to_dict(), 0)


# ------------------------------------------------------------------------------------------ the dream
CASES = {"doom": (DOOM, ControllerConfig(features="zch", bias=False), "doom"),
         "doom-random": (DOOM, None, "doom"),
         "car-regression": (CAR, ControllerConfig(features="zh", bias=True), "carracing")}


def _ensemble(cfg: MDNConfig, mu0, lv0, env: str, q: float = 0.9) -> Ensemble:
    """Members that disagree, with the threshold at the q quantile of a dream's disagreement: steps on both sides."""
    ens = Ensemble(_members(cfg), {"threshold": 0.0})
    d = program.dream_rollouts(ens, np.arange(16).reshape(1, 16), mu0, lv0, env=env, max_steps=60,
                               record_disagreement=True).disagreement
    ens.calibration["threshold"] = float(np.nanquantile(d, q))
    return ens


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "no-compact"])
@pytest.mark.parametrize("pessimism", ["off", "halt", "penalty"])
@pytest.mark.parametrize("case", list(CASES))
def test_batched_ensemble_dream_equals_the_per_member_loop(case, pessimism, compact):
    cfg, ctrl_cfg, env = CASES[case]
    mu0, lv0 = _starts(cfg.z_dim)
    ens = _ensemble(cfg, mu0, lv0, env)
    P, R, T = 2, 5, 50
    ctrl = params = None
    if ctrl_cfg is not None:
        ctrl = Controller(ctrl_cfg, cfg.z_dim, cfg.hidden, cfg.action_dim, env)
        params = np.random.default_rng(2).normal(0, 0.5, (P, ctrl.param_count))
    seeds = np.arange(P * R).reshape(P, R) * 31 + 5
    res = program.dream_rollouts(ens, seeds, mu0, lv0, controller=ctrl, params=params, env=env, max_steps=T,
                                 compact=compact, compact_every=2, record_z=True, pessimism=pessimism, penalty=0.5,
                                 record_disagreement=True)
    follow = program.followed_members(P, R, len(ens), pessimism)
    assert (follow == (0 if pessimism == "off" else np.arange(R) % 3)).all()
    for p, r in np.ndindex(P, R):
        ref = reference.ensemble_rollout(ens, int(seeds[p, r]), mu0, lv0, follow=int(follow[p, r]),
                                         pessimism=pessimism, penalty=0.5, controller=ctrl,
                                         params=None if params is None else params[p], env=env, max_steps=T,
                                         record_z=True)
        assert res.lengths[p, r] == ref.length and res.unknown[p, r] == ref.unknown
        assert res.halted[p, r] == ref.halted
        if cfg.reward_head == "regression":
            assert res.returns[p, r] == pytest.approx(ref.ret, abs=1e-9)
        else:
            assert res.returns[p, r] == ref.ret  # steps less 0.5 per unknown step: exact
        np.testing.assert_allclose(res.disagreement[p, r, :ref.length], ref.disagreement, rtol=0, atol=1e-12)
        assert np.isnan(res.disagreement[p, r, ref.length:]).all()
        np.testing.assert_allclose(res.z[p, r, :len(ref.z)], ref.z, atol=1e-9)
    assert 0 < res.unknown.sum() < res.lengths.sum()  # known and unknown steps both met
    assert len(set(res.lengths.ravel().tolist())) > 3 and res.lengths.min() < T  # ended at varied times
    if pessimism == "halt":
        assert res.halted.any() and (res.unknown == res.halted).all()  # the first unknown step is the last


def test_halt_ends_a_rollout_exactly_at_its_first_unknown_step():
    mu0, lv0 = _starts(DOOM.z_dim)
    ens = _ensemble(DOOM, mu0, lv0, "doom", q=0.98)
    seeds = np.arange(24).reshape(2, 12)
    # penalty 0: the same members followed as under halt, nothing cut
    free = program.dream_rollouts(ens, seeds, mu0, lv0, max_steps=60, pessimism="penalty", penalty=0.0,
                                  record_disagreement=True)
    halt = program.dream_rollouts(ens, seeds, mu0, lv0, max_steps=60, pessimism="halt")
    over = free.disagreement > ens.threshold
    first = np.where(over.any(-1), over.argmax(-1) + 1, np.iinfo(np.int64).max)
    assert np.array_equal(halt.lengths, np.minimum(free.lengths, first))
    assert np.array_equal(halt.halted, first <= free.lengths) and halt.halted.any() and not halt.halted.all()
    assert (halt.lengths < free.lengths).any() and (halt.lengths[~halt.halted] == free.lengths[~halt.halted]).all()
    assert np.array_equal(free.returns, free.lengths.astype(float))


def test_penalty_costs_lambda_per_unknown_step():
    mu0, lv0 = _starts(DOOM.z_dim)
    ens = _ensemble(DOOM, mu0, lv0, "doom")
    seeds = np.arange(16).reshape(2, 8)
    res = program.dream_rollouts(ens, seeds, mu0, lv0, max_steps=60, pessimism="penalty", penalty=2.0)
    assert np.array_equal(res.returns, res.lengths - 2.0 * res.unknown) and res.unknown.any()
    with pytest.raises(ValueError, match="need an ensemble"):
        program.dream_rollouts(ens.members[0], seeds, mu0, lv0, max_steps=5, pessimism="halt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_ensemble_dream_matches_cpu():
    mu0, lv0 = _starts(DOOM.z_dim)
    ens = _ensemble(DOOM, mu0, lv0, "doom")
    seeds = np.arange(48).reshape(4, 12)
    cpu = program.dream_rollouts(ens, seeds, mu0, lv0, max_steps=60, pessimism="halt")
    gpu = program.dream_rollouts(Ensemble([m.cuda() for m in ens.members], ens.calibration), seeds, mu0, lv0,
                                 max_steps=60, pessimism="halt")
    assert np.array_equal(cpu.lengths, gpu.lengths) and np.array_equal(cpu.unknown, gpu.unknown)


# ------------------------------------------------------------------------------------------ commands
def test_train_evolve_evaluate_dream_info_through_the_cli(wm, tiny_world, tmp_path):
    w, d = tiny_world, tmp_path
    r = wm("train-mdn", "--series", w.series, "--preset", "tiny", "--ensemble", "2", "--out", d / "m.h5",
           "--device", "cpu")
    assert r.code == 0 and "an ensemble of 2 Ms (disagreement threshold" in r.out, r.err
    r = wm("evolve", "--vae", w.vae, "--mdn", d / "m.h5", "--preset", "tiny", "--in-dream", "--pessimism", "halt",
           "--out", d / "c.h5", "--device", "cpu")
    assert r.code == 0 and "pessimism halt" in r.out, r.err
    meta = A.validate(d / "c.h5", "controller")
    assert meta.config["evolve"]["pessimism"] == "halt"
    from worldmodels_cli.store.metrics import MetricsWriter, metrics_path

    recs = [x for x in MetricsWriter(metrics_path(d / "c.h5")).read() if "evolve/unknown_per_step" in x]
    assert len(recs) == 3 and all(0 <= x["evolve/halted_fraction"] <= 1 for x in recs)
    r = wm("evaluate", "--controller", d / "c.h5", "--episodes", "2", "--out", d / "e.h5")
    assert r.code == 0 and "steps" in r.out, r.err
    r = wm("info", d / "m.h5")
    assert r.code == 0 and "ensemble:" in r.out and "threshold:" in r.out and "held_out_quantiles" in r.out
    assert "unknown_per_step" in r.out  # the random policy's dream: how often its members disagree
    r = wm("dream", "--vae", w.vae, "--mdn", d / "m.h5", "--controller", d / "c.h5", "--episodes", "2",
           "--max-steps", "15", "--pessimism", "penalty", "--pessimism-penalty", "0.5", "--out", d / "d.gif",
           "--device", "cpu")
    assert r.code == 0 and "members' disagreement over" in r.out, r.err
    from PIL import Image

    with Image.open(d / "d.gif") as im:  # a disagreement bar under each picture
        assert im.size == (3 * (2 * 64 + 2), 3 * (64 + 6))
    assert (d / "d.disagreement.png").exists()
    recs = MetricsWriter(metrics_path(d / "d.gif")).read()
    assert all("dream/unknown_steps" in x for x in recs if "dream/episode" in x)


def test_bad_input_is_one_line(wm, tiny_world, tmp_path):
    w, d = tiny_world, tmp_path
    r = wm("train-mdn", "--series", w.series, "--preset", "tiny", "--ensemble", "1", "--out", d / "m.h5")
    assert r.code == 2 and "--ensemble K trains K >= 2 Ms" in r.err and len(r.err.strip().splitlines()) == 1
    r = wm("evolve", "--vae", w.vae, "--mdn", w.mdn, "--preset", "tiny", "--in-dream", "--pessimism", "halt",
           "--out", d / "c.h5")
    assert r.code == 2 and "needs an ensemble of Ms" in r.err and len(r.err.strip().splitlines()) == 1
    r = wm("evolve", "--vae", w.vae, "--mdn", w.mdn, "--preset", "tiny", "--pessimism", "halt",
           "--pessimism-penalty", "3", "--out", d / "c.h5")
    assert r.code == 2 and "--pessimism-penalty applies to --pessimism penalty" in r.err
    r = wm("dream", "--vae", w.vae, "--mdn", w.mdn, "--pessimism", "halt", "--out", d / "d.gif")
    assert r.code == 2 and "needs an ensemble of Ms" in r.err
    r = wm("iterate", "--env", "doom", "--preset", "tiny", "--pessimism", "halt", "--data", d / "it")
    assert r.code == 2 and "needs an ensemble of Ms" in r.err
    assert not (d / "c.h5").exists() and not (d / "m.h5").exists()


def test_iterate_makes_every_round_an_ensemble_and_its_dreams_pessimistic(tmp_path):
    from worldmodels_cli.stages import iterate

    it = iterate_config("tiny", rounds=2, controller_episodes=4, controller_frames=0, eval_episodes=3,
                        ensemble=2, pessimism="halt", final_temperatures=(1.3, 0.8), final_dream_ratio=1e9)
    recs = iterate.run(preset("doom", "tiny"), tmp_path, it, runtime=Runtime(seed=0, workers=1, device="cpu"))
    assert len(recs) == 2 and len(recs[1].ladder) == 2  # no rung reaches the ratio: both tried
    for k in range(2):
        assert len(load_ensemble(tmp_path / f"round{k}/mdn.h5")) == 2
        c = A.validate(tmp_path / f"round{k}/controller.h5", "controller")
        assert c.config["evolve"]["pessimism"] == "halt"
    # round 1's member k warm-started from round 0's member k
    member = A.validate(train_ensemble.member_path(tmp_path / "round1/mdn.h5", 1), "mdn")
    assert member.inputs["init"]["sha256"] == A.sha256(tmp_path / "round0/mdn.h5")
    assert all(np.isfinite(r["random_dream"]) for r in recs[1].ladder)


def test_iterate_makes_only_the_last_rounds_m_an_ensemble(tmp_path):
    from worldmodels_cli.stages import iterate

    it = iterate_config("tiny", rounds=2, controller_episodes=4, controller_frames=0, eval_episodes=3,
                        final_ensemble=2, final_pessimism="halt", final_temperatures=(1.3, 0.8))
    p = preset("doom", "tiny")
    recs = iterate.run(p, tmp_path, it, runtime=Runtime(seed=0, workers=1, device="cpu"))
    assert A.validate(tmp_path / "round0/mdn.h5", "mdn").schema_version < A.ENSEMBLE_SCHEMA_VERSION  # one M
    assert len(load_ensemble(tmp_path / "round1/mdn.h5")) == 2
    # every member warm-started from round 0's single M
    for k in range(2):
        member = A.validate(train_ensemble.member_path(tmp_path / "round1/mdn.h5", k), "mdn")
        assert member.inputs["init"]["sha256"] == A.sha256(tmp_path / "round0/mdn.h5")
    evolved = [A.validate(tmp_path / f"round{k}/controller.h5", "controller").config["evolve"] for k in range(2)]
    assert [e["pessimism"] for e in evolved] == ["off", "halt"]
    # the pessimistic dream takes the ladder's place: the last C evolves at the preset's τ, no rung is tried
    assert recs[1].ladder == [] and not list(tmp_path.glob("round1/controller.tau*"))
    assert evolved[1]["temperature"] == p.evolve.temperature and evolved[1]["pop"] == it.final_pop
    assert [(r.members, r.pessimism) for r in recs] == [(1, "off"), (2, "halt")]
    assert "an ensemble of 2 MDN-RNNs; C evolved in its dream with pessimism halt" in demo._markdown([], recs, p, "tiny")
    with pytest.raises(ConfigError, match="needs the last round's M as an ensemble"):
        iterate_config("tiny", final_pessimism="halt")
    with pytest.raises(ConfigError, match="set one of them"):
        iterate_config("tiny", ensemble=2, final_ensemble=2)
    # small's pessimistic last round gives way where another choice is made, and is refused only when asked for
    assert (iterate_config("small").final_ensemble, iterate_config("small").final_pessimism) == (4, "halt")
    for changes in ({"ensemble": 5}, {"method": "actor-critic"}, {"final_ensemble": 1}):
        it = iterate_config("small", **changes)
        assert it.final_pessimism == "off" and it.final_ensemble == 1, changes
    with pytest.raises(ConfigError):
        iterate_config("small", ensemble=5, final_ensemble=4)
