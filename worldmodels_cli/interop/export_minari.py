"""`wm export minari`: a rollouts artifact as a Minari dataset, streamed episode by episode.

Each episode becomes one Minari episode with our episode seed (Minari's reset seed) and id (episode metadata
`worldmodels_cli_episode_id`): observations (T+1, 64, 64, 3) uint8 whose last one repeats the last stored frame
(minari_format), actions (T, A) float32 as M sees them, rewards, terminations, truncations; for Doom also infos
`env_action` (T+1,) int8, the button each observation's step pressed (-1 for the first). The dataset's metadata
carries our env, the rollouts' config, seed and checksum under `worldmodels_cli`. It has no gymnasium env spec: our
envs crop, resize and map actions, so no registered env has these spaces.

Frames are stored as they are (the round trip is exact), or JPEG-encoded (`jpeg`: Minari's default, smaller, lossy).
The dataset is written to a hidden temp folder beside its final place and renamed into place when complete; an
existing dataset is never overwritten (Minari datasets are immutable: bump the version).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..runtime.errors import ArtifactError, ConfigError
from ..store import artifacts as A
from ..store import files, metrics
from . import minari_format as mf
from .optional import require


@dataclass(frozen=True)
class ExportResult:
    path: Path
    dataset_id: str
    episodes: int
    steps: int

    def line(self) -> str:
        return f"{self.path}: Minari dataset {self.dataset_id}, {self.episodes} episodes, {self.steps} steps"


def run(
    rollouts: str | os.PathLike, dataset_id: str, *, root: str | os.PathLike | None = None, jpeg: bool = False
) -> ExportResult:
    """Write the rollouts artifact `rollouts` as the Minari dataset `dataset_id` under `root` (default: Minari's)."""
    minari = require("minari")
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    meta = A.validate(rollouts, "rollouts")
    if meta.env not in A.ACTION_WIDTH:
        raise ArtifactError(
            f"{rollouts}: rollouts of env {meta.env!r}; the export knows {', '.join(A.ACTION_WIDTH)}"
        )
    folder = mf.dataset_folder(dataset_id, root)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with files.output_lock(folder):
        if folder.exists():
            raise ConfigError(
                f"{folder}: Minari dataset {dataset_id} exists; Minari datasets are never overwritten: "
                "bump its version (-v1) or delete it"
            )
        files.remove_stale_temps(folder)  # a temp folder of an export that was killed
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        try:
            tmp.mkdir()
            storage = MinariStorage.new(
                tmp / "data",
                observation_space=mf.observation_space(),
                action_space=mf.action_space(meta.env),
                data_format="hdf5",
                jpeg_encoding=jpeg,
            )
            storage.update_metadata(_metadata(rollouts, meta, dataset_id, minari.__version__))
            with A.open_artifact(rollouts, "rollouts") as fh:
                idx = A.read_episode_index(fh)
                storage.update_episodes(_episodes(fh, idx, EpisodeBuffer))
            storage.update_episode_metadata(({mf.EPISODE_ID: int(i)} for i in idx.ids), range(idx.episodes))
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        files.fsync_dir(folder.parent)
    mf.mark_namespaces(folder, mf.datasets_root(root))
    return ExportResult(folder, dataset_id, idx.episodes, idx.frames)


def _metadata(rollouts: str | os.PathLike, meta: A.Meta, dataset_id: str, minari_version: str) -> dict:
    policy = meta.config.get("collect", {}).get("policy", "unknown")
    fake = bool(meta.config.get("env", {}).get("fake", False))
    game = {"carracing": "gymnasium CarRacing-v3", "doom": "vizdoom take_cover"}[meta.env]
    return {
        "dataset_id": dataset_id,
        "minari_version": minari_version,
        "algorithm_name": f"worldmodels_cli collect, {policy} policy",
        "description": (
            f"World Models rollouts of {'a fake stand-in for ' if fake else ''}{game}: 64x64 RGB frames, "
            "the continuous action M sees, rewards, terminations, truncations. The last observation of "
            "each episode repeats the one before it."
        ),
        mf.METADATA_KEY: {
            "env": meta.env,
            "fake_env": fake,
            "config": meta.config,
            "seed": meta.seed,
            "source": {"path": str(rollouts), "sha256": A.sha256(rollouts)},
            "final_observation": mf.FINAL_OBSERVATION,
            "version": meta.versions.get("worldmodels_cli", ""),
        },
    }


def _episodes(fh: h5py.File, idx: A.EpisodeIndex, buffer_type) -> Iterator:
    """One Minari episode buffer at a time: memory holds one episode, whatever the artifact's size."""
    has_buttons = A.ENV_ACTIONS in fh
    bar = metrics.progress(total=idx.episodes, desc="export", unit="ep")
    try:
        for e in range(idx.episodes):
            lo, hi = int(idx.starts[e]), int(idx.starts[e] + idx.lengths[e])
            frames = fh[A.FRAMES][lo:hi]
            infos = None
            if has_buttons:
                infos = {
                    mf.ENV_ACTION: np.concatenate([[mf.NO_STEP], fh[A.ENV_ACTIONS][lo:hi]]).astype(np.int8)
                }
            yield buffer_type(
                seed=int(idx.seeds[e]),
                observations=np.concatenate([frames, frames[-1:]]),  # (T+1, 64, 64, 3): see minari_format
                actions=fh[A.ACTIONS][lo:hi],
                rewards=fh[A.REWARDS][lo:hi],
                terminations=fh[A.TERMINATED][lo:hi],
                truncations=fh[A.TRUNCATED][lo:hi],
                infos=infos,
            )
            bar.update(1)
    finally:
        bar.close()
