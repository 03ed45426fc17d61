"""M as an RSSM (models/rssm.py, stages/train_rssm.py; ref beyond.md §2): parameter count and shapes, the
sequence form against the one-step form, V3's KL terms, the categorical sampling, the batched dream against the
per-rollout loop, training (resume, refusals) and the RSSM behind the commands that take an M."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from worldmodels_cli.config import ControllerConfig, RSSMConfig, preset, rssm_config
from worldmodels_cli.dream import program, reference
from worldmodels_cli.models import dynamics
from worldmodels_cli.models.controller import Controller
from worldmodels_cli.models.rssm import (
    RSSM,
    kl_categorical,
    kl_loss,
    mixed_probs,
    parameter_count,
    sample_stoch,
)
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.stages import evaluate, evolve, train_mdn
from worldmodels_cli.store import artifacts as A
from worldmodels_cli.store.series_data import write_fake_series

DOOM = RSSMConfig(z_dim=6, action_dim=1, deter=10, stoch=3, classes=4, units=12, head_layers=1, done_head=True)
CAR_REG = RSSMConfig(z_dim=5, action_dim=3, deter=8, stoch=2, classes=5, units=9, head_layers=2, done_head=True,
                     reward_head="regression")
CAR_SIGN = dataclasses.replace(CAR_REG, reward_head="sign", unimix=0.0)
CAR_NO_DONE = RSSMConfig(z_dim=4, action_dim=3, deter=6, stoch=2, classes=3, units=8, head_layers=1,
                         reward_head="regression")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: a second thread only adds contention


def _rssm(cfg: RSSMConfig, seed: int = 0, done_bias: float = -1.0, done_scale: float = 6.0) -> RSSM:
    """A random float64 RSSM whose done head fires now and then, so dreams end at varied times."""
    torch.manual_seed(seed)
    m = RSSM(cfg).double().eval()
    with torch.no_grad():
        if m.done_head is not None:
            m.done_head.out.weight.mul_(done_scale)
            m.done_head.out.bias.fill_(done_bias)
    return m


def _starts(z_dim: int, episodes: int = 5, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(episodes, z_dim)), rng.normal(-1.0, 0.3, size=(episodes, z_dim))


# ------------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("cfg", [DOOM, CAR_REG, CAR_NO_DONE, rssm_config("doom", "small").replace(z_dim=32, action_dim=1,
                                                                                                   done_head=True),
                                 rssm_config("doom", "paper").replace(z_dim=64, action_dim=1, done_head=True)])
def test_parameter_count_is_the_documented_formula(cfg):
    assert sum(p.numel() for p in RSSM(cfg).parameters()) == parameter_count(cfg)


def test_small_rssm_gives_c_the_mdn_rnns_width():
    """small: deter = stoch x classes = the MDN-RNN's H, so C on [z, stoch, deter] has 544 weights, as on [z, c, h]."""
    p = preset("doom", "small")
    m = RSSM(rssm_config("doom", "small").replace(z_dim=32, action_dim=1, done_head=True))
    assert dynamics.memory_widths(m) == (p.mdn.hidden, p.mdn.hidden)
    c, mc = evolve.controller_for(p.controller, "doom", m)
    assert c.param_count == 32 + 2 * 256 and mc["cell"] == 256


def test_shapes():
    m = _rssm(DOOM)
    b, t, s, k = 3, 7, DOOM.stoch, DOOM.classes
    z, a = torch.randn(b, t, 6, dtype=torch.float64), torch.randn(b, t, 1, dtype=torch.float64)
    first = torch.zeros(b, t, dtype=torch.float64)
    seq = m.observe(z, a, first, torch.rand(b, t, s, dtype=torch.float64), torch.rand(b, t - 1, s, dtype=torch.float64))
    assert seq.deter.shape == (b, t, 10) and seq.stoch.shape == (b, t, s * k)
    assert seq.post_logits.shape == seq.prior_logits.shape == (b, t, s, k)
    assert seq.heads.mu.shape == seq.heads.logsigma.shape == (b, t, 6) and seq.heads.done_logit.shape == (b, t)
    assert seq.step_heads.done_logit.shape == (b, t - 1) and seq.step_heads.mu is None
    assert [x.shape for x in seq.final] == [(b, 10), (b, s * k), (b, 1)]
    assert (seq.stoch.reshape(b, t, s, k).sum(-1) == 1).all()  # one class per variable
    d, st = m.img_step(seq.final[0], seq.final[1], a[:, 0], torch.rand(b, s, dtype=torch.float64), 1.3)
    assert d.shape == (b, 10) and st.shape == (b, s * k)


def _sequence(m: RSSM, b: int = 3, t: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = m.cfg
    z = torch.randn(b, t, cfg.z_dim, generator=g, dtype=torch.float64)
    a = torch.rand(b, t, cfg.action_dim, generator=g, dtype=torch.float64) * 2 - 1
    first = torch.zeros(b, t, dtype=torch.float64)
    first[:, 0], first[1, 4], first[2, 6] = 1, 1, 1  # episode starts in the middle too
    u = torch.rand(b, t, cfg.stoch, generator=g, dtype=torch.float64)
    pu = torch.rand(b, t - 1, cfg.stoch, generator=g, dtype=torch.float64)
    return z, a, first, u, pu


@pytest.mark.parametrize("cfg", [DOOM, CAR_REG])
@pytest.mark.parametrize("carried", [False, True], ids=["zero-state", "carried-state"])
def test_the_sequence_and_one_step_forms_agree(cfg, carried):
    """`observe` (batched projections and heads, a loop only for the recurrence) is `obs_step` frame after frame,
    the heads on each posterior state, and `img_step` + heads for each transition (the dream's step)."""
    m = _rssm(cfg)
    z, a, first, u, pu = _sequence(m)
    b, t = z.shape[:2]
    if carried:
        first[:, 0] = 0
        g = torch.Generator().manual_seed(5)
        state = (torch.randn(b, cfg.deter, generator=g, dtype=torch.float64),
                 sample_stoch(torch.randn(b, cfg.stoch, cfg.classes, generator=g, dtype=torch.float64),
                              torch.rand(b, cfg.stoch, generator=g, dtype=torch.float64), 1.0, 0.01).flatten(-2),
                 torch.rand(b, cfg.action_dim, generator=g, dtype=torch.float64))
    else:
        state = None
    seq = m.observe(z, a, first, u, pu, state, straight_through=False)
    deter, stoch = m.initial_state(b) if state is None else state[:2]
    prev = torch.zeros(b, cfg.action_dim, dtype=torch.float64) if state is None else state[2]
    for i in range(t):
        if i > 0:  # the transition from frame i-1: the prior state the done and reward heads read
            d_img, s_img = m.img_step(deter, stoch, a[:, i - 1], pu[:, i - 1])
            h_img = m.heads(d_img, s_img)
            torch.testing.assert_close(seq.step_deter[:, i - 1], d_img, rtol=0, atol=1e-12)
            torch.testing.assert_close(seq.step_heads.done_logit[:, i - 1], h_img.done_logit, rtol=0, atol=1e-12)
            if cfg.reward_head != "none":
                torch.testing.assert_close(seq.step_heads.reward[:, i - 1], h_img.reward, rtol=0, atol=1e-12)
        deter, stoch, post, prior = m.obs_step(deter, stoch, prev, z[:, i], first[:, i], u[:, i])
        heads = m.heads(deter, stoch)
        prev = a[:, i]
        torch.testing.assert_close(seq.deter[:, i], deter, rtol=0, atol=1e-12)
        assert torch.equal(seq.stoch[:, i], stoch)  # the same class drawn per variable
        torch.testing.assert_close(seq.post_logits[:, i], post, rtol=0, atol=1e-12)
        torch.testing.assert_close(seq.prior_logits[:, i], prior, rtol=0, atol=1e-12)
        torch.testing.assert_close(seq.heads.mu[:, i], heads.mu, rtol=0, atol=1e-12)
        torch.testing.assert_close(seq.heads.logsigma[:, i], heads.logsigma, rtol=0, atol=1e-12)
    torch.testing.assert_close(seq.final[0], deter, rtol=0, atol=1e-12)
    assert torch.equal(seq.final[2], a[:, -1])
    # an episode start resets: frame 4 of row 1 starts from the zero state whatever came before
    torch.testing.assert_close(seq.deter[1, 4], m.first_deter(1)[0], rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------ losses, sampling
def test_kl_terms_are_v3s():
    g = torch.Generator().manual_seed(0)
    post, prior = torch.randn(4, 5, 3, 6, generator=g, requires_grad=True), torch.randn(4, 5, 3, 6, generator=g,
                                                                                         requires_grad=True)
    p, q = mixed_probs(post, 1.0, 0.01), mixed_probs(prior, 1.0, 0.01)
    expected = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=p),
                                                 torch.distributions.Categorical(probs=q)).sum(-1)
    torch.testing.assert_close(kl_categorical(post, prior, 0.01), expected)
    loss, value = kl_loss(post, prior, 0.01, dyn=0.5, rep=0.1, free=0.0)
    torch.testing.assert_close(loss, 0.6 * expected.mean())
    torch.testing.assert_close(value, expected.mean())
    # dyn trains only the prior, rep only the posterior
    (gp,) = torch.autograd.grad(kl_loss(post, prior, 0.01, 1.0, 0.0, 0.0)[0], post, allow_unused=True)
    assert gp is None or (gp == 0).all()
    (gq,) = torch.autograd.grad(kl_loss(post, prior, 0.01, 0.0, 1.0, 0.0)[0], prior, allow_unused=True)
    assert gq is None or (gq == 0).all()
    # free nats: a step whose KL is below them counts as them and passes no gradient
    free = float(expected.detach().max()) + 1
    loss, _ = kl_loss(post, prior, 0.01, 0.5, 0.1, free)
    torch.testing.assert_close(loss, torch.tensor(0.6 * free))
    assert torch.autograd.grad(loss, prior)[0].abs().sum() == 0
    mask = torch.zeros(4, 5)
    mask[0, :2] = 1
    torch.testing.assert_close(kl_loss(post, prior, 0.01, 1.0, 0.0, 0.0, mask)[1], expected[0, :2].mean())


def test_categorical_sampling():
    logits = torch.tensor([[[2.0, 0.0, -1.0, 0.5]]], dtype=torch.float64).expand(20000, 1, 4)
    u = torch.rand(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for tau in (1.0, 2.0):
        freq = sample_stoch(logits, u, tau, 0.01).mean(0)[0]
        torch.testing.assert_close(freq, mixed_probs(logits[0, 0], tau, 0.01), atol=0.012, rtol=0)
    mode = sample_stoch(logits[:2], u[:2], 0.0, 0.01)
    assert (mode.argmax(-1) == 0).all()  # τ = 0: the most likely class
    # unimix: every class keeps at least unimix / K
    assert mixed_probs(torch.tensor([100.0, 0.0, 0.0, 0.0]), 1.0, 0.01).min() >= 0.01 / 4 - 1e-12
    # straight through: the sample's value, the probabilities' gradient
    lg, u = torch.randn(3, 2, 4, requires_grad=True), torch.rand(3, 2)
    st = sample_stoch(lg, u, 1.0, 0.01, straight_through=True)
    torch.testing.assert_close(st.detach(), sample_stoch(lg.detach(), u, 1.0, 0.01))
    (st * torch.arange(4.0)).sum().backward()
    assert lg.grad is not None and lg.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ the dream
CASES = {  # RSSM, C (None: the random policy), env, done bias and scale
    "doom": (DOOM, ControllerConfig(features="zch", bias=False), "doom", -1.0, 6.0),
    "doom-zh": (DOOM, ControllerConfig(features="zh", bias=False), "doom", -1.0, 6.0),
    "doom-random": (DOOM, None, "doom", -1.0, 6.0),
    "car-regression": (CAR_REG, ControllerConfig(features="zh", bias=True), "carracing", -1.2, 4.0),
    "car-sign-hidden": (CAR_SIGN, ControllerConfig(features="zch", hidden=4), "carracing", -1.2, 4.0),
    "car-no-done-random": (CAR_NO_DONE, None, "carracing", 0.0, 1.0),
}


def _controller(cfg, m: RSSM, env: str, members: int, seed: int = 2):
    h, c = dynamics.memory_widths(m)
    ctrl = Controller(cfg, m.cfg.z_dim, h, m.cfg.action_dim, env, cell=c)
    return ctrl, np.random.default_rng(seed).normal(0, 0.5, (members, ctrl.param_count))


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "no-compact"])
@pytest.mark.parametrize("case", list(CASES))
def test_batched_dream_equals_the_per_rollout_loop(case, compact):
    """As for the MDN-RNN (tests/test_dream.py): the batched program with an RSSM is the plain loop of
    `reference_rollout` rollout by rollout, with and without compaction, in float64."""
    cfg, ctrl_cfg, env, done_bias, done_scale = CASES[case]
    m = _rssm(cfg, done_bias=done_bias, done_scale=done_scale)
    mu0, lv0 = _starts(cfg.z_dim)
    P, R, T = 3, 4, 50
    ctrl, params = _controller(ctrl_cfg, m, env, P) if ctrl_cfg else (None, None)
    seeds = np.arange(P * R).reshape(P, R) * 31 + 5
    res = program.dream_rollouts(m, seeds, mu0, lv0, controller=ctrl, params=params, env=env, tau=1.15,
                                 max_steps=T, compact=compact, compact_every=2, record_z=True)
    for p in range(P):
        for r in range(R):
            ret, length, zs = reference.reference_rollout(m, int(seeds[p, r]), mu0, lv0, controller=ctrl,
                                                          params=None if params is None else params[p], env=env,
                                                          tau=1.15, max_steps=T, record_z=True)
            assert res.lengths[p, r] == length
            assert abs(res.returns[p, r] - ret) < 1e-9
            assert np.allclose(res.z[p, r, : len(zs)], zs, atol=1e-9) and np.isnan(res.z[p, r, len(zs):]).all()
    if cfg.done_head:
        assert len(set(res.lengths.ravel().tolist())) > 3 and res.lengths.min() < T
    else:
        assert (res.lengths == T).all()


def test_dream_starts_from_a_first_frames_posterior_and_tau_changes_z_not_the_first_done():
    m = _rssm(DOOM, done_bias=0.0)
    mu0 = np.random.default_rng(3).normal(size=(7, DOOM.z_dim))
    lv0 = np.full_like(mu0, -200.0)  # σ ≈ 0: z0 is one of the stored first-frame means
    seeds = np.arange(64).reshape(1, 64)
    cold = program.dream_rollouts(m, seeds, mu0, lv0, tau=0.5, max_steps=2, record_z=True)
    hot = program.dream_rollouts(m, seeds, mu0, lv0, tau=2.0, max_steps=2, record_z=True)
    z0 = cold.z[0, :, 0]
    assert ((z0[:, None, :] == mu0[None]).all(-1).sum(1) == 1).all()
    assert np.array_equal(cold.z[..., 0, :], hot.z[..., 0, :])
    go = cold.lengths[0] > 1
    assert go.any() and not np.allclose(cold.z[0, go, 1], hot.z[0, go, 1])


def test_held_action_lengths_and_done_rate_for_wm_info():
    m = _rssm(DOOM)
    mu0, lv0 = _starts(DOOM.z_dim)
    r = program.dream_summary(m, mu0, lv0, env="doom", tau=1.15, max_steps=100)
    assert 0 < r["done_fraction"] <= 1 and set(r["held_action_length"]) == {"left", "none", "right"}


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def doom_series(tmp_path_factory):
    path = tmp_path_factory.mktemp("rssm") / "s.h5"
    write_fake_series(path, [30] * 12, z_dim=6, action_dim=1, env="doom")
    return path


def _tiny():
    p = preset("doom", "tiny")
    return p.replace(mdn_train=p.mdn_train.replace(steps=8, batch_size=3, seq_len=12, checkpoint_steps=3))


def _weights(path):
    from worldmodels_cli.store import checkpoint

    return checkpoint.load(path, "mdn").weights


def test_training_resumes_exactly_and_records_an_rssm(doom_series, tmp_path):
    p = _tiny()
    ref = train_mdn.run(p, [doom_series], tmp_path / "ref.h5", dynamics="rssm", runtime=Runtime(device="cpu"))
    assert ref.steps == 8 and np.isfinite(ref.nll) and np.isfinite(ref.val_nll)
    meta = A.validate(tmp_path / "ref.h5", "mdn")
    assert meta.model_config["dynamics"] == "rssm" and meta.config["dynamics"] == "rssm"
    assert meta.summary["parameters"] == parameter_count(RSSMConfig.from_dict(
        {k: v for k, v in meta.model_config.items() if k != "dynamics"}))
    assert {"kl", "rec_nll", "done_bce"} <= set(meta.summary)
    records = [json.loads(x) for x in (tmp_path / "ref.metrics.jsonl").read_text().splitlines()]
    assert any("rssm/kl" in r for r in records) and any("rssm/val_nll" in r for r in records)
    out = tmp_path / "m.h5"

    def stop(step):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_mdn.run(p, [doom_series], out, dynamics="rssm", runtime=Runtime(device="cpu"), on_step=stop)
    assert A.validate(out, "mdn").summary["steps"] == 5
    res = train_mdn.run(p, [doom_series], out, dynamics="rssm", runtime=Runtime(device="cpu"))
    assert res.resumed_from == 5 and res.steps == 8
    a, b = _weights(tmp_path / "ref.h5"), _weights(out)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    model, _ = train_mdn.load_mdn(out)
    assert isinstance(model, RSSM)


def test_dynamics_do_not_mix(doom_series, tmp_path, wm):
    p = _tiny()
    out = tmp_path / "m.h5"
    train_mdn.run(p, [doom_series], out, dynamics="rssm", runtime=Runtime(device="cpu"))
    r = wm("train-mdn", "--series", doom_series, "--preset", "tiny", "--out", out, "--device", "cpu")
    assert r.code == 2 and "exists from another run" in r.err and r.err.count("\n") == 1
    r = wm("train-mdn", "--series", doom_series, "--preset", "tiny", "--out", tmp_path / "x.h5", "--kl-free", "2")
    assert r.code == 2 and "--kl-free is an RSSM option: add --dynamics rssm" in r.err
    mdn = tmp_path / "mdn.h5"
    train_mdn.run(p, [doom_series], mdn, runtime=Runtime(device="cpu"))
    r = wm("train-mdn", "--series", doom_series, "--preset", "tiny", "--out", tmp_path / "y.h5", "--dynamics", "rssm",
           "--init", mdn, "--steps", "2", "--device", "cpu")
    assert r.code == 2 and "differs from this run's" in r.err and not (tmp_path / "y.h5").exists()
    r = wm("train-mdn", "--series", doom_series, "--preset", "tiny", "--out", tmp_path / "z.h5", "--dynamics", "rssm",
           "--deter", "7", "--stoch", "2", "--classes", "3", "--kl-free", "0.5", "--rssm-lr", "0.002", "--steps", "2",
           "--device", "cpu")
    assert r.code == 0 and "M (RSSM)" in r.out, r.err
    meta = A.validate(tmp_path / "z.h5", "mdn")
    assert (meta.model_config["deter"], meta.model_config["stoch"], meta.model_config["classes"]) == (7, 2, 3)
    assert (meta.config["rssm_train"]["kl_free"], meta.config["rssm_train"]["rssm_lr"]) == (0.5, 0.002)


def test_every_rssm_field_is_a_train_mdn_option():
    from worldmodels_cli.cli import cli
    from worldmodels_cli.config import RSSMTrainConfig

    have = {p.name: p for p in cli.commands["train-mdn"].params}
    skip = ("z_dim", "action_dim", "done_head", "reward_head")  # from the data and M's own options
    for cls in (RSSMConfig, RSSMTrainConfig):
        for fl in dataclasses.fields(cls):
            if fl.name not in skip:
                assert fl.name in have and have[fl.name].help.startswith(fl.metadata["doc"]), fl.name


# ------------------------------------------------------------------------------------------ behind the commands
@pytest.fixture(scope="module")
def tiny_rssm(tiny_world, tmp_path_factory):
    p = preset("doom", "tiny")
    out = tmp_path_factory.mktemp("tiny_rssm") / "rssm.h5"
    train_mdn.run(p.replace(mdn_train=p.mdn_train.replace(steps=30)), [tiny_world.series], out, dynamics="rssm",
                  runtime=Runtime(seed=0, device="cpu"))
    return out


def test_evolve_dream_info_and_evaluate_take_an_rssm(wm, tiny_world, tiny_rssm, tmp_path):
    c = tmp_path / "c.h5"
    r = wm("evolve", "--vae", tiny_world.vae, "--mdn", tiny_rssm, "--in-dream", "--out", c, "--device", "cpu")
    assert r.code == 0, r.err
    mc = A.validate(c, "controller").model_config
    assert mc["cell"] == 16 and mc["hidden"] == 16  # C on [z, stoch, deter] of the tiny RSSM
    r = wm("evaluate", "--controller", c, "--episodes", "3", "--out", tmp_path / "e.h5")
    assert r.code == 0 and "controller c.h5 on doom" in r.out, r.err
    r = wm("dream", "--vae", tiny_world.vae, "--mdn", tiny_rssm, "--controller", c, "--episodes", "2",
           "--max-steps", "10", "--out", tmp_path / "d.gif", "--device", "cpu")
    assert r.code == 0 and (tmp_path / "d.gif").stat().st_size > 0, r.err
    r = wm("info", tiny_rssm, "--json")
    info = json.loads(r.out)
    assert r.code == 0 and info["model"]["dynamics"] == "rssm" and "held_action_length" in info["dream_random_policy"]
    # an MDN-RNN's controller does not fit the RSSM (nor the other way round): refused in one line
    mdn_c = tmp_path / "mdn_c.h5"
    assert wm("evolve", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--generations", "1", "--out",
              mdn_c).code == 0
    r = wm("dream", "--vae", tiny_world.vae, "--mdn", tiny_rssm, "--controller", mdn_c, "--out", tmp_path / "x.gif")
    assert r.code == 2 and "a controller for an mdnrnn M" in r.err and r.err.count("\n") == 1


def test_rssm_agent_filters_with_the_posterior_and_ignores_its_batch(tiny_world, tiny_rssm, tmp_path):
    """The real-env agent's RSSM state is the posterior filter of what it saw (one episode's frames through
    `obs_step` by hand), and an episode's return does not depend on the episodes sharing its worker."""
    from worldmodels_cli.game.agent import AgentSpec
    from worldmodels_cli.game.envs import make_env
    from worldmodels_cli.game.episodes import lockstep

    p = preset("doom", "tiny")
    c = tmp_path / "c.h5"
    evolve.run(p.replace(evolve=p.evolve.replace(generations=1)), tiny_world.vae, tiny_rssm, c,
               runtime=Runtime(seed=0, device="cpu"))
    one = evaluate.run(None, controller=c, episodes=5, runtime=Runtime(seed=3, workers=1))
    two = evaluate.run(None, controller=c, episodes=5, runtime=Runtime(seed=3, workers=2))
    np.testing.assert_array_equal(one.returns, two.returns)
    spec = AgentSpec(str(tiny_world.vae), str(tiny_rssm), A.validate(c, "controller").model_config)
    agent = spec.build_batch()
    env = make_env(p.env)
    env2 = make_env(p.env)
    try:
        steps = lockstep([env], agent, [7], 12, record=True)[0]
        deter_after = agent.memory.deter[0].clone()
        # three episodes on two envs: the third takes the row of the first to end, from the zero state
        params = np.random.default_rng(0).normal(0.0, 0.3, (3, agent.controller.param_count))
        together = lockstep([env, env2], agent, [5, 7, 9], 40, record=True, params=params)
        assert len({len(g[A.ACTIONS]) for g in together}) > 1 and np.abs(together[2][A.ACTIONS]).max() > 0
        for i, (s, got) in enumerate(zip([5, 7, 9], together, strict=True)):
            alone = lockstep([env], agent, [s], 40, record=True, params=params[i:i + 1])[0]
            np.testing.assert_array_equal(got[A.ACTIONS], alone[A.ACTIONS])
    finally:
        env.close()
        env2.close()
    from worldmodels_cli.runtime import seeding

    rng = seeding.generator(7, "policy")  # the episode's own stream: z's noise, then the classes' uniforms
    rssm = agent.mdn
    deter, stoch = rssm.initial_state(1)
    prev = torch.zeros(1, 1)
    with torch.no_grad():
        for t, frame in enumerate(steps[A.FRAMES]):
            mu, logvar = agent.encode(frame[None])
            z = mu + torch.exp(0.5 * logvar) * torch.from_numpy(rng.standard_normal((1, mu.shape[1])).astype(np.float32))
            u = torch.from_numpy(rng.random((1, rssm.cfg.stoch))).float()
            deter, stoch, _, _ = rssm.obs_step(deter, stoch, prev, z, torch.tensor([1.0 if t == 0 else 0.0]), u)
            prev = torch.from_numpy(steps[A.ACTIONS][t][None])
    torch.testing.assert_close(deter_after, deter[0], atol=1e-5, rtol=0)


def test_iterate_with_an_rssm(tmp_path):
    """`wm iterate --dynamics rssm`: every round's M is an RSSM, a later one warm-started from the round before."""
    from worldmodels_cli.stages import iterate

    it = iterate.IterateConfig(rounds=2, controller_episodes=4, eval_episodes=3, data_eval_episodes=2,
                               dynamics="rssm")
    recs = iterate.run(preset("doom", "tiny"), tmp_path, it, runtime=Runtime(seed=0, workers=1, device="cpu"))
    assert [r.round for r in recs] == [0, 1] and all(np.isfinite(r.real_mean) for r in recs)
    m1 = A.validate(tmp_path / "round1/mdn.h5", "mdn")
    assert m1.model_config["dynamics"] == "rssm" and m1.inputs["init"]["sha256"] == A.sha256(tmp_path / "round0/mdn.h5")


def test_export_safetensors_takes_an_rssm(tiny_world, tiny_rssm, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors import safe_open

    from worldmodels_cli.interop import export_safetensors

    c = tmp_path / "c.h5"
    p = preset("doom", "tiny")
    evolve.run(p.replace(evolve=p.evolve.replace(generations=1)), tiny_world.vae, tiny_rssm, c,
               runtime=Runtime(seed=0, device="cpu"))
    out = tmp_path / "a.safetensors"
    export_safetensors.run(out, vae=tiny_world.vae, mdn=tiny_rssm, controller=c)
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
        assert json.loads(meta["mdn.config"])["dynamics"] == "rssm" and "mdn.gru.weight" in fh.keys()
        assert json.loads(meta["controller.config"])["mdn_cell"] == 16
