"""CarRacing-v3 with the same frames, drawn at a fraction of the cost.

gymnasium draws every `state_pixels` frame by transforming all ≈ 700 grass and road polygons vertex by vertex in
Python (`pygame.math.Vector2` per vertex), culling almost all of them afterwards, and filling the whole 1000x800
window with a 5,400-pixel-wide background polygon. `FastCarRacing` is gymnasium's `CarRacing` itself (its physics,
rewards, termination, track and car are untouched: it only overrides `_render` and `_render_road`) and draws the
same polygons with the same pygame calls in the same order, so its frames are bit-identical:

- the vertices of every grass patch and road tile are transformed as one numpy array per frame (rotation by
  pygame's own (cos, sin) of the angle, then zoom and translation: the same float64 operations in the same order
  as `Vector2.rotate_rad`), and culled with gymnasium's own test before any per-polygon Python;
- the background polygon is a plain `fill` whenever it covers the window with a margin (all but the first
  fraction of a second's zoom-in and the playfield's edge, where gymnasium's polygon is drawn as before);
- the window surface and the score font are made once, not every frame.

What is left is pixel work inside pygame: drawing the ≈ 60 visible polygons, the flip and `smoothscale` of the
1000x800 window to 96x96 (docs/carracing.md has the measured split). Only `state_pixels` is drawn this way;
`human` and `rgb_array` go through gymnasium's renderer unchanged.

Exactness was checked against gymnasium `GYMNASIUM_VERSION` (tests/test_carracing_render.py compares whole
episodes frame by frame); another gymnasium version gets gymnasium's own renderer and a warning.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

log = logging.getLogger(__name__)

GYMNASIUM_VERSION = "1.2.3"  # the renderer whose frames FastCarRacing reproduces; setup.cfg pins the same
RENDERERS = ("fast", "gym")


def _grass_polygons(grass_dim: float) -> np.ndarray:
    """gymnasium's 400 grass patches (`_render_road`), as (400, 4, 2) float64 in its order."""
    d = grass_dim
    return np.array([[(d * x + d, d * y), (d * x, d * y), (d * x, d * y + d), (d * x + d, d * y + d)]
                     for x in range(-20, 20, 2) for y in range(-20, 20, 2)], dtype=np.float64)


def make_fast_car_racing(**kwargs):
    """A `FastCarRacing` (gymnasium's CarRacing with this module's drawing). kwargs go to CarRacing."""
    return _fast_class()(**kwargs)


@functools.cache
def _fast_class():
    """The class, made once per process (pygame and Box2D are imported only when CarRacing is used)."""
    import pygame
    from gymnasium.envs.box2d import car_racing as cr
    from pygame import gfxdraw

    W, H, MARGIN = cr.WINDOW_W, cr.WINDOW_H, cr.MAX_SHAPE_DIM
    grass = _grass_polygons(cr.GRASS_DIM)

    def cos_sin(angle: float) -> tuple[float, float]:
        # pygame's rotate_rad reduces the angle and special-cases right angles; rotating (1, 0) gives exactly the
        # (cos, sin) it multiplies every vertex by, and c*x - s*y, s*x + c*y below are its products, not an FMA
        c, s = pygame.math.Vector2(1.0, 0.0).rotate_rad(angle)
        return c, s

    class FastCarRacing(cr.CarRacing):
        # One window and one flipped copy per process, shared by its envs: a frame is drawn from scratch, and a
        # worker stepping 16 envs keeps 2 surfaces of 3.2 MB in cache instead of 32
        _canvas = None
        _flipped = None
        _font = None

        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self._tiles_of = None  # the road_poly list the cached tile vertices belong to (a new one per track)
            self._tiles = np.zeros((0, 4, 2))

        # -------------------------------------------------------------------------------------- frame
        def _render(self, mode: str):
            if mode != "state_pixels" or "t" not in self.__dict__:
                return super()._render(mode)
            pygame.font.init()
            cls = type(self)
            if cls._canvas is None:
                cls._canvas, cls._flipped = pygame.Surface((W, H)), pygame.Surface((W, H))
                cls._font = pygame.font.Font(pygame.font.get_default_font(), 42)
            self.surf = self._canvas
            # from here to the image array: gymnasium's _render, statement by statement
            angle = -self.car.hull.angle
            zoom = 0.1 * cr.SCALE * max(1 - self.t, 0) + cr.ZOOM * cr.SCALE * min(self.t, 1)
            scroll_x = -(self.car.hull.position[0]) * zoom
            scroll_y = -(self.car.hull.position[1]) * zoom
            trans = pygame.math.Vector2((scroll_x, scroll_y)).rotate_rad(angle)
            trans = (W / 2 + trans[0], H / 4 + trans[1])
            self._render_road(zoom, trans, angle)
            self.car.draw(self.surf, zoom, trans, angle, False)
            self.surf = self._flip(self.surf)
            self._render_indicators(W, H)
            text = self._font.render("%04i" % self.reward, True, (255, 255, 255), (0, 0, 0))  # noqa: UP031 (as gymnasium)
            text_rect = text.get_rect()
            text_rect.center = (60, H - H * 2.5 / 40.0)
            self.surf.blit(text, text_rect)
            return self._create_image_array(self.surf, (cr.STATE_W, cr.STATE_H))

        def _render_road(self, zoom, translation, angle):
            if self.surf is not self._canvas:  # called from elsewhere (another render mode): gymnasium's way
                return super()._render_road(zoom, translation, angle)
            if self._field_covers_window(zoom, translation, angle):
                self.surf.fill(self.bg_color)  # what the background polygon draws when its edges are off-window
            else:
                self.surf.fill((0, 0, 0))  # a new pygame.Surface, as gymnasium draws on
                b = cr.PLAYFIELD
                field = [(b, b), (b, -b), (-b, -b), (-b, b)]
                self._draw_colored_polygon(self.surf, field, self.bg_color, zoom, translation, angle, clip=False)
            self._draw_visible(grass, None, zoom, translation, angle)
            self._draw_visible(self._tile_vertices(), self.road_poly, zoom, translation, angle)

        def _flip(self, surf):
            """pygame.transform.flip(surf, False, True) into the kept surface: the same pixels, no new 3.2 MB."""
            src, dst = pygame.surfarray.pixels2d(surf), pygame.surfarray.pixels2d(self._flipped)  # (W, H) views
            dst.T[:] = src.T[::-1]  # rows reversed, each row copied whole
            del src, dst  # unlock both surfaces before anything is blitted onto them
            return self._flipped

        # ---------------------------------------------------------------------------------- polygons
        def _tile_vertices(self) -> np.ndarray:
            if self._tiles_of is not self.road_poly or len(self._tiles) != len(self.road_poly):
                self._tiles = np.array([[(p[0], p[1]) for p in poly] for poly, _ in self.road_poly],
                                       dtype=np.float64).reshape(-1, 4, 2)
                self._tiles_of = self.road_poly
            return self._tiles

        def _draw_visible(self, verts: np.ndarray, road_poly, zoom, translation, angle) -> None:
            """gymnasium's `_draw_colored_polygon(..., clip=True)` for every polygon of verts (N, 4, 2), in order."""
            c, s = cos_sin(angle)
            x, y = verts[..., 0], verts[..., 1]
            px = (c * x - s * y) * zoom + translation[0]
            py = (s * x + c * y) * zoom + translation[1]
            keep = ((-MARGIN <= px) & (px <= W + MARGIN) & (-MARGIN <= py) & (py <= H + MARGIN)).any(axis=1)
            idx = np.flatnonzero(keep)
            points = np.stack([px[idx], py[idx]], axis=-1).tolist()  # (n, 4, 2) as Python floats
            for i, poly in zip(idx.tolist(), points, strict=True):
                color = self.grass_color if road_poly is None else [int(v) for v in road_poly[i][1]]
                poly = [tuple(p) for p in poly]
                gfxdraw.aapolygon(self.surf, poly, color)
                gfxdraw.filled_polygon(self.surf, poly, color)

        def _field_covers_window(self, zoom, translation, angle, margin: float = 8.0) -> bool:
            """True when the background square contains the window grown by `margin` pixels, so its polygon
            fills every pixel and its anti-aliased edges fall outside."""
            c, s = cos_sin(angle)
            lim = cr.PLAYFIELD - margin / zoom
            for px, py in ((-margin, -margin), (W + margin, -margin), (-margin, H + margin), (W + margin, H + margin)):
                dx, dy = (px - translation[0]) / zoom, (py - translation[1]) / zoom
                wx, wy = c * dx + s * dy, -s * dx + c * dy  # the inverse rotation: window -> world
                if not (-lim < wx < lim and -lim < wy < lim):
                    return False
            return True

    return FastCarRacing
