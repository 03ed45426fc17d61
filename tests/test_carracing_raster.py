"""carracing_raster draws what pygame draws, bit for bit (worldmodels_cli/game/carracing_raster.py).

Each compiled routine is compared with the pygame call it reproduces on the same 1000x800 window CarRacing uses:
random polygons (convex, not, degenerate, clipped, off the window, past Sint16), drawn in sequence over what is
already there (the anti-aliased edges blend with it), and smoothscale of random and of real frames.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
pytest.importorskip("numba")
pygame = pytest.importorskip("pygame")
from pygame import gfxdraw  # noqa: E402

from worldmodels_cli.game import carracing_raster as raster  # noqa: E402
from worldmodels_cli.game.carracing_render import compiled_unavailable, sint16  # noqa: E402

W, H, OUT = 1000, 800, 96
pytestmark = pytest.mark.skipif(compiled_unavailable() is not None, reason=str(compiled_unavailable()))


def surface_pixels(surf) -> np.ndarray:
    return pygame.surfarray.pixels2d(surf).T & 0xFFFFFF  # (H, W) 0x00RRGGBB


def canvas_pixels(cv, flip: bool = False) -> np.ndarray:
    out = np.zeros((H, W), np.uint32)
    raster.canvas_pixels(cv, out)
    return out[::-1] if flip else out


def random_polygon(rng, kind: str) -> np.ndarray:
    """(n, 2) float vertices around the window: kind 'small', 'large', 'huge' (past Sint16), 'star' (not convex),
    'thin' (collinear or nearly), 'axis' (horizontal and vertical edges), 'edge' (on the window's borders)."""
    centre = rng.uniform([-200, -200], [W + 200, H + 200])
    if kind == "small":
        return centre + rng.uniform(-30, 30, (int(rng.integers(3, 6)), 2))
    if kind == "large":
        return centre + rng.uniform(-900, 900, (4, 2))
    if kind == "huge":
        return centre + rng.uniform(-40000, 40000, (4, 2))
    if kind == "star":
        n = int(rng.integers(5, 9))
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(20, 400, n)
        return centre + np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    if kind == "thin":
        d = rng.uniform(-500, 500, 2)
        return centre + np.outer(rng.uniform(-1, 1, int(rng.integers(3, 5))), d) + rng.uniform(-0.9, 0.9, (1, 2))
    if kind == "axis":
        x0, y0 = centre
        x1, y1 = centre + rng.uniform(-300, 300, 2)
        return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    if kind == "edge":
        return np.array([(0, rng.uniform(0, H)), (W - 1, rng.uniform(0, H)), (rng.uniform(0, W), H - 1),
                         (rng.uniform(0, W), 0.0)])[: int(rng.integers(3, 5))]
    raise ValueError(kind)


KINDS = ("small", "large", "huge", "star", "thin", "axis", "edge")


@pytest.mark.parametrize("flip", [False, True])
def test_gfx_polygons_as_gfxdraw(flip):
    """aapolygon then filled_polygon (gymnasium's order), 8 polygons a window over 7 windows per kind, each
    window compared whole; with flip the canvas stores the rows upside down."""
    rng = np.random.default_rng(1 + flip)
    drawn = flagged = 0
    for kind in KINDS:
        for _ in range(7):
            surf = pygame.Surface((W, H))
            bg = int(rng.integers(0, 1 << 24))
            surf.fill(bg)
            cv = raster.new_canvas(H, W, OUT)
            raster.fill(cv, bg)
            for _ in range(8):
                pts = random_polygon(rng, kind)
                color = tuple(int(c) for c in rng.integers(0, 256, 3))
                points = [tuple(p) for p in pts.tolist()]
                gfxdraw.aapolygon(surf, points, color)
                gfxdraw.filled_polygon(surf, points, color)
                vx, vy = sint16(pts[:, 0]), sint16(pts[:, 1])  # with flip, the canvas mirrors the rows itself
                packed = np.array([(color[0] << 16) | (color[1] << 8) | color[2]], np.int64)
                raster.gfx_polygons(cv, vx[None], vy[None], packed, flip)
                drawn += 1
            if cv[2][1]:  # something pygame leaves to the C library (below): not compared, the caller uses pygame
                assert kind == "huge", f"{kind}: status set"
                flagged += 1
                continue
            want, got = surface_pixels(surf), canvas_pixels(cv, flip)
            differ = np.argwhere(want != got)
            assert len(differ) == 0, f"{kind}: {len(differ)} pixels differ, first (row, col) {differ[0].tolist()}"
    assert drawn == 8 * 7 * len(KINDS) and flagged < 7  # some windows past Sint16 compared too


@pytest.mark.parametrize("which", ["aapolygon", "filled_polygon"])
def test_aapolygon_and_filled_polygon_alone(which):
    rng = np.random.default_rng(3)
    for kind in KINDS:
        surf = pygame.Surface((W, H))
        surf.fill((102, 204, 102))
        cv = raster.new_canvas(H, W, OUT)
        raster.fill(cv, 0x66CC66)
        for _ in range(10):
            pts = random_polygon(rng, kind)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            getattr(gfxdraw, which)(surf, [tuple(p) for p in pts.tolist()], color)
            getattr(raster, which)(cv, sint16(pts[:, 0]), sint16(pts[:, 1]), (color[0] << 16) | (color[1] << 8) | color[2],
                                   False)
        assert np.array_equal(surface_pixels(surf), canvas_pixels(cv)), kind


def test_fill_polygon_as_draw_polygon():
    """pygame.draw.polygon (CarRacing's indicator bars), from float points as pygame truncates them."""
    rng = np.random.default_rng(4)
    for kind in (*KINDS[:2], *KINDS[3:]):  # draw.polygon takes C ints: no Sint16 wrap to test
        surf = pygame.Surface((W, H))
        cv = raster.new_canvas(H, W, OUT)
        raster.fill(cv, 0)
        for _ in range(10):
            pts = random_polygon(rng, kind)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            pygame.draw.polygon(surf, color, [tuple(p) for p in pts.tolist()])
            ipts = np.trunc(pts).astype(np.int64)
            raster.fill_polygon(cv, ipts[:, 0], ipts[:, 1], (color[0] << 16) | (color[1] << 8) | color[2], False)
        assert np.array_equal(surface_pixels(surf), canvas_pixels(cv)), kind


def test_one_row_polygon_and_horizontal_edges():
    """draw_fillpoly's special cases: a polygon one row high, horizontal edges between its top and bottom."""
    surf = pygame.Surface((W, H))
    cv = raster.new_canvas(H, W, OUT)
    raster.fill(cv, 0)
    polys = [[(10, 5), (300, 5), (120, 5)], [(100, 100), (400, 100), (400, 200), (250, 200), (250, 300), (100, 300)],
             [(-50, 700), (1200, 700), (1200, 800), (-50, 800)]]
    for i, p in enumerate(polys):
        pygame.draw.polygon(surf, (40 * i, 255, 0), p)
        a = np.array(p, np.int64)
        raster.fill_polygon(cv, a[:, 0], a[:, 1], (40 * i << 16) | 0xFF00, False)
    assert np.array_equal(surface_pixels(surf), canvas_pixels(cv))


def test_sprites_with_and_without_key():
    cv = raster.new_canvas(H, W, OUT)
    raster.fill(cv, 0x123456)
    rng = np.random.default_rng(5)
    block = rng.integers(0, 1 << 24, (40, 30)).astype(np.uint32)  # (w, h) as surfarray has it
    block[::3] = 0xFF00FF
    want = np.full((H, W), 0x123456, np.uint32)
    raster.put_sprite(cv, 990, -5, block, 0xFF00FF, False, False)  # clipped at the right and the top
    sub = want[0:25, 990:1000]
    src = block[:10, 5:].T
    sub[src != 0xFF00FF] = src[src != 0xFF00FF]
    assert np.array_equal(canvas_pixels(cv), want)
    raster.put_sprite(cv, 10, 10, block, -1, True, False)  # no key, mirrored rows
    want[H - 1 - np.arange(10, 40)[:, None], np.arange(10, 50)[None, :]] = block.T
    assert np.array_equal(canvas_pixels(cv), want)
    assert cv[2][1] == 0
    raster.put_sprite(cv, 10, 10, block, 0xFF00FF, False, True)  # something drawn on the box's edge: flagged
    assert cv[2][1] == 1


def smoothscale(pixels: np.ndarray) -> np.ndarray:
    surf = pygame.Surface((pixels.shape[1], pixels.shape[0]))
    pygame.surfarray.pixels2d(surf)[...] = pixels.T
    return np.transpose(np.array(pygame.surfarray.pixels3d(pygame.transform.smoothscale(surf, (OUT, OUT)))),
                        (1, 0, 2))


def shrunk(pixels: np.ndarray) -> np.ndarray:
    cv = raster.new_canvas(H, W, OUT)
    raster.load_pixels(cv, pixels)
    assert np.array_equal(canvas_pixels(cv), pixels)
    xgeom, ygeom = raster.shrink_tables(W, OUT, H, OUT)
    out = np.zeros((OUT, OUT, 3), np.uint8)
    raster.shrink(cv, xgeom, ygeom, out)
    return out


@pytest.mark.parametrize("case", ["noise", "levels", "cells", "white", "black"])
def test_shrink_as_smoothscale(case):
    """The x86-64 SSE smoothscale, 1000x800 -> 96x96: noise, few levels, cells of one colour next to noise (the
    canvas's two kinds of cell), all 255 (saturation) and all 0."""
    rng = np.random.default_rng(6)
    _, _, _, cell, _ = raster.shrink_geometry(W, OUT)
    pixels = {"noise": lambda: rng.integers(0, 1 << 24, (H, W)),
              "levels": lambda: rng.integers(0, 3, (H, W)) * 0x7F7F7F,
              "cells": lambda: np.where((rng.random((H, OUT)) < 0.8)[:, cell],
                                        rng.integers(0, 1 << 24, (H, OUT))[:, cell], rng.integers(0, 1 << 24, (H, W))),
              "white": lambda: np.full((H, W), 0xFFFFFF),
              "black": lambda: np.zeros((H, W))}[case]().astype(np.uint32)
    assert np.array_equal(shrunk(pixels), smoothscale(pixels))


def test_shrink_of_gymnasium_windows():
    """The windows gymnasium's own CarRacing draws (before its smoothscale), shrunk here: its 96x96 states."""
    import gymnasium as gym

    env = gym.make("CarRacing-v3", render_mode=None, disable_env_checker=True)
    rng = np.random.default_rng(7)
    try:
        env.reset(seed=0)
        for t in range(60):
            state, *_ = env.step(rng.uniform([-1, 0, 0], [1, 1, 0.3]))
            if t % 6 == 5:
                window = surface_pixels(env.unwrapped.surf).astype(np.uint32)
                assert np.array_equal(shrunk(window), state), f"step {t}"
    finally:
        env.close()


def test_shrink_geometry_tiles_the_source():
    first, last, cnt, cell, recip = raster.shrink_geometry(W, OUT)
    assert first[0] == 0 and last[-1] == W - 1 and (first[1:] == last[:-1] + 1).all()
    assert (cell == np.repeat(np.arange(OUT), last - first + 1)).all() and (0 < cnt).all() and (cnt <= 0x4000).all()
    assert recip == 0x40000000 // (0x4000 * W // OUT)
    with pytest.raises(ValueError, match="0 < dst < src"):
        raster.shrink_geometry(96, 96)


def test_undefined_cases_are_flagged():
    """Past Sint16 a polygon's intersections can differ by more than a C int: qsort's `a - b` overflows and
    pygame's order is glibc's business. The canvas flags it (the caller draws that frame with pygame)."""
    cv = raster.new_canvas(H, W, OUT)
    raster.fill(cv, 0)
    vx = np.array([-32000, 32000, 32000, -32000], np.int64)
    vy = np.array([10, 10, 20, 20], np.int64)
    raster.filled_polygon(cv, vx, vy, 0xFFFFFF, False)  # two intersections a row, apart by less than 2**32: defined
    assert cv[2][1] == 0
    vx = np.array([-32768, -32000, -32000, 32000, 32000, 32767, 32767, -32768], np.int64)  # a U: four a row
    vy = np.array([10, 10, 15, 15, 10, 10, 20, 20], np.int64)
    raster.filled_polygon(cv, vx, vy, 0xFFFFFF, False)
    assert cv[2][1] == 1
    raster.fill(cv, 0)
    assert cv[2][1] == 0
