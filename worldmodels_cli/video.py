"""Animations of frames: GIF (Pillow) or MP4 (imageio-ffmpeg's bundled ffmpeg), chosen by the file suffix."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .runtime.errors import ConfigError
from .store.files import remove_stale_temps

SUFFIXES = (".gif", ".mp4")


def check_video_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"{p}: video must end in {' or '.join(SUFFIXES)}")
    if not p.parent.is_dir():
        raise ConfigError(f"{p}: folder {p.parent} does not exist")
    if p.suffix.lower() == ".mp4" and not mp4_available():
        raise ConfigError(f"{p}: writing MP4 needs imageio-ffmpeg (pip install imageio-ffmpeg); or name a .gif")
    return p


def side_by_side(*columns: np.ndarray, scale: int = 2, gap: int = 2) -> np.ndarray:
    """Frames (T, 64, 64, 3) per column -> (T, 64·scale, W, 3), columns separated by a white gap."""
    t = min(len(c) for c in columns)
    parts = []
    for i, col in enumerate(columns):
        big = np.repeat(np.repeat(col[:t], scale, axis=1), scale, axis=2)
        parts.append(big)
        if i < len(columns) - 1:
            parts.append(np.full((t, big.shape[1], gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=2)


def mp4_available() -> bool:
    """Whether imageio can write MP4 here (its ffmpeg plugin ships the binary in the imageio-ffmpeg package)."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray] | np.ndarray, fps: float = 30.0) -> Path:
    """Write uint8 RGB frames (T, H, W, 3) to a GIF or MP4, atomically (temp name, then rename)."""
    p = check_video_path(path)
    frames = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
    if not frames:
        raise ConfigError(f"{p}: no frames to write")
    remove_stale_temps(p, f".{p.stem}.tmp-")  # left by a writer that was killed
    tmp = p.with_name(f".{p.stem}.tmp-{os.getpid()}{p.suffix}")
    try:
        if p.suffix.lower() == ".gif":
            images = [Image.fromarray(f) for f in frames]
            images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        else:
            import imageio.v2 as imageio

            # even sizes for yuv420p; macro_block_size=1 avoids imageio's resize warning
            h, w = frames[0].shape[:2]
            frames = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0))) for f in frames]
            imageio.mimsave(tmp, frames, format="FFMPEG", fps=fps, macro_block_size=1)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p
