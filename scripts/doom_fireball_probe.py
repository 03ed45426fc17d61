"""How well each V reconstructs Doom's fireballs, by how large they appear (how near they are) (issue 22, item 3).

C can only dodge what V encodes. This plays random-policy episodes (seeds from --seed, each action held 1-10 tics
from one seeded generator, as the data policy) with vizdoom's object labels on, and keeps every 64x64 frame V
would see together with each fireball's coverage of its 64x64 pixels (the engine's label buffer, cropped and
area-averaged as the frame is). Each V then reconstructs the frames from μ, and a fireball's error is the squared
error (per pixel value in [0, 1], averaged over RGB) weighted by its coverage. Fireballs are binned by their
apparent size in 64x64 pixels (a far fireball covers under 2, a near one 32 or more).

    PYTHONPATH=. python scripts/doom_fireball_probe.py --vae data/demo-seed0/round0/vae.h5 [--vae OTHER] \
        [--episodes 10] [--seed 1000] [--png fireballs.png]

One JSON line per V: `frame_mse` over all pixels; per size bin the number of fireballs, their mean error
(`mse`) and `kept`, the share of the fireball's own contrast that the reconstruction keeps:
1 - err(recon) / err(frame with the fireball's pixels replaced by the reconstruction's surroundings), estimated
as 1 - mse / contrast where `contrast` is the mean squared difference between the fireball's pixels and the
median of the frame's pixels around it (a 5-pixel ring). 1: drawn as it is; 0 or below: not drawn at all.
Every V sees the same frames.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

from worldmodels_cli.config import preset
from worldmodels_cli.game.envs import DoomEnv
from worldmodels_cli.models.vae import load_vae, to_input

BINS = ((0.0, 2.0, "far (<2 px)"), (2.0, 8.0, "mid (2-8 px)"), (8.0, 32.0, "near (8-32 px)"),
        (32.0, float("inf"), "close (>=32 px)"))


def coverage64(mask: np.ndarray) -> np.ndarray:
    """A boolean label mask (H, W) -> the fraction of each of the 64x64 pixels it covers."""
    return np.asarray(Image.fromarray(mask.astype(np.float32)).resize((64, 64), Image.BOX), dtype=np.float32)


def play(episodes: int, seed: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """-> frames (N, 64, 64, 3) uint8, and (frame index, coverage (64, 64)) of every fireball in them."""
    env = DoomEnv(preset("doom", "small").env, labels=True)
    rng = np.random.default_rng(seed)
    frames, balls = [], []
    try:
        for ep in range(episodes):
            frame = env.reset(seed + ep)
            held, action = 0, 0.0
            while True:
                buf, names = env.labels()
                for value, name in names.items():
                    if name.endswith("Ball"):
                        cov = coverage64(buf == value)
                        if cov.sum() > 0:
                            balls.append((len(frames), cov))
                frames.append(frame)
                if held == 0:
                    held, action = int(rng.integers(1, 11)), float(rng.uniform(-1, 1))
                held -= 1
                step = env.step(action)
                if step.terminated or step.truncated:
                    break
                frame = step.obs
    finally:
        env.close()
    return np.stack(frames), balls


def reconstruct(vae_path: str, frames: np.ndarray) -> np.ndarray:
    """V's reconstruction from μ, float (N, 64, 64, 3) in [0, 1]."""
    vae, _ = load_vae(vae_path)
    out = []
    with torch.no_grad():
        for i in range(0, len(frames), 256):
            mu, _ = vae.encode(to_input(torch.from_numpy(frames[i:i + 256])))
            out.append(vae.decode(mu).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Grow a boolean (64, 64) mask by `steps` pixels (4-neighbourhood)."""
    m = mask.copy()
    for _ in range(steps):
        p = np.pad(m, 1)
        m = m | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return m


def contrast(frame: np.ndarray, cov: np.ndarray) -> float:
    """Mean squared difference (coverage-weighted) between the fireball's pixels and the median of a 5-pixel ring
    around it: what a reconstruction that leaves the fireball out gets wrong."""
    inside = cov > 0
    ring = dilate(inside, 5) & ~inside
    if not ring.any():
        return float("nan")
    surround = np.median(frame[ring], axis=0)
    d = ((frame - surround) ** 2).mean(axis=-1)
    return float((d * cov).sum() / cov.sum())


def score(frames: np.ndarray, balls, recon: np.ndarray) -> dict:
    x = frames.astype(np.float32) / 255.0
    err = ((recon - x) ** 2).mean(axis=-1)  # (N, 64, 64)
    rows = []
    for idx, cov in balls:
        rows.append((cov.sum(), float((err[idx] * cov).sum() / cov.sum()), contrast(x[idx], cov)))
    rows = np.array(rows, dtype=np.float64).reshape(-1, 3)
    out = {"frames": len(frames), "fireballs": len(rows), "frame_mse": round(float(err.mean()), 6), "bins": {}}
    for lo, hi, label in BINS:
        r = rows[(rows[:, 0] >= lo) & (rows[:, 0] < hi)]
        c = r[np.isfinite(r[:, 2]) & (r[:, 2] > 0)]
        out["bins"][label] = {"count": len(r), "mse": round(float(r[:, 1].mean()), 6) if len(r) else None,
                              "kept": round(float(1 - c[:, 1].mean() / c[:, 2].mean()), 3) if len(c) else None}
    return out


def picture(path: str, frames: np.ndarray, balls, recons: list[np.ndarray], n: int = 8) -> None:
    """Frames with fireballs of every size (top row) and each V's reconstruction under them, 3x enlarged."""
    sizes = np.array([cov.sum() for _, cov in balls])
    picks = [balls[i][0] for i in np.argsort(sizes)[np.linspace(0, len(sizes) - 1, n).astype(int)]]
    rows = [np.concatenate(list(frames[picks]), axis=1)]
    rows += [np.concatenate(list((r[picks] * 255).round().astype(np.uint8)), axis=1) for r in recons]
    Image.fromarray(np.concatenate(rows, axis=0)).resize((64 * n * 3, 64 * len(rows) * 3), Image.NEAREST).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", action="append", required=True, help="a Doom vae artifact (repeat to compare)")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--png", help="also save frames with fireballs of every size and each V's reconstruction")
    args = ap.parse_args()
    torch.set_num_threads(1)
    frames, balls = play(args.episodes, args.seed)
    recons = []
    for path in args.vae:
        recons.append(reconstruct(path, frames))
        print(json.dumps({"vae": path, "episodes": args.episodes, "seed": args.seed,
                          **score(frames, balls, recons[-1])}), flush=True)
    if args.png and balls:
        picture(args.png, frames, balls, recons)


if __name__ == "__main__":
    main()
