"""The fast CarRacing renderer draws gymnasium's frames bit for bit (worldmodels_cli/game/carracing_render.py).

Both envs step with the same actions from the same seed; every 96x96 `state_pixels` frame, reward and flag must be
equal; the fast env draws compiled (carracing_raster, where numba is installed) and hands no frame to pygame. The scenarios cover the first second's zoom-in (drawn with the background polygon, not a fill), random
driving onto the grass, a scripted driver that visits tiles (they change colour) and moves the indicator bar, a
drive off the playfield (termination, -100) and the end of an episode at the step cap or a finished lap.
"""

from __future__ import annotations

import configparser
import math
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from worldmodels_cli.config import EnvConfig
from worldmodels_cli.game import carracing_render
from worldmodels_cli.game.carracing_render import (
    GYMNASIUM_VERSION,
    PYGAME_VERSION,
    compiled_unavailable,
    make_fast_car_racing,
)
from worldmodels_cli.game.envs import CarRacingEnv, carracing_renderer, select_renderer
from worldmodels_cli.runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _heading_error(u, x: float, y: float) -> float:
    px, py = u.car.hull.position
    err = math.atan2(y - py, x - px) - (u.car.hull.angle + math.pi / 2)  # the hull's forward is its +y axis
    return (err + math.pi) % (2 * math.pi) - math.pi


def follow_track(u, speed: float = 60.0, look: int = 8) -> np.ndarray:
    """A pure-pursuit driver on the env's own track: aims `look` tiles ahead, holds `speed`."""
    track = np.array([(t[2], t[3]) for t in u.track])
    i = int(np.argmin(((track - tuple(u.car.hull.position)) ** 2).sum(axis=1)))
    err = _heading_error(u, *track[(i + look) % len(track)])
    v = u.car.hull.linearVelocity
    return np.array([np.clip(-3 * err, -1, 1), 0.6 if math.hypot(v[0], v[1]) < speed else 0.0, 0.0])


def drive_outward(u) -> np.ndarray:
    """Away from the origin until the car leaves the playfield (CarRacing's -100 and termination)."""
    px, py = u.car.hull.position
    err = _heading_error(u, 2 * px, 2 * py)
    v = u.car.hull.linearVelocity
    return np.array([np.clip(-1.5 * err, -1, 1), 0.4 if math.hypot(v[0], v[1]) < 50 else 0.0, 0.0])


def random_actions(seed: int):
    """Uniform random actions from their own stream (the same whichever tests ran before)."""
    rng = np.random.default_rng(seed)
    return lambda u: rng.uniform([-1.0, 0.0, 0.0], [1.0, 1.0, 0.3])


def compare_episode(seed: int, policy, max_steps: int, renderer: str = "fast") -> dict:
    """Step gymnasium's env and the fast one in lockstep; assert every frame and outcome equal. The fast one draws
    compiled (renderer 'fast' where numba is installed) or with pygame (renderer 'pygame')."""
    cfg = EnvConfig(name="carracing", max_steps=max_steps)
    gym_env, fast_env = CarRacingEnv(cfg, renderer="gym")._env, CarRacingEnv(cfg, renderer=renderer)._env
    drawing = "pygame" if renderer == "pygame" or compiled_unavailable() else "compiled"
    assert fast_env.unwrapped.drawing == drawing
    try:
        a, _ = gym_env.reset(seed=seed)
        b, _ = fast_env.reset(seed=seed)
        assert np.array_equal(a, b), "reset frame differs"
        u = gym_env.unwrapped
        stats = {"steps": 0, "visited": 0, "terminated": False, "truncated": False, "min_reward": 0.0}
        for t in range(max_steps):
            action = policy(u)
            a, ra, ta, tra, ia = gym_env.step(action)
            b, rb, tb, trb, ib = fast_env.step(action)
            differ = np.argwhere((a != b).any(axis=-1))
            assert len(differ) == 0, f"step {t}: {len(differ)} pixels differ, first at (row, col) {differ[0].tolist()}"
            assert (ra, ta, tra, ia) == (rb, tb, trb, ib), f"step {t}: outcome differs"
            stats.update(steps=t + 1, terminated=ta, truncated=tra, min_reward=min(stats["min_reward"], ra),
                         visited=u.tile_visited_count, info=ia)
            if ta or tra:
                break
        stats["fallback_frames"] = fast_env.unwrapped.fallback_frames  # compiled frames handed to pygame
        return stats
    finally:
        gym_env.close()
        fast_env.close()


def test_random_actions_zoom_in_and_grass():
    s = compare_episode(0, random_actions(0), 300)
    assert s["steps"] == 300 and s["truncated"] and s["fallback_frames"] == 0


def test_track_follower_visits_tiles():
    s = compare_episode(1, follow_track, 600)
    assert s["visited"] > 100  # tiles turned from their shade to the road colour, drawn as they changed
    assert s["fallback_frames"] == 0


def test_leaving_the_playfield_terminates_identically():
    s = compare_episode(0, drive_outward, 400)
    assert s["terminated"] and s["min_reward"] == -100 and s["info"] == {"lap_finished": False}
    assert s["fallback_frames"] == 0


def test_pygame_drawing_stays_exact():
    """The fast renderer's pygame drawing (the fallback without numba, and --renderer pygame)."""
    s = compare_episode(2, random_actions(2), 150, renderer="pygame")
    assert s["steps"] == 150


def test_without_numba_the_fast_renderer_draws_with_pygame(monkeypatch, caplog):
    monkeypatch.setattr(carracing_render, "compiled_unavailable", lambda: "numba is not installed")
    env = make_fast_car_racing(render_mode=None)
    try:
        assert env.drawing == "pygame"
    finally:
        env.close()
    with pytest.raises(ValueError, match="compiled CarRacing drawing is not available: numba is not installed"):
        make_fast_car_racing("compiled", render_mode=None)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 2, 3])
def test_whole_episodes_to_the_cap(seed):
    s = compare_episode(seed, random_actions(seed) if seed == 3 else follow_track, 1000)
    assert s["steps"] == 1000 and s["truncated"] and s["fallback_frames"] == 0


@pytest.mark.slow
def test_a_finished_lap():
    s = compare_episode(0, follow_track, 2000)  # the follower needs ≈ 1900 steps for seed 0's track
    assert s["terminated"] and s["info"] == {"lap_finished": True} and s["fallback_frames"] == 0


def test_gymnasium_pin_matches_the_renderer():
    """The fast renderer reproduces one gymnasium's drawing: setup.cfg pins that version and it is installed."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requires = cfg["options"]["install_requires"]
    assert f"gymnasium[box2d]=={GYMNASIUM_VERSION}" in requires.split()
    assert version("gymnasium") == GYMNASIUM_VERSION


def test_pygame_is_the_one_gymnasium_draws_with():
    """gymnasium[box2d] brings pygame, vizdoom brings pygame-ce, and both install into pygame/: `make install`
    keeps pygame (their frames differ: 55k of 8.3M pixel values over one 300-step episode)."""
    import pygame

    assert not getattr(pygame, "IS_CE", False), "pygame-ce is drawing; run `make install` (README: pygame)"
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert f"pygame=={pygame.version.ver}" in cfg["options"]["install_requires"].split()
    assert pygame.version.ver == PYGAME_VERSION  # the pygame the compiled drawing reproduces


def test_renderer_selection(monkeypatch):
    monkeypatch.setenv("WM_CARRACING_RENDERER", "fast")  # restored (unset) after the test
    assert carracing_renderer() == "fast"
    select_renderer("gym")
    assert carracing_renderer() == "gym"
    with pytest.raises(ConfigError, match="--renderer must be one of fast, pygame, gym"):
        select_renderer("opengl")


@pytest.mark.slow
def test_frames_past_the_playfield_edge():
    """`wm collect` runs CarRacing on past its end (ignore_done, ref §2.1): off the playfield the background
    polygon no longer covers the window and is drawn as gymnasium draws it. 249 steps past the edge here."""
    cfg = EnvConfig(name="carracing", max_steps=400)
    g, f = CarRacingEnv(cfg, renderer="gym")._env.unwrapped, CarRacingEnv(cfg, renderer="fast")._env.unwrapped
    g.reset(seed=0)
    f.reset(seed=0)
    past = 0
    for t in range(400):
        action = drive_outward(g)
        a, ra, ta, _, _ = g.step(action)
        b, rb, tb, _, _ = f.step(action)
        assert np.array_equal(a, b) and (ra, ta) == (rb, tb), f"step {t}"
        past += int(ta)
    assert past > 200 and (a.max(axis=-1) < 10).mean() > 0.9  # far out: almost all black, as gymnasium draws it
    print(f"frames handed to pygame: {f.fallback_frames}")
