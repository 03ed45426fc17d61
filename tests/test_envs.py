"""Environments (real and fake) and data policies: spaces, frames, determinism, Doom's thresholds and timeout."""

from __future__ import annotations

import numpy as np
import pytest

from worldmodels_cli.config import CollectConfig, EnvConfig
from worldmodels_cli.game.envs import (
    DOOM_LEFT,
    DOOM_NONE,
    DOOM_RIGHT,
    NO_ENV_ACTION,
    FakeDoomEnv,
    doom_button,
    make_env,
)
from worldmodels_cli.game.policies import (
    CarRacingRandom,
    DoomHeldRandom,
    DoomUniformRandom,
    make_actor,
    random_policy,
)
from worldmodels_cli.runtime.errors import ConfigError


def _episode(env, seed, actions):
    frames = [env.reset(seed)]
    steps = []
    for a in actions:
        s = env.step(a)
        steps.append(s)
        frames.append(s.obs)
        if s.terminated or s.truncated:
            break
    return np.stack(frames), steps


def _check_frame(frame):
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8


# ------------------------------------------------------------------------------------------------ fake envs
@pytest.mark.parametrize("name,dim", [("doom", 1), ("carracing", 3)])
def test_fake_env_spaces_and_determinism(name, dim):
    env = make_env(EnvConfig(name=name, fake=True, max_steps=80))
    assert env.name == name and env.action_dim == dim
    assert env.action_low.shape == env.action_high.shape == (dim,)
    rng = np.random.default_rng(0)
    actions = rng.uniform(env.action_low, env.action_high, (80, dim)).astype(np.float32)
    f1, s1 = _episode(env, 7, actions)
    f2, s2 = _episode(env, 7, actions)
    f3, _ = _episode(env, 8, actions)
    _check_frame(f1[0])
    assert np.array_equal(f1, f2) and [s[1:] for s in s1] == [s[1:] for s in s2]
    assert not np.array_equal(f1[0], f3[0])
    assert len(np.unique(f1.reshape(-1, 3), axis=0)) <= 6  # a few flat colours: easy for a tiny VAE
    for s in s1:
        assert isinstance(s.reward, float) and isinstance(s.terminated, bool) and isinstance(s.truncated, bool)
        assert (s.env_action in (0, 1, 2)) if name == "doom" else s.env_action == NO_ENV_ACTION


def _dodge(frame):
    """A linear rule on positions read off the frame: away from the fireball b, towards the side with more room
    (the repeller sits at 2b - 32, so a fireball near a wall sends the player to the other side)."""
    ball = np.nonzero((frame[..., 0] > 200) & (frame[..., 1] < 160))[1].mean()
    player = np.nonzero(frame[FakeDoomEnv.PLAYER_ROW:, :, 1] > 150)[1].mean()
    return np.array([np.tanh(0.5 * player - ball + 16)], np.float32)


def test_fake_doom_rewards_dodging_over_random():
    env = make_env(EnvConfig(name="doom", fake=True, max_steps=300))
    rng = np.random.default_rng(1)
    uniform, dodge = DoomUniformRandom(), []
    rand_lengths = []
    for seed in range(20):
        obs, n = env.reset(seed), 0
        while True:
            s = env.step(uniform.act(obs, rng))
            obs, n = s.obs, n + 1
            assert s.reward == 1.0
            if s.terminated or s.truncated:
                break
        rand_lengths.append(n)
        obs, n = env.reset(seed), 0
        while True:
            s = env.step(_dodge(obs))
            obs, n = s.obs, n + 1
            if s.terminated or s.truncated:
                break
        dodge.append(n)
    assert np.mean(dodge) > 3 * np.mean(rand_lengths)
    assert np.mean(dodge) > 250


def test_fake_carracing_rewards_steering_to_the_road():
    env = make_env(EnvConfig(name="carracing", fake=True, max_steps=200))

    def follow(frame):
        road = np.nonzero(frame[40, :, 1] < 150)[0].mean()  # grey road pixels ten rows ahead of the car
        car = np.nonzero((frame[50:56, :, 0] > 150) & (frame[50:56, :, 1] < 50))[1].mean()
        return np.array([np.clip((road - car) / 6, -1, 1), 0.6, 0.0], np.float32)

    policy, rng = CarRacingRandom(), np.random.default_rng(2)
    scores = {"follow": [], "random": []}
    for seed in range(5):
        for kind in scores:
            obs, total = env.reset(seed), 0.0
            policy.reset(rng)
            for _ in range(200):
                s = env.step(follow(obs) if kind == "follow" else policy.act(obs, rng))
                obs, total = s.obs, total + s.reward
            scores[kind].append(total)
    assert np.mean(scores["follow"]) > 100 > np.mean(scores["random"])


def test_fake_carracing_steps_on_after_termination_like_carracing():
    env = make_env(EnvConfig(name="carracing", fake=True, max_steps=100))
    env.reset(0)
    ends = [env.step(np.array([1.0, 0.0, 0.0])) for _ in range(100)]
    assert any(s.terminated for s in ends) and ends[-1].truncated
    assert all(s.reward == -100.0 for s in ends if s.terminated)


# ----------------------------------------------------------------------------------------------- real envs
def test_carracing_frames():
    env = make_env(EnvConfig(name="carracing", max_steps=5))
    try:
        assert env.action_dim == 3
        first = env.reset(3)
        frames, steps = _episode(env, 3, [np.array([0.0, 1.0, 0.0], np.float32)] * 10)
        assert np.array_equal(first, frames[0])  # same seed, same track
        for f in frames:
            _check_frame(f)
        assert 0 < frames.mean() < 255 and frames.std() > 5
        assert len(steps) == 5 and steps[-1].truncated and not steps[-1].terminated
        assert all(s.env_action == NO_ENV_ACTION for s in steps)
    finally:
        env.close()


def test_doom_thresholds():
    t = EnvConfig().action_threshold
    assert doom_button(-0.34, t) == DOOM_LEFT
    assert doom_button(0.3, t) == DOOM_NONE and doom_button(-0.3, t) == DOOM_NONE
    assert doom_button(0.34, t) == DOOM_RIGHT


def test_doom_frames_buttons_and_timeout():
    env = make_env(EnvConfig(name="doom", max_steps=6))
    try:
        assert env.action_dim == 1
        obs = env.reset(11)
        _check_frame(obs)
        assert 0 < obs.mean() < 255 and obs.std() > 5
        got = [env.step(np.array([a], np.float32)) for a in (-0.34, 0.3, 0.34, -1.0, 1.0, 0.0)]
        assert [s.env_action for s in got] == [DOOM_LEFT, DOOM_NONE, DOOM_RIGHT, DOOM_LEFT, DOOM_RIGHT, DOOM_NONE]
        assert all(s.reward == 1.0 for s in got)  # living reward, one tic per step
        # the cap is a truncation, never a death (ref §A)
        assert [s.truncated for s in got] == [False] * 5 + [True]
        assert not any(s.terminated for s in got)
        for s in got:
            _check_frame(s.obs)
        # same seed and actions -> same frames
        again = [env.reset(11)] + [env.step(np.array([a], np.float32)).obs for a in (-0.34, 0.3, 0.34)]
        assert np.array_equal(again[0], obs)
        assert all(np.array_equal(a, s.obs) for a, s in zip(again[1:], got[:3], strict=True))
    finally:
        env.close()


def test_doom_death_is_terminated():
    env = make_env(EnvConfig(name="doom", max_steps=2100))
    try:
        env.reset(0)
        for _ in range(2100):  # standing still dies well before the cap
            s = env.step(np.zeros(1, np.float32))
            if s.terminated or s.truncated:
                break
        assert s.terminated and not s.truncated
        _check_frame(s.obs)
    finally:
        env.close()


def test_doom_labels_mark_the_fireballs_and_change_nothing_else():
    """labels=True (probes): the label buffer is cropped like the frame, names the imps and their fireballs, and the
    game and its frames are those of an env without labels."""
    from worldmodels_cli.game.envs import DoomEnv

    cfg = EnvConfig(name="doom", max_steps=120)
    plain, labelled = DoomEnv(cfg), DoomEnv(cfg, labels=True)
    try:
        with pytest.raises(RuntimeError, match="labels=True"):
            plain.reset(3) is not None and plain.labels()
        labelled.reset(3)
        names = set()
        for t in range(120):
            buf, found = labelled.labels()
            assert buf.shape == (100, 160) and buf.dtype == np.uint8  # 120 rows at 160x120, the top 5/6 kept
            names.update(found.values())
            a = np.array([1.0 if t % 30 < 15 else -1.0], np.float32)
            s1, s2 = plain.step(a), labelled.step(a)
            assert np.array_equal(s1.obs, s2.obs) and (s1.terminated, s1.truncated) == (s2.terminated, s2.truncated)
            if s1.terminated or s1.truncated:
                break
        assert {"DoomImp", "DoomImpBall"} <= names
    finally:
        plain.close()
        labelled.close()


def test_bad_doom_resolution_is_one_line_error():
    from worldmodels_cli.game.envs import check_env_config

    with pytest.raises(ConfigError, match="doom_resolution '123x45'"):
        check_env_config(EnvConfig(name="doom", doom_resolution="123x45"))


# ---------------------------------------------------------------------------------------------- policies
def test_carracing_random_policy_statistics():
    policy, rng = CarRacingRandom(), np.random.default_rng(0)
    acts = []
    for _ in range(400):
        policy.reset(rng)
        acts += [policy.act(None, rng) for _ in range(25)]
    a = np.array(acts)
    assert a.dtype == np.float32 and a.shape == (10000, 3)
    assert a[:, 0].min() >= -1 and a[:, 0].max() <= 1
    assert a[:, 1].min() >= 0 and a[:, 1].max() <= 1 and a[:, 2].min() >= 0 and a[:, 2].max() <= 1
    assert abs(a[:, 1].mean() - 0.5) < 0.03  # ref §2.1: gas ≈ 0.5 on average
    assert 0.2 < (a[:, 2] > 0.01).mean() < 0.7  # brake on about half the steps (ref §2.1: ~47 %)


def test_doom_held_random_policy_holds_1_to_10_frames():
    policy, rng = DoomHeldRandom(1, 10), np.random.default_rng(0)
    holds, values = [], []
    for _ in range(50):
        policy.reset(rng)
        seq = np.array([policy.act(None, rng)[0] for _ in range(300)])
        values.append(seq)
        change = np.flatnonzero(np.diff(seq)) + 1
        bounds = np.concatenate([[0], change])
        holds += list(np.diff(bounds))  # complete holds only
    holds, values = np.array(holds), np.concatenate(values)
    assert holds.min() == 1 and holds.max() == 10
    assert -1 <= values.min() and values.max() <= 1
    buttons = np.array([doom_button(v, 1 / 3) for v in values])
    assert all(abs((buttons == b).mean() - 1 / 3) < 0.05 for b in (0, 1, 2))


def test_doom_uniform_policy_is_uniform_per_tic():
    policy, rng = DoomUniformRandom(), np.random.default_rng(0)
    acts = np.array([policy.act(None, rng)[0] for _ in range(3000)])
    assert set(np.unique(acts)) == {-1.0, 0.0, 1.0}
    assert all(abs((acts == v).mean() - 1 / 3) < 0.04 for v in (-1.0, 0.0, 1.0))


def test_make_actor():
    assert isinstance(random_policy(EnvConfig(name="carracing")), CarRacingRandom)
    a = make_actor(EnvConfig(name="doom"), CollectConfig(repeat_min=2, repeat_max=3))
    a.start(None, [np.random.default_rng(0), np.random.default_rng(1)])
    assert all(isinstance(p, DoomHeldRandom) and (p.repeat_min, p.repeat_max) == (2, 3) for p in a.policies)
    assert a.act(np.zeros((2, 64, 64, 3), np.uint8), np.array([0, 1])).shape == (2, 1)
    with pytest.raises(ConfigError):
        make_actor(EnvConfig(name="doom"), CollectConfig(policy="controller"))


@pytest.mark.slow
def test_doom_uniform_random_survives_about_210_steps():
    """ref §B: a uniform left/none/right choice every tic survives 211 ± 99 at skill 4, cap 2100, start tic 14."""
    env = make_env(EnvConfig(name="doom"))
    policy, rng, lengths = DoomUniformRandom(), np.random.default_rng(0), []
    try:
        for seed in range(30):
            obs, n = env.reset(seed), 0
            while True:
                s = env.step(policy.act(obs, rng))
                obs, n = s.obs, n + 1
                if s.terminated or s.truncated:
                    break
            lengths.append(n)
    finally:
        env.close()
    assert 160 < np.mean(lengths) < 260
