"""Our rollouts as a Minari dataset: where a dataset lives, its spaces, and the keys we add to Minari's metadata.

A Minari dataset is a folder `<root>/<dataset_id>/data/` (`metadata.json` and the episodes), `root` being
`$MINARI_DATASETS_PATH` or `~/.minari/datasets`. Each episode holds T actions, rewards, terminations and
truncations, and T+1 observations (the one after reset, then one per step). Rollouts hold the frame before each
action and not the one after the last (store/artifacts.py): the export repeats the last frame as the (T+1)-th
observation and the import drops the (T+1)-th observation, so a round trip gives back the same artifact data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ENVS
from ..runtime.errors import ArtifactError, ConfigError
from .optional import require

METADATA_KEY = "worldmodels_cli"  # dataset metadata: our env, the rollouts' config, seed and source
EPISODE_ID = (
    "worldmodels_cli_episode_id"  # episode metadata: the rollouts' episode id (ids skip discarded episodes)
)
ENV_ACTION = "env_action"  # infos (T+1,) int8: Doom's button from the step that led to each observation
NO_STEP = -1  # env_action of the first observation (no step led to it)
FINAL_OBSERVATION = "repeats the last stored frame: rollouts do not store the frame after the last action"

# gymnasium ids of the games our envs wrap: a foreign dataset's env spec tells its env (`wm import minari`)
GYM_IDS = {"carracing": ("CarRacing",), "doom": ("VizdoomTakeCover",)}


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """`root`, or Minari's: $MINARI_DATASETS_PATH, else ~/.minari/datasets (minari.storage.get_dataset_path's rule,
    without creating the folder)."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def dataset_folder(dataset_id: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of dataset `dataset_id` under the datasets root; a malformed id is a one-line error."""
    parse_dataset_id = require("minari.dataset.minari_dataset").parse_dataset_id
    try:
        parse_dataset_id(dataset_id)  # this Minari needs the version: an id without one raises TypeError
    except (ValueError, TypeError):
        raise ConfigError(
            f"--dataset-id {dataset_id!r} is not a Minari id: [namespace/]name-v<version>, "
            "e.g. wm/doom-random-v0"
        ) from None
    return datasets_root(root) / dataset_id


def mark_namespaces(folder: Path, root: Path) -> None:
    """Give each namespace folder between `root` and the dataset `folder` the metadata file Minari's
    `create_namespace` writes, so Minari lists the namespace."""
    from minari.namespace import NAMESPACE_METADATA_FILENAME

    parent = folder.parent
    while parent != root and root in parent.parents:
        marker = parent / NAMESPACE_METADATA_FILENAME
        if not marker.exists():
            marker.write_text("{}")
        parent = parent.parent


def observation_space():
    """Rollouts' frames: 64x64 RGB bytes."""
    from gymnasium.spaces import Box

    return Box(0, 255, (64, 64, 3), np.uint8)


def action_space(env: str):
    """The continuous action M sees (CarRacing steer, gas, brake; Doom one value in [-1, 1]), the env's bounds."""
    from gymnasium.spaces import Box

    from ..game.envs import CarRacingEnv, DoomEnv

    bounds = CarRacingEnv if env == "carracing" else DoomEnv
    return Box(bounds.action_low, bounds.action_high, dtype=np.float32)


def env_of(metadata: dict[str, Any]) -> str | None:
    """Our env name for a dataset: the one our export recorded, else from its gymnasium env spec; None if unknown."""
    ours = metadata.get(METADATA_KEY)
    if isinstance(ours, dict) and ours.get("env") in ENVS:
        return ours["env"]
    spec = metadata.get("env_spec")
    try:
        gym_id = str(json.loads(spec).get("id", "")) if isinstance(spec, str) else ""
    except (json.JSONDecodeError, AttributeError):
        gym_id = ""
    return next((env for env, prefixes in GYM_IDS.items() if gym_id.startswith(prefixes)), None)


def folder_sha256(folder: Path) -> str:
    """A checksum of a dataset folder: SHA-256 over each file's relative path and SHA-256, in path order."""
    from ..store.artifacts import sha256

    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(folder).as_posix()}\0{sha256(p)}\n".encode())
    return h.hexdigest()


def check_readable(folder: Path, what: str) -> None:
    """A Minari dataset folder holds data/metadata.json; anything else is one line naming it."""
    if not (folder / "data" / "metadata.json").is_file():
        raise ArtifactError(
            f"{what}: no Minari dataset at {folder} (no data/metadata.json); wm import never "
            "downloads: fetch it first (`minari download ID`) or give --path or --root"
        )
