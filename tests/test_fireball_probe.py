"""scripts/doom_fireball_probe.py's measure on frames whose answer is known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "doom_fireball_probe", Path(__file__).resolve().parents[1] / "scripts" / "doom_fireball_probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def _scene(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grey frame with a yellow square `size` pixels wide -> (frame uint8, coverage, the frame without it)."""
    bare = np.full((64, 64, 3), 90, np.uint8)
    frame = bare.copy()
    frame[20:20 + size, 30:30 + size] = (250, 230, 60)
    mask = np.zeros((100, 160), bool)  # at the label buffer's size, as the probe gets it
    mask[round(20 * 100 / 64):round((20 + size) * 100 / 64), round(30 * 160 / 64):round((30 + size) * 160 / 64)] = True
    return frame, probe.coverage64(mask), bare


def test_a_perfect_reconstruction_keeps_every_fireball_and_a_blank_one_none():
    frames, balls, bare = [], [], []
    for i, size in enumerate((1, 2, 4, 8)):  # one per size bin: about 1, 4, 16, 64 pixels
        f, cov, b = _scene(size)
        frames.append(f)
        balls.append((i, cov))
        bare.append(b)
    frames = np.stack(frames)
    perfect = probe.score(frames, balls, frames.astype(np.float32) / 255)
    blank = probe.score(frames, balls, np.stack(bare).astype(np.float32) / 255)
    for label in ("far (<2 px)", "mid (2-8 px)", "near (8-32 px)", "close (>=32 px)"):
        assert perfect["bins"][label]["count"] == 1
        assert perfect["bins"][label]["mse"] == 0 and perfect["bins"][label]["kept"] == 1
    for label in ("near (8-32 px)", "close (>=32 px)"):  # fully covered pixels: the blank V keeps nothing
        assert abs(blank["bins"][label]["kept"]) < 0.05 and blank["bins"][label]["mse"] > 0.2
    assert blank["bins"]["far (<2 px)"]["kept"] < 0.5  # partly covered pixels still hold some of the grey


def test_dilate_grows_by_the_four_neighbourhood():
    m = np.zeros((64, 64), bool)
    m[10, 10] = True
    assert probe.dilate(m, 2).sum() == 13  # a diamond of radius 2
