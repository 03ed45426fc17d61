"""What runs the work: errors, seeds, devices, and the executor (local processes or Ray).

`Runtime` is how a stage runs, apart from what it computes (its config): every stage's `run()` takes one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Runtime:
    """The run seed (everything random derives from it), the torch device, the worker processes of real-env
    stages and where they run (local processes, or a Ray cluster at `address`; None: a local Ray)."""

    seed: int = 0
    device: str = "auto"
    workers: int = 1
    backend: str = "local"
    address: str | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")

    def replace(self, **changes) -> Runtime:
        return dataclasses.replace(self, **changes)
