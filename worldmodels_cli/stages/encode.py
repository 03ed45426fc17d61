"""`wm encode`: rollouts -> series (ref §2.3): μ and logσ² of every frame under V (not z: M draws a fresh
z = μ + σ·ε every batch, ref §4), with the actions, rewards, flags and episode index, in episode order.

Streaming and resumable: the episodes of each input are cut into blocks of whole episodes (about `block_frames`
frames); each block is encoded in batches and written atomically to `<out>.parts/` as a small series file. A kill
loses at most the block in progress; rerunning the same command skips the blocks already there. When every block
is done they are merged into `<out>` (atomically) and the parts folder is removed. Memory: one block.

Several inputs are concatenated in the order given; their episode ids are renumbered so they stay unique (input k's
ids are offset by the sum of (max id + 1) of the inputs before it); episode seeds are kept as they are.

`mirror` appends, after all the inputs, each input again seen in a left-right mirror: frames flipped horizontally
and actions mirrored (`envs.mirror_actions`: Doom's left and right swap). The game is left-right symmetric, so
this doubles M's data for the price of encoding it, and whatever M learns about one wall it learns about the other:
a controller that found one side safe in the dream cannot simply switch to the other (docs/pipeline.md, small preset).
An existing `<out>` made from the same inputs is reported as done; any other existing `<out>` is refused.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from .. import tracking
from ..game.envs import mirror_actions
from ..models.vae import kl_divergence, load_vae, to_input
from ..runtime import Runtime
from ..runtime import device as device_mod
from ..runtime.errors import ArtifactError, ConfigError
from ..store import artifacts as A
from ..store import files, metrics, runs
from ..store import frames as frames_mod

log = logging.getLogger(__name__)

BLOCK_FRAMES = 4096  # frames per part file (whole episodes): ~50 MB of uint8 frames in memory at a time

@dataclass(frozen=True)
class Result:
    out: Path
    episodes: int
    frames: int
    z_dim: int
    blocks: int
    blocks_reused: int
    frames_per_s: float
    already_done: bool = False

    def line(self) -> str:
        """The one summary line `wm encode` prints."""
        if self.already_done:
            return f"{self.out}: already encoded ({self.episodes} episodes, {self.frames} frames); nothing to do"
        reused = f", {self.blocks_reused} of {self.blocks} blocks from an earlier run" if self.blocks_reused else ""
        return (f"{self.out}: series of {self.episodes} episodes, {self.frames} frames, z={self.z_dim}{reused} "
                f"({self.frames_per_s:.0f} frames/s)")


@dataclass(frozen=True)
class _Block:
    source: int  # input position (mirrored copies come after the inputs: source - len(inputs) is the file)
    number: int  # block number within the input
    episodes: np.ndarray  # positions in the input's episode index, in index order
    mirror: bool = False

    def path(self, parts: Path) -> Path:
        return parts / f"{self.source:03d}-{self.number:06d}.h5"


def plan_blocks(index: A.EpisodeIndex, source: int, block_frames: int = BLOCK_FRAMES, mirror: bool = False) -> list[_Block]:
    """Consecutive episodes (in index order) grouped until each group holds >= block_frames frames."""
    blocks, current, n = [], [], 0
    for e, length in enumerate(index.lengths.tolist()):
        current.append(e)
        n += length
        if n >= block_frames:
            blocks.append(_Block(source, len(blocks), np.asarray(current, np.int64), mirror))
            current, n = [], 0
    if current:
        blocks.append(_Block(source, len(blocks), np.asarray(current, np.int64), mirror))
    return blocks


@torch.no_grad()
def encode_frames(model, frames_u8: np.ndarray, device: str, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 64, 64, 3) -> mu, logvar (N, Z) float32, in batches, float32 arithmetic."""
    mus, logvars = [], []
    for i in range(0, len(frames_u8), batch_size):
        x = to_input(torch.from_numpy(frames_u8[i : i + batch_size]).to(device))  # (B, 3, 64, 64)
        mu, logvar = model.encode(x)
        mus.append(mu.float().cpu().numpy())
        logvars.append(logvar.float().cpu().numpy())
    z = model.config.z_dim
    cat = (lambda xs: np.concatenate(xs)) if mus else (lambda xs: np.zeros((0, z), np.float32))
    return cat(mus), cat(logvars)


def _encode_block(model, fh: h5py.File, index: A.EpisodeIndex, block: _Block, part: Path, device: str,
                  batch_size: int, env: str, with_env_actions: bool) -> int:
    """Encode one block's episodes and write them as a series part file; returns its frame count."""
    spans = [(int(index.starts[e]), int(index.lengths[e])) for e in block.episodes]
    frames = np.concatenate([fh[A.FRAMES][s : s + n] for s, n in spans]) if spans else np.zeros((0, 64, 64, 3), np.uint8)
    if block.mirror:
        frames = np.ascontiguousarray(frames[:, :, ::-1])  # (N, H, W, C): flip W
    mu, logvar = encode_frames(model, frames, device, batch_size)
    step_keys = (*A.STEP_DATA, A.ENV_ACTIONS) if with_env_actions else A.STEP_DATA
    steps = {key: np.concatenate([fh[key][s : s + n] for s, n in spans]) for key in step_keys}
    if block.mirror:
        steps[A.ACTIONS], mirrored = mirror_actions(env, steps[A.ACTIONS], steps.get(A.ENV_ACTIONS))
        if with_env_actions:
            steps[A.ENV_ACTIONS] = mirrored
    for key in (A.ACTIONS, A.REWARDS):  # M trains on them: NaN here would only surface as a NaN loss
        if not np.isfinite(steps[key]).all():
            raise ArtifactError(f"{fh.filename}: {key} holds NaN or inf (damaged rollouts artifact)")
    with A.atomic_write(part, "series", env=env) as out:
        out.create_dataset(A.MU, data=mu)
        out.create_dataset(A.LOGVAR, data=logvar)
        for key in step_keys:
            out.create_dataset(key, data=steps[key])
        lengths = index.lengths[block.episodes]
        A.write_episode_index(out, A.EpisodeIndex(
            starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64), lengths=lengths,
            seeds=index.seeds[block.episodes], ids=index.ids[block.episodes]))
    return len(frames)


def run(rollouts: Sequence[str | Path], vae: str | Path, out: str | Path, *, batch_size: int = 1000,
        block_frames: int = BLOCK_FRAMES, mirror: bool = False, runtime: Runtime = Runtime()) -> Result:
    """Encode `rollouts` with the VAE artifact `vae` into the series artifact `out` (see the module doc)."""
    seed, device = runtime.seed, runtime.device
    out = Path(out)
    rollouts = [Path(p) for p in rollouts]
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    env = frames_mod.rollouts_env(rollouts)
    dev = device_mod.resolve(device)
    model, vmeta = load_vae(vae, dev)
    if vmeta.env and vmeta.env != env:
        raise ConfigError(f"{rollouts[0]} holds {env} frames but the VAE {vae} was trained on {vmeta.env}")
    files.check_writable(out)

    indexes, action_dims, env_actions = [], set(), True
    for p in rollouts:
        with A.open_artifact(p, "rollouts") as fh:
            indexes.append(A.read_episode_index(fh))
            action_dims.add(int(fh[A.ACTIONS].shape[1]))
            env_actions &= A.ENV_ACTIONS in fh
            if fh[A.FRAMES].shape[1:] != (64, 64, 3):
                raise ArtifactError(f"{p}: frames of shape {fh[A.FRAMES].shape[1:]}, expected (64, 64, 3)")
    if len(action_dims) > 1:
        raise ConfigError(f"the rollouts have different action widths {sorted(action_dims)}; they cannot be mixed")

    inputs = A.inputs_record({"rollouts": rollouts, "vae": vae})
    # μ and logσ² depend on the inputs and the mirroring only (no draw of the seed's reaches them)
    identity = runs.identity({"mirror": mirror}, None, inputs)
    if out.exists():
        meta = A.validate(out, "series")
        existing = runs.identity({"mirror": bool(meta.summary.get("mirror", False))}, None, meta.inputs)
        runs.check_same_run(str(out), existing, identity)
        return Result(out, int(meta.summary.get("episodes", 0)), int(meta.summary.get("frames", 0)),
                      int(meta.summary.get("z_dim", 0)), 0, 0, 0.0, already_done=True)

    parts = runs.work_folder(out, {**identity, "block_frames": block_frames}, "encode")  # the parts' layout too

    if mirror:  # the mirrored copies are sources len(rollouts).. (module doc)
        indexes = indexes + indexes
    n_in = len(rollouts)
    blocks = [b for i, idx in enumerate(indexes) for b in plan_blocks(idx, i, block_frames, mirror=i >= n_in)]
    todo = []
    for b in blocks:
        p = b.path(parts)
        if p.exists():
            try:
                A.validate(p, "series")
                continue
            except ArtifactError:
                p.unlink()  # damaged outside our atomic writes; redo it
        todo.append(b)
    reused = len(blocks) - len(todo)
    if reused:
        log.info("resuming %s: %d of %d blocks already encoded", out, reused, len(blocks))

    t0, done_frames = time.perf_counter(), 0
    total_frames = sum(int(indexes[b.source].lengths[b.episodes].sum()) for b in todo)
    number = {(b.source, b.number): i for i, b in enumerate(blocks)}  # the step of a block's record
    writer = metrics.MetricsWriter(metrics.metrics_path(out), truncate=not reused)
    run_config = {"batch_size": batch_size, "block_frames": block_frames, "mirror": mirror, "inputs": inputs}
    with tracking.start(writer, out, runtime, stage="encode", config=run_config, step_key="encode/block",
                        purge=not reused):  # a resumed encode logs only the blocks it encodes now
        with metrics.progress(total_frames, "encode", unit="frame") as bar:
            current, fh = -1, None
            try:
                for b in todo:
                    if b.source != current:
                        if fh is not None:
                            fh.close()
                        fh, current = h5py.File(rollouts[b.source % n_in], "r"), b.source
                    n = _encode_block(model, fh, indexes[b.source], b, b.path(parts), dev, batch_size, env, env_actions)
                    done_frames += n
                    bar.update(n)
                    writer.write({"encode/block": number[b.source, b.number], "encode/block_frames": n,
                                  "encode/frames_per_s": done_frames / max(time.perf_counter() - t0, 1e-9)})
            finally:
                if fh is not None:
                    fh.close()
        fps = done_frames / max(time.perf_counter() - t0, 1e-9)

        n_frames, n_eps = _merge(out, parts, blocks, indexes, model.config.z_dim, env_actions, action_dims.pop(),
                                 config=vmeta.config, model_config=vmeta.model_config, seed=seed, inputs=inputs,
                                 env=env, mirror=mirror)
        writer.write({"encode/episodes": n_eps, "encode/frames": n_frames, "encode/blocks": len(blocks),
                      "encode/blocks_reused": reused, "encode/seconds": round(time.perf_counter() - t0, 3)})
    shutil.rmtree(parts)
    return Result(out, n_eps, n_frames, model.config.z_dim, len(blocks), reused, fps)


def _merge(out: Path, parts: Path, blocks: list[_Block], indexes: list[A.EpisodeIndex], z_dim: int,
           env_actions: bool, action_dim: int, *, config: dict, model_config: dict, seed: int, inputs: dict,
           env: str, mirror: bool = False) -> tuple[int, int]:
    """Concatenate the part files into the series artifact, one part in memory at a time."""
    offsets, off = [], 0
    for idx in indexes:  # keep ids unique across inputs (module doc)
        offsets.append(off)
        off += int(idx.ids.max()) + 1 if idx.episodes else 0
    starts, lengths, seeds, ids = [], [], [], []
    n, kl_sum = 0, 0.0
    step_keys = (*A.STEP_DATA, A.ENV_ACTIONS) if env_actions else A.STEP_DATA
    with A.atomic_write(out, "series", config=config, seed=seed, inputs=inputs, env=env) as fh:
        A.create_latent_datasets(fh, z_dim)
        A.create_step_datasets(fh, action_dim, env_actions=env_actions)
        for b in blocks:
            with h5py.File(b.path(parts), "r") as part:
                mu, logvar = part[A.MU][()], part[A.LOGVAR][()]
                A.append(fh[A.MU], mu)
                A.append(fh[A.LOGVAR], logvar)
                for key in step_keys:
                    A.append(fh[key], part[key][()])
                idx = A.read_episode_index(part)
            starts.append(idx.starts + n)
            lengths.append(idx.lengths)
            seeds.append(idx.seeds)
            ids.append(idx.ids + offsets[b.source])
            n += len(mu)
            kl_sum += float(kl_divergence(torch.from_numpy(mu).double(), torch.from_numpy(logvar).double()).sum())
        cat = (lambda xs: np.concatenate(xs)) if blocks else (lambda xs: np.zeros(0, np.int64))
        index = A.EpisodeIndex(cat(starts), cat(lengths), cat(seeds), cat(ids))
        A.write_episode_index(fh, index)
        A.set_model_config(fh, model_config)
        A.set_summary(fh, {"episodes": index.episodes, "frames": n, "z_dim": z_dim, "inputs": len(indexes) // (2 if mirror else 1),
                           "mirror": mirror, "kl_per_frame": kl_sum / n if n else None})
    return n, index.episodes
