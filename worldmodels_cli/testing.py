"""Small fakes shipped in the package so worker processes (spawned, or Ray actors) can import them in tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def init_counter(payload: Any) -> dict:
    """Worker state: the payload plus the worker's pid (to show state is built once per worker)."""
    return {"payload": payload, "pid": os.getpid(), "calls": 0}


def square(state: dict, task: int) -> tuple[int, int]:
    state["calls"] += 1
    return task * task + state["payload"], state["pid"]


def flaky(state: dict, task: tuple[int, str]) -> int:
    """Raises the first time a task runs (a marker file records the attempt): retried, then succeeds."""
    value, marker_dir = task
    marker = Path(marker_dir) / f"flaky-{value}"
    if not marker.exists():
        marker.touch()
        raise RuntimeError(f"env crashed on task {value}")
    return value


def always_fails(state: dict, task: int) -> int:
    raise ValueError(f"broken env for seed {task}")


def die_once(state: dict, task: tuple[int, str]) -> int:
    """Kills its worker process (as a segfaulting env would) the first time task 2 runs."""
    value, marker_dir = task
    marker = Path(marker_dir) / f"died-{value}"
    if value == 2 and not marker.exists():
        marker.touch()
        os._exit(1)
    return value * 10


def die_always(state: dict, task: int) -> int:
    if task == 1:
        os._exit(1)
    return task



def random_world(folder: Path, env: str, scale: str = "small") -> tuple[Path, Path, dict]:
    """A randomly initialised V and M at `scale`'s sizes written as artifacts in `folder`, and the model_config of
    the preset's C for them: an agent that costs what a trained one costs (benchmarks)."""
    import numpy as np
    import torch

    from .config import preset
    from .models.mdnrnn import MDNRNN
    from .models.vae import ConvVAE
    from .stages.evolve import controller_model_config
    from .store import artifacts as A
    from .store import checkpoint

    p = preset(env, scale)
    torch.manual_seed(0)
    paths = []
    for kind, model, cfg in (("vae", ConvVAE(p.vae), p.vae), ("mdn", MDNRNN(p.mdn), p.mdn)):
        out = Path(folder) / f"{kind}.h5"

        def extra(fh, z=cfg.z_dim, kind=kind):
            if kind == "mdn":
                A.write_initial_z(fh, np.zeros((4, z)), np.zeros((4, z)))

        checkpoint.save(out, kind, state_dict=model.state_dict(), model_config=cfg, train_state=None, summary={},
                        complete=True, config=p, seed=0, inputs={}, env=env, extra=extra)
        paths.append(out)
    mc = controller_model_config(p.controller, env, p.mdn.z_dim, p.mdn.hidden, p.mdn.action_dim)
    return paths[0], paths[1], mc
