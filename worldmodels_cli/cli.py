"""The `wm` command: thin click commands that parse options, build a config, call a stage's `run`, and print
one summary line. Errors from the WorldModelsError family become one line on stderr and a non-zero exit."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import signal
import sys
import threading
from pathlib import Path

import click

from . import __version__
from .config import (
    DYNAMICS,
    ENVS,
    METHODS,
    SCALES,
    ActorCriticConfig,
    CollectConfig,
    ControllerConfig,
    DreamConfig,
    EncodeConfig,
    EnvConfig,
    EvolveConfig,
    IterateConfig,
    MDNConfig,
    MDNTrainConfig,
    RSSMConfig,
    RSSMTrainConfig,
    VAEConfig,
    VAETrainConfig,
    iterate_config,
)
from .runtime import TRACKERS, Runtime
from .runtime.errors import Interrupted, Terminated, WorldModelsError, clear_signals, on_signal

log = logging.getLogger("worldmodels_cli")

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process it ended


# ------------------------------------------------------------------------------------------ shared options
class Number(click.FloatRange):
    """Every float option: a finite number in its range (click's FloatRange lets NaN through any bound)."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


_PRESETS = "paper (exact), medium (Doom, hours), small (laptop), tiny (tests)"


def preset_option(default: str | None = None):
    """--preset; without a default, a stage takes the preset its input artifacts record (`lineage`)."""
    if default is not None:
        return click.option("--preset", type=click.Choice(SCALES), default=default, show_default=True,
                            help=f"hyper-parameter preset: {_PRESETS}")
    return click.option("--preset", type=click.Choice(SCALES), default=None,
                        help=f"hyper-parameter preset: {_PRESETS}; default: the one the input artifacts were made with "
                             "(paper when there are none)")


def env_option(required: bool = True):
    return click.option("--env", "env_name", type=click.Choice(ENVS), required=required, help="environment")


def flashes_option(f):
    """--screen-flashes/--no-screen-flashes: EnvConfig.doom_screen_flashes over the preset's (Doom only)."""
    return config_options(EnvConfig, skip=tuple(fl.name for fl in dataclasses.fields(EnvConfig)
                                                if fl.name != "doom_screen_flashes"))(f)


def with_flashes(cfg, flashes: bool | None):
    """The preset `cfg` with --screen-flashes applied (None: the preset's); refused for an env without them."""
    if flashes is None:
        return cfg
    if cfg.env.name != "doom":
        raise click.UsageError("--screen-flashes/--no-screen-flashes is a Doom setting")
    return cfg.replace(env=cfg.env.replace(doom_screen_flashes=flashes))


def seed_option(f):
    return click.option("--seed", type=int, default=0, show_default=True, help="run seed (all randomness derives from it)")(f)


def device_option(f):
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                        help="torch device; auto uses CUDA when present")(f)


def workers_option(f):
    return click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                        help="worker processes")(f)


def backend_options(f):
    f = click.option("--ray-address", default=None, help="Ray cluster address (with --backend ray)")(f)
    return click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="where workers run")(f)


def track_options(f):
    f = click.option("--track-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="the trackers' folder (default: runs/ beside each artifact)")(f)
    return click.option("--track", type=click.Choice(TRACKERS), default="none", show_default=True,
                        help="also send every metric record to TensorBoard event files or a W&B run "
                             "(offline unless WANDB_MODE or a login says otherwise)")(f)


def as_runtime(*names: str):
    """The command receives the options `names` (seed, device, workers, backend, ray_address, track, track_dir)
    as one `runtime` (the stages' `Runtime`), with the command line and the preset for the metrics' header
    record; the innermost decorator, right above the function."""

    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            given = {("address" if n == "ray_address" else n): kwargs.pop(n) for n in names}
            if given.get("track_dir") is not None:
                given["track_dir"] = str(given["track_dir"])
            if "track" in given:
                from .tracking import check_available

                check_available(given["track"])  # a missing package fails before any work
            obj = click.get_current_context().obj or {}
            runtime = Runtime(**given, command=tuple(obj.get("command", ())), preset=kwargs.get("preset"))
            return f(*args, runtime=runtime, **kwargs)

        return wrapper

    return deco


def _select_renderer(ctx, param, value):
    from .game.envs import select_renderer

    select_renderer(value)  # a process setting the workers inherit: it changes no frame, so no config records it


def renderer_option(f):
    from .game.carracing_render import RENDERERS

    return click.option("--renderer", type=click.Choice(list(RENDERERS)), default=None, expose_value=False,
                        callback=_select_renderer,
                        help="CarRacing's drawing: fast (default; gymnasium's frames bit for bit, compiled), pygame "
                             "(the same frames drawn by pygame, slower) or gym (gymnasium's own)")(f)


def _lock_out(ctx, param, value):
    """Hold the output's lock until the command ends (click closes the context's resources then)."""
    if value is not None:
        from .store.files import output_lock

        ctx.with_resource(output_lock(value))
    return value


def out_option(f):
    return click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, callback=_lock_out,
                        help="output artifact (.h5)")(f)


class FloatList(click.ParamType):
    """Comma-separated positive numbers ("1.5,1.15,0.8") -> a tuple of floats; "" -> (). `whole`: whole numbers
    only, as ints (layer widths: "16,32,64,128")."""

    def __init__(self, whole: bool = False) -> None:
        self.whole = whole
        self.name = "n,n,..." if whole else "tau,tau,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        if not str(value).strip():
            return ()  # "": none
        try:
            out = tuple(float(x) for x in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not all(math.isfinite(x) and x > 0 for x in out):
            self.fail(f"{value!r}: every value must be a finite number > 0", param, ctx)
        if self.whole:
            if not all(x.is_integer() for x in out):
                self.fail(f"{value!r}: every value must be a whole number", param, ctx)
            return tuple(int(x) for x in out)
        return out


# option names that are not `--<field-name>` (a flag pair; a name clearer on the command line)
OPTION_NAMES = {("EvolveConfig", "in_dream"): "--in-dream/--real", ("ControllerConfig", "hidden"): "--hidden-units",
                ("VAETrainConfig", "num_workers"): "--workers",
                ("EnvConfig", "doom_screen_flashes"): "--screen-flashes/--no-screen-flashes"}


def config_options(*classes, skip: tuple[str, ...] = (), shown=None):
    """Every field of the config dataclasses `classes` as an option named after it, with its doc as help and its
    bounds or choices as type; unset (None) unless given, so the preset's value applies (`config_values`). A field
    is written once, in config.py. `shown`: a config instance whose values the help shows as defaults."""

    def deco(f):
        for cls in reversed(classes):
            for fl in reversed(dataclasses.fields(cls)):
                if fl.name not in skip:
                    f = _field_option(cls, fl, shown)(f)
        return f

    return deco


def _field_option(cls, fl, shown):
    lo, choices, doc = fl.metadata.get("min"), fl.metadata.get("choices"), fl.metadata.get("doc", "")
    if shown is not None:
        value = getattr(shown, fl.name)
        doc += f" (default: {','.join(f'{x:g}' for x in value) if isinstance(value, tuple) else value})"
    name = OPTION_NAMES.get((cls.__name__, fl.name), "--" + fl.name.replace("_", "-"))
    declared = fl.type if isinstance(fl.type, str) else getattr(fl.type, "__name__", "")  # "float" for epochs = 10
    if declared == "bool":
        return click.option(name if "/" in name else f"{name}/--no-{name[2:]}", fl.name, default=None, help=doc)
    if choices:
        kind = click.Choice(choices)
    elif declared == "tuple":  # a list of numbers, given as "1.5,1.15,0.8"; whole where the default's are
        kind = FloatList(whole=bool(fl.default) and all(isinstance(x, int) for x in fl.default))
    elif declared == "int":
        kind = click.IntRange(min=lo)
    elif declared == "float":
        kind = Number(min=lo)
    else:
        kind = str
    return click.option(name, fl.name, type=kind, default=None, help=doc)


def config_values(cls, options: dict) -> dict:
    """The options `config_options(cls)` made, taken out of a command's keyword arguments."""
    return {fl.name: options.pop(fl.name) for fl in dataclasses.fields(cls) if fl.name in options}


# `wm --help` lists the commands in this order (click sorts them by name): the pipeline first, then the tools
COMMAND_ORDER = ("collect", "train-vae", "encode", "train-mdn", "evolve", "train-controller", "evaluate", "iterate",
                 "demo", "compare", "dream", "report", "info", "rerun", "presets", "export", "import")


class PipelineGroup(click.Group):
    def list_commands(self, ctx):
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(self.commands, key=lambda name: (rank.get(name, len(rank)), name))


@click.group(cls=PipelineGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="wm")
@click.option("-v", "--verbose", count=True, help="more log output (-vv for debug)")
def cli(verbose: int) -> None:
    """World Models (Ha & Schmidhuber 2018): collect -> train-vae -> encode -> train-mdn -> evolve -> evaluate."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    from .store.metrics import BarSafeHandler

    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=[BarSafeHandler(sys.stderr)])
    # the package's own progress lines (one per generation / log interval) show by default
    logging.getLogger("worldmodels_cli").setLevel(logging.INFO if verbose <= 1 else logging.DEBUG)


# ------------------------------------------------------------------------------------------------- info
@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(path: Path, as_json: bool) -> None:
    """Show an artifact's kind, key figures, provenance and whether it validates."""
    from .stages.info import describe

    report = describe(path)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        for key, value in report.items():
            if isinstance(value, dict):
                click.echo(f"{key}:")
                for k, v in value.items():
                    click.echo(f"  {k}: {v}")
            else:
                click.echo(f"{key}: {value}")
    if not report.get("valid", False):
        sys.exit(EXIT_ERROR)


# ------------------------------------------------------------------------------------------------ rerun
@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--out", "new_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write to this file instead (a fresh run of the same command: a reproducibility check)")
@click.option("--show", is_flag=True, help="print the command instead of running it")
def rerun(artifact: Path, new_out: Path | None, show: bool) -> None:
    """Run again the `wm` command that made ARTIFACT, in the folder it ran in (it resumes or reports it done)."""
    import os
    import shlex

    from .runtime.errors import ArtifactError
    from .store import artifacts, lineage

    made = artifacts.validate(artifact).command
    if not made.get("argv"):
        raise ArtifactError(f"{artifact}: records no wm command (made from Python, or before commands were recorded)")
    argv = list(made["argv"])
    if new_out is not None:
        argv = _with_out(argv, os.path.abspath(new_out), artifact)
    cwd = made.get("cwd") or "."
    if show:
        click.echo(f"cd {shlex.quote(cwd)} && wm {shlex.join(argv)}")
        return
    if not Path(cwd).is_dir():
        raise ArtifactError(f"{artifact}: the folder it was made in ({cwd}) is gone; see the command with --show")
    log.info("rerun in %s: wm %s", cwd, " ".join(argv))
    os.chdir(cwd)
    lineage.set_command(argv)  # what the rerun writes records the original command, not `wm rerun`
    cli.main(args=argv, prog_name="wm", standalone_mode=False)


def _with_out(argv: list[str], out: str, artifact: Path) -> list[str]:
    """`argv` with its --out value replaced."""
    for i, arg in enumerate(argv):
        if arg == "--out" and i + 1 < len(argv):
            return [*argv[:i + 1], out, *argv[i + 2:]]
        if arg.startswith("--out="):
            return [*argv[:i], f"--out={out}", *argv[i + 1:]]
    raise click.UsageError(f"{artifact}: its command (wm {argv[0]}) takes no --out")


# ----------------------------------------------------------------------------------------------- presets
@cli.command()
@env_option()
@preset_option(default="paper")
def presets(env_name: str, preset: str) -> None:
    """Print a resolved preset as JSON (with the RSSM's and the actor-critic's settings at that scale)."""
    from .config import actor_critic_config, rssm_config, rssm_train_config
    from .config import preset as get_preset

    p = get_preset(env_name, preset)
    rssm = rssm_config(env_name, preset, z_dim=p.mdn.z_dim, action_dim=p.mdn.action_dim, done_head=p.mdn.done_head,
                       reward_head=p.mdn.reward_head)  # as `wm train-mdn --dynamics rssm` fills them in
    out = {**p.to_dict(), "rssm": rssm.to_dict(),
           "rssm_train": rssm_train_config(preset).to_dict(),
           "actor_critic": actor_critic_config(env_name, preset).to_dict()}
    click.echo(json.dumps(out, indent=2, sort_keys=True))


# ------------------------------------------------------------------------------------------ collect
# (section owned by the collect stage)
@cli.command()
@env_option()
@config_options(CollectConfig, skip=("policy",))  # the policy follows from --controller
@flashes_option
@workers_option
@seed_option
@preset_option()
@out_option
@click.option("--controller", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="collect with this trained controller (V+M+C) instead of the random policy (ref §9)")
@renderer_option
@backend_options
@track_options
@as_runtime("seed", "workers", "backend", "ray_address", "track", "track_dir")
def collect(env_name: str, preset: str, out: Path, controller: Path | None, doom_screen_flashes: bool | None,
            runtime: Runtime, **options) -> None:
    """Record episodes of the random data policy (ref §2), or of a controller; rerun the same command to resume."""
    from .config import preset as get_preset
    from .stages import collect as collect_stage
    from .store.lineage import inherited_preset

    if options.get("noise") is not None and controller is None:
        raise click.UsageError("--noise needs --controller")
    cfg = with_flashes(get_preset(env_name, inherited_preset(preset, [controller] if controller else [])),
                       doom_screen_flashes)
    cfg = cfg.replace(collect=cfg.collect.replace(**config_values(CollectConfig, options),
                                                  policy="controller" if controller is not None else None))
    res = collect_stage.run(cfg, out, controller=controller, runtime=runtime)
    click.echo(res.summary_line())


# ------------------------------------------------------------------------------------------ train-vae
# (section owned by the train-vae stage)
@cli.command("train-vae")
@click.option("--rollouts", "rollouts", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="rollouts artifact(s) of one env; repeat to train on several (old + new data)")
@out_option
@preset_option()
@config_options(VAEConfig, VAETrainConfig)
@click.option("--init", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="start from this vae artifact's weights and architecture")
@device_option
@seed_option
@track_options
@as_runtime("seed", "device", "track", "track_dir")
def train_vae_cmd(rollouts: tuple[Path, ...], out: Path, preset: str, init: Path | None, runtime: Runtime,
                  **options) -> None:
    """Train V (the ConvVAE) on rollouts, streamed from disk; rerun the same command to resume."""
    from .config import preset as get_preset
    from .stages import train_vae
    from .store import frames
    from .store.lineage import inherited_preset

    cfg = get_preset(frames.rollouts_env(list(rollouts)), inherited_preset(preset, rollouts))  # env: from the data
    architecture = {k: v for k, v in config_values(VAEConfig, options).items() if v is not None}
    if architecture and init is not None:
        raise click.UsageError("--init brings its own architecture; drop " + ", ".join(
            "--" + k.replace("_", "-") for k in architecture))
    cfg = cfg.replace(vae=cfg.vae.replace(**architecture),
                      vae_train=cfg.vae_train.replace(**config_values(VAETrainConfig, options)))
    res = train_vae.run(cfg, list(rollouts), out, init=init, runtime=runtime)
    click.echo(res.line())


# ------------------------------------------------------------------------------------------ encode
# (section owned by the encode stage)
@cli.command()
@click.option("--rollouts", "rollouts", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="rollouts artifact(s) to encode, concatenated in this order")
@click.option("--vae", type=click.Path(dir_okay=False, path_type=Path), required=True, help="vae artifact (V)")
@out_option
@preset_option()
@config_options(EncodeConfig)
@device_option
@seed_option
@track_options
@as_runtime("seed", "device", "track", "track_dir")
def encode(rollouts: tuple[Path, ...], vae: Path, out: Path, preset: str, runtime: Runtime, **options) -> None:
    """Encode rollouts into a series (μ, logσ² per frame) for M; rerun the same command to resume."""
    from .config import preset as get_preset
    from .stages import encode as encode_stage
    from .store import frames
    from .store.lineage import inherited_preset

    scale = inherited_preset(preset, [vae])  # V's preset: its encode settings (mirroring) go with it
    cfg = get_preset(frames.rollouts_env(list(rollouts)), scale).encode.replace(**config_values(EncodeConfig, options))
    res = encode_stage.run(list(rollouts), vae, out, batch_size=cfg.batch_size, mirror=cfg.mirror, runtime=runtime)
    click.echo(res.line())


# ------------------------------------------------------------------------------------------ train-mdn
# (section owned by the train-mdn stage)
@cli.command("train-mdn")
@click.option("--series", "series", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="series artifact(s) from `wm encode` of one env; repeat to train on several (old + new data)")
@out_option
@preset_option()
@config_options(MDNConfig, MDNTrainConfig, skip=("z_dim", "action_dim"))  # M's sizes come from the series
@click.option("--dynamics", type=click.Choice(DYNAMICS), default="mdnrnn", show_default=True,
              help="M's dynamics: mdnrnn (the paper's MDN-RNN) or rssm (a DreamerV2/V3 RSSM over V's z, trained on "
                   "the same batches: the options below; docs/world_models_compared.md)")
@config_options(RSSMConfig, RSSMTrainConfig, skip=("z_dim", "action_dim", "done_head", "reward_head"))
@click.option("--init", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="start from this mdn artifact's weights (same architecture)")
@device_option
@seed_option
@workers_option
@backend_options
@track_options
@as_runtime("seed", "device", "workers", "backend", "ray_address", "track", "track_dir")
def train_mdn_cmd(series: tuple[Path, ...], out: Path, preset: str, init: Path | None, dynamics: str,
                  runtime: Runtime, **options) -> None:
    """Train M (the MDN-RNN, or an RSSM with --dynamics rssm) on encoded series; rerun the same command to
    resume."""
    from .config import preset as get_preset
    from .config import rssm_config, rssm_train_config
    from .runtime.errors import ConfigError
    from .stages import train_mdn
    from .store import artifacts
    from .store.lineage import inherited_preset

    if options.get("ensemble") == 1:
        raise click.UsageError("--ensemble K trains K >= 2 Ms (without it, one M is trained)")
    env = artifacts.validate(series[0], "series").env
    if not env:
        raise ConfigError(f"{series[0]}: the series artifact does not record its env")
    scale = inherited_preset(preset, series)
    cfg = get_preset(env, scale)
    cfg = cfg.replace(mdn=cfg.mdn.replace(**config_values(MDNConfig, options)),
                      mdn_train=cfg.mdn_train.replace(**config_values(MDNTrainConfig, options)))
    rssm_values, rssm_train_values = config_values(RSSMConfig, options), config_values(RSSMTrainConfig, options)
    given = [k for k, v in {**rssm_values, **rssm_train_values}.items() if v is not None]
    if dynamics != "rssm" and given:
        raise click.UsageError(f"--{given[0].replace('_', '-')} is an RSSM option: add --dynamics rssm")
    rssm = rssm_config(env, scale, **rssm_values)
    rssm_train = rssm_train_config(scale, **rssm_train_values)
    res = train_mdn.run(cfg, list(series), out, init=init, dynamics=dynamics, rssm=rssm, rssm_train=rssm_train,
                        runtime=runtime)
    val = "n/a" if res.val_nll is None else f"{res.val_nll:.4f}"
    nll = "n/a" if res.nll is None else f"{res.nll:.4f}"
    done = "" if res.done_bce is None else f", done_bce {res.done_bce:.4f}"
    what = "M (RSSM)" if dynamics == "rssm" else "M"
    ens = res.summary.get("ensemble")
    if isinstance(ens, dict):
        what = f"an ensemble of {ens['members']} Ms (disagreement threshold {ens['threshold']:.4g}), each"
        nll, val = f"{nll} (mean)", f"{val} (mean)"
    click.echo(f"{out}: {what} {res.parameters:,} parameters, {res.steps} steps, nll {nll}, val_nll {val}{done}")


# ------------------------------------------------------------------------------------------ evolve
# (section owned by the evolve stage)
@cli.command()
@click.option("--vae", type=click.Path(dir_okay=False, path_type=Path), required=True, help="vae artifact (V)")
@click.option("--mdn", type=click.Path(dir_okay=False, path_type=Path), required=True, help="mdn artifact (M)")
@out_option
@preset_option()
@config_options(EvolveConfig, ControllerConfig)
@workers_option
@seed_option
@device_option
@renderer_option
@backend_options
@track_options
@as_runtime("seed", "device", "workers", "backend", "ray_address", "track", "track_dir")
def evolve(vae: Path, mdn: Path, out: Path, preset: str, runtime: Runtime, **options) -> None:
    """Evolve C with CMA-ES in the real env or in M's dream; rerun the same command to resume."""
    from .config import preset as get_preset
    from .stages import evolve as evolve_stage
    from .store import artifacts
    from .store.lineage import inherited_preset

    env = artifacts.validate(mdn, "mdn").env
    cfg = get_preset(env, inherited_preset(preset, [vae, mdn]))
    cfg = cfg.replace(evolve=cfg.evolve.replace(**config_values(EvolveConfig, options)),
                      controller=cfg.controller.replace(**config_values(ControllerConfig, options)))
    _check_penalty(cfg.evolve)
    res = evolve_stage.run(cfg, vae, mdn, out, runtime=runtime)
    where = f"dream tau={cfg.evolve.temperature}" if cfg.evolve.in_dream else "real env"
    if cfg.evolve.pessimism != "off":
        where += f", pessimism {cfg.evolve.pessimism}"
    click.echo(f"{out}: {res.generations} generations ({where}), best evaluation {res.best_score:.1f} "
               f"at generation {res.best_generation + 1}, last population mean {res.last_mean_fitness:.1f}")


def _check_penalty(cfg) -> None:
    """--pessimism-penalty means something only with --pessimism penalty (EvolveConfig, DreamConfig)."""
    if cfg.pessimism_penalty != 1.0 and cfg.pessimism != "penalty":
        raise click.UsageError(f"--pessimism-penalty applies to --pessimism penalty (this is {cfg.pessimism})")


# ------------------------------------------------------------------------------------------ train-controller
# (section owned by the train-controller stage)
DREAM_EVAL_FIELDS = ("temperature", "max_steps", "eval_episodes", "eval_real")  # EvolveConfig's, shared with evolve


@cli.command("train-controller")
@click.option("--vae", type=click.Path(dir_okay=False, path_type=Path), required=True, help="vae artifact (V)")
@click.option("--mdn", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="mdn artifact (M: an MDN-RNN or an RSSM)")
@out_option
@preset_option()
@click.option("--method", type=click.Choice(METHODS), default="actor-critic", show_default=True,
              help="how C learns: actor-critic, by backpropagation through M's imagined rollouts (CMA-ES is "
                   "`wm evolve`)")
@config_options(ActorCriticConfig)
@config_options(EvolveConfig, skip=tuple(f.name for f in dataclasses.fields(EvolveConfig)
                                         if f.name not in DREAM_EVAL_FIELDS))
@config_options(ControllerConfig)
@workers_option
@seed_option
@device_option
@backend_options
@track_options
@as_runtime("seed", "device", "workers", "backend", "ray_address", "track", "track_dir")
def train_controller_cmd(vae: Path, mdn: Path, out: Path, preset: str, method: str, runtime: Runtime,
                         **options) -> None:
    """Train C as a latent actor-critic in M's dream (DreamerV3's, on either dynamics); rerun the same command
    to resume. `wm evaluate` scores its controller in the real game like any other."""
    from .config import actor_critic_config
    from .config import preset as get_preset
    from .stages import train_controller
    from .store import artifacts
    from .store.lineage import inherited_preset

    env = artifacts.validate(mdn, "mdn").env
    scale = inherited_preset(preset, [vae, mdn])
    cfg = get_preset(env, scale)
    ac = actor_critic_config(env, scale, **config_values(ActorCriticConfig, options))  # first: its eval_every
    cfg = cfg.replace(evolve=cfg.evolve.replace(**config_values(EvolveConfig, options)),
                      controller=cfg.controller.replace(**config_values(ControllerConfig, options)))
    res = train_controller.run(cfg, ac, vae, mdn, out, method=method, runtime=runtime)
    click.echo(res.line(cfg.evolve.temperature))


# ------------------------------------------------------------------------------------------ evaluate
# (section owned by the evaluate stage)
@cli.command()
@click.option("--controller", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="controller artifact; V and M are rebuilt from what it records")
@click.option("--policy", type=click.Choice(["agent", "random", "data"]), default="agent", show_default=True,
              help="random: the paper's baseline; data: the data-collection policy")
@env_option(required=False)
@preset_option()
@click.option("--episodes", type=click.IntRange(min=1), default=100, show_default=True, help="real episodes")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=_lock_out,
              help="eval artifact (.h5)")
@click.option("--video", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the first episode (.mp4 or .gif): real frames beside V's reconstructions")
@click.option("--which", type=click.Choice(["best", "mean"]), default="best", show_default=True,
              help="the best evaluated parameters or the current CMA mean")
@click.option("--vae", type=click.Path(dir_okay=False, path_type=Path), default=None, help="override the recorded V")
@click.option("--mdn", type=click.Path(dir_okay=False, path_type=Path), default=None, help="override the recorded M")
@workers_option
@seed_option
@renderer_option
@backend_options
@track_options
@as_runtime("seed", "workers", "backend", "ray_address", "track", "track_dir")
def evaluate(controller, policy, env_name, preset, episodes, out, video, which, vae, mdn, runtime: Runtime) -> None:
    """Run a controller (or a random baseline) for N real episodes with fixed seeds; print mean ± std."""
    from .config import preset as get_preset
    from .stages import evaluate as evaluate_stage

    cfg = get_preset(env_name, preset or "paper") if env_name else None  # a baseline's preset: its env's settings
    if policy == "agent" and controller is None and env_name:
        raise click.UsageError("--controller is required unless --policy random or data")
    res = evaluate_stage.run(out, controller=controller, policy=policy, preset=cfg, episodes=episodes, video=video,
                             vae=vae, mdn=mdn, which=which, runtime=runtime)
    click.echo(res.line() + (f"; video {res.video}" if res.video else ""))


# ------------------------------------------------------------------------------------------ dream
# (section owned by the dream stage)
@cli.command()
@click.option("--vae", type=click.Path(dir_okay=False, path_type=Path), required=True, help="vae artifact (V), to decode")
@click.option("--mdn", type=click.Path(dir_okay=False, path_type=Path), required=True, help="mdn artifact (M), the dream")
@click.option("--controller", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="controller artifact (its best parameters act); default: the random policy")
@config_options(DreamConfig, shown=DreamConfig())
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, callback=_lock_out,
              help="output animation (.gif)")
@device_option
@seed_option
@track_options
@as_runtime("seed", "device", "track", "track_dir")
def dream(vae: Path, mdn: Path, controller: Path | None, out: Path, runtime: Runtime, **options) -> None:
    """Render dream rollouts of M, decoded through V, as an animated GIF."""
    from .stages import dream as dream_stage

    cfg = DreamConfig().replace(**config_values(DreamConfig, options))
    _check_penalty(cfg)
    res = dream_stage.run(cfg, vae, mdn, out, controller_path=controller, runtime=runtime)
    click.echo(res.line())


# ------------------------------------------------------------------------------------------ iterate / demo
def iterate_options(f):
    """The IterateConfig fields as options, plus --temperature. Lower bounds and help come from the dataclass; every
    option stays unset (None) unless given, so `config.iterate_config` applies the preset's defaults (the help shows
    small Doom's, the default of both commands; CarRacing runs one round at the preset's population)."""
    f = click.option("--temperature", type=Number(min=0, min_open=True), default=None,
                     help="dream temperature tau of every round but the last (--final-temperatures)")(f)
    f = config_options(VAETrainConfig, skip=tuple(fl.name for fl in dataclasses.fields(VAETrainConfig)
                                                  if fl.name != "detail_weight"))(f)  # V's loss, as train-vae's
    f = flashes_option(f)
    f = config_options(IterateConfig, skip=("later_mdn_steps_fraction",), shown=iterate_config("small"))(f)
    return click.option("--data", type=click.Path(file_okay=False, path_type=Path), required=True,
                        help="folder of the rounds' artifacts (created)")(f)


@cli.command()
@env_option()
@preset_option(default="small")
@iterate_options
@workers_option
@seed_option
@device_option
@renderer_option
@backend_options
@track_options
@as_runtime("seed", "device", "workers", "backend", "ray_address", "track", "track_dir")
def iterate(env_name, preset, data, temperature, detail_weight, doom_screen_flashes, runtime: Runtime,
            **it_options) -> None:
    """The iterative procedure (ref §9): collect -> V -> M -> C in the dream -> evaluate, then again on the
    controller's own data; rerun the same command to continue."""
    from .stages import iterate as iterate_stage

    cfg = _iterate_preset(env_name, preset, temperature, detail_weight, doom_screen_flashes)
    it = iterate_config(preset, env_name, **it_options)
    recs = iterate_stage.run(cfg, data, it, runtime=runtime)
    click.echo("; ".join(f"round {r.round}: dream {r.dream_score:.0f}, real {r.real_mean:.0f} ± {r.real_std:.0f}"
                         for r in recs))


@cli.command()
@click.option("--env", "env_name", type=click.Choice(ENVS), default="doom", show_default=True, help="environment")
@preset_option(default="small")
@iterate_options
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder of the table and pictures (default: results/demo, results/demo-carracing)")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="worker processes")
@seed_option
@device_option
@track_options
@as_runtime("seed", "device", "workers", "track", "track_dir")
def demo(env_name, preset, data, results, temperature, detail_weight, doom_screen_flashes, runtime: Runtime,
         **it_options) -> None:
    """`make demo` / `make demo-carracing`: a small pipeline end to end, baselines, a results table and pictures."""
    from .stages import demo as demo_stage

    cfg = _iterate_preset(env_name, preset, temperature, detail_weight, doom_screen_flashes)
    it = iterate_config(preset, env_name, **it_options)
    results = results or Path("results/demo" if env_name == "doom" else "results/demo-carracing")
    _, _, table = demo_stage.run(cfg, data, results, it, scale=preset, runtime=runtime)
    click.echo(table.rstrip())


def _iterate_preset(env_name: str, preset: str, temperature: float | None, detail_weight: float | None,
                    flashes: bool | None):
    """The preset `wm iterate` and `wm demo` run, with their own options over it (None: the preset's)."""
    from .config import preset as get_preset

    cfg = with_flashes(get_preset(env_name, preset), flashes)
    return cfg.replace(evolve=cfg.evolve.replace(temperature=temperature),
                       vae_train=cfg.vae_train.replace(detail_weight=detail_weight))


class IntList(click.ParamType):
    """Comma-separated non-negative integers ("0,1,2") -> a list of ints."""

    name = "n,n,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            out = [int(x) for x in str(value).split(",")]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
        if not out or any(x < 0 for x in out) or len(set(out)) != len(out):
            self.fail(f"{value!r}: give distinct integers >= 0", param, ctx)
        return out


@cli.command()
@click.option("--env", "env_name", type=click.Choice(ENVS), default="doom", show_default=True, help="environment")
@preset_option(default="small")
@click.option("--seeds", type=IntList(), default="0,1,2", show_default=True,
              help="run seeds: one pipeline (data, V, both Ms, four Cs) per seed")
@click.option("--episodes", type=click.IntRange(min=1), default=100, show_default=True,
              help="real episodes scoring each C (the same episode seeds for every row of a seed)")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=Path("data/compare"),
              show_default=True, help="folder of the artifacts, one subfolder per seed (created)")
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=Path("results/compare"),
              show_default=True, help="folder of the table (compare.md, compare.json)")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="worker processes")
@device_option
@renderer_option
@as_runtime("device", "workers")
def compare(env_name, preset, seeds, episodes, data, results, runtime: Runtime) -> None:
    """MDN-RNN or RSSM for M, CMA-ES or an actor-critic for C: all four on the same data, dream and real
    episodes, with their wall time; rerun the same command to continue (docs/world_models_compared.md)."""
    from .config import preset as get_preset
    from .stages import compare as compare_stage

    _, table = compare_stage.run(get_preset(env_name, preset), data, results, seeds=seeds, episodes=episodes,
                                 runtime=runtime)
    click.echo(table.rstrip())


@cli.command()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=Path("data/paper"), show_default=True,
              help="the data folder `make reproduce` fills")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("results/REPORT.md"),
              show_default=True, help="the report")
def report(data: Path, out: Path) -> None:
    """Write the paper's tables with our numbers beside them (rows not yet run say so)."""
    from .stages import report as report_stage

    click.echo(f"wrote {report_stage.run(data, out)}")


# ------------------------------------------------------------------------------------------ export / import
@cli.group("export")
def export_group() -> None:
    """Our data and models for other tools: a Minari dataset, safetensors weights (docs/interop.md)."""


@export_group.command("minari")
@click.option("--rollouts", type=click.Path(dir_okay=False, path_type=Path), required=True, help="rollouts artifact")
@click.option("--dataset-id", required=True, help="Minari id [namespace/]name-v<version>, e.g. wm/doom-random-v0")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Minari's datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")
@click.option("--jpeg/--lossless", default=False, show_default=True,
              help="JPEG-encode the frames (Minari's default: smaller, lossy) or store them as they are")
def export_minari_cmd(rollouts: Path, dataset_id: str, root: Path | None, jpeg: bool) -> None:
    """Write a rollouts artifact as a Minari dataset (episodes with terminations and truncations)."""
    from .interop import export_minari

    click.echo(export_minari.run(rollouts, dataset_id, root=root, jpeg=jpeg).line())


@export_group.command("agent")
@click.option("--controller", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="controller artifact; its V and M come from what it records (or --vae/--mdn)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="new folder: vae.h5, mdn.h5, controller.h5")
@click.option("--float16", is_flag=True, help="store V's and M's weights as float16 (half the size)")
@click.option("--vae", type=click.Path(dir_okay=False, path_type=Path), default=None, help="override the recorded V")
@click.option("--mdn", type=click.Path(dir_okay=False, path_type=Path), default=None, help="override the recorded M")
@click.option("--preset", type=click.Choice(SCALES), default=None,
              help="the preset to record where the artifacts record none (made before presets were recorded)")
def export_agent_cmd(controller: Path, out: Path, float16: bool, vae: Path | None, mdn: Path | None,
                     preset: str | None) -> None:
    """A trained agent as a folder that runs anywhere: V and M weights only, C pointing at them."""
    from .interop import export_agent

    click.echo(export_agent.run(controller, out, float16=float16, vae=vae, mdn=mdn, preset=preset).line())


@export_group.command("safetensors")
@click.option("--vae", type=click.Path(dir_okay=False, path_type=Path), default=None, help="vae artifact (V)")
@click.option("--mdn", type=click.Path(dir_okay=False, path_type=Path), default=None, help="mdn artifact (M)")
@click.option("--controller", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="controller artifact (C)")
@click.option("--which", type=click.Choice(["best", "mean"]), default="best", show_default=True,
              help="C's best evaluated parameters or the current CMA mean")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, callback=_lock_out,
              help="output file (.safetensors)")
def export_safetensors_cmd(vae: Path | None, mdn: Path | None, controller: Path | None, which: str, out: Path) -> None:
    """Write the weights of V, M and/or C, with their configs, to one safetensors file."""
    from .interop import export_safetensors

    click.echo(export_safetensors.run(out, vae=vae, mdn=mdn, controller=controller, which=which).line())


@cli.group("import")
def import_group() -> None:
    """Other tools' data as our artifacts: a Minari dataset as rollouts (docs/interop.md)."""


@import_group.command("minari")
@click.option("--dataset-id", default=None, help="a Minari dataset id, found under --root (never downloaded)")
@click.option("--path", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="or the dataset's folder (the one holding data/)")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Minari's datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")
@click.option("--env", "env_name", type=click.Choice(ENVS), default=None,
              help="our env the data is for (default: from the dataset's metadata or gymnasium env spec)")
@out_option
def import_minari_cmd(dataset_id: str | None, path: Path | None, root: Path | None, env_name: str | None,
                      out: Path) -> None:
    """Write a Minari dataset of RGB image observations as a rollouts artifact (frames resized to 64x64)."""
    from .interop import import_minari

    click.echo(import_minari.run(out, dataset_id=dataset_id, path=path, root=root, env=env_name).line())


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors, 130 on Ctrl-C, 143 on SIGTERM."""
    from .store import lineage

    previous = _handle_signals()
    lineage.set_command(sys.argv[1:] if argv is None else list(argv))  # stamped on every artifact written
    try:
        _main(argv)
    finally:
        lineage.set_command(None)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = sys.__unraisablehook__
        clear_signals()


def _handle_signals() -> dict:
    """SIGINT and SIGTERM interrupt the run the same way (a SIGTERM used to kill the driver outright)."""
    clear_signals()
    sys.unraisablehook = _quiet_interrupts
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}


def _quiet_interrupts(unraisable) -> None:
    """A Ctrl-C that lands in a weakref callback or __del__ is 'unraisable': Python would print its traceback
    above our one line. It is not lost: `raise_if_signalled` raises it again in the run's loop."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def _main(argv: list[str] | None) -> None:
    try:
        args = sys.argv[1:] if argv is None else list(argv)
        cli.main(args=args, prog_name="wm", standalone_mode=False, obj={"command": ["wm", *args]})
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort as exc:  # click turns a KeyboardInterrupt (and so a Terminated) into Abort
        if isinstance(exc.__cause__ or exc.__context__, Terminated):
            click.echo("terminated; rerun the same command to resume", err=True)
            sys.exit(EXIT_TERMINATED)
        click.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.UsageError as exc:
        hint = f" (see wm {exc.ctx.command_path.split(' ', 1)[-1]} --help)" if exc.ctx and exc.ctx.command_path != "wm" else " (see wm --help)"
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(EXIT_ERROR)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(EXIT_ERROR)
    except Terminated:
        click.echo("terminated; the state on disk is resumable: rerun the same command", err=True)
        sys.exit(EXIT_TERMINATED)
    except KeyboardInterrupt:
        click.echo("interrupted; the state on disk is resumable: rerun the same command", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Interrupted as exc:
        click.echo(f"interrupted: {exc}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except WorldModelsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except OSError as exc:  # disk full, permission denied: still one line, never a traceback
        click.echo(f"error: {exc.strerror or exc} ({exc.filename or ''})".rstrip(" ()"), err=True)
        sys.exit(EXIT_ERROR)
