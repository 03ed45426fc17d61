"""PNG figures written beside artifacts: frames vs reconstructions, and loss curves from metrics records."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def recon_grid(frames: np.ndarray, recons: np.ndarray, out_png: str | os.PathLike, *, cols: int = 8,
               scale: int = 2, gap: int = 2) -> Path:
    """Save pairs of rows: originals (N, 64, 64, 3) uint8 above their reconstructions, `cols` frames per row,
    each pixel `scale`x, on a white background. Returns the PNG path."""
    from PIL import Image

    if frames.shape != recons.shape:
        raise ValueError(f"frames {frames.shape} and reconstructions {recons.shape} differ in shape")
    n, h, w = frames.shape[:3]
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    cell_h, cell_w = h + gap, w + gap
    canvas = np.full((rows * 2 * cell_h + rows * gap, cols * cell_w, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y = r * (2 * cell_h + gap)
        x = c * cell_w
        canvas[y : y + h, x : x + w] = frames[i]
        canvas[y + cell_h : y + cell_h + h, x : x + w] = recons[i]
    img = Image.fromarray(canvas)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return _save_atomically(Path(out_png), lambda tmp: img.save(tmp, format="PNG"))


def loss_curves(metrics_records: Sequence[dict[str, Any]], keys: Sequence[str], out_png: str | os.PathLike, *,
                x_key: str = "step", title: str | None = None) -> Path | None:
    """Plot each of `keys` against `x_key` from metrics JSONL records (records lacking a key are skipped; a
    non-finite value, stored as null, is dropped). One panel per key. Returns the path, or None if no key
    has data."""
    series = {}
    for key in keys:
        pts = [(r[x_key], r[key]) for r in metrics_records
               if x_key in r and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if pts:
            series[key] = pts
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), squeeze=False)
    for ax, (key, pts) in zip(axes[0], series.items(), strict=True):
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return _save_atomically(Path(out_png), lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    finally:
        plt.close(fig)


def disagreement_plot(d: np.ndarray, threshold: float, out_png: str | os.PathLike, *, title: str | None = None) -> Path:
    """An ensemble's disagreement along each dream episode (d (N, T), NaN after an episode's end) against the
    threshold over which a step is unknown (docs/pessimism.md)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for i, row in enumerate(d):
        ax.plot(np.arange(1, len(row) + 1), row, linewidth=1, label=f"episode {i}")
    ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel("dream step")
    ax.set_ylabel("disagreement")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        return _save_atomically(Path(out_png), lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    finally:
        plt.close(fig)


def _save_atomically(out_png: Path, save) -> Path:
    """`save(tmp)` then rename onto `out_png`, as every artifact is written: a killed writer's temp file is removed
    by the next write, a failed one at once."""
    from .store.files import remove_stale_temps

    remove_stale_temps(out_png)
    tmp = out_png.with_name(f".{out_png.name}.tmp-{os.getpid()}")
    try:
        save(tmp)
        os.replace(tmp, out_png)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_png
