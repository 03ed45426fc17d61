"""Minari and safetensors are an extra (`.[interop]`): the pipeline runs without them, so they are imported only by
the interop commands, and their absence is one line, not a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..runtime.errors import ConfigError


def require(module: str) -> ModuleType:
    """Import `module` (e.g. "minari", "safetensors.torch") or fail naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{module} is not installed ({exc}); pip install 'worldmodels_cli[interop]'"
        ) from None
