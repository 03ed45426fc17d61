"""Configs: presets resolve, validation names the field, unknown keys are rejected, JSON round trip."""

from __future__ import annotations

import pytest

from worldmodels_cli.config import ENVS, SCALES, EvolveConfig, Preset, iterate_config, preset
from worldmodels_cli.runtime.errors import ConfigError


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("scale", SCALES)
def test_presets_round_trip(env, scale):
    if (env, scale) == ("carracing", "medium"):
        with pytest.raises(ConfigError, match="medium preset is Doom's"):
            preset(env, scale)
        return
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


def test_medium_doom_is_small_doom_with_more_of_the_budget():
    """Medium keeps every size small's runs measured (V, M, C, data policy, τ) and only spends more on them."""
    small, medium = preset("doom", "small"), preset("doom", "medium")
    assert (medium.vae, medium.mdn, medium.controller, medium.encode, medium.env) == (
        small.vae, small.mdn, small.controller, small.encode, small.env)
    assert medium.collect.episodes > small.collect.episodes and medium.vae_train.epochs > small.vae_train.epochs
    assert medium.mdn_train.steps > small.mdn_train.steps and medium.evolve.generations > small.evolve.generations
    s_it, m_it = iterate_config("small"), iterate_config("medium")
    assert m_it.rounds > s_it.rounds and m_it.final_ensemble > s_it.final_ensemble
    assert m_it.final_pessimism == s_it.final_pessimism == "halt"
    # its data rounds evolve as long as small's do; only the last round gets the extra generations
    assert round(medium.evolve.generations * m_it.data_generations_fraction) == round(
        small.evolve.generations * s_it.data_generations_fraction) == 20


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


def test_every_config_field_is_an_option_written_once():
    """The stage options are made from the config dataclasses (cli.config_options): a new field is an option
    of its command without a second edit, with the field's doc as its help."""
    import dataclasses

    from worldmodels_cli.cli import OPTION_NAMES, cli
    from worldmodels_cli.config import (
        CollectConfig,
        ControllerConfig,
        DreamConfig,
        EncodeConfig,
        IterateConfig,
        MDNConfig,
        MDNTrainConfig,
        VAETrainConfig,
    )

    def options(command: str) -> dict[str, object]:
        return {p.name: p for p in cli.commands[command].params}

    for command, classes, skip in (("evolve", (EvolveConfig, ControllerConfig), ()), ("dream", (DreamConfig,), ()),
                                   ("iterate", (IterateConfig,), ("later_mdn_steps_fraction",)),
                                   ("demo", (IterateConfig,), ("later_mdn_steps_fraction",)),
                                   ("collect", (CollectConfig,), ("policy",)), ("train-vae", (VAETrainConfig,), ()),
                                   ("encode", (EncodeConfig,), ()),
                                   ("train-mdn", (MDNConfig, MDNTrainConfig), ("z_dim", "action_dim"))):
        have = options(command)
        for cls in classes:
            for fl in dataclasses.fields(cls):
                if fl.name in skip:
                    continue
                assert fl.name in have, f"wm {command} has no option for {cls.__name__}.{fl.name}"
                assert have[fl.name].help.startswith(fl.metadata["doc"])
    assert "--hidden-units" in options("evolve")["hidden"].opts and "--hidden" in options("train-mdn")["hidden"].opts
    assert options("train-vae")["num_workers"].opts == ["--workers"] and ("EvolveConfig", "in_dream") in OPTION_NAMES
    assert options("train-vae")["epochs"].type.name == "float range"  # a float field whose default is written 10


def test_evolve_options_reach_the_config(wm, monkeypatch, tmp_path, tiny_world):
    from worldmodels_cli.stages import evolve

    seen = []
    monkeypatch.setattr(evolve, "run", lambda cfg, vae, mdn, out, runtime: seen.append((cfg, runtime)) or
                        evolve.EvolveResult(out, 1, 0.0, 0, 0.0))
    r = wm("evolve", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--out", tmp_path / "c.h5", "--preset", "tiny",
           "--real", "--stall-steps", "7", "--hidden-units", "3", "--no-bias", "--features", "z", "--seed", "5",
           "--workers", "2")
    assert r.code == 0, r.err
    cfg, runtime = seen[0]
    assert (cfg.evolve.in_dream, cfg.evolve.stall_steps) == (False, 7)
    assert (cfg.controller.hidden, cfg.controller.bias, cfg.controller.features) == (3, False, "z")
    assert cfg.evolve.pop == preset("doom", "tiny").evolve.pop  # unset options keep the preset's value
    assert (runtime.seed, runtime.workers, runtime.backend) == (5, 2, "local")
    assert wm("evolve", "--vae", tiny_world.vae, "--mdn", tiny_world.mdn, "--out", tmp_path / "d.h5",
              "--hidden-units", "-1").code == 2
