"""The `wm` command: thin click commands that parse options, build a config, call a stage's `run`, and print
one summary line. Errors from the WorldModelsError family become one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .config import ENVS, SCALES
from .errors import WorldModelsError

log = logging.getLogger("worldmodels_cli")

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


# ------------------------------------------------------------------------------------------ shared options
def preset_option(default: str = "paper"):
    return click.option("--preset", type=click.Choice(SCALES), default=default, show_default=True,
                        help="hyper-parameter preset: paper (exact), small (laptop), tiny (tests)")


def env_option(required: bool = True):
    return click.option("--env", "env_name", type=click.Choice(ENVS), required=required, help="environment")


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


def out_option(f):
    return click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
                        help="output artifact (.h5)")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="wm")
@click.option("-v", "--verbose", count=True, help="more log output (-vv for debug)")
def cli(verbose: int) -> None:
    """World Models (Ha & Schmidhuber 2018): collect -> train-vae -> encode -> train-mdn -> evolve -> evaluate."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("worldmodels_cli").setLevel(max(logging.INFO, level) if verbose == 0 else level)


# ------------------------------------------------------------------------------------------------- info
@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(path: Path, as_json: bool) -> None:
    """Show an artifact's kind, key figures, provenance and whether it validates."""
    from .info import describe

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


# ----------------------------------------------------------------------------------------------- presets
@cli.command()
@env_option()
@preset_option()
def presets(env_name: str, preset: str) -> None:
    """Print a resolved preset as JSON."""
    from .config import preset as get_preset

    click.echo(json.dumps(get_preset(env_name, preset).to_dict(), indent=2, sort_keys=True))


# ------------------------------------------------------------------------------------------ collect
# (section owned by the collect stage)


# ------------------------------------------------------------------------------------------ train-vae
# (section owned by the train-vae stage)


# ------------------------------------------------------------------------------------------ encode
# (section owned by the encode stage)


# ------------------------------------------------------------------------------------------ train-mdn
# (section owned by the train-mdn stage)


# ------------------------------------------------------------------------------------------ evolve
# (section owned by the evolve stage)


# ------------------------------------------------------------------------------------------ evaluate
# (section owned by the evaluate stage)


# ------------------------------------------------------------------------------------------ dream
# (section owned by the dream stage)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors, 130 on Ctrl-C."""
    try:
        cli.main(args=argv, prog_name="wm", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.UsageError as exc:
        hint = f" (see wm {exc.ctx.command_path.split(' ', 1)[-1]} --help)" if exc.ctx and exc.ctx.command_path != "wm" else " (see wm --help)"
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(EXIT_ERROR)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        click.echo("interrupted; the state on disk is resumable: rerun the same command", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except WorldModelsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except OSError as exc:  # disk full, permission denied: still one line, never a traceback
        click.echo(f"error: {exc.strerror or exc} ({exc.filename or ''})".rstrip(" ()"), err=True)
        sys.exit(EXIT_ERROR)
