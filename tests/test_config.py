"""Configs: presets resolve, validation names the field, unknown keys are rejected, JSON round trip."""

from __future__ import annotations

import pytest

from worldmodels_cli.config import ENVS, SCALES, EvolveConfig, Preset, preset
from worldmodels_cli.errors import ConfigError


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
