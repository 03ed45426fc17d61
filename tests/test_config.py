"""Configs: presets resolve, validation names the field, unknown keys are rejected, JSON round trip."""

from __future__ import annotations

import pytest

from worldmodels_cli.config import ENVS, SCALES, EvolveConfig, Preset, preset
from worldmodels_cli.runtime.errors import ConfigError


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("scale", SCALES)
def test_presets_round_trip(env, scale):
    p = preset(env, scale)
    assert p.env.name == env
    assert Preset.from_dict(p.to_dict()) == p


def test_paper_values():
    car, doom = preset("carracing", "paper"), preset("doom", "paper")
    assert (car.vae.z_dim, car.mdn.hidden, doom.vae.z_dim, doom.mdn.hidden) == (32, 256, 64, 512)
    assert doom.evolve.temperature == 1.15 and doom.evolve.in_dream and not car.evolve.in_dream
    assert (doom.evolve.pop, doom.evolve.trials, doom.evolve.sigma0, doom.evolve.eval_every) == (64, 16, 0.1, 25)
    assert doom.env.doom_skill == 4 and doom.env.max_steps == 2100 and doom.collect.min_length == 100
    assert car.collect.ignore_done and car.env.max_steps == 1000


def test_validation_names_field_and_value():
    with pytest.raises(ConfigError, match=r"EvolveConfig.pop must be >= 2, got 1"):
        EvolveConfig(pop=1)
    with pytest.raises(ConfigError, match="unknown keys"):
        EvolveConfig.from_dict({"popsize": 3})
    with pytest.raises(ConfigError, match="unknown env"):
        preset("pong", "tiny")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("doom", "huge")


def test_frozen():
    with pytest.raises(AttributeError):
        preset("doom", "tiny").evolve.pop = 3  # type: ignore[misc]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_float_field_must_be_finite(value):
    """NaN passes every `min` comparison: one rule for every float field, whatever its bounds."""
    with pytest.raises(ConfigError, match="EvolveConfig.temperature must be a finite number"):
        EvolveConfig(temperature=value)


@pytest.mark.parametrize("args", [
    "evolve --vae v.h5 --mdn m.h5 --out c.h5 --temperature nan",
    "evolve --vae v.h5 --mdn m.h5 --out c.h5 --temperature inf",
    "evolve --vae v.h5 --mdn m.h5 --out c.h5 --sigma0 nan",
    "evolve --vae v.h5 --mdn m.h5 --out c.h5 --generations 0",
    "dream --vae v.h5 --mdn m.h5 --out d.gif --temperature nan",
    "collect --env doom --out r.h5 --controller c.h5 --noise inf",
    "train-vae --rollouts r.h5 --out v.h5 --epochs nan",
    "iterate --env doom --data d --temperature nan",
])
def test_nonsense_numbers_are_usage_errors(wm, tmp_path, args):
    res = wm(*args.split())
    assert res.code == 2 and res.err.startswith("error: Invalid value") and res.err.count("\n") == 1, res.err
