"""C as a latent actor-critic (models/actor_critic.py, stages/train_controller.py; ref beyond.md §2): the
λ-returns against a hand computation, the weights, the tanh-Gaussian policy and its entropy, gradients through
either M, and `wm train-controller` end to end on both dynamics (evaluated in the real game, resumed exactly,
refusals in one line)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from worldmodels_cli.config import ActorCriticConfig, ControllerConfig, MDNConfig, RSSMConfig, preset
from worldmodels_cli.models.actor_critic import (
    Actor,
    Imagination,
    ReturnNorm,
    draw_noise,
    lambda_returns,
    weights,
)
from worldmodels_cli.models.controller import Controller
from worldmodels_cli.models.mdnrnn import MDNRNN
from worldmodels_cli.models.rssm import RSSM
from worldmodels_cli.runtime import Runtime
from worldmodels_cli.stages import train_controller, train_mdn
from worldmodels_cli.store import artifacts as A

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: a second thread only adds contention


# ------------------------------------------------------------------------------------------ returns
def test_lambda_returns_by_hand():
    """H = 3, one lane, γ = 0.9, λ = 0.5, by hand:
    R_2 = r_2 + γ c_2 v_3                                  = 3 + 0.9·0.5·10             = 7.5
    R_1 = r_1 + γ c_1 ((1−λ) v_2 + λ R_2)                  = 2 + 0.9·1·(0.5·6 + 0.5·7.5) = 8.075
    R_0 = r_0 + γ c_0 ((1−λ) v_1 + λ R_1)                  = 1 + 0.9·0.8·(0.5·4 + 0.5·8.075) = 5.347"""
    r = torch.tensor([[1.0], [2.0], [3.0]])
    c = torch.tensor([[0.8], [1.0], [0.5]])
    v = torch.tensor([[100.0], [4.0], [6.0], [10.0]])  # v_0 never enters its own return
    R = lambda_returns(r, c, v, gamma=0.9, lam=0.5)
    torch.testing.assert_close(R[:, 0], torch.tensor([5.347, 8.075, 7.5]))
    # λ = 1: the discounted sum bootstrapped at H; λ = 0: one-step TD targets
    torch.testing.assert_close(lambda_returns(r, c, v, 0.9, 1.0)[0, 0], torch.tensor(1 + 0.72 * (2 + 0.9 * (3 + 0.45 * 10))))
    torch.testing.assert_close(lambda_returns(r, c, v, 0.9, 0.0)[:, 0], torch.tensor([1 + 0.72 * 4, 2 + 0.9 * 6, 7.5]))
    # the weights: how much of each state's episode is left, discounted
    torch.testing.assert_close(weights(c, 0.9)[:, 0], torch.tensor([1.0, 0.72, 0.648]))


def test_return_scale_is_v3s_percentile_range():
    norm = ReturnNorm(decay=0.99)
    assert norm.scale == 1.0
    x = torch.arange(101.0)
    assert norm.update(x) == pytest.approx(90.0)  # 95th − 5th percentile, set by the first update
    norm.update(torch.zeros(101))
    assert norm.scale == pytest.approx(0.99 * 90.0)
    assert ReturnNorm(0.99).update(torch.full((10,), 3.0)) == 1.0  # never below 1: small returns are not blown up
    state = norm.state_dict()
    other = ReturnNorm(0.99)
    other.load_state_dict(state)
    assert other.scale == norm.scale


# ------------------------------------------------------------------------------------------ the actor
def _controller(features="zch", hidden=0, bias=False, env="doom", z=5, h=6, a=1, cell=None):
    return Controller(ControllerConfig(features=features, hidden=hidden, bias=bias), z, h, a, env, cell)


@pytest.mark.parametrize("hidden,bias,env,a", [(0, False, "doom", 1), (3, True, "carracing", 3)])
def test_the_actors_mode_is_c(hidden, bias, env, a):
    """The artifact stores C's flat vector: tanh of the actor's mean is C's own output, so `wm evaluate` runs the
    policy's mode."""
    c = _controller(hidden=hidden, bias=bias, env=env, a=a)
    actor = Actor(c, 0.1, 1.0, torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        actor.flat.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    x = torch.randn(7, c.in_dim, dtype=torch.float64)
    c2 = _controller(hidden=hidden, bias=bias, env=env, a=a).double()
    c2.set_params(actor.flat.detach())
    torch.testing.assert_close(torch.tanh(actor.pre_tanh(x)), c2(x))
    raw, _ = actor.sample(x, torch.zeros(7, a, dtype=torch.float64))
    torch.testing.assert_close(raw, c2(x))  # ε = 0: the mode


def test_the_entropy_estimate_is_minus_the_tanh_gaussians_log_prob():
    c = _controller(a=2, env="carracing")
    actor = Actor(c, 0.1, 1.0, torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        actor.flat.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
        actor.rho.copy_(torch.tensor([0.3, -0.7]))
    x = torch.randn(50, c.in_dim, dtype=torch.float64)
    eps = torch.randn(50, 2, dtype=torch.float64)
    a, neg_logp = actor.sample(x, eps)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(actor.pre_tanh(x), actor.std), [torch.distributions.TanhTransform()])
    u = actor.pre_tanh(x) + actor.std * eps
    torch.testing.assert_close(neg_logp, -dist.log_prob(torch.tanh(u)).sum(-1), atol=1e-6, rtol=1e-6)
    assert ((actor.std >= 0.1) & (actor.std <= 1.0)).all()


# ------------------------------------------------------------------------------------------ imagination
MDN = MDNConfig(z_dim=5, action_dim=1, hidden=6, mixtures=2, done_head=True, restart_input=True)
RS = RSSMConfig(z_dim=5, action_dim=1, deter=6, stoch=2, classes=3, units=7, head_layers=1, done_head=True)


@pytest.mark.parametrize("kind", ["mdnrnn", "rssm"])
def test_the_actors_gradient_flows_through_either_m(kind):
    torch.manual_seed(0)
    m = (MDNRNN(MDN) if kind == "mdnrnn" else RSSM(RS)).double().train()
    for p in m.parameters():
        p.requires_grad_(False)
    cell = 6 if kind == "mdnrnn" else 6
    c = _controller(z=5, h=6, cell=None if kind == "mdnrnn" else cell)
    actor = Actor(c, 0.1, 1.0, torch.Generator().manual_seed(0)).double()
    mu0, lv0 = torch.randn(4, 5, dtype=torch.float64), torch.full((4, 5), -2.0, dtype=torch.float64)
    imag = Imagination(m, c, 1.15, mu0, lv0)
    noise = draw_noise(m, 8, 5, torch.Generator().manual_seed(3), torch.float64, "cpu")
    lanes = imag.start(None, None, noise)
    traj = imag.rollout(actor, lanes, noise, 5)
    assert traj.actor_x.shape == (5, 8, c.in_dim) and traj.rewards.shape == traj.continues.shape == (5, 8)
    assert ((traj.continues > 0) & (traj.continues < 1)).all() and traj.end.steps.tolist() == [5] * 8
    # the return of the last steps depends on the first action through M's state: its gradient reaches C
    (g,) = torch.autograd.grad((traj.continues[-1] * traj.rewards[-1]).sum(), actor.flat)
    assert g.abs().sum() > 0
    # a restarted lane starts over; the others keep their state
    fresh = torch.tensor([True, False] * 4)
    again = imag.start(traj.end, fresh, noise)
    assert torch.equal(again.steps, torch.where(fresh, 0, 5)) and torch.equal(again.h[1], traj.end.h[1])


# ------------------------------------------------------------------------------------------ the stage
@pytest.fixture(scope="module")
def tiny_rssm(tiny_world, tmp_path_factory):
    p = preset("doom", "tiny")
    out = tmp_path_factory.mktemp("ac_rssm") / "rssm.h5"
    train_mdn.run(p.replace(mdn_train=p.mdn_train.replace(steps=10)), [tiny_world.series], out, dynamics="rssm",
                  runtime=Runtime(seed=0, device="cpu"))
    return out


@pytest.mark.parametrize("which", ["mdnrnn", "rssm"])
def test_train_controller_end_to_end_and_evaluate(wm, tiny_world, tiny_rssm, tmp_path, which):
    mdn = tiny_world.mdn if which == "mdnrnn" else tiny_rssm
    c = tmp_path / "c.h5"
    r = wm("train-controller", "--vae", tiny_world.vae, "--mdn", mdn, "--out", c, "--device", "cpu")
    assert r.code == 0 and len(r.out.strip().splitlines()) == 1 and "actor-critic steps" in r.out, r.err
    meta = A.validate(c, "controller")
    ac = meta.config["actor_critic"]
    assert meta.summary["method"] == "actor-critic" and meta.summary["dynamics"] == which
    assert meta.summary["steps"] == ac["steps"] and meta.summary["complete"]
    assert math.isfinite(meta.summary["best_score"]) and ("cell" in meta.model_config) == (which == "rssm")
    with A.open_artifact(c) as fh:
        steps = fh[A.HISTORY]["step"][()].tolist()
    assert steps == list(range(ac["eval_every"], ac["steps"] + 1, ac["eval_every"]))
    records = [json.loads(x) for x in (tmp_path / "c.metrics.jsonl").read_text().splitlines()]
    assert any("ac/critic_loss" in x for x in records) and (tmp_path / "c.fitness.png").exists()
    r = wm("evaluate", "--controller", c, "--episodes", "3")
    assert r.code == 0 and "controller c.h5 on doom: steps survived" in r.out, r.err
    assert wm("info", c).code == 0
    before = A.sha256(c)
    r = wm("train-controller", "--vae", tiny_world.vae, "--mdn", mdn, "--out", c)  # the same command: done
    assert r.code == 0 and A.sha256(c) == before


def test_resumes_exactly(tiny_world, tmp_path):
    p = preset("doom", "tiny")
    ac = ActorCriticConfig(steps=7, lanes=6, horizon=3, actor_lr=1e-2, critic_lr=1e-2, critic_units=8,
                           critic_layers=1, eval_every=3)
    ref = train_controller.run(p, ac, tiny_world.vae, tiny_world.mdn, tmp_path / "ref.h5",
                               runtime=Runtime(device="cpu"))
    out = tmp_path / "c.h5"

    def stop(step):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_controller.run(p, ac, tiny_world.vae, tiny_world.mdn, out, on_step=stop, runtime=Runtime(device="cpu"))
    assert A.validate(out, "controller").summary["steps"] == 5 and not A.validate(out, "controller").summary["complete"]
    res = train_controller.run(p, ac, tiny_world.vae, tiny_world.mdn, out, runtime=Runtime(device="cpu"))
    assert res.steps == ref.steps == 7 and res.best_score == ref.best_score
    with A.open_artifact(out) as a, A.open_artifact(tmp_path / "ref.h5") as b:
        for key in (A.MEAN, A.BEST_PARAMS):
            np.testing.assert_array_equal(a[key][()], b[key][()])
        np.testing.assert_array_equal(a[A.HISTORY]["eval_score"][()], b[A.HISTORY]["eval_score"][()])
    # more steps extend the run; another setting is another run, refused
    more = train_controller.run(p, dataclasses.replace(ac, steps=9), tiny_world.vae, tiny_world.mdn, out,
                                runtime=Runtime(device="cpu"))
    assert more.steps == 9
    from worldmodels_cli.runtime.errors import ArtifactError

    with pytest.raises(ArtifactError, match="exists from another run .*actor_critic.horizon"):
        train_controller.run(p, dataclasses.replace(ac, horizon=4, steps=9), tiny_world.vae, tiny_world.mdn, out,
                             runtime=Runtime(device="cpu"))


def test_it_learns_in_the_dream(tiny_world, tmp_path):
    """On the tiny world's M the actor's dream score rises above where it started (C = 0)."""
    p = preset("doom", "tiny")
    ac = ActorCriticConfig(steps=90, lanes=32, horizon=15, actor_lr=1e-3, critic_lr=1e-3, critic_units=16,
                           critic_layers=1, eval_every=30)
    p = p.replace(evolve=p.evolve.replace(eval_episodes=64))
    out = tmp_path / "c.h5"
    res = train_controller.run(p, ac, tiny_world.vae, tiny_world.mdn, out, runtime=Runtime(device="cpu"))
    from worldmodels_cli.dream.program import dream_rollouts
    from worldmodels_cli.models.mdnrnn import load_initial_z, load_mdn
    from worldmodels_cli.stages.evolve import controller_for, eval_seeds

    m, _ = load_mdn(tiny_world.mdn)
    c, _ = controller_for(p.controller, "doom", m)
    mu0, lv0 = load_initial_z(tiny_world.mdn)
    start = dream_rollouts(m, eval_seeds(p.evolve), mu0, lv0, controller=c, params=np.zeros((1, c.param_count)),
                           tau=p.evolve.temperature, max_steps=p.evolve.max_steps).returns.mean()
    assert res.best_score > start + 1, (res.best_score, start)


def test_refusals_are_one_line(wm, tiny_world, tiny_car_world, tmp_path):
    r = wm("train-controller", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--out", tmp_path / "c.h5",
           "--method", "reinforce")
    assert r.code == 2 and r.err.count("\n") == 1
    r = wm("train-controller", "--vae", tiny_car_world.vae, "--mdn", tiny_car_world.mdn, "--out", tmp_path / "c.h5")
    assert r.code == 2 and "done or reward head" in r.err and r.err.count("\n") == 1
    r = wm("train-controller", "--vae", tiny_world.series, "--mdn", tiny_world.mdn, "--out", tmp_path / "c.h5")
    assert r.code == 2 and "expected a vae artifact" in r.err
    r = wm("train-controller", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--out", tmp_path / "c.h5",
           "--gamma", "1.5")
    assert r.code == 2 and "gamma must be <= 1" in r.err and not (tmp_path / "c.h5").exists()


def test_every_field_is_a_train_controller_option(wm, monkeypatch, tiny_world, tmp_path):
    from worldmodels_cli.cli import DREAM_EVAL_FIELDS, cli
    from worldmodels_cli.config import EvolveConfig

    have = {p.name: p for p in cli.commands["train-controller"].params}
    for cls, names in ((ActorCriticConfig, None), (ControllerConfig, None), (EvolveConfig, DREAM_EVAL_FIELDS)):
        for fl in dataclasses.fields(cls):
            if names is None or fl.name in names:
                assert fl.name in have and have[fl.name].help.startswith(fl.metadata["doc"]), fl.name
    seen = []
    monkeypatch.setattr(train_controller, "run", lambda cfg, ac, vae, mdn, out, method, runtime: seen.append(
        (cfg, ac, runtime)) or train_controller.ACResult(out, 1, 0.0, 1, 0.0))
    r = wm("train-controller", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--out", tmp_path / "c.h5",
           "--eval-every", "7", "--temperature", "0.9", "--lanes", "5", "--features", "zh", "--seed", "4")
    assert r.code == 0, r.err
    cfg, ac, runtime = seen[0]
    assert (ac.eval_every, ac.lanes, cfg.evolve.temperature, cfg.controller.features) == (7, 5, 0.9, "zh")
    assert cfg.evolve.eval_every == preset("doom", "tiny").evolve.eval_every and runtime.seed == 4


def test_iterate_trains_every_rounds_c_with_the_actor_critic(tmp_path):
    """`wm iterate --method actor-critic`: each round's C is `train_controller`'s, a data round's for the data
    rounds' fraction of the steps, the last round's on the τ ladder like CMA-ES's; the demo's line says so."""
    from worldmodels_cli.config import actor_critic_config
    from worldmodels_cli.stages import iterate
    from worldmodels_cli.stages.demo import _markdown

    ac = actor_critic_config("doom", "tiny", steps=6)
    it = iterate.IterateConfig(rounds=2, controller_episodes=4, eval_episodes=3, data_eval_episodes=2,
                               method="actor-critic", data_generations_fraction=0.5, final_temperatures=(1.5, 1.15),
                               final_dream_ratio=1e9)  # no rung reaches it: both are trained, the better is kept
    p = preset("doom", "tiny")
    recs = iterate.run(p, tmp_path, it, ac=ac, runtime=Runtime(seed=0, workers=1, device="cpu"))
    assert [r.method for r in recs] == ["actor-critic"] * 2 and all(np.isfinite(r.real_mean) for r in recs)
    assert all("train-controller" in r.seconds and "evolve" not in r.seconds for r in recs)
    steps = [A.validate(tmp_path / f"round{k}/controller.h5", "controller").summary for k in (0, 1)]
    assert [s["method"] for s in steps] == ["actor-critic"] * 2 and [s["steps"] for s in steps] == [3, 6]
    assert [r["tau"] for r in recs[1].ladder] == [1.5, 1.15] and sum(r.get("kept", False) for r in recs[1].ladder) == 1
    kept = next(r for r in recs[1].ladder if r.get("kept"))
    assert A.sha256(tmp_path / "round1/controller.h5") == A.sha256(kept["path"]) and recs[1].tau == kept["tau"]
    assert "C by the latent actor-critic" in _markdown([], recs, p, "tiny")
    again = iterate.run(p, tmp_path, it, ac=ac, runtime=Runtime(seed=0, workers=1, device="cpu"))  # all found done
    assert [r.real_mean for r in again] == [r.real_mean for r in recs]
