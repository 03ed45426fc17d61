"""What runs the work: errors, seeds, devices, and the executor (local processes or Ray).

`Runtime` is how a stage runs, apart from what it computes (its config): every stage's `run()` takes one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("local", "ray")
TRACKERS = ("none", "tensorboard", "wandb")


@dataclass(frozen=True)
class Runtime:
    """The run seed (everything random derives from it), the torch device, the worker processes of real-env
    stages and where they run (local processes, or a Ray cluster at `address`; None: a local Ray), and where the
    metric records also go (`tracking.py`). No result depends on the tracking fields."""

    seed: int = 0
    device: str = "auto"
    workers: int = 1
    backend: str = "local"
    address: str | None = None
    track: str = "none"  # none, tensorboard or wandb: also send every metric record there
    track_dir: str | None = None  # the trackers' folder; None: runs/ beside each artifact
    command: tuple[str, ...] = ()  # the command line (the CLI sets it), for each run's header record
    preset: str | None = None  # the preset named on the command line, for the header record

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.track not in TRACKERS:
            raise ConfigError(f"track must be one of {', '.join(TRACKERS)}, got {self.track!r}")

    def replace(self, **changes) -> Runtime:
        return dataclasses.replace(self, **changes)
