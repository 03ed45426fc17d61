"""CarRacing-v3 with the same frames, drawn at a fraction of the cost.

gymnasium draws every `state_pixels` frame by transforming all ≈ 700 grass and road polygons vertex by vertex in
Python (`pygame.math.Vector2` per vertex), culling almost all of them afterwards, filling the whole 1000x800
window with a 5,400-pixel-wide background polygon, flipping it and shrinking it to 96x96 with `smoothscale`.
`FastCarRacing` is gymnasium's `CarRacing` itself (its physics, rewards, termination, track and car are untouched:
it only overrides `_render` and `_render_road`) and draws the same frames, bit for bit, in one of two ways:

- the vertices of every grass patch and road tile are transformed as one array per frame (rotation by pygame's
  own (cos, sin) of the angle, then zoom and translation: the same float64 operations in the same order as
  `Vector2.rotate_rad`), and culled with gymnasium's own test before any per-polygon work (both ways);
- the background polygon is a plain fill whenever it covers the window with a margin (all but the first
  fraction of a second's zoom-in and the playfield's edge, where gymnasium's polygon is drawn as before);
- drawing "compiled" (the default where `compiled_unavailable()` finds nothing against it): the pixels are not
  drawn by pygame but by `carracing_raster` (numba), which reproduces SDL_gfx's polygon fill and anti-aliased
  edges, pygame's polygon fill and its x86-64 SSE smoothscale in their exact integer arithmetic on a canvas of one
  word per row and smoothscale cell: the window is never filled pixel by pixel nor flipped (the road and car go
  into mirrored rows), and smoothscale reads a one-colour cell from a table. The car is still drawn by
  gymnasium's `car.draw` (pygame) onto a scratch window and its 129x129 box copied over; the score text is
  rendered by pygame and cached per string. A frame whose drawing would rely on what C leaves to the library
  (`carracing_raster`: overflowing sort comparisons), with a car past its box or domain_randomize's float
  colours is drawn the "pygame" way (`fallback_frames` counts them);
- drawing "pygame": the same pygame calls as gymnasium on one window and one flipped copy kept per process, the
  score font made once (the fallback where numba is not installed, and `--renderer pygame`).

Only `state_pixels` is drawn this way; `human` and `rgb_array` go through gymnasium's renderer unchanged.
Exactness was checked against gymnasium `GYMNASIUM_VERSION` drawn by pygame `PYGAME_VERSION` on x86-64
(tests/test_carracing_render.py compares whole episodes frame by frame, tests/test_carracing_raster.py each
compiled routine against pygame's); another gymnasium version gets gymnasium's own renderer and a warning.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

log = logging.getLogger(__name__)

GYMNASIUM_VERSION = "1.2.3"  # the renderer whose frames FastCarRacing reproduces; setup.cfg pins the same
PYGAME_VERSION = "2.6.1"  # the drawing carracing_raster reproduces; setup.cfg pins the same
RENDERERS = ("fast", "pygame", "gym")  # fast: compiled drawing (pygame's where numba is missing); pygame; gymnasium's
DRAWINGS = ("compiled", "pygame")
CAR_BOX = 64  # half side of the box the car is drawn in: its farthest vertex is ≈ 2.9 units = 47 px at full zoom
TEXT_CACHE = 256  # score strings kept drawn
# _render_indicators starts with a black box over the flipped window's rows 700-799 (H - 5h .. H, h = H/40): the
# road's rows 0-99, before the flip, are drawn over whole and the compiled drawing leaves them out
UNDER_INDICATORS = 100
_INDICATOR_RGB = {c: (c[0] << 16) | (c[1] << 8) | c[2]
                  for c in ((0, 0, 0), (255, 255, 255), (0, 0, 255), (51, 0, 255), (0, 255, 0), (255, 0, 0))}


def _grass_polygons(grass_dim: float) -> np.ndarray:
    """gymnasium's 400 grass patches (`_render_road`), as (400, 4, 2) float64 in its order."""
    d = grass_dim
    return np.array([[(d * x + d, d * y), (d * x, d * y), (d * x, d * y + d), (d * x + d, d * y + d)]
                     for x in range(-20, 20, 2) for y in range(-20, 20, 2)], dtype=np.float64)


@functools.cache
def compiled_unavailable() -> str | None:
    """Why the compiled drawing cannot reproduce this process's pygame, or None when it can: it reproduces pygame
    PYGAME_VERSION's SSE smoothscale (x86-64) on 32-bit XRGB windows, and needs numba."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return "numba is not installed"
    import pygame

    if getattr(pygame, "IS_CE", False) or pygame.version.ver != PYGAME_VERSION:
        return f"pygame {pygame.version.ver} is installed, the compiled drawing reproduces pygame {PYGAME_VERSION}"
    if pygame.transform.get_smoothscale_backend() != "SSE":
        return f"pygame's smoothscale backend is {pygame.transform.get_smoothscale_backend()}, not SSE (x86-64)"
    surf = pygame.Surface((2, 2))
    if surf.get_bitsize() != 32 or tuple(surf.get_masks()) != (0xFF0000, 0xFF00, 0xFF, 0):
        return f"pygame windows are {surf.get_bitsize()}-bit with masks {surf.get_masks()}, not XRGB8888"
    return None


def make_fast_car_racing(drawing: str | None = None, **kwargs):
    """A `FastCarRacing` (gymnasium's CarRacing with this module's drawing). drawing: 'compiled' (the default where
    `compiled_unavailable()` finds nothing against it) or 'pygame'; kwargs go to CarRacing."""
    return _fast_class()(drawing=drawing, **kwargs)


def sint16(a: np.ndarray) -> np.ndarray:
    """What pygame.gfxdraw makes of float coordinates: `(Sint16)PyLong_AsLong(int(x))`, truncation then a wrap."""
    return ((np.trunc(a).astype(np.int64) + 32768) & 0xFFFF) - 32768


def rgb(color) -> int | None:
    """An (r, g, b) of integers as the 0x00RRGGBB pixel a 32-bit pygame window stores; None for anything else
    (domain_randomize's float colours: pygame's conversion of those is left to pygame)."""
    r, g, b = (int(c) for c in color[:3])
    if len(color) != 3 or (r, g, b) != tuple(color) or not all(0 <= c <= 255 for c in (r, g, b)):
        return None
    return (r << 16) | (g << 8) | b


def rgb_rows(colors) -> np.ndarray | None:
    """`[int(c) for c in color]` of each road colour (floats, as gymnasium keeps them) as 0x00RRGGBB (n,) int64;
    None if one is not a colour."""
    a = np.array(colors, dtype=np.float64).reshape(-1, 3)
    if not ((a >= 0) & (a < 256)).all():
        return None
    a = a.astype(np.int64)  # truncation, as int()
    return (a[:, 0] << 16) | (a[:, 1] << 8) | a[:, 2]


@functools.cache
def _fast_class():
    """The class, made once per process (pygame and Box2D are imported only when CarRacing is used)."""
    import pygame
    from gymnasium.envs.box2d import car_racing as cr
    from pygame import gfxdraw

    W, H, MARGIN = cr.WINDOW_W, cr.WINDOW_H, cr.MAX_SHAPE_DIM
    grass = _grass_polygons(cr.GRASS_DIM)
    P = cr.PLAYFIELD
    field = np.array([[(P, P), (P, -P), (-P, -P), (-P, P)]], dtype=np.float64)  # _render_road's background

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

        def __init__(self, drawing: str | None = None, **kw) -> None:
            super().__init__(**kw)
            if drawing not in (None, *DRAWINGS):
                raise ValueError(f"drawing must be one of {', '.join(DRAWINGS)}, got {drawing!r}")
            why = compiled_unavailable()
            if drawing == "compiled" and why:
                raise ValueError(f"the compiled CarRacing drawing is not available: {why}")
            if drawing is None:
                drawing = "pygame" if why else "compiled"
                if why:
                    _warn_once(f"CarRacing draws with pygame (≈ 2.3x gymnasium's speed, not ≈ 6x): {why}")
            self.drawing = drawing
            self.fallback_frames = 0  # frames the compiled drawing handed to pygame (tests read it)
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
            # from here to the image array: gymnasium's _render, statement by statement
            angle = -self.car.hull.angle
            zoom = 0.1 * cr.SCALE * max(1 - self.t, 0) + cr.ZOOM * cr.SCALE * min(self.t, 1)
            scroll_x = -(self.car.hull.position[0]) * zoom
            scroll_y = -(self.car.hull.position[1]) * zoom
            trans = pygame.math.Vector2((scroll_x, scroll_y)).rotate_rad(angle)
            trans = (W / 2 + trans[0], H / 4 + trans[1])
            if self.drawing == "compiled":
                frame = self._draw_compiled(zoom, trans, angle)
                if frame is not None:
                    return frame
                self.fallback_frames += 1
            self.surf = self._canvas
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
            for verts, road_poly in ((grass, None), (self._tile_vertices(), self.road_poly)):
                idx, px, py = self._visible(verts, zoom, translation, angle)
                points = np.stack([px, py], axis=-1).tolist()  # (n, 4, 2) as Python floats
                for i, poly in zip(idx.tolist(), points, strict=True):
                    color = self.grass_color if road_poly is None else [int(v) for v in road_poly[i][1]]
                    poly = [tuple(p) for p in poly]
                    gfxdraw.aapolygon(self.surf, poly, color)
                    gfxdraw.filled_polygon(self.surf, poly, color)

        def _flip(self, surf):
            """pygame.transform.flip(surf, False, True) into the kept surface: the same pixels, no new 3.2 MB."""
            src, dst = pygame.surfarray.pixels2d(surf), pygame.surfarray.pixels2d(self._flipped)  # (W, H) views
            dst.T[:] = src.T[::-1]  # rows reversed, each row copied whole
            del src, dst  # unlock both surfaces before anything is blitted onto them
            return self._flipped

        # ---------------------------------------------------------------------------------- compiled
        def _draw_compiled(self, zoom, trans, angle):
            """The frame drawn by carracing_raster, or None where it hands the frame to pygame."""
            from . import carracing_raster as raster

            kit = _compiled_kit(W, H, cr.STATE_W, cr.STATE_H)
            cv = kit["canvas"]
            # the road, into mirrored rows (gymnasium flips the window after drawing it and the car)
            c, s = cos_sin(angle)
            bg, grass_rgb = rgb(self.bg_color), rgb(self.grass_color)
            if bg is None or grass_rgb is None:
                return None
            if self._field_covers_window(zoom, trans, angle):
                raster.fill(cv, bg)
            else:
                raster.fill(cv, 0)
                if not self._draw_compiled_polygons(kit, field, c, s, zoom, trans, False, bg):
                    return None
            if not self._draw_compiled_polygons(kit, grass, c, s, zoom, trans, True, grass_rgb):
                return None
            if not self._draw_compiled_polygons(kit, self._tile_vertices(), c, s, zoom, trans, True,
                                                lambda idx: rgb_rows([self.road_poly[i][1] for i in idx])):
                return None
            # the car: gymnasium's own drawing onto the scratch window, its box copied over
            scratch, key, x0, y0 = kit["scratch"], kit["key"], W // 2 - CAR_BOX, H // 4 - CAR_BOX
            view = pygame.surfarray.pixels2d(scratch)  # (W, H); pygame draws on a surface it is locked for
            box = view[x0:x0 + 2 * CAR_BOX + 1, y0:y0 + 2 * CAR_BOX + 1]
            box[...] = key  # (Surface.fill of the box costs 80 us: SDL fills unaligned rows pixel by pixel)
            self.car.draw(scratch, zoom, trans, angle, False)
            raster.put_sprite(cv, x0, y0, box, key, True, True)
            del view, box
            # after the flip: the indicators, then the score
            px, py, counts, colors = self._indicator_polygons(W, H)
            if px is None:
                return None
            raster.fill_polygons(cv, px, py, counts, colors, False)
            score = self._score_sprite(kit)
            if score is None:
                return None
            raster.put_sprite(cv, *score, -1, False, False)
            if cv[2][1]:  # the canvas's status: something pygame leaves undefined, or a full pool
                return None
            out = np.empty((cr.STATE_H, cr.STATE_W, 3), np.uint8)
            raster.shrink(cv, kit["xgeom"], kit["ygeom"], out)
            return out

        def _draw_compiled_polygons(self, kit, verts, c, s, zoom, trans, cull, colors) -> bool:
            """gymnasium's `_draw_colored_polygon` of each polygon of verts (N, 4, 2), compiled; colors: one
            0x00RRGGBB for all, or colors(indices drawn) their colours. False where a coordinate is past what pygame
            converts."""
            from . import carracing_raster as raster

            n_all = len(verts)
            if kit["work_n"] < n_all:
                kit["work_n"] = n_all
                kit["vx"], kit["vy"] = np.zeros((n_all, 4), np.int64), np.zeros((n_all, 4), np.int64)
                kit["idx"] = np.zeros(n_all, np.int64)
            vx, vy, idx = kit["vx"], kit["vy"], kit["idx"]
            n = raster.transform(verts, c, s, zoom, trans[0], trans[1], W, H, MARGIN, cull, UNDER_INDICATORS, vx, vy,
                                 idx)
            if n < 0:
                return False
            drawn = np.full(n, colors, np.int64) if isinstance(colors, int) else colors(idx[:n].tolist())
            if drawn is None:
                return False
            raster.gfx_polygons(kit["canvas"], vx[:n], vy[:n], drawn, True, UNDER_INDICATORS)
            return True

        def _indicator_polygons(self, W, H):
            """gymnasium's `_render_indicators`, statement by statement, as (int) vertices for fill_polygons instead
            of pygame.draw.polygon calls; (None, ...) when a coordinate is past a C int."""
            s = W / 40.0
            h = H / 40.0
            polys = [([(W, H), (W, H - 5 * h), (0, H - 5 * h), (0, H)], (0, 0, 0))]

            def vertical_ind(place, val):
                return [
                    (place * s, H - (h + h * val)),
                    ((place + 1) * s, H - (h + h * val)),
                    ((place + 1) * s, H - h),
                    ((place + 0) * s, H - h),
                ]

            def horiz_ind(place, val):
                return [
                    ((place + 0) * s, H - 4 * h),
                    ((place + val) * s, H - 4 * h),
                    ((place + val) * s, H - 2 * h),
                    ((place + 0) * s, H - 2 * h),
                ]

            true_speed = np.sqrt(
                np.square(self.car.hull.linearVelocity[0]) + np.square(self.car.hull.linearVelocity[1])
            )

            def render_if_min(value, points, color):
                if abs(value) > 1e-4:
                    polys.append((points, color))

            render_if_min(true_speed, vertical_ind(5, 0.02 * true_speed), (255, 255, 255))
            render_if_min(self.car.wheels[0].omega, vertical_ind(7, 0.01 * self.car.wheels[0].omega), (0, 0, 255))
            render_if_min(self.car.wheels[1].omega, vertical_ind(8, 0.01 * self.car.wheels[1].omega), (0, 0, 255))
            render_if_min(self.car.wheels[2].omega, vertical_ind(9, 0.01 * self.car.wheels[2].omega), (51, 0, 255))
            render_if_min(self.car.wheels[3].omega, vertical_ind(10, 0.01 * self.car.wheels[3].omega), (51, 0, 255))
            render_if_min(self.car.wheels[0].joint.angle, horiz_ind(20, -10.0 * self.car.wheels[0].joint.angle),
                          (0, 255, 0))
            render_if_min(self.car.hull.angularVelocity, horiz_ind(30, -0.8 * self.car.hull.angularVelocity),
                          (255, 0, 0))
            pts = np.array([p for p, _ in polys], dtype=np.float64)  # (n, 4, 2); pygame's (int) of each float
            if not (np.abs(pts) < 2**31).all():
                return None, None, None, None
            pts = np.trunc(pts).astype(np.int64)
            return (np.ascontiguousarray(pts[..., 0]), np.ascontiguousarray(pts[..., 1]),
                    np.full(len(polys), 4, np.int64), np.array([_INDICATOR_RGB[c] for _, c in polys], np.int64))

        def _score_sprite(self, kit):
            """The score text as gymnasium blits it: (x, y, pixels (w, h)), rendered once per string; None if it
            is not opaque."""
            string = "%04i" % self.reward  # noqa: UP031 (as gymnasium)
            cache = kit["text"]
            if string not in cache:
                if len(cache) >= TEXT_CACHE:
                    cache.clear()
                text = self._font.render(string, True, (255, 255, 255), (0, 0, 0))
                text_rect = text.get_rect()
                text_rect.center = (60, H - H * 2.5 / 40.0)
                scratch = kit["scratch"]
                blocks = []
                area = text_rect.clip(scratch.get_rect())
                for ground in (kit["key"], 0):  # the text surface is opaque: what it lands on must not show
                    scratch.fill(ground, text_rect)
                    scratch.blit(text, text_rect)
                    view = pygame.surfarray.pixels2d(scratch)
                    blocks.append(view[area.left:area.right, area.top:area.bottom].copy())
                    del view  # unlock the scratch window before the next blit
                scratch.fill(kit["key"], text_rect)
                if not np.array_equal(*blocks):  # not opaque: what it is drawn on would show (never seen)
                    return None
                cache[string] = (area.x, area.y, np.ascontiguousarray(blocks[1]))
            return cache[string]

        # ---------------------------------------------------------------------------------- polygons
        def _tile_vertices(self) -> np.ndarray:
            if self._tiles_of is not self.road_poly or len(self._tiles) != len(self.road_poly):
                self._tiles = np.array([[(p[0], p[1]) for p in poly] for poly, _ in self.road_poly],
                                       dtype=np.float64).reshape(-1, 4, 2)
                self._tiles_of = self.road_poly
            return self._tiles

        def _visible(self, verts: np.ndarray, zoom, translation, angle, cull: bool = True):
            """gymnasium's vertex transform of `_draw_colored_polygon` for every polygon of verts (N, K, 2) and
            its `clip=True` test: (indices kept, px, py (n, K)) in order."""
            c, s = cos_sin(angle)
            x, y = verts[..., 0], verts[..., 1]
            px = (c * x - s * y) * zoom + translation[0]
            py = (s * x + c * y) * zoom + translation[1]
            if not cull:
                return np.arange(len(verts)), px, py
            keep = ((-MARGIN <= px) & (px <= W + MARGIN) & (-MARGIN <= py) & (py <= H + MARGIN)).any(axis=1)
            idx = np.flatnonzero(keep)
            return idx, px[idx], py[idx]

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


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


@functools.cache
def _compiled_kit(width: int, height: int, state_w: int, state_h: int) -> dict:
    """Per process: the canvas, smoothscale's geometry, a scratch window for the car and the text, and the text
    cache."""
    import pygame

    from . import carracing_raster as raster

    xgeom, ygeom = raster.shrink_tables(width, state_w, height, state_h)
    scratch = pygame.Surface((width, height))
    key = rgb((255, 0, 255))  # a colour no car part has: what the car did not cover
    scratch.fill(key)
    return {"canvas": raster.new_canvas(height, width, state_w), "xgeom": xgeom, "ygeom": ygeom,
            "scratch": scratch, "key": key, "text": {}, "work_n": 0}
