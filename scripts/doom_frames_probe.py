"""What Doom's screen settings change in the 64x64 frames V sees (issue 22, fidelity).

Plays the same episodes (seed, and a random policy holding each action 1-10 tics from a seeded generator) in two
env settings side by side and compares the frames step by step: the mean absolute difference per pixel value, the
fraction of frames that differ at all, and whether the episodes stay in lockstep (the game logic must not depend on
the drawing). Run: `python scripts/doom_frames_probe.py --episodes 20` (prints one JSON line per comparison).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from worldmodels_cli.config import EnvConfig
from worldmodels_cli.game.envs import make_env


def compare(a: EnvConfig, b: EnvConfig, episodes: int, seed: int) -> dict:
    env_a, env_b = make_env(a), make_env(b)
    rng = np.random.default_rng(seed)
    diffs, differing, frames, desync = [], 0, 0, 0
    try:
        for ep in range(episodes):
            fa, fb = env_a.reset(seed + ep), env_b.reset(seed + ep)
            held, action = 0, 0.0
            for _ in range(a.max_steps):
                d = np.abs(fa.astype(np.int16) - fb.astype(np.int16))
                diffs.append(float(d.mean()))
                differing += bool(d.any())
                frames += 1
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
    return {"frames": frames, "mean_abs_diff": float(np.mean(diffs)), "max_frame_mad": float(np.max(diffs)),
            "frames_differing": differing / max(frames, 1), "desynced_episodes": desync}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args()
    base = EnvConfig(name="doom", max_steps=2100, doom_screen_flashes=False)
    probes = {
        "160x120 vs 640x480 (flashes off)": (base, base.replace(doom_resolution="640x480")),
        "flashes on vs off (160x120)": (base.replace(doom_screen_flashes=True), base),
        "160x120 vs 640x480 (flashes on)": (base.replace(doom_screen_flashes=True),
                                            base.replace(doom_resolution="640x480", doom_screen_flashes=True)),
    }
    for name, (a, b) in probes.items():
        print(json.dumps({"probe": name, "episodes": args.episodes, **compare(a, b, args.episodes, args.seed)}))


if __name__ == "__main__":
    main()
