"""`wm import minari`: a Minari dataset of RGB image observations as a rollouts artifact, episode by episode.

Of each Minari episode's T+1 observations the first T become its frames (the last one, after the last action, has
no place in a rollouts artifact: minari_format), resized when they are not 64x64 with PIL's bilinear filter, the
filter `wm collect` uses (`envs.resize64`), on the whole frame (no crop). Actions (float32, as wide as the env's),
rewards, terminations and truncations are kept as they are; Doom's buttons too when the dataset has our `env_action`
infos. Episode ids and seeds come from the episode metadata (ours when our export wrote it, else Minari's id and
reset seed, -1 when it has none). Empty episodes are skipped. The env is the one our export recorded, else the one
the dataset's gymnasium env spec names (CarRacing, VizdoomTakeCover), else `--env`.

Nothing is downloaded: the dataset must be on disk. Memory holds one episode at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..game.envs import resize64
from ..runtime.errors import ArtifactError, ConfigError
from ..store import artifacts as A
from ..store import files, metrics
from . import minari_format as mf
from .optional import require

RESIZE = "PIL bilinear to 64x64, whole frame, when not 64x64"


@dataclass(frozen=True)
class ImportResult:
    path: Path
    env: str
    episodes: int
    frames: int
    skipped: int  # empty episodes
    resized_from: tuple[int, int] | None  # (H, W) of the dataset's observations when they were resized

    def line(self) -> str:
        how = (
            f", frames resized from {self.resized_from[0]}x{self.resized_from[1]}"
            if self.resized_from
            else ""
        )
        skip = f", {self.skipped} empty episodes skipped" if self.skipped else ""
        return f"{self.path}: {self.env} rollouts, {self.episodes} episodes, {self.frames} frames{how}{skip}"


def run(
    out: str | os.PathLike,
    *,
    dataset_id: str | None = None,
    path: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    env: str | None = None,
) -> ImportResult:
    """Import the Minari dataset `dataset_id` (under `root`, default Minari's) or at `path` into the rollouts
    artifact `out`; `env` when the dataset does not say which of our envs it is for."""
    require("minari")
    from gymnasium import error as gym_error  # a dataset without spaces makes Minari build its env
    from minari.dataset.minari_storage import MinariStorage

    folder, what = _locate(dataset_id, path, root)
    out = Path(out)
    files.check_writable(out)
    if out.exists():
        raise ConfigError(f"{out}: exists; wm import never overwrites (choose another --out)")
    mf.check_readable(folder, what)
    try:
        storage = MinariStorage.read(folder / "data")
        metadata = storage.metadata
        total = storage.total_episodes
        episode_meta = list(storage.get_episode_metadata(range(total)))
        first = next(iter(storage.get_episodes([0]))) if total else None
    except (ValueError, KeyError, TypeError, AssertionError, OSError, ImportError, gym_error.Error) as exc:
        raise ArtifactError(f"{what}: unreadable Minari dataset ({A._first_line(exc)})") from None
    env = _env(metadata, env, what)
    width = _check_spaces(storage.observation_space, storage.action_space, env, what)
    buttons = env == "doom" and first is not None and mf.ENV_ACTION in (first.get("infos") or {})
    ours = metadata.get(mf.METADATA_KEY) if isinstance(metadata.get(mf.METADATA_KEY), dict) else {}
    record = {
        "import": {
            "format": "minari",
            "dataset_id": str(metadata.get("dataset_id", "")),
            "path": str(folder),
            "resize": RESIZE,
            "final_observation": "dropped",
        },
        "origin": ours.get("config", {}),  # what made the data, when our export wrote the dataset
    }
    seed = ours.get("seed") if isinstance(ours.get("seed"), int) else -1
    inputs = {"minari": {"path": str(folder), "sha256": mf.folder_sha256(folder / "data")}}
    stats = _Stats()
    with A.atomic_write(out, "rollouts", config=record, seed=seed, inputs=inputs, env=env) as fh:
        frames = _ChunkedFrames(A.create_frames_dataset(fh))
        A.create_step_datasets(fh, width, env_actions=buttons)
        bar = metrics.progress(total=total, desc="import", unit="ep")
        try:
            for ep, em in zip(_episodes(storage, total, what), episode_meta, strict=True):
                steps = _steps(ep, width, buttons, what, stats)
                bar.update(1)
                if steps is None:
                    continue
                frames.add(steps.pop(A.FRAMES))
                for key, arr in steps.items():
                    A.append(fh[key], arr)
                reset_seed = em.get("seed")
                stats.add(
                    len(steps[A.REWARDS]),
                    int(em.get(mf.EPISODE_ID, ep["id"])),
                    -1 if reset_seed is None else int(reset_seed),
                    _return(steps),
                )
        finally:
            bar.close()
        if not stats.lengths:
            raise ArtifactError(f"{what}: no episode with a step; nothing to import")
        frames.finish()
        A.write_episode_index(fh, stats.index())
        A.set_summary(
            fh,
            {
                "episodes": len(stats.lengths),
                "frames": int(sum(stats.lengths)),
                "mean_length": float(np.mean(stats.lengths)),
                "mean_return": float(np.mean(stats.returns)),
                "std_return": float(np.std(stats.returns)),
                "skipped_empty": stats.skipped,
                "resized_from": list(stats.resized_from) if stats.resized_from else None,
            },
        )
    return ImportResult(
        out, env, len(stats.lengths), int(sum(stats.lengths)), stats.skipped, stats.resized_from
    )


def _locate(dataset_id: str | None, path: str | os.PathLike | None, root) -> tuple[Path, str]:
    """The dataset's folder (the one holding data/) and how to name it in errors."""
    if (dataset_id is None) == (path is None):
        raise ConfigError("give one of --dataset-id or --path")
    if path is None:
        return mf.dataset_folder(dataset_id, root), f"Minari dataset {dataset_id}"
    folder = Path(path)
    if (folder / "metadata.json").is_file() and folder.name == "data":  # the data folder itself
        folder = folder.parent
    return folder, str(path)


def _env(metadata: dict, given: str | None, what: str) -> str:
    found = mf.env_of(metadata)
    if given is not None and found is not None and given != found:
        raise ConfigError(f"{what}: a {found} dataset, but --env {given}")
    if given is None and found is None:
        raise ConfigError(
            f"{what}: its metadata does not say which of our envs it is for; give --env doom or "
            "--env carracing"
        )
    return given or found


def _check_spaces(obs_space, act_space, env: str, what: str) -> int:
    """The action width; one line when observations are not RGB images or actions are not the env's."""
    from gymnasium.spaces import Box

    if not (
        isinstance(obs_space, Box)
        and obs_space.dtype == np.uint8
        and len(obs_space.shape) == 3
        and obs_space.shape[2] == 3
    ):
        raise ArtifactError(
            f"{what}: observations are {obs_space}, not RGB images (a uint8 Box of shape (H, W, 3)) "
            "that can be resized to 64x64"
        )
    width = A.ACTION_WIDTH[env]
    if not (isinstance(act_space, Box) and act_space.shape == (width,)):
        raise ArtifactError(
            f"{what}: actions are {act_space}, but {env} takes {width} continuous values "
            f"(a Box of shape ({width},))"
        )
    return width


class _Stats:
    """The episode index and returns of the imported episodes."""

    def __init__(self) -> None:
        self.lengths: list[int] = []
        self.ids: list[int] = []
        self.seeds: list[int] = []
        self.returns: list[float] = []
        self.skipped = 0
        self.resized_from: tuple[int, int] | None = None

    def add(self, length: int, episode_id: int, seed: int, ret: float) -> None:
        self.lengths.append(length)
        self.ids.append(episode_id)
        self.seeds.append(seed)
        self.returns.append(ret)

    def index(self) -> A.EpisodeIndex:
        lengths = np.asarray(self.lengths, np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return A.EpisodeIndex(
            starts, lengths, np.asarray(self.seeds, np.int64), np.asarray(self.ids, np.int64)
        )


def _episodes(storage, total: int, what: str):
    """Minari's episodes one at a time; a damaged one is one line, not Minari's traceback."""
    episodes = iter(storage.get_episodes(range(total)))
    while True:
        try:
            ep = next(episodes)
        except StopIteration:
            return
        except (KeyError, ValueError, TypeError, AssertionError) as exc:
            raise ArtifactError(f"{what}: unreadable Minari episode ({A._first_line(exc)})") from None
        yield ep


def _steps(ep: dict, width: int, buttons: bool, what: str, stats: _Stats) -> dict[str, np.ndarray] | None:
    """One Minari episode as the artifact's per-step arrays; None for an empty one; one line when it is damaged."""
    t = len(ep["rewards"])
    if t == 0:
        stats.skipped += 1
        return None
    obs = ep["observations"]
    name = f"{what}: episode {ep['id']}"
    if (
        not isinstance(obs, np.ndarray)
        or obs.dtype != np.uint8
        or obs.ndim != 4
        or obs.shape[3] != 3
        or len(obs) < t
    ):
        shape = getattr(obs, "shape", type(obs).__name__)
        raise ArtifactError(f"{name}: observations {shape} are not {t} (or {t + 1}) RGB images")
    frames = obs[:t]  # the (T+1)-th observation follows the last action: not stored (minari_format)
    if frames.shape[1:3] != (64, 64):
        stats.resized_from = tuple(frames.shape[1:3])
        frames = np.stack([resize64(np.ascontiguousarray(f)) for f in frames])
    actions = np.asarray(ep["actions"], dtype=np.float32)
    rewards = np.asarray(ep["rewards"], dtype=np.float32)
    if actions.shape != (t, width) or rewards.shape != (t,):
        raise ArtifactError(
            f"{name}: actions {actions.shape} and rewards {rewards.shape}, expected ({t}, {width}), ({t},)"
        )
    if not (np.isfinite(actions).all() and np.isfinite(rewards).all()):
        raise ArtifactError(f"{name}: actions or rewards hold NaN or inf")
    steps = {
        A.FRAMES: frames,
        A.ACTIONS: actions,
        A.REWARDS: rewards,
        A.TERMINATED: np.asarray(ep["terminations"], dtype=bool).reshape(t),
        A.TRUNCATED: np.asarray(ep["truncations"], dtype=bool).reshape(t),
    }
    if buttons:
        pressed = np.asarray((ep.get("infos") or {}).get(mf.ENV_ACTION, []), dtype=np.int8)
        if pressed.shape != (t + 1,):
            raise ArtifactError(
                f"{name}: infos {mf.ENV_ACTION} {pressed.shape}, expected ({t + 1},) as the first episode"
            )
        steps[A.ENV_ACTIONS] = pressed[1:]  # the button of step t came with observation t+1
    return steps


def _return(steps: dict[str, np.ndarray]) -> float:
    """The return up to the env's own end, as `wm collect` reports it (collect._return: CarRacing data may run
    past the end)."""
    ended = np.flatnonzero(steps[A.TERMINATED] | steps[A.TRUNCATED])
    stop = int(ended[0]) + 1 if len(ended) else len(steps[A.REWARDS])
    return float(steps[A.REWARDS][:stop].sum(dtype=np.float64))


class _ChunkedFrames:
    """Appends frames in whole HDF5 chunks: a write covering whole chunks never reads one back to recompress it
    (the artifact's files have no chunk cache, store/files.py)."""

    def __init__(self, ds) -> None:
        self.ds, self.chunk = ds, ds.chunks[0]
        self.buf = np.zeros((0, *ds.shape[1:]), np.uint8)

    def add(self, frames: np.ndarray) -> None:
        self.buf = np.concatenate([self.buf, frames])
        whole = len(self.buf) // self.chunk * self.chunk
        if whole:
            A.append(self.ds, self.buf[:whole])
            self.buf = self.buf[whole:]

    def finish(self) -> None:
        if len(self.buf):
            A.append(self.ds, self.buf)
