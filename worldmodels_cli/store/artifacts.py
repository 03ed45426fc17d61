"""The artifact schema: the only module that spells HDF5 keys.

Every artifact is one HDF5 file whose root attributes say what it is (``kind``, ``schema_version``), how it was
made (resolved ``config`` JSON, the ``preset`` it was made with, ``seed``, ``created``, package ``versions``, the
``wm`` ``command`` line and folder) and from what (``inputs``: SHA-256, size, absolute path and path relative to
this file of each input artifact; `lineage.locate` finds them). Files are always written to a temporary name in the destination folder and renamed
into place, so a file at its final path is complete; a kill mid-write leaves the previous version intact.

Kinds and their datasets (N frames, E episodes, Z latent, A action width):

- ``rollouts``: frames (N,64,64,3) uint8 (gzip-4 + shuffle, chunked); actions (N,A) float32 (the continuous
  action, what M sees); env_actions (N,) int8 (Doom: the button the env received: 0 none, 1 left, 2 right);
  rewards (N,) float32; terminated, truncated (N,) bool (flags returned by the step after frame t);
  episode_starts, episode_lengths, episode_seeds, episode_ids (E,) int64. frames[t] is the frame *before*
  actions[t] (ref §2.1); the frame after the last action is not stored.
- ``series``: mu, logvar (N,Z) float32; actions, rewards, terminated, truncated and the episode_* index as rollouts.
- ``vae`` / ``mdn``: group ``weights`` (one dataset per state-dict entry), group ``train_state`` (optimizer,
  RNG states, counters: what resume needs), attribute ``model_config``; ``summary`` attribute with losses.
  ``mdn`` also holds initial_mu, initial_logvar (E,Z) float32: the first frame of each training episode.
  An ``mdn`` ensemble (`wm train-mdn --ensemble K`, schema version 2, which older versions refuse as newer):
  ``weights`` are member 0's (the M a controller runs in the real game), group ``ensemble`` holds members 1..K-1
  (subgroups ``1``..``K-1``, one dataset per state-dict entry), its attribute ``members`` K and ``calibration``
  (JSON: the members' disagreement quantiles on held-out real steps and the threshold; docs/pessimism.md).
- ``controller``: mean, best_params (P,) float64; history/* per generation; cma/* (fitness of every evaluated
  generation, so the optimizer is rebuilt by replay, never unpickled). One from `wm train-controller` (config
  ``method``: actor-critic) holds history/* per evaluation and train_state/* (actor, critic, optimisers) instead.
  An ``mdn`` artifact's model_config says ``"dynamics": "rssm"`` for an RSSM (`models.dynamics`).
- ``eval``: returns, lengths (E,) float64/int64; episode_seeds (E,) int64.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..runtime.errors import ArtifactError
from . import frame_codec, lineage
from .files import (
    check_writable,
    close_quietly,
    create_h5,
    dealloc_errors,
    disk_full,
    fsync,
    fsync_dir,
    remove_stale_temps,
)

SCHEMA_VERSION = 1  # written on every artifact but an ensemble of Ms


ENSEMBLE_SCHEMA_VERSION = 2  # an mdn artifact holding an ensemble: a version that reads only 1 refuses it as newer


# ---- root attributes
KIND = "kind"


SCHEMA = "schema_version"


CONFIG = "config"


SEED = "seed"


CREATED = "created"


VERSIONS = "versions"


INPUTS = "inputs"


ENV = "env"


SUMMARY = "summary"


MODEL_CONFIG = "model_config"


PRESET = "preset"


COMMAND = "command"


# ---- dataset names
FRAMES = "frames"


ACTIONS = "actions"


ENV_ACTIONS = "env_actions"


REWARDS = "rewards"


TERMINATED = "terminated"


TRUNCATED = "truncated"


EPISODE_STARTS = "episode_starts"


EPISODE_LENGTHS = "episode_lengths"


EPISODE_SEEDS = "episode_seeds"


EPISODE_IDS = "episode_ids"


MU = "mu"


LOGVAR = "logvar"


INITIAL_MU = "initial_mu"  # mdn: (E, Z) μ of the first frame of each training episode (dream starts, ref §7)


INITIAL_LOGVAR = "initial_logvar"  # mdn: (E, Z) logσ² of the same frames


WEIGHTS = "weights"


TRAIN_STATE = "train_state"


MEAN = "mean"


BEST_PARAMS = "best_params"


HISTORY = "history"


CMA = "cma"


FITNESS = "fitness"


BEST_SCORE = "best_score"


BEST_GENERATION = "best_generation"


RETURNS = "returns"


LENGTHS = "lengths"


EPISODE_INDEX = (EPISODE_STARTS, EPISODE_LENGTHS, EPISODE_SEEDS, EPISODE_IDS)


STEP_DATA = (ACTIONS, REWARDS, TERMINATED, TRUNCATED)


REQUIRED: dict[str, tuple[str, ...]] = {
    "rollouts": (FRAMES, *STEP_DATA, *EPISODE_INDEX),
    "series": (MU, LOGVAR, *STEP_DATA, *EPISODE_INDEX),
    "vae": (WEIGHTS,),
    "mdn": (WEIGHTS,),
    "controller": (MEAN, BEST_PARAMS, HISTORY),
    "eval": (RETURNS, LENGTHS, EPISODE_SEEDS),
}


KINDS = tuple(REQUIRED)


# rank of each required dataset: a blob, a string or a scalar in its place is a damaged (or crafted) artifact
RANKS = {FRAMES: 4, ACTIONS: 2, MU: 2, LOGVAR: 2, REWARDS: 1, TERMINATED: 1, TRUNCATED: 1, EPISODE_STARTS: 1,
         EPISODE_LENGTHS: 1, EPISODE_SEEDS: 1, EPISODE_IDS: 1, MEAN: 1, BEST_PARAMS: 1, RETURNS: 1, LENGTHS: 1}


FRAME_COMPRESSION = {"compression": "gzip", "compression_opts": frame_codec.LEVEL, "shuffle": True}


# ------------------------------------------------------------------------------------------- provenance
def sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("worldmodels_cli", "torch", "gymnasium", "vizdoom", "cma", "h5py", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def inputs_record(paths: Mapping[str, str | os.PathLike | list]) -> dict[str, Any]:
    """{role: {"path" (absolute), "sha256", "bytes"}} (or a list of them) for the artifacts a stage read;
    `atomic_write` adds each one's path relative to the artifact that records it (`lineage.locate` reads them)."""

    def one(q) -> dict[str, Any]:
        return {"path": os.path.abspath(q), "sha256": sha256(q), "bytes": os.path.getsize(q)}

    return {role: [one(q) for q in p] if isinstance(p, (list, tuple)) else one(p) for role, p in paths.items()}


# ------------------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    kind: str,
    *,
    config: Any = None,
    seed: int | None = None,
    inputs: Mapping[str, Any] | None = None,
    env: str | None = None,
    preset: str | None = None,
    schema: int = SCHEMA_VERSION,
) -> Iterator[h5py.File]:
    """Yield an h5py.File on a temp name beside `path`; on success stamp the root attributes and rename it into
    place. On any exception the temp file is removed and `path` is untouched. `preset`: the name of the preset
    the artifact was made with (default: the config's `scale`, a Preset's or a config dict's); the `wm` command that is
    running is stamped too (`lineage`). `schema`: the version stamped (ENSEMBLE_SCHEMA_VERSION for an ensemble)."""
    if kind not in REQUIRED:
        raise ValueError(f"unknown artifact kind {kind!r}")
    path = Path(path)
    check_writable(path)
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fh, failed = None, []
    try:
        with dealloc_errors(failed):
            fh = create_h5(tmp)
            yield fh
            fh.attrs[KIND] = kind
            fh.attrs[SCHEMA] = schema
            fh.attrs[CONFIG] = _to_json(config)
            fh.attrs[SEED] = -1 if seed is None else int(seed)
            fh.attrs[CREATED] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            fh.attrs[VERSIONS] = json.dumps(package_versions())
            fh.attrs[INPUTS] = json.dumps(lineage.with_relative_paths(inputs or {}, path.parent))
            fh.attrs[ENV] = env or ""
            fh.attrs[PRESET] = preset or _scale(config)
            fh.attrs[COMMAND] = json.dumps(lineage.command())
            if SUMMARY not in fh.attrs:
                fh.attrs[SUMMARY] = "{}"
            fh.close()
        if failed:  # a write that failed while h5py closed an object: raised nowhere, but the file is incomplete
            raise failed[0]
        fsync(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        reason = _abandon(fh, tmp, exc, failed)
        if reason:
            kept = "the previous version is untouched" if path.exists() else "nothing was written"
            raise ArtifactError(f"{path}: write failed ({reason}); {kept}") from None
        raise


def _abandon(fh: h5py.File | None, tmp: Path, exc: BaseException, failed: list[BaseException]) -> str | None:
    """Close and delete a temp file whose writing failed; the one-line reason when it was a failed write (a full
    disk, or an error HDF5 met while flushing), None for any other exception (re-raised as it is)."""
    if fh is not None:
        close_quietly(fh)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    return disk_full(exc) or (_first_line(exc) if exc in failed else None)


def set_summary(fh: h5py.File, summary: Mapping[str, Any]) -> None:
    """Key figures shown by `wm info` (losses, scores, counts)."""
    fh.attrs[SUMMARY] = json.dumps(_jsonable(dict(summary)))


def set_model_config(fh: h5py.File, model_config: Any) -> None:
    """The architecture config a model is rebuilt from (a config dataclass or a dict), as JSON."""
    fh.attrs[MODEL_CONFIG] = _to_json(model_config)


def _scale(config: Any) -> str:
    """The preset name a config records: a Preset's `scale`, or a config dict's "scale" key."""
    scale = config.get("scale") if isinstance(config, Mapping) else getattr(config, "scale", None)
    return scale if isinstance(scale, str) else ""


def _to_json(config: Any) -> str:
    if config is None:
        return "{}"
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.dumps(_jsonable(config), sort_keys=True)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


# ------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Meta:
    """Root attributes of a validated artifact."""

    path: str
    kind: str
    schema_version: int
    config: dict
    seed: int
    created: str
    versions: dict
    inputs: dict
    env: str
    summary: dict
    model_config: dict
    preset: str = ""  # "" for an artifact from before presets were recorded
    command: dict = field(default_factory=dict)  # {} when made from Python, or before commands were recorded


def validate(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None) -> Meta:
    """Check that `path` is a complete artifact of `kind` from a schema this version reads; return its Meta.

    Raises ArtifactError with a one-line message naming the file and what was expected."""
    p = Path(path)
    want = (kind,) if isinstance(kind, str) else kind
    what = f"a {' or '.join(want)} artifact" if want else "an artifact"
    if not p.exists():
        raise ArtifactError(f"{p}: no such file (expected {what})")
    if p.is_dir():
        raise ArtifactError(f"{p}: is a folder (expected {what})")
    if p.stat().st_size == 0:
        raise ArtifactError(f"{p}: empty file (expected {what})")
    if not h5py.is_hdf5(p):
        raise ArtifactError(f"{p}: not an HDF5 file (expected {what})")
    try:
        with h5py.File(p, "r") as fh:
            attrs = dict(fh.attrs)
            if KIND not in attrs:
                raise ArtifactError(f"{p}: HDF5 file without a 'kind' attribute: not a worldmodels_cli artifact")
            got = _str(attrs[KIND])
            if want and got not in want:
                raise ArtifactError(f"{p}: is a {got} artifact, expected {what}")
            version = int(attrs.get(SCHEMA, -1))
            if version > SCHEMA_VERSION and not (version == ENSEMBLE_SCHEMA_VERSION and got == "mdn" and ENSEMBLE in fh):
                raise ArtifactError(
                    f"{p}: schema version {version} is newer than this worldmodels_cli reads ({SCHEMA_VERSION}); upgrade"
                )
            outside = _links_outside(fh)
            if outside:
                raise ArtifactError(f"{p}: {outside} points outside the file (an external link or external data); "
                                    "its checksum would not cover what is read: refused")
            missing = [name for name in REQUIRED.get(got, ()) if name not in fh]
            if missing:
                raise ArtifactError(f"{p}: {got} artifact lacks {', '.join(missing)} (truncated or damaged)")
            for name in REQUIRED.get(got, ()):  # touch each dataset's metadata: catches a damaged object header
                obj = fh[name]
                if name in RANKS and not isinstance(obj, h5py.Dataset):
                    raise ArtifactError(f"{p}: {got} artifact's {name} is not a dataset (damaged)")
                rank = RANKS.get(name, getattr(obj, "ndim", 0))
                if isinstance(obj, h5py.Dataset) and (obj.dtype.kind not in "biuf" or obj.ndim != rank):
                    raise ArtifactError(f"{p}: {got} dataset {name} holds {obj.dtype} of shape {obj.shape}, not numbers "
                                        f"of rank {rank} (damaged)")
            env = _str(attrs.get(ENV, ""))
            if got in ("rollouts", "series"):
                _check_steps(fh, p, got, env)
            json_attrs = {}
            for key in (CONFIG, VERSIONS, INPUTS, SUMMARY, MODEL_CONFIG):
                json_attrs[key] = _loads(attrs.get(key))
                if not isinstance(json_attrs[key], dict):
                    raise ArtifactError(f"{p}: its {key} attribute is not a JSON object (damaged)")
            return Meta(
                path=str(p),
                kind=got,
                schema_version=version,
                config=json_attrs[CONFIG],
                seed=int(attrs.get(SEED, -1)),
                created=_str(attrs.get(CREATED, "")),
                versions=json_attrs[VERSIONS],
                inputs=json_attrs[INPUTS],
                env=env,
                summary=json_attrs[SUMMARY],
                model_config=json_attrs[MODEL_CONFIG],
                preset=_str(attrs.get(PRESET, "")),
                command=_loads(attrs.get(COMMAND)),
            )
    except ArtifactError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:  # TypeError: an array where a scalar goes
        raise ArtifactError(f"{p}: corrupt or truncated HDF5 file ({_first_line(exc)}); expected {what}") from None


ACTION_WIDTH = {"doom": 1, "carracing": 3}


def _check_steps(fh: h5py.File, p: Path, kind: str, env: str) -> None:
    """A rollouts or series artifact is consistent: every per-step dataset has one row per step, frames are
    64x64 RGB bytes, the action width is the env's, and the episodes tile the steps in order (each start is the
    previous start plus its length, from 0 to the last step). Reads only the (E,) episode index."""
    n = fh[REWARDS].shape[0]
    per_step = [FRAMES] if kind == "rollouts" else [MU, LOGVAR]
    for name in (*per_step, *STEP_DATA, *([ENV_ACTIONS] if ENV_ACTIONS in fh else [])):
        obj = fh[name]
        if not isinstance(obj, h5py.Dataset) or obj.shape[:1] != (n,):
            raise ArtifactError(f"{p}: {name} does not hold one row for each of the {n} steps (damaged)")
    if kind == "rollouts" and (fh[FRAMES].shape[1:] != (64, 64, 3) or fh[FRAMES].dtype != np.uint8):
        raise ArtifactError(f"{p}: frames are {fh[FRAMES].dtype} of shape {fh[FRAMES].shape[1:]}, not 64x64x3 bytes")
    width = fh[ACTIONS].shape[1]
    if env in ACTION_WIDTH and width != ACTION_WIDTH[env]:
        raise ArtifactError(f"{p}: {width}-wide actions, but {env} takes {ACTION_WIDTH[env]} (damaged)")
    idx = read_episode_index(fh)
    e = len(idx.starts)
    if any(len(a) != e for a in (idx.lengths, idx.seeds, idx.ids)) or e == 0:
        raise ArtifactError(f"{p}: its episode index datasets differ in length or are empty (damaged)")
    ends = idx.starts + idx.lengths
    if (idx.lengths < 1).any() or idx.starts[0] != 0 or (idx.starts[1:] != ends[:-1]).any() or ends[-1] != n:
        raise ArtifactError(f"{p}: its episodes do not tile its {n} steps in order (starts and lengths damaged)")


def _links_outside(group: h5py.Group, prefix: str = "") -> str | None:
    """The first object under `group` whose bytes would come from another file: an external link, a dataset with
    external raw storage, or a virtual dataset. Walks the links without following them (no data is read)."""
    for name in group:
        link = group.get(name, getlink=True)
        where = f"{prefix}{name}"
        if isinstance(link, h5py.ExternalLink):
            return where
        if isinstance(link, h5py.SoftLink):
            continue  # stays inside this file; what it names is checked where it lives
        obj = group[name]
        if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual):
            return where
        if isinstance(obj, h5py.Group):
            found = _links_outside(obj, where + "/")
            if found:
                return found
    return None


@contextlib.contextmanager
def open_artifact(path: str | os.PathLike, kind: str | tuple[str, ...] | None = None) -> Iterator[h5py.File]:
    """Validate, then open read-only. Read errors inside the block become ArtifactError too."""
    validate(path, kind)
    try:
        with h5py.File(path, "r") as fh:
            yield fh
    except (OSError, KeyError) as exc:
        raise ArtifactError(f"{path}: read failed ({_first_line(exc)}); the file is damaged") from None


def _str(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _loads(x: Any) -> dict:
    if x is None:
        return {}
    try:
        return json.loads(_str(x))
    except json.JSONDecodeError:
        return {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------- nested state
# Optimizer states, RNG states and counters are stored as data (datasets and JSON attributes), never pickled.
_LIST = "__list__"


_VALUE = "__value__"


def write_tree(group: h5py.Group, tree: Any) -> None:
    """Store a nested dict/list of arrays, tensors and JSON scalars under `group`."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            _write_node(group, str(key), value)
    elif isinstance(tree, (list, tuple)):
        group.attrs[_LIST] = len(tree)
        for i, value in enumerate(tree):
            _write_node(group, str(i), value)
    else:
        raise TypeError(f"write_tree needs a dict or list, got {type(tree).__name__}")


def _write_node(group: h5py.Group, key: str, value: Any) -> None:
    if hasattr(value, "detach"):  # torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        group.create_dataset(key, data=value)
    elif isinstance(value, (Mapping, list, tuple)) and not _is_json_leaf(value):
        write_tree(group.create_group(key), value)
    else:
        sub = group.create_group(key)
        sub.attrs[_VALUE] = json.dumps(_jsonable(value))


def _is_json_leaf(value: Any) -> bool:
    """Short lists of plain numbers (e.g. Adam betas) are stored as one JSON value."""
    return isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, bool, str)) or v is None for v in value)


def read_tree(group: h5py.Group) -> Any:
    """Inverse of write_tree (tuples come back as lists; arrays as numpy)."""
    if _LIST in group.attrs:
        return [_read_node(group[str(i)]) for i in range(int(group.attrs[_LIST]))]
    return {key: _read_node(group[key]) for key in group}


def _read_node(node: Any) -> Any:
    if isinstance(node, h5py.Dataset):
        return node[()]
    if _VALUE in node.attrs:
        return json.loads(_str(node.attrs[_VALUE]))
    return read_tree(node)


def write_state_dict(group: h5py.Group, state_dict: Mapping[str, Any]) -> None:
    """Model weights as one dataset per entry (names keep their dots)."""
    for name, tensor in state_dict.items():
        arr = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
        group.create_dataset(name, data=arr)


def read_state_dict(group: h5py.Group) -> dict[str, np.ndarray]:
    return {name: group[name][()] for name in group}


def write_initial_z(fh: h5py.File, mu: np.ndarray, logvar: np.ndarray) -> None:
    """mdn: (μ, logσ²) (E, Z) of real episodes' first frames, where dreams start (ref §7)."""
    fh.create_dataset(INITIAL_MU, data=np.asarray(mu, dtype=np.float32))
    fh.create_dataset(INITIAL_LOGVAR, data=np.asarray(logvar, dtype=np.float32))


def read_initial_z(fh: h5py.File) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of write_initial_z; ArtifactError when the mdn artifact has none."""
    if INITIAL_MU not in fh or INITIAL_LOGVAR not in fh:
        raise ArtifactError(f"{fh.filename}: mdn artifact lacks {INITIAL_MU}/{INITIAL_LOGVAR} (made by an older version?)")
    return fh[INITIAL_MU][()], fh[INITIAL_LOGVAR][()]


# ------------------------------------------------------------------------------------- ensemble of Ms
ENSEMBLE = "ensemble"


ENSEMBLE_MEMBERS = "members"


CALIBRATION = "calibration"


def write_ensemble(fh: h5py.File, others: list[Mapping[str, Any]], calibration: Mapping[str, Any]) -> None:
    """mdn ensemble: the state dicts of members 1..K-1 (member 0's are `weights`) and the calibration."""
    group = fh.create_group(ENSEMBLE)
    for k, state_dict in enumerate(others, start=1):
        write_state_dict(group.create_group(str(k)), state_dict)
    group.attrs[ENSEMBLE_MEMBERS] = len(others) + 1
    group.attrs[CALIBRATION] = json.dumps(_jsonable(dict(calibration)))


def read_ensemble(fh: h5py.File) -> tuple[list[dict[str, np.ndarray]], dict] | None:
    """(state dicts of members 1..K-1, calibration) of an mdn ensemble; None for one M."""
    if ENSEMBLE not in fh:
        return None
    group = fh[ENSEMBLE]
    try:
        k = int(group.attrs[ENSEMBLE_MEMBERS])
        others = [read_state_dict(group[str(i)]) for i in range(1, k)]
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{fh.filename}: its ensemble of Ms is damaged ({_first_line(exc)})") from None
    calibration = _loads(group.attrs.get(CALIBRATION))
    if k < 2 or not isinstance(calibration, dict) or not isinstance(calibration.get("threshold"), (int, float)):
        raise ArtifactError(f"{fh.filename}: its ensemble of Ms has {k} members or no calibrated threshold (damaged)")
    return others, calibration


# ------------------------------------------------------------------------------------- episode index
@dataclass(frozen=True)
class EpisodeIndex:
    """Where each episode lies in the flat per-step datasets of a rollouts or series artifact."""

    starts: np.ndarray
    lengths: np.ndarray
    seeds: np.ndarray
    ids: np.ndarray

    @property
    def episodes(self) -> int:
        return len(self.starts)

    @property
    def frames(self) -> int:
        return int(self.lengths.sum())


def read_episode_index(fh: h5py.File) -> EpisodeIndex:
    return EpisodeIndex(*(np.asarray(fh[k][()], dtype=np.int64) for k in EPISODE_INDEX))


def write_episode_index(fh: h5py.File, index: EpisodeIndex) -> None:
    for key, arr in zip(EPISODE_INDEX, (index.starts, index.lengths, index.seeds, index.ids), strict=True):
        fh.create_dataset(key, data=np.asarray(arr, dtype=np.int64))


def create_step_datasets(fh: h5py.File, action_dim: int, *, env_actions: bool, chunk: int = 4096) -> None:
    """Empty, growable per-step datasets shared by rollouts and series artifacts."""
    fh.create_dataset(ACTIONS, shape=(0, action_dim), maxshape=(None, action_dim), dtype=np.float32, chunks=(chunk, action_dim))
    fh.create_dataset(REWARDS, shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(chunk,))
    fh.create_dataset(TERMINATED, shape=(0,), maxshape=(None,), dtype=bool, chunks=(chunk,))
    fh.create_dataset(TRUNCATED, shape=(0,), maxshape=(None,), dtype=bool, chunks=(chunk,))
    if env_actions:
        fh.create_dataset(ENV_ACTIONS, shape=(0,), maxshape=(None,), dtype=np.int8, chunks=(chunk,))


def create_latent_datasets(fh: h5py.File, z_dim: int, *, chunk: int = 1024) -> None:
    """Empty, growable series datasets mu, logvar (N, Z) float32 (ref §2.3: μ and logσ², not z)."""
    for key in (MU, LOGVAR):
        fh.create_dataset(key, shape=(0, z_dim), maxshape=(None, z_dim), dtype=np.float32, chunks=(chunk, z_dim))


def create_frames_dataset(fh: h5py.File, chunk_frames: int = 64) -> h5py.Dataset:
    # ~10x smaller on CarRacing, ~3x on Doom; random blocks of a chunk then in-buffer shuffling read fast.
    return fh.create_dataset(
        FRAMES, shape=(0, 64, 64, 3), maxshape=(None, 64, 64, 3), dtype=np.uint8,
        chunks=(chunk_frames, 64, 64, 3), **FRAME_COMPRESSION,
    )


def append(ds: h5py.Dataset, data: np.ndarray) -> None:
    """Grow a 1-D-growable dataset by `data` along axis 0."""
    n = ds.shape[0]
    ds.resize(n + len(data), axis=0)
    ds[n:] = data


# Frames chunks made outside HDF5 (`frame_codec`: from frames compressed once, in the collect workers) and stored
# as they are (H5Dwrite_chunk): a zlib stream per chunk, what HDF5's gzip filter reads; the shuffle filter is a
# no-op on 1-byte elements (tests/test_collect.py reads them back through h5py).
def write_frames_chunk(ds: h5py.Dataset, first: int, data: bytes) -> None:
    """Store one encoded chunk (frame_codec.build_chunk, or read_frames_chunk's) at frame `first` (a chunk start)."""
    ds.id.write_direct_chunk((first, 0, 0, 0), data, 0)


def read_frames_chunk(ds: h5py.Dataset, first: int) -> bytes:
    """The stored (compressed) bytes of the chunk starting at frame `first`."""
    mask, data = ds.id.read_direct_chunk((first, 0, 0, 0))
    if mask:
        raise ArtifactError(f"{ds.file.filename}: frames chunk at {first} has skipped filters; cannot copy it raw")
    return data


def same_frames_layout(a: h5py.Dataset, b: h5py.Dataset) -> bool:
    """True when chunks of `a` can be copied into `b` as stored bytes."""
    return (a.chunks == b.chunks and a.dtype == b.dtype and a.compression == b.compression
            and a.compression_opts == b.compression_opts and a.shuffle == b.shuffle)


# ------------------------------------------------------------------------------------- episode shards
# `wm collect` writes each finished episode to a small file of its own under a temp name and renames it, so a
# kill leaves either a whole shard or a temp file, never a damaged one; the shards are then merged into the
# rollouts artifact. A shard holds its frames compressed once, as the artifact's chunks will hold them
# (frame_codec): the segments back to back, their sizes and each frame's Adler-32, and a CRC-32 of them (the merge
# copies segments without inflating them, so a damaged one must be caught on reading the shard).
SHARD_EPISODE_ID = "episode_id"


SHARD_EPISODE_SEED = "episode_seed"


SHARD_DATA = (ENV_ACTIONS, *STEP_DATA)


SHARD_SEGMENTS, SHARD_SEGMENT_SIZES, SHARD_ADLER = "frames_segments", "frames_segment_sizes", "frames_adler32"


SHARD_KEYFRAME_EVERY, SHARD_CRC = "frames_keyframe_every", "frames_crc32"


def _frames_crc(frames: frame_codec.EncodedFrames) -> int:
    """CRC-32 of the segments, their sizes and checksums (0.6 ms for 500 Doom frames; HDF5's Fletcher-32 took 4)."""
    crc = zlib.crc32(frames.data)
    return zlib.crc32(frames.adler.astype("<u4").tobytes(), zlib.crc32(frames.sizes.astype("<i8").tobytes(), crc))


@dataclass(frozen=True)
class Shard:
    """One episode from its shard: per-step arrays (SHARD_DATA), its frames compressed, id and seed."""

    steps: dict[str, np.ndarray]
    frames: frame_codec.EncodedFrames
    episode_id: int
    seed: int


def write_episode_shard(path: str | os.PathLike, steps: Mapping[str, np.ndarray], frames: frame_codec.EncodedFrames,
                        *, episode_id: int, seed: int) -> None:
    """One episode's per-step arrays (keys from SHARD_DATA; `frames` left out) and its compressed frames to
    `path`, atomically (temp name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fh, failed = None, []
    try:
        with dealloc_errors(failed):
            fh = create_h5(tmp)
            for key, arr in steps.items():
                if key == FRAMES:
                    continue
                if key not in SHARD_DATA:
                    raise ValueError(f"not a per-step dataset: {key!r}")
                fh.create_dataset(key, data=arr)
            for key, arr in ((SHARD_SEGMENTS, frames.data), (SHARD_SEGMENT_SIZES, frames.sizes),
                             (SHARD_ADLER, frames.adler)):
                fh.create_dataset(key, data=arr)
            fh.attrs[SHARD_CRC] = _frames_crc(frames)
            fh.attrs[SHARD_KEYFRAME_EVERY] = int(frames.keyframe_every)
            fh.attrs[SHARD_EPISODE_ID] = int(episode_id)
            fh.attrs[SHARD_EPISODE_SEED] = int(seed)
            fh.close()
        if failed:
            raise failed[0]
        # no fsync: a kill cannot lose written pages; after an OS crash a damaged shard is found when merging
        os.replace(tmp, path)
    except BaseException as exc:
        reason = _abandon(fh, tmp, exc, failed)
        if reason:
            raise ArtifactError(f"{path}: write failed ({reason})") from None
        raise


def read_episode_shard(path: str | os.PathLike) -> Shard:
    """A shard's episode; ArtifactError naming it if it cannot be read. A shard of an older version (raw `frames`,
    gzip-1) is compressed here, so its collection resumes."""
    try:
        with h5py.File(path, "r") as fh:
            steps = {key: fh[key][()] for key in SHARD_DATA if key in fh}
            if FRAMES in fh:
                frames = frame_codec.encode(fh[FRAMES][()])
            else:
                frames = frame_codec.EncodedFrames(fh[SHARD_SEGMENTS][()], fh[SHARD_SEGMENT_SIZES][()].astype(np.int64),
                                                   fh[SHARD_ADLER][()], int(fh.attrs[SHARD_KEYFRAME_EVERY]))
                if _frames_crc(frames) != int(fh.attrs[SHARD_CRC]):
                    raise ValueError("its frames do not match their CRC-32")
            return Shard(steps, frames, int(fh.attrs[SHARD_EPISODE_ID]), int(fh.attrs[SHARD_EPISODE_SEED]))
    except (OSError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable episode shard ({_first_line(exc)})") from None
