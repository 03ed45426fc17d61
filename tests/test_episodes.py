"""Batched agents in every worker (worldmodels_cli/game/episodes.py, game/agent.BatchAgent): an episode's result depends only
on its (params, seed), never on which episodes share its lockstep chunk; a crashed env names its episode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodels_cli.config import preset
from worldmodels_cli.game import episodes
from worldmodels_cli.game.agent import AgentSpec
from worldmodels_cli.game.encoder import MIN_ROWS, FrameEncoder
from worldmodels_cli.game.envs import make_env
from worldmodels_cli.game.episodes import EpisodeRunner
from worldmodels_cli.models.controller import build_controller
from worldmodels_cli.models.vae import ConvVAE, to_input
from worldmodels_cli.runtime.device import few_rows_one_thread
from worldmodels_cli.runtime.errors import WorkerError
from worldmodels_cli.stages.collect import rollout
from worldmodels_cli.stages.evolve import controller_model_config
from worldmodels_cli.store import artifacts as A


def _spec(world, env: str, features: str = "zch") -> tuple[AgentSpec, int]:
    p = preset(env, "tiny")
    mc = controller_model_config(p.controller.replace(features=features), env, p.mdn.z_dim, p.mdn.hidden,
                                 p.mdn.action_dim)
    return AgentSpec(str(world.vae), str(world.mdn), mc), build_controller(mc).param_count


def _params(n: int, pop: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.5, (pop, n))  # wide: episodes of different lengths


@pytest.mark.parametrize("env", ["doom", "carracing"])
def test_chunks_of_any_size_give_the_episodes_run_alone(env, tiny_world, tiny_car_world):
    world = tiny_world if env == "doom" else tiny_car_world
    spec, n = _spec(world, env)
    cfg = preset(env, "tiny").env
    params, seeds = _params(n, 5), np.arange(15).reshape(5, 3) + 100
    results = {}
    for size in (1, 3, 8):
        with EpisodeRunner(cfg, agent=spec, envs_per_worker=size) as runner:
            results[size] = runner.episodes(params, seeds)
    for size in (3, 8):
        np.testing.assert_array_equal(results[size][0], results[1][0])
        np.testing.assert_array_equal(results[size][1], results[1][1])
    assert len(set(results[8][1].ravel().tolist())) > 1, "the lockstep test needs episodes of different lengths"
    # one episode alone through collect.rollout (videos): the same episodes
    agent, e = spec.build_batch(), make_env(cfg)
    for p in range(5):
        agent.controller.set_params(params[p])
        for r in range(3):
            steps = rollout(e, agent, int(seeds[p, r]), cfg.max_steps)
            assert len(steps["rewards"]) == results[8][1][p, r]
            assert float(steps["rewards"].sum(dtype=np.float64)) == results[8][0][p, r]


@pytest.mark.parametrize("env", ["doom", "carracing"])
def test_fewer_envs_than_episodes_record_each_episode_as_alone(env, tiny_world, tiny_car_world):
    """Two envs for five episodes: as one ends the next takes its env and the agent's row (`Actor.renew`), and every
    recorded array (frames, actions, rewards, flags) equals the episode's run on its own env; so do the controller's
    own parameters (params None, evaluate's path) and exploration noise (collect's NoisyActor)."""
    from worldmodels_cli.game.envs import CarRacingEnv, DoomEnv
    from worldmodels_cli.game.policies import NoisyActor

    world = tiny_world if env == "doom" else tiny_car_world
    spec, n = _spec(world, env)
    cfg = preset(env, "tiny").env
    params, seeds = _params(n, 5, seed=3), [7, 8, 9, 10, 11]
    bounds = CarRacingEnv if env == "carracing" else DoomEnv
    for actor, p in ((spec.build_batch(), params), (NoisyActor(spec.build_batch(), 0.3, bounds.action_low,
                                                               bounds.action_high), None)):
        envs = [make_env(cfg) for _ in range(2)]
        stall = 8 if env == "carracing" else 0  # the fake car's episodes all reach the cap: cut some short
        together = episodes.lockstep(envs, actor, seeds, cfg.max_steps, params=p, record=True, stall_steps=stall)
        lengths = [len(e[A.REWARDS]) for e in together]
        assert len(set(lengths)) > 1, "the test needs episodes of different lengths"
        for i, s in enumerate(seeds):
            alone = episodes.lockstep([envs[0]], actor, [s], cfg.max_steps, params=None if p is None else p[i:i + 1],
                                      record=True, stall_steps=stall)[0]
            assert alone.keys() == together[i].keys()
            for key in alone:
                np.testing.assert_array_equal(together[i][key], alone[key], err_msg=f"episode {i}: {key}")
        for e in envs:
            e.close()


def test_fixed_policies_run_in_lockstep_too(tiny_world):
    cfg = preset("doom", "tiny").env
    seeds = np.arange(6)[None, :]
    with EpisodeRunner(cfg, policy="random", envs_per_worker=1) as one, \
            EpisodeRunner(cfg, policy="random", envs_per_worker=6) as six:
        np.testing.assert_array_equal(one.episodes(None, seeds)[1], six.episodes(None, seeds)[1])


@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_encode_is_independent_of_the_batch(scale):
    """On one thread (the agent's), padding to MIN_ROWS makes a frame's z the same alone or among others; and
    it is V's encode within float tolerance."""
    torch.manual_seed(0)
    vae = ConvVAE(preset("carracing", scale).vae).eval()
    encode = FrameEncoder(vae)
    frames = np.random.default_rng(0).integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    with few_rows_one_thread(1, "cpu"):
        mu_all, lv_all = encode(frames)
        for i in range(9):
            mu, lv = encode(frames[i:i + 1])
            assert torch.equal(mu[0], mu_all[i]) and torch.equal(lv[0], lv_all[i])
    with torch.no_grad():
        want = vae.encode(to_input(torch.from_numpy(frames)))
    torch.testing.assert_close((mu_all, lv_all), want, rtol=1e-4, atol=1e-5)
    assert mu_all.shape == (9, vae.config.z_dim) and MIN_ROWS >= 2


@pytest.mark.parametrize("env", ["doom", "carracing"])
def test_the_agent_acts_as_v_m_and_c_step_by_step(env, tiny_world, tiny_car_world):
    """The agent's fast path (game/encoder.py, M in the dream's fused layout, C reading M's buffer) against the
    plain modules: V's encode, MDNRNN.step from the zero state with restart = 1 at the first step, C.act."""
    from worldmodels_cli.runtime import seeding

    spec, n = _spec(tiny_world if env == "doom" else tiny_car_world, env)
    agent, e = spec.build_batch(), make_env(preset(env, "tiny").env)
    agent.controller.set_params(_params(n, 1, seed=3)[0])
    try:
        steps = rollout(e, agent, 5, 40)
    finally:
        e.close()
    rng, m = seeding.generator(5, "policy"), agent.mdn
    state, want = m.initial_state(1), []
    with torch.no_grad():
        for t, frame in enumerate(steps[A.FRAMES]):
            mu, logvar = agent.vae.encode(to_input(torch.from_numpy(frame[None])))
            z = mu + torch.exp(0.5 * logvar) * torch.from_numpy(rng.standard_normal(mu.shape).astype(np.float32))
            action = agent.controller.act(agent.controller.features(z, *state))
            restart = torch.tensor([1.0 if t == 0 else 0.0]) if m.cfg.restart_input else None
            state = m.step(z, action, restart, state)[1]
            want.append(action[0].numpy())
    assert len(want) > 10
    np.testing.assert_allclose(steps[A.ACTIONS], np.stack(want), atol=1e-5, rtol=0)


class _CrashingEnv:
    """Wraps an env; raises on step `at` of the episode from `seed`, the first `times` times it gets there."""

    def __init__(self, env, seed: int, at: int, times: list[int]) -> None:
        self.env, self.seed, self.at, self.times = env, seed, at, times
        self.name, self.action_dim = env.name, env.action_dim
        self.t, self.current = 0, None

    def reset(self, seed):
        self.t, self.current = 0, seed
        return self.env.reset(seed)

    def step(self, action):
        self.t += 1
        if self.current == self.seed and self.t == self.at and self.times[0] > 0:
            self.times[0] -= 1
            raise RuntimeError("engine died")
        return self.env.step(action)

    def close(self):
        self.env.close()


def test_a_crashed_env_is_retried_and_named(tiny_world, monkeypatch):
    spec, n = _spec(tiny_world, "doom")
    cfg = preset("doom", "tiny").env
    params, seeds = _params(n, 4, seed=1), np.arange(8).reshape(4, 2) + 40
    with EpisodeRunner(cfg, agent=spec) as runner:
        want = runner.episodes(params, seeds)
    times = [1]
    monkeypatch.setattr(episodes, "make_env", lambda c: _CrashingEnv(make_env(c), 45, 3, times))
    with EpisodeRunner(cfg, agent=spec) as runner:  # fails once, the chunk is rerun on a new env: same results
        got = runner.episodes(params, seeds)
    assert times == [0]
    np.testing.assert_array_equal(got[0], want[0])
    times[0] = 99
    with EpisodeRunner(cfg, agent=spec) as runner, pytest.raises(WorkerError) as err:
        runner.episodes(params, seeds)
    msg = str(err.value)
    assert "episode (candidate 2, trial 1, seed 45): RuntimeError: engine died" in msg and "3 attempts" in msg


class _Constant:
    """A fixed CarRacing policy: the same (steer, gas, brake) every step."""

    def __init__(self, action) -> None:
        self.action = np.asarray(action, dtype=np.float32)

    def reset(self, rng) -> None:
        pass

    def act(self, obs, rng):
        return self.action


def test_a_stalled_episode_ends_early_and_its_return_goes_on_to_the_cap():
    """Stall rule (EvolveConfig.stall_steps): no gas, no positive reward -> cut after N steps; the return counts
    the steps it was cut short of at the stretch's mean reward, which here is exactly the full episode's."""
    cfg = preset("carracing", "tiny").env
    env = make_env(cfg)
    still = episodes.PolicyBatch.of(_Constant([0.0, 0.0, 0.0]))
    full = episodes.lockstep([env], still, [3], cfg.max_steps)[0]
    cut = episodes.lockstep([env], still, [3], cfg.max_steps, stall_steps=10)[0]
    assert len(full[A.REWARDS]) == cfg.max_steps and len(cut[A.REWARDS]) == 10
    assert int(cut[episodes.STALLED]) == cfg.max_steps - 10 and episodes.STALLED not in full
    assert episodes.fitness_return(cut, 10) == pytest.approx(episodes.fitness_return(full, 0), rel=1e-6)
    # a car that keeps gaining reward (its first 20 steps on the road) is not cut: the same steps either way
    go = episodes.PolicyBatch.of(_Constant([0.0, 1.0, 0.0]))
    a = episodes.lockstep([env], go, [3], 20)[0]
    b = episodes.lockstep([env], go, [3], 20, stall_steps=10)[0]
    assert episodes.STALLED not in b
    np.testing.assert_array_equal(a[A.REWARDS], b[A.REWARDS])
    assert (a[A.REWARDS] > 0).any()


def test_the_stall_rule_reaches_the_workers_of_evolve_but_not_evaluate(tiny_car_world):
    spec, n = _spec(tiny_car_world, "carracing")
    cfg = preset("carracing", "tiny").env
    params, seeds = _params(n, 3, seed=2), np.arange(6).reshape(3, 2) + 20
    with EpisodeRunner(cfg, agent=spec, stall_steps=7) as cut, EpisodeRunner(cfg, agent=spec) as full:
        (r_cut, l_cut), (_, l_full) = cut.episodes(params, seeds), full.episodes(params, seeds)
    assert (l_cut < l_full).any() and (l_cut <= l_full).all()
    agent = spec.build_batch()  # the same episodes in this process, with and without the rule
    for p in range(3):
        for r in range(2):
            one = episodes.lockstep([make_env(cfg)], agent, [int(seeds[p, r])], cfg.max_steps, params=params[p:p + 1],
                                    stall_steps=7)[0]
            assert len(one[A.REWARDS]) == l_cut[p, r] and episodes.fitness_return(one, 7) == r_cut[p, r]
