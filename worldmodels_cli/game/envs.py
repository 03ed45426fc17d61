"""Environments behind one interface, used by collection, real-env evolution and evaluation.

``make_env(cfg)`` returns an :class:`Env`: ``reset(seed) -> frame``, ``step(action) -> Step``, ``close()``, and
the attributes ``name``, ``action_dim``, ``action_low``/``action_high``. Frames are uint8 (64, 64, 3). The action
given to ``step`` is always the continuous one that M and C see (CarRacing: steer, gas, brake; Doom: one value in
[-1, 1]); ``Step.env_action`` is what the game received (Doom: 0 none, 1 left, 2 right; CarRacing: -1).
Everything is headless: no display, no xvfb.

Real envs (ref §A, §B, §1):

- ``carracing``: gymnasium ``CarRacing-v3`` without rendering to a window (its 96x96 state is drawn off-screen),
  cropped to the top 84 rows, PIL-bilinear resized to 64x64. Capped at ``cfg.max_steps`` (a truncation). Drawn
  by ``carracing_render`` (the same frames, bit for bit, ≈ 6x faster compiled, ≈ 2.3x with ``--renderer pygame``
  or without numba) unless ``--renderer gym`` chose gymnasium's own drawing; the choice changes no result, so it
  is a process setting (``select_renderer``), not part of any config.
- ``doom``: a vizdoom ``DoomGame`` configured here from the bundled take_cover map to match 2018: skill
  ``cfg.doom_skill``, HUD off, start tic ``cfg.doom_start_time``, living reward 1 per tic, one tic per step,
  buttons MOVE_LEFT / MOVE_RIGHT from one continuous action thresholded at ±``cfg.action_threshold``, the bottom
  sixth of the frame cropped away. vizdoom gets *no* timeout: it would flag a timeout as both terminated and
  truncated, so the ``cfg.max_steps`` cap is counted here and reported as truncated only (ref §A).

Fake envs (``cfg.fake=True``): same spaces and frame shape, pure numpy (neither Box2D nor vizdoom), > 10k steps/s,
deterministic given the seed, drawn with a few flat-coloured rectangles so a tiny VAE encodes them, and learnable
by a linear controller on the latent features:

- fake Doom: a green player block moves along the floor (3 px per step left/right, same thresholds as the real
  env); an orange fireball falls from the top at a random column and lands after ``FALL_STEPS`` steps; if it
  overlaps the player when it lands the episode terminates (a death), else a new one starts falling. Reward +1
  per step. A uniform random policy survives ≈40 steps; stepping away from the fireball and towards the side with
  more room, a linear rule in the positions visible in the frame (tests/test_envs.py), survives to the cap.
- fake CarRacing: a grey road winds down a green field (each row shows the road that many steps ahead); a red car
  near the bottom steers sideways (``3·steer`` px per step), gas and brake change its speed. Reward
  −0.1 + 2·speed per step while on the road, −0.1 off it, and −100 with termination when the car is more than
  ``LOST_PX`` px from the road centre (CarRacing's "left the playfield"); like CarRacing it can be stepped on
  after that. Steering toward the road centre (linear in the frame) scores well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
from typing import NamedTuple, Protocol

import numpy as np
from PIL import Image

from ..config import EnvConfig
from ..runtime.errors import ConfigError

log = logging.getLogger(__name__)

FRAME_SHAPE = (64, 64, 3)
NO_ENV_ACTION = -1
DOOM_NONE, DOOM_LEFT, DOOM_RIGHT = 0, 1, 2


class Step(NamedTuple):
    """What one env step returns. `terminated`: the game ended (Doom: death); `truncated`: the step cap."""

    obs: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    env_action: int


class Env(Protocol):
    name: str
    action_dim: int
    action_low: np.ndarray
    action_high: np.ndarray

    def reset(self, seed: int) -> np.ndarray: ...

    def step(self, action: np.ndarray) -> Step: ...

    def close(self) -> None: ...


def make_env(cfg: EnvConfig) -> Env:
    """The real or fake env that `cfg` names."""
    if cfg.name == "carracing":
        return FakeCarRacingEnv(cfg) if cfg.fake else CarRacingEnv(cfg)
    if cfg.name == "doom":
        return FakeDoomEnv(cfg) if cfg.fake else DoomEnv(cfg)
    raise ConfigError(f"unknown env {cfg.name!r}")


def check_env_config(cfg: EnvConfig) -> None:
    """Fail early, in one line, on settings only the env library can check (a Doom screen resolution)."""
    if cfg.name == "doom" and not cfg.fake:
        _doom_resolution(cfg.doom_resolution)


def resize64(frame: np.ndarray) -> np.ndarray:
    """PIL bilinear resize to 64x64, no aspect ratio kept: the original's imresize (ref §1.1, §1.2)."""
    return np.asarray(Image.fromarray(frame).resize((64, 64), Image.BILINEAR), dtype=np.uint8)


def doom_button(action: float, threshold: float) -> int:
    """ref §5.2: a < -t -> MOVE_LEFT, a > t -> MOVE_RIGHT, otherwise no button."""
    if action < -threshold:
        return DOOM_LEFT
    if action > threshold:
        return DOOM_RIGHT
    return DOOM_NONE


def mirror_actions(env: str, actions: np.ndarray, env_actions: np.ndarray | None = None):
    """The actions of an episode seen in a left-right mirror: the steering (CarRacing) or the one Doom action is
    negated and Doom's LEFT and RIGHT buttons swap. Returns new arrays (actions, env_actions)."""
    actions = np.array(actions, copy=True)
    if env == "doom":
        actions = -actions
    else:
        actions[:, 0] = -actions[:, 0]  # steer; gas and brake are symmetric
    if env_actions is not None:
        swapped = np.array(env_actions, copy=True)
        swapped[env_actions == DOOM_LEFT], swapped[env_actions == DOOM_RIGHT] = DOOM_RIGHT, DOOM_LEFT
        env_actions = swapped
    return actions, env_actions


def _doom_scalar(action: np.ndarray | float) -> float:
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.size != 1:
        raise ValueError(f"Doom takes one continuous action, got shape {np.shape(action)}")
    return float(a[0])


# ------------------------------------------------------------------------------------------------ CarRacing
RENDERER_VAR = "WM_CARRACING_RENDERER"  # inherited by spawned workers; RayExecutor forwards it to its actors


def select_renderer(name: str | None) -> None:
    """Choose CarRacing's drawing for this process and the workers it starts: 'fast' (default), 'pygame' (the fast
    renderer's pygame drawing) or 'gym'."""
    from .carracing_render import RENDERERS

    if name is None:
        return
    if name not in RENDERERS:
        raise ConfigError(f"--renderer must be one of {', '.join(RENDERERS)}, got {name!r}")
    os.environ[RENDERER_VAR] = name


def carracing_renderer() -> str:
    """The renderer CarRacing envs of this process use: the selected one, or gymnasium's where the fast one was
    not checked against the installed gymnasium (a warning says so)."""
    from importlib.metadata import version

    from .carracing_render import GYMNASIUM_VERSION, RENDERERS

    name = os.environ.get(RENDERER_VAR, "fast")
    if name not in RENDERERS:
        raise ConfigError(f"{RENDERER_VAR}={name!r}: choose one of {', '.join(RENDERERS)}")
    if name != "gym" and version("gymnasium") != GYMNASIUM_VERSION:
        log.warning("gymnasium %s is installed; the fast CarRacing renderer is exact for %s only: drawing with "
                    "gymnasium's own", version("gymnasium"), GYMNASIUM_VERSION)
        return "gym"
    return name


class CarRacingEnv:
    """gymnasium CarRacing-v3, frames cropped to the top 84 rows and resized to 64x64 (ref §1.1)."""

    name = "carracing"
    action_dim = 3
    action_low = np.array([-1.0, 0.0, 0.0], dtype=np.float32)
    action_high = np.array([1.0, 1.0, 1.0], dtype=np.float32)

    def __init__(self, cfg: EnvConfig, renderer: str | None = None) -> None:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame draws off-screen; never opens a window
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import gymnasium as gym
        from gymnasium.wrappers import OrderEnforcing, TimeLimit

        from .carracing_render import make_fast_car_racing

        self.cfg = cfg
        self.renderer = renderer or carracing_renderer()
        # render_mode None: no window; the 96x96 observation is still drawn (state_pixels) by every step.
        if self.renderer == "gym":
            self._env = gym.make("CarRacing-v3", render_mode=None, max_episode_steps=cfg.max_steps,
                                 disable_env_checker=True)
        else:  # the wrappers gym.make puts around CarRacing-v3 (its env checker disabled, as above)
            drawing = "pygame" if self.renderer == "pygame" else None  # fast: compiled where numba is installed
            self._env = TimeLimit(OrderEnforcing(make_fast_car_racing(drawing, render_mode=None)), cfg.max_steps)
        self._t = 0

    @staticmethod
    def process(state: np.ndarray) -> np.ndarray:
        return resize64(state[:84])  # ref §1.1: drop the 12-row indicator bar at the bottom

    def reset(self, seed: int) -> np.ndarray:
        self._t = 0
        state, _ = self._env.reset(seed=int(seed))
        return self.process(state)

    def step(self, action: np.ndarray) -> Step:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(3), self.action_low, self.action_high)
        state, reward, terminated, truncated, _ = self._env.step(a)
        self._t += 1
        truncated = bool(truncated) or self._t >= self.cfg.max_steps
        return Step(self.process(state), float(reward), bool(terminated), truncated, NO_ENV_ACTION)

    def close(self) -> None:
        self._env.close()


# ----------------------------------------------------------------------------------------------------- Doom
def _doom_resolution(text: str):
    import vizdoom as vzd

    name = "RES_" + text.upper()
    if not hasattr(vzd.ScreenResolution, name):
        choices = sorted(r[4:].lower() for r in dir(vzd.ScreenResolution) if r.startswith("RES_"))
        raise ConfigError(f"EnvConfig.doom_resolution {text!r} is not a vizdoom resolution; choose one of {', '.join(choices)}")
    return getattr(vzd.ScreenResolution, name)


class DoomEnv:
    """vizdoom take_cover configured as the 2018 env (ref §A, §B, §10 #11)."""

    name = "doom"
    action_dim = 1
    action_low = np.array([-1.0], dtype=np.float32)
    action_high = np.array([1.0], dtype=np.float32)

    def __init__(self, cfg: EnvConfig, *, labels: bool = False) -> None:
        """`labels`: also keep the engine's object labels of each screen (`labels()`; probes only: it costs time)."""
        import vizdoom as vzd

        self.cfg = cfg
        game = vzd.DoomGame()
        game.set_labels_buffer_enabled(labels)
        game.set_doom_scenario_path(os.path.join(vzd.scenarios_path, "take_cover.wad"))
        game.set_doom_map("map01")
        # ref §B: skill 4 is the 2018 env's effective difficulty (random policy ~210 steps, as the paper).
        game.set_doom_skill(cfg.doom_skill)
        game.set_screen_resolution(_doom_resolution(cfg.doom_resolution))
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_render_hud(False)
        game.set_render_screen_flashes(cfg.doom_screen_flashes)  # ref §B: the 2018 engine had no switch: on
        game.set_episode_start_time(cfg.doom_start_time)
        game.set_episode_timeout(0)  # the cap is counted here: vizdoom flags a timeout as a death too (ref §A)
        game.set_living_reward(1)
        game.set_available_buttons([vzd.Button.MOVE_LEFT, vzd.Button.MOVE_RIGHT])
        game.set_available_game_variables([vzd.GameVariable.HEALTH])
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_mode(vzd.Mode.PLAYER)
        # vizdoom writes its ini file (key bindings) on close; keep it out of the working directory
        self._ini = os.path.join(tempfile.gettempdir(), f"worldmodels_cli-vizdoom-{os.getpid()}.ini")
        game.set_doom_config_path(self._ini)
        # the engine is a child process and inherits the signal mask: with SIGINT blocked, a Ctrl-C to the process
        # group reaches only our process, which then closes the game, instead of killing the engine under it
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        before = _children()
        try:
            game.init()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self._watch = _EngineWatch(sorted(_children() - before))
        self._game = game
        self._buttons = {DOOM_NONE: [0, 0], DOOM_LEFT: [1, 0], DOOM_RIGHT: [0, 1]}
        self._t = 0
        self._last = np.zeros(FRAME_SHAPE, dtype=np.uint8)

    def _frame(self) -> np.ndarray:
        return resize64(_top_rows(self._game.get_state().screen_buffer))  # (H, W, 3) RGB

    def labels(self) -> tuple[np.ndarray, dict[int, str]]:
        """The current screen's object labels, cropped as `_frame` crops (H', W) uint8, and {label value: object
        name} (e.g. 'DoomImpBall', a fireball). Needs `labels=True`; only before the episode ended."""
        state = self._game.get_state()
        if state is None or state.labels_buffer is None:
            raise RuntimeError("DoomEnv.labels needs labels=True and a running episode")
        return _top_rows(state.labels_buffer), {lb.value: lb.object_name for lb in state.labels}

    def reset(self, seed: int) -> np.ndarray:
        self._game.set_seed(int(seed))
        self._game.new_episode()
        self._t = 0
        self._last = self._frame()
        return self._last

    def step(self, action: np.ndarray | float) -> Step:
        if self._game.is_episode_finished():
            raise RuntimeError("DoomEnv.step after the episode ended; call reset")
        button = doom_button(_doom_scalar(action), self.cfg.action_threshold)
        reward = self._game.make_action(self._buttons[button], 1)  # one tic per step (ref §11)
        self._t += 1
        dead = self._game.is_episode_finished()  # no engine timeout is set, so this is a death
        if not dead:
            self._last = self._frame()
        truncated = not dead and self._t >= self.cfg.max_steps
        # after a death there is no new screen; the last one is returned (collection never stores it)
        return Step(self._last, float(reward), bool(dead), truncated, button)

    def close(self) -> None:
        self._game.close()
        self._watch.stand_down()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._ini)


def _top_rows(screen: np.ndarray) -> np.ndarray:
    """ref §1.2: the original kept the top 400 of 480 rows (the rest is the floor under the player)."""
    return np.ascontiguousarray(screen[:round(screen.shape[0] * 5 / 6)])


def _children() -> set[int]:
    """This process's child processes, whichever thread started them (Linux: /proc; elsewhere none are known)."""
    me, found = os.getpid(), set()
    try:
        tasks = os.listdir(f"/proc/{me}/task")
    except OSError:
        return found
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{me}/task/{tid}/children") as fh:
            found.update(int(pid) for pid in fh.read().split())
    return found


class _EngineWatch:
    """A vizdoom engine outlives a process killed with SIGKILL (it ignores SIGTERM too): a tiny `sh`, in a session
    of its own, holds the read end of a pipe whose write end only we hold, and kills the engines when the pipe
    closes without a word, which is what our death looks like. `stand_down` (after the game closed them) tells it
    to exit without killing, so a reused pid is never hit."""

    def __init__(self, pids: list[int]) -> None:
        self._pipe = None
        if not pids:
            return
        import subprocess

        r, w = os.pipe()
        try:
            self._proc = subprocess.Popen(["sh", "-c", f'read x; [ "$x" = stop ] || kill -9 {" ".join(map(str, pids))}'],
                             stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        except OSError:  # no sh: the pool's process groups still cover workers
            os.close(w)
            return
        finally:
            os.close(r)
        self._pipe = os.fdopen(w, "w")  # not inheritable (PEP 446): no other child keeps the pipe open

    def stand_down(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.write("stop\n")
                self._pipe.close()
            self._pipe = None
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=5)  # reaped, not left a zombie


# ----------------------------------------------------------------------------------------------- fake envs
_SKY = np.array([96, 88, 80], dtype=np.uint8)
_FLOOR = np.array([56, 52, 48], dtype=np.uint8)
_PLAYER = np.array([40, 200, 60], dtype=np.uint8)
_FIREBALL = np.array([250, 120, 20], dtype=np.uint8)
_GRASS = np.array([102, 204, 102], dtype=np.uint8)
_ROAD = np.array([102, 102, 102], dtype=np.uint8)
_CAR = np.array([204, 0, 0], dtype=np.uint8)


class FakeDoomEnv:
    """A fireball falls; step aside or die. Same spaces, thresholds and cap semantics as DoomEnv."""

    name = "doom"
    action_dim = 1
    action_low = DoomEnv.action_low
    action_high = DoomEnv.action_high

    PLAYER_W, FIREBALL_W, SPEED = 8, 10, 3
    PLAYER_ROW, FALL_STEPS, FLOOR_ROW = 52, 12, 44

    def __init__(self, cfg: EnvConfig) -> None:
        self.cfg = cfg
        self._rng = np.random.default_rng(0)
        self._background = np.empty(FRAME_SHAPE, dtype=np.uint8)
        self._background[:] = _SKY
        self._background[self.FLOOR_ROW:] = _FLOOR
        self._t = 0
        self._x = 0
        self._ball_x = 0
        self._ball_t = 0

    def _new_fireball(self) -> None:
        self._ball_x = int(self._rng.integers(0, 64 - self.FIREBALL_W + 1))
        self._ball_t = 0

    def _frame(self) -> np.ndarray:
        frame = self._background.copy()
        row = self._ball_t * self.PLAYER_ROW // self.FALL_STEPS
        frame[row:row + 8, self._ball_x:self._ball_x + self.FIREBALL_W] = _FIREBALL
        frame[self.PLAYER_ROW:self.PLAYER_ROW + 8, self._x:self._x + self.PLAYER_W] = _PLAYER
        return frame

    def reset(self, seed: int) -> np.ndarray:
        self._rng = np.random.default_rng(int(seed))
        self._t = 0
        self._x = int(self._rng.integers(0, 64 - self.PLAYER_W + 1))
        self._new_fireball()
        return self._frame()

    def step(self, action: np.ndarray | float) -> Step:
        button = doom_button(_doom_scalar(action), self.cfg.action_threshold)
        move = {DOOM_NONE: 0, DOOM_LEFT: -self.SPEED, DOOM_RIGHT: self.SPEED}[button]
        self._x = int(np.clip(self._x + move, 0, 64 - self.PLAYER_W))
        self._t += 1
        self._ball_t += 1
        dead = False
        if self._ball_t >= self.FALL_STEPS:  # landed: a hit if the blocks overlap
            dead = self._x < self._ball_x + self.FIREBALL_W and self._ball_x < self._x + self.PLAYER_W
            self._new_fireball()
        truncated = not dead and self._t >= self.cfg.max_steps
        return Step(self._frame(), 1.0, dead, truncated, button)

    def close(self) -> None:
        pass


class FakeCarRacingEnv:
    """Keep a car on a winding road. Same spaces and cap semantics as CarRacingEnv."""

    name = "carracing"
    action_dim = 3
    action_low = CarRacingEnv.action_low
    action_high = CarRacingEnv.action_high

    ROAD_HALF_W, CAR_ROW, CAR_W, LOST_PX = 10, 50, 4, 30

    def __init__(self, cfg: EnvConfig) -> None:
        self.cfg = cfg
        self._rng = np.random.default_rng(0)
        self._cols = np.arange(64, dtype=np.float32)
        # row y shows the road (CAR_ROW - y) steps ahead; rows below the car show the current position
        self._ahead = np.clip(self.CAR_ROW - np.arange(64), 0, None)
        self._road = np.zeros(self.CAR_ROW + 1, dtype=np.float32)
        self._slope = 0.0
        self._car = 32.0
        self._speed = 0.0
        self._t = 0

    def _next_centre(self, last: float) -> float:
        self._slope = float(np.clip(self._slope + self._rng.normal(0.0, 0.15), -1.0, 1.0))
        centre = last + self._slope
        if not 14.0 <= centre <= 50.0:  # bounce off the field's edges
            self._slope = -self._slope
            centre = float(np.clip(centre, 14.0, 50.0))
        return centre

    def _frame(self) -> np.ndarray:
        frame = np.empty(FRAME_SHAPE, dtype=np.uint8)
        frame[:] = _GRASS
        centres = self._road[self._ahead]  # (64,) road centre per row
        frame[np.abs(self._cols[None, :] - centres[:, None]) < self.ROAD_HALF_W] = _ROAD
        x = int(round(np.clip(self._car, 0, 63)))
        frame[self.CAR_ROW:self.CAR_ROW + 6, max(0, x - self.CAR_W // 2):x + self.CAR_W // 2] = _CAR
        return frame

    def reset(self, seed: int) -> np.ndarray:
        self._rng = np.random.default_rng(int(seed))
        self._t = 0
        self._slope = 0.0
        self._road[0] = float(self._rng.uniform(24.0, 40.0))
        for i in range(1, len(self._road)):
            self._road[i] = self._next_centre(float(self._road[i - 1]))
        self._car = float(self._road[0])
        self._speed = 0.0
        return self._frame()

    def step(self, action: np.ndarray) -> Step:
        steer, gas, brake = np.clip(np.asarray(action, dtype=np.float64).reshape(3), self.action_low, self.action_high)
        self._speed = float(np.clip(self._speed + 0.1 * gas - 0.2 * brake - 0.02, 0.0, 1.0))
        self._car = float(np.clip(self._car + 3.0 * steer, -10.0, 74.0))
        self._road[:-1] = self._road[1:]
        self._road[-1] = self._next_centre(float(self._road[-2]))
        self._t += 1
        off = abs(self._car - float(self._road[0]))
        terminated = off > self.LOST_PX
        if terminated:
            reward = -100.0
        else:
            reward = -0.1 + (2.0 * self._speed if off < self.ROAD_HALF_W else 0.0)
        truncated = self._t >= self.cfg.max_steps
        return Step(self._frame(), reward, terminated, truncated, NO_ENV_ACTION)

    def close(self) -> None:
        pass
