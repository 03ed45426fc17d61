"""`wm dream`: dream rollouts (a controller's or the random policy's) decoded through V into an animated GIF.

An ensemble of Ms (docs/pessimism.md) dreams with all its members: under each episode a bar shows the members'
disagreement at that step (its length: the disagreement over twice the threshold, the threshold at the middle tick;
red when the step is unknown), `<out>.disagreement.png` plots it along each episode, and the summary line and the
metrics give each episode's unknown steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import tracking
from ..dream.program import dream_rollouts
from ..runtime import Runtime
from ..store.artifacts import inputs_record
from ..store.metrics import MetricsWriter, metrics_path


# ------------------------------------------------------------------------------------------ wm dream
@dataclass
class DreamRunResult:
    out: Path
    episodes: int
    lengths: list[int]
    returns: list[float]
    frames: int
    unknown: list[int] | None = None  # an ensemble's: unknown steps of each episode
    first_unknown: list[int | None] | None = None  # the first (counting from 1), None for an episode without one
    threshold: float | None = None

    def line(self) -> str:
        mean = float(np.mean(self.returns))
        line = (f"{self.out}: {self.episodes} dream episode(s), {self.frames} frames, lengths {self.lengths}, "
                f"mean return {mean:.1f}")
        if self.unknown is not None:
            first = ["-" if f is None else f for f in self.first_unknown]
            line += (f"; members' disagreement over {self.threshold:.4g} at {self.unknown} steps, first at step "
                     f"{first}")
        return line


def run(cfg, vae_path, mdn_path, out, *, controller_path=None,
        runtime: Runtime = Runtime()) -> DreamRunResult:
    """`wm dream`: dream `cfg.episodes` rollouts (the controller's, else the random policy) at `cfg.temperature`,
    decode every z through V's decoder, and write them side by side as an animated GIF."""
    seed, device = runtime.seed, runtime.device
    from ..models.controller import load_controller
    from ..models.dynamics import memory_widths
    from ..models.dynamics import name as dynamics_name
    from ..models.ensemble import is_ensemble, load_ensemble
    from ..models.mdnrnn import load_initial_z, load_mdn
    from ..models.vae import load_vae
    from ..runtime import seeding
    from ..runtime.device import resolve
    from ..runtime.errors import ArtifactError
    from ..store.files import check_writable
    from ..video import check_video_path, write_video
    from .evolve import check_pessimism

    dev = resolve(device)
    check_video_path(out)
    out = Path(out)
    check_writable(out)
    mdn, mdn_meta = load_mdn(mdn_path, dev)
    check_pessimism(cfg.pessimism, mdn_path)
    ensemble = load_ensemble(mdn_path, dev) if is_ensemble(mdn_path) else None  # the disagreement is shown
    mu0, lv0 = load_initial_z(mdn_path)
    vae, vae_meta = load_vae(vae_path, dev)
    if vae_meta.env != mdn_meta.env:
        raise ArtifactError(f"{vae_path}: a {vae_meta.env} V, but {mdn_path} is a {mdn_meta.env} M")
    if vae.config.z_dim != mdn.cfg.z_dim:
        raise ArtifactError(f"{vae_path}: V's latent size {vae.config.z_dim} differs from M's {mdn.cfg.z_dim} "
                            f"({mdn_path}); use the V that M's series was encoded with")
    controller = params = None
    if controller_path is not None:
        controller, params, c_meta = load_controller(controller_path)
        if c_meta.env != mdn_meta.env:
            raise ArtifactError(f"{controller_path}: a {c_meta.env} controller, but {mdn_path} is a {mdn_meta.env} M")
        if controller.dynamics != dynamics_name(mdn):
            raise ArtifactError(f"{controller_path}: a controller for an {controller.dynamics} M, but {mdn_path} is "
                                f"an {dynamics_name(mdn)}")
        h, c = memory_widths(mdn)
        want = (mdn.cfg.z_dim, h, mdn.cfg.action_dim)
        if (controller.z_dim, controller.hidden, controller.action_dim) != want or controller.cell != c:
            raise ArtifactError(f"{controller_path}: controller sizes (z {controller.z_dim}, h {controller.hidden}, "
                                f"c {controller.cell}, a {controller.action_dim}) do not match M's (z {want[0]}, "
                                f"h {h}, c {c}, a {want[2]}) ({mdn_path})")
        params = params[None, :]
    seeds = np.array([[seeding.derive(seed, "dream", i) for i in range(cfg.episodes)]], dtype=np.int64)
    res = dream_rollouts(ensemble or mdn, seeds, mu0, lv0, controller=controller, params=params,
                         env=mdn_meta.env or None, tau=cfg.temperature, max_steps=cfg.max_steps, compact=False,
                         record_z=True, pessimism=cfg.pessimism, penalty=cfg.pessimism_penalty,
                         record_disagreement=ensemble is not None)
    lengths = res.lengths[0].tolist()
    pictures = _decode_episodes(vae, res.z[0], lengths, dev,
                                None if ensemble is None else (res.disagreement[0], ensemble.threshold))
    frames = [np.repeat(np.repeat(f, cfg.scale, axis=0), cfg.scale, axis=1) for f in pictures]
    write_video(out, frames, fps=cfg.fps)
    returns = res.returns[0].tolist()
    result = DreamRunResult(out, cfg.episodes, lengths, returns, len(frames))
    per_episode: list[dict] = [{} for _ in lengths]
    if ensemble is not None:
        from ..plots import disagreement_plot

        d, thr = res.disagreement[0], ensemble.threshold
        over = d > thr  # NaN after an episode's end is never over
        result.unknown, result.threshold = res.unknown[0].tolist(), thr
        result.first_unknown = [int(row.argmax()) + 1 if row.any() else None for row in over]
        per_episode = [{"dream/unknown_steps": n, "dream/mean_disagreement": float(np.nanmean(row)),
                        "dream/max_disagreement": float(np.nanmax(row))} for n, row in zip(result.unknown, d, strict=True)]
        disagreement_plot(d, thr, out.with_name(out.stem + ".disagreement.png"), title=f"members' disagreement: {out.name}")
    inputs = {"vae": vae_path, "mdn": mdn_path, **({"controller": controller_path} if controller_path else {})}
    config = {"dream": cfg.to_dict(), "inputs": inputs_record(inputs)}
    writer = MetricsWriter(metrics_path(out), truncate=True)  # each dream replaces the GIF, and its metrics
    with tracking.start(writer, out, runtime, stage="dream", config=config, step_key="dream/episode"):
        for i, (length, ret) in enumerate(zip(lengths, returns, strict=True)):
            writer.write({"dream/episode": i, "dream/length": length, "dream/return": ret, **per_episode[i]})
        writer.write({"dream/mean_length": float(np.mean(lengths)), "dream/mean_return": float(np.mean(returns))})
        writer.image("dream/rollouts", out, 0)
    return result


BAR = 6  # rows of the disagreement bar under each picture


def _bar(d: float, threshold: float, width: int = 64) -> np.ndarray:
    """(BAR, width, 3) uint8: the disagreement d as a bar, full at twice the threshold, a white tick at the threshold,
    green when known, red when unknown; black for a step the episode did not reach (NaN)."""
    bar = np.zeros((BAR, width, 3), dtype=np.uint8)
    if np.isfinite(d):
        n = int(round(min(d / max(threshold, 1e-12), 2.0) / 2.0 * width))
        bar[1:-1, :n] = (220, 40, 40) if d > threshold else (40, 200, 80)
    bar[:, width // 2] = 255
    return bar


@torch.no_grad()
def _decode_episodes(vae, z: np.ndarray, lengths: list[int], device: str,
                     disagreement: tuple[np.ndarray, float] | None = None, batch: int = 256) -> list[np.ndarray]:
    """z (N, T+1, Z) -> GIF frames (H, W·N, 3) uint8: episodes side by side, each holding its last picture after
    its end (a 2-pixel gap between them). `disagreement` ((N, T) per step, threshold): a bar under each picture."""
    n, t_max = z.shape[0], max(lengths)  # episode i shows z0..z_{len-1}: the frames it saw before acting
    from ..store.metrics import progress

    tiles = []
    with progress(int(sum(lengths)), "dream: decode", unit="frame") as bar:
        for i in range(n):
            zi = torch.as_tensor(z[i, : lengths[i]], dtype=torch.float32, device=device)
            pics = torch.cat([vae.decode(zi[j : j + batch]) for j in range(0, len(zi), batch)])  # (L, 3, 64, 64)
            tiles.append((pics.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
            bar.update(lengths[i])
    height = 64 + (BAR if disagreement is not None else 0)
    gap = np.zeros((height, 2, 3), dtype=np.uint8)
    frames = []
    for t in range(t_max):
        row = []
        for i, tile in enumerate(tiles):
            if i:
                row.append(gap)
            k = min(t, len(tile) - 1)
            picture = tile[k]
            if disagreement is not None:  # step k's disagreement: about the frame after this one
                picture = np.concatenate([picture, _bar(float(disagreement[0][i, k]), disagreement[1])], axis=0)
            row.append(picture)
        frames.append(np.concatenate(row, axis=1))
    return frames
