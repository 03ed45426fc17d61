"""What Doom's screen settings change in the 64x64 frames V sees (issue 22, fidelity).

Plays the same episodes (seed, and a random policy holding each action 1-10 tics from a seeded generator) in two
env settings side by side and compares the frames step by step: the mean absolute difference per pixel value, the
fraction of frames that differ at all, and whether the episodes stay in lockstep (the game logic must not depend on
the drawing). With `--vae V` (repeatable), also each V's reconstruction error (from μ; the summed squared error
per frame of V's loss, values in [0, 1]) on either setting's frames: what a setting V was not trained on costs it.
Run: `PYTHONPATH=. python scripts/doom_frames_probe.py --episodes 20 [--vae V ...]` (one JSON line per comparison).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from worldmodels_cli.config import EnvConfig
from worldmodels_cli.game.envs import make_env
from worldmodels_cli.models.vae import load_vae
from worldmodels_cli.stages.train_vae import reconstruct


def compare(a: EnvConfig, b: EnvConfig, episodes: int, seed: int, vaes: list[str]) -> dict:
    env_a, env_b = make_env(a), make_env(b)
    rng = np.random.default_rng(seed)
    diffs, differing, frames, desync = [], 0, 0, 0
    kept_a, kept_b = [], []
    try:
        for ep in range(episodes):
            fa, fb = env_a.reset(seed + ep), env_b.reset(seed + ep)
            held, action = 0, 0.0
            for _ in range(a.max_steps):
                d = np.abs(fa.astype(np.int16) - fb.astype(np.int16))
                diffs.append(float(d.mean()))
                differing += bool(d.any())
                frames += 1
                if vaes:
                    kept_a.append(fa)
                    kept_b.append(fb)
                if held == 0:
                    held, action = int(rng.integers(1, 11)), float(rng.uniform(-1, 1))
                held -= 1
                sa, sb = env_a.step(action), env_b.step(action)
                if (sa.terminated, sa.truncated) != (sb.terminated, sb.truncated):
                    desync += 1
                    break
                if sa.terminated or sa.truncated:
                    break
                fa, fb = sa.obs, sb.obs
    finally:
        env_a.close()
        env_b.close()
    out = {"frames": frames, "mean_abs_diff": float(np.mean(diffs)), "max_frame_mad": float(np.max(diffs)),
           "frames_differing": differing / max(frames, 1), "desynced_episodes": desync}
    for path in vaes:
        out[f"recon {path}"] = [recon_error(path, np.stack(kept)) for kept in (kept_a, kept_b)]
    return out


def recon_error(vae_path: str, frames: np.ndarray) -> float:
    """V's summed squared error per frame, from μ, values in [0, 1] (the recon term of its loss)."""
    vae, _ = load_vae(vae_path)
    err = (reconstruct(vae, frames, "cpu").astype(np.float32) - frames.astype(np.float32)) / 255.0
    return float((err**2).sum(axis=(1, 2, 3)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--vae", action="append", default=[], help="also score this V on both settings' frames")
    args = ap.parse_args()
    base = EnvConfig(name="doom", max_steps=2100, doom_screen_flashes=False)
    probes = {
        "160x120 vs 640x480 (flashes off)": (base, base.replace(doom_resolution="640x480")),
        "flashes on vs off (160x120)": (base.replace(doom_screen_flashes=True), base),
        "160x120 vs 640x480 (flashes on)": (base.replace(doom_screen_flashes=True),
                                            base.replace(doom_resolution="640x480", doom_screen_flashes=True)),
    }
    for name, (a, b) in probes.items():
        print(json.dumps({"probe": name, "episodes": args.episodes, **compare(a, b, args.episodes, args.seed, args.vae)}))


if __name__ == "__main__":
    main()
