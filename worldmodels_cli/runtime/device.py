"""`--device auto|cpu|cuda` resolution."""

from __future__ import annotations

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve(name: str) -> str:
    """'auto' picks CUDA when present; asking for CUDA without one is a clear error."""
    import torch

    if name not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return name
