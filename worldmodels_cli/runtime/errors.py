"""One error family for everything a user can cause; the CLI turns it into a one-line message."""

import signal


class WorldModelsError(Exception):
    """Base class: bad input, bad artifact, interrupted run. Message is shown to the user as is."""


class ArtifactError(WorldModelsError):
    """An artifact is missing, corrupt, of the wrong kind, or from a newer schema."""


class ConfigError(WorldModelsError):
    """A configuration value or command-line option is invalid."""


class TrainingDiverged(WorldModelsError):
    """A loss became NaN/inf; the last good checkpoint was kept."""


class WorkerError(WorldModelsError):
    """A worker process or environment failed; names the task, seed and cause."""


class Interrupted(WorldModelsError):
    """Ctrl-C: the state on disk is resumable by rerunning the same command."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (each stage's Ctrl-C path checkpoints and cleans up), then exit 143."""


_signalled: list[int] = []


def on_signal(signum: int, frame) -> None:
    """The CLI's SIGINT and SIGTERM handler: remember the signal, then interrupt the main thread."""
    _signalled.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def raise_if_signalled() -> None:
    """Raise again a SIGINT or SIGTERM whose exception Python swallowed: one that lands inside a weakref callback
    or a __del__ is printed as "Exception ignored" and lost, and the run would go on. Step loops call this."""
    if _signalled:
        raise Terminated() if _signalled[-1] == signal.SIGTERM else KeyboardInterrupt()


def clear_signals() -> None:
    _signalled.clear()
