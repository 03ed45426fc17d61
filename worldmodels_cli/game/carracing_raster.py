"""pygame's drawing and smoothscale for CarRacing's frames, compiled (numba) and bit-exact, on a cell canvas.

Each function here reproduces one pygame 2.6.1 routine's integer arithmetic (the C function is named on each), so
that the same calls give the same pixels:

- `filled_polygon` / `aapolygon`: SDL_gfx's `filledPolygonColorMT` (scanline, 16.16 fixed-point intersections,
  C `int` overflow and all) and `aapolygonColor` -> `_aalineColor` (Wu lines: `_clipLine` in single precision,
  `pixelColorWeightNolock`, `_putPixelAlpha`'s 32-bit blend), as `pygame.gfxdraw` calls them (vertices as
  `(Sint16)int(x)`, colours with alpha 255);
- `fill_polygon`: `pygame.draw.polygon` with width 0 (draw.c `draw_fillpoly`, double-precision intersections);
- `shrink`: `pygame.transform.smoothscale` to a smaller size in both dimensions, as pygame 2.6.1 does it on x86-64
  (`filter_shrink_X_SSE` then `filter_shrink_Y_SSE` of scale_mmx64_gcc.c: 14-bit counters, `pmulhuw` products,
  16-bit accumulators, `packuswb`; its GENERIC C path rounds differently and is not reproduced).

The canvas is what makes it cheap. Drawing is mostly long runs of one colour and smoothscale's X filter reads a
row in cells of ≈ 10 pixels (one output pixel each), so the canvas keeps one word per row and cell (`cs`, 300 KB
for 1000x800): either the colour every pixel of the cell has, or `DETAIL | slot`, the index of a slot of a pool
that holds the cell's pixels. A span covering whole cells writes words; only the cells an edge, an anti-aliased
pixel or a sprite touches get a slot (≈ 4,400 a frame on a random drive, at most 13,200; taken from the start
of the pool, they stay in cache), and the X filter of a run of one-colour cells reads a cached row of that
colour's outputs (`shrink`). The result is the same as drawing every pixel.

More savings, all exact: anti-aliased edge pixels that the polygon's own fill overwrites next are not blended
(`_gfx_polygon`); polygons that draw nothing in the window, and rows the caller draws over whole, are left out;
rows can be stored upside down (`flip`): CarRacing draws the road and the car, flips the window vertically, then
draws its indicators; here the road and car go into mirrored rows and nothing is copied.

Cases pygame handles by undefined or library-specific behaviour (`qsort` with an overflowing comparator, an
odd number of intersections, a line clip that does not converge) and a full pool are not guessed: the canvas's
status (`meta[1]`) is set and the caller draws that frame with pygame.
"""

from __future__ import annotations

import numba as nb
import numpy as np

# No reference counting (numba's NRT): these functions allocate nothing (the canvas carries their work arrays) and
# pass arrays to helpers per pixel, where counting references costs 2-3 times the drawing itself
_jit = nb.njit(cache=True, nogil=True, _nrt=False)
_inline = nb.njit(cache=True, nogil=True, _nrt=False, inline="always")  # helpers called per pixel or span

M32 = 0xFFFFFFFF
ONE14 = 0x4000  # smoothscale's SSE filters count in 1/16384ths of a source pixel
DETAIL = 0x80000000  # a cell word with this bit holds a pool slot; without it, the cell's one colour 0x00RRGGBB
SLOT = 16  # pixels per pool slot (a cell has at most 11 at 1000 -> 96)
MAXV = 16  # vertices a polygon may have (CarRacing's have 4)
CROWS = 64  # colours whose X filter rows shrink keeps (a frame has ≈ 15 large areas of one colour)
LANE = 16  # shrink packs a pixel's three channel sums in 16-bit lanes of one int64


# ------------------------------------------------------------------------------------------- geometry
def shrink_geometry(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """One axis of `filter_shrink_{X,Y}_SSE` (scale_mmx64_gcc.c) for src -> dst < src pixels.

    The filter walks the source with a counter that starts at space = 0x4000*src/dst: a pixel with counter >
    0x4000 is added whole to the current output, the next one is split (counter c to this output, 0x4000-c to
    the next). Returns, per output cell j: first[j], last[j] (the split pixel, inclusive), c[j]; per source pixel
    its cell (cells tile the source); and the low 16 bits of 0x40000000/space (the `pmulhuw` factor).
    """
    if not 0 < dst < src:
        raise ValueError(f"shrink_geometry needs 0 < dst < src, got src={src}, dst={dst}")
    space = ONE14 * src // dst
    recip = 0x40000000 // space
    cell = np.full(src, -1, np.int64)
    first, last, cnt = np.zeros(dst, np.int64), np.zeros(dst, np.int64), np.zeros(dst, np.int64)
    counter, j, start = space, 0, 0
    for x in range(src):
        if j == dst:
            break
        cell[x] = j
        if counter > ONE14:
            counter -= ONE14
        else:
            first[j], last[j], cnt[j] = start, x, counter
            j, start = j + 1, x + 1
            counter += space - ONE14
    if j != dst or (cell < 0).any() or (last - first).max() >= SLOT:
        # pixels past the last output would be summed and dropped (or written past the row): not a size CarRacing uses
        raise ValueError(f"smoothscale {src} -> {dst}: the filter's cells do not tile the source")
    return first, last, cnt, cell, recip & 0xFFFF


def new_canvas(height: int, width: int, dst_w: int) -> tuple:
    """A canvas (cs, pool, meta, cell, first, last, work) for a height x width window whose smoothscale is dst_w
    wide. meta = [slots used, status]. The pool has a slot for every cell twice over; its pages are touched only as
    slots are used. work: a polygon's intersections, its spans per row (count, lo, hi), shrink's sums and a
    polygon's edges."""
    first, last, _, cell, _ = shrink_geometry(width, dst_w)
    work = (np.zeros(MAXV, np.int64), np.zeros(height, np.int64), np.zeros((height, MAXV // 2), np.int64),
            np.zeros((height, MAXV // 2), np.int64), np.zeros((2, 3 * dst_w), np.int64), np.zeros((MAXV, 4), np.int64))
    return (np.zeros((height, dst_w), np.uint32), np.zeros((2 * height * dst_w, SLOT), np.uint32),
            np.zeros(2, np.int64), cell, first, last, work)


def shrink_tables(src_w: int, dst_w: int, src_h: int, dst_h: int) -> tuple:
    """What `shrink` needs for src_w x src_h -> dst_w x dst_h: (xgeom, ygeom).

    xgeom = (xcnt, xrecip, tab, ckey, crow): tab[j, v] is the X filter's output for cell j when it and the previous
    cell's split pixel have value v (the first cell has no carry); crow[h] caches, for the colour ckey[h], the
    row of those outputs for every cell, three channels packed in 16-bit lanes (filled as colours are met).
    ygeom = (ylast, ycnt, yrecip)."""
    first, last, xcnt, _, xrecip = shrink_geometry(src_w, dst_w)
    v = np.arange(256, dtype=np.int64)[None, :]
    xf_prev = np.concatenate([[ONE14], ONE14 - xcnt[:-1]])[:, None]
    carry = np.where(np.arange(dst_w)[:, None] == 0, 0, ((4 * v) * xf_prev) >> 16)
    total = carry + (last - first)[:, None] * v + (((4 * v) * xcnt[:, None]) >> 16)
    tab = np.minimum(((total & 0xFFFF) * xrecip) >> 16, 255).astype(np.int64)
    _, ylast, ycnt, _, yrecip = shrink_geometry(src_h, dst_h)
    ckey, crow = np.full(CROWS, -1, np.int64), np.zeros((CROWS, dst_w), np.int64)
    return (xcnt, xrecip, tab, ckey, crow), (ylast, ycnt, yrecip)


# ------------------------------------------------------------------------------------- integer helpers
@_inline
def _s16(v):
    """C's conversion of an integer to Sint16 (two's complement wrap)."""
    return ((v + 32768) & 0xFFFF) - 32768


@_inline
def _i32(v):
    """C `int` arithmetic that overflowed: wrap to 32 bits."""
    return ((v + 2147483648) & M32) - 2147483648


@_inline
def _f32_to_s16(f):
    """(Sint16)(float) as gcc compiles it on x86-64: cvttss2si to int32 (0x80000000 when out of range), low 16 bits."""
    if f > -2147483649.0 and f < 2147483648.0:
        return _s16(int(f))
    return 0


@_inline
def _row(y, height, flip):
    return height - 1 - y if flip else y


# ---------------------------------------------------------------------------------------- canvas ops
# (cs, pool, meta, cell, first, last) travel as separate arguments: a tuple of arrays passed per pixel costs a
# reference count per array and call
@_jit
def _slot(cs, pool, meta, first, r, j):
    """The pool slot of cell (r, j), given one holding its colour if it had none."""
    v = cs[r, j]
    if v & DETAIL:
        return v & 0xFFFFFF
    s = meta[0]
    if s >= pool.shape[0]:
        meta[1] = 1
        return -1
    meta[0] = s + 1
    for i in range(SLOT):
        pool[s, i] = v
    cs[r, j] = DETAIL | s
    return s


@_jit
def _paint_part(cs, pool, meta, first, r, j, xa, xb, color):
    """Pixels xa..xb of cell j (not the whole cell) of row r."""
    if cs[r, j] == color:
        return
    s = _slot(cs, pool, meta, first, r, j)
    if s >= 0:
        f = first[j]
        for i in range(xa - f, xb - f + 1):
            pool[s, i] = color


@_inline
def _span(cs, pool, meta, cell, first, last, r, xa, xb, color):
    """Store colour in row r, columns xa..xb (0 <= xa <= xb < W): whole cells as words, the ends as pixels."""
    ja, jb = cell[xa], cell[xb]
    j0 = ja if xa == first[ja] else ja + 1
    j1 = jb if xb == last[jb] else jb - 1
    if xa != first[ja]:
        _paint_part(cs, pool, meta, first, r, ja, xa, min(xb, last[ja]), color)
    if xb != last[jb] and (jb != ja or xa == first[ja]):
        _paint_part(cs, pool, meta, first, r, jb, max(xa, first[jb]), xb, color)
    for j in range(j0, j1 + 1):
        cs[r, j] = color


@_inline
def _put(cs, pool, meta, cell, first, r, x, color):
    j = cell[x]
    if cs[r, j] == color:
        return
    s = _slot(cs, pool, meta, first, r, j)
    if s >= 0:
        pool[s, x - first[j]] = color


@_inline
def _blend(dc, color, alpha):
    """SDL_gfx `_putPixelAlpha`, 4 bytes per pixel, DEFAULT_ALPHA_PIXEL_ROUTINE, masks 0xff0000/0xff00/0xff, no
    alpha mask. Its Uint32 arithmetic ((dc & M) + ((((c & M) - (dc & M)) >> shift) * a >> 8 << shift)) & M, where
    the difference wraps, is d + ((c - d)*a >> 8) per channel with an arithmetic shift (the canvas tests check it
    against pygame)."""
    d0, d1, d2 = (dc >> 16) & 255, (dc >> 8) & 255, dc & 255
    r = d0 + ((((color >> 16) & 255) - d0) * alpha >> 8)
    g = d1 + ((((color >> 8) & 255) - d1) * alpha >> 8)
    b = d2 + (((color & 255) - d2) * alpha >> 8)
    return (r << 16) | (g << 8) | b


@_inline
def _put_alpha(cs, pool, meta, cell, first, r, x, color, alpha):
    j = cell[x]
    v = cs[r, j]
    if v & DETAIL:
        s = v & 0xFFFFFF
        o = x - first[j]
        pool[s, o] = _blend(pool[s, o], color, alpha)
        return
    nv = _blend(v, color, alpha)
    if nv != v:
        s = _slot(cs, pool, meta, first, r, j)
        if s >= 0:
            pool[s, x - first[j]] = nv


@_jit
def fill(cv, color):
    """Surface.fill(color) of a whole canvas, which starts a frame: every cell one colour, the pool emptied."""
    cs, meta = cv[0], cv[2]
    cs[:, :] = color
    meta[0] = 0
    meta[1] = 0


@_jit
def canvas_pixels(cv, out):
    """The canvas as plain pixels (H, W) uint32, rows as stored (for tests)."""
    cs, pool, meta, cell, first, last, work = cv
    for r in range(cs.shape[0]):
        for j in range(cs.shape[1]):
            v = cs[r, j]
            for x in range(first[j], last[j] + 1):
                out[r, x] = pool[v & 0xFFFFFF, x - first[j]] if v & DETAIL else v


@_jit
def load_pixels(cv, img):
    """Start a frame from plain pixels img (H, W) 0x00RRGGBB: a cell whose pixels are all one colour becomes that
    colour, any other a slot (for tests)."""
    cs, pool, meta, cell, first, last, work = cv
    meta[:] = 0
    for r in range(cs.shape[0]):
        for j in range(cs.shape[1]):
            c = img[r, first[j]]
            cs[r, j] = c
            for x in range(first[j], last[j] + 1):
                if img[r, x] != c:
                    s = _slot(cs, pool, meta, first, r, j)
                    for i in range(first[j], last[j] + 1):
                        pool[s, i - first[j]] = img[r, i]
                    break


# ------------------------------------------------------------------------- SDL_gfx (pygame.gfxdraw)
@_inline
def _dead(x, y, ylo, dy0, dcnt, dlo, dhi):
    """Whether pixel (x, y) is left out: in a row above ylo (drawn over later, whole), or in a span the
    polygon's fill draws next (rows dy0.. of dcnt/dlo/dhi)."""
    if y < ylo:
        return True
    i = y - dy0
    if i < 0 or i >= dcnt.shape[0]:
        return False
    for k in range(dcnt[i]):
        if dlo[i, k] <= x <= dhi[i, k]:
            return True
    return False


@_jit
def _gfx_pixel(cs, pool, meta, cell, first, x, y, color, flip, ylo, dy0, dcnt, dlo, dhi):
    """`pixelColorNolock` with alpha 255 (`_putPixelAlpha`'s clip test, then a store)."""
    height = cs.shape[0]
    if 0 <= x < cell.shape[0] and 0 <= y < height and not _dead(x, y, ylo, dy0, dcnt, dlo, dhi):
        _put(cs, pool, meta, cell, first, _row(y, height, flip), x, color)


@_inline
def _gfx_pixel_weight(cs, pool, meta, cell, first, x, y, color, weight, flip, ylo, dy0, dcnt, dlo, dhi):
    """`pixelColorWeightNolock` for an opaque colour: alpha (255*weight) >> 8 (never 255), `_putPixelAlpha`."""
    height = cs.shape[0]
    alpha = (255 * weight) >> 8
    if alpha and 0 <= x < cell.shape[0] and 0 <= y < height and not _dead(x, y, ylo, dy0, dcnt, dlo, dhi):
        _put_alpha(cs, pool, meta, cell, first, _row(y, height, flip), x, color, alpha)  # alpha 0 changes nothing


@_jit
def _gfx_hline(cs, pool, meta, cell, first, last, x1, x2, y, color, flip):
    """`hlineColor` with alpha 255 (Sint16 arguments)."""
    height, width = cs.shape[0], cell.shape[0]
    if x1 > x2:
        x1, x2 = x2, x1
    if x2 < 0 or x1 > width - 1 or y < 0 or y > height - 1:
        return
    _span(cs, pool, meta, cell, first, last, _row(y, height, flip), max(x1, 0), min(x2, width - 1), color)


@_jit
def _clip_encode(x, y, right, bottom):
    code = 0
    if x < 0:
        code |= 1
    elif x > right:
        code |= 2
    if y < 0:
        code |= 8
    elif y > bottom:
        code |= 4
    return code


@_jit
def _clip_line(x1, y1, x2, y2, right, bottom, meta):
    """`_clipLine` (Cohen-Sutherland against the clip rect, slope in single precision, Sint16 results).
    Returns (draw, x1, y1, x2, y2): the end points as the C code leaves them (it may swap them)."""
    for _ in range(64):
        code1 = _clip_encode(x1, y1, right, bottom)
        code2 = _clip_encode(x2, y2, right, bottom)
        if (code1 | code2) == 0:
            return True, x1, y1, x2, y2
        if code1 & code2:
            return False, x1, y1, x2, y2
        if code1 == 0:
            x1, x2 = x2, x1
            y1, y2 = y2, y1
            code1, code2 = code2, code1
        if x2 != x1:
            m = np.float32(y2 - y1) / np.float32(x2 - x1)
        else:
            m = np.float32(1.0)
        if code1 & 1:
            y1 = _s16(y1 + _f32_to_s16(np.float32(0 - x1) * m))
            x1 = 0
        elif code1 & 2:
            y1 = _s16(y1 + _f32_to_s16(np.float32(right - x1) * m))
            x1 = right
        elif code1 & 4:
            if x2 != x1:
                x1 = _s16(x1 + _f32_to_s16(np.float32(bottom - y1) / m))
            y1 = bottom
        elif code1 & 8:
            if x2 != x1:
                x1 = _s16(x1 + _f32_to_s16(np.float32(0 - y1) / m))
            y1 = 0
    meta[1] = 1  # pygame would loop on; never seen
    return False, x1, y1, x2, y2


@_jit
def _aaline(cs, pool, meta, cell, first, last, x1, y1, x2, y2, color, flip, ylo, dy0, dcnt, dlo, dhi):
    """`_aalineColor(dst, x1, y1, x2, y2, color, draw_endpoint=0)` for an opaque colour, pixels in the dead
    spans left out."""
    height, width = cs.shape[0], cell.shape[0]
    draw, x1, y1, x2, y2 = _clip_line(x1, y1, x2, y2, width - 1, height - 1, meta)
    if not draw:
        return
    xx0, yy0, xx1, yy1 = x1, y1, x2, y2
    if yy0 > yy1:
        yy0, yy1 = yy1, yy0
        xx0, xx1 = xx1, xx0
    dx = xx1 - xx0
    dy = yy1 - yy0
    if dx == 0:  # vertical (vlineColor): SDL_gfx draws it whole, endpoint and all
        if dy > 0:
            for y in range(max(yy0, 0), min(yy0 + dy, height - 1) + 1):
                _gfx_pixel(cs, pool, meta, cell, first, x1, y, color, flip, ylo, dy0, dcnt, dlo, dhi)
        else:
            _gfx_pixel(cs, pool, meta, cell, first, x1, y1, color, flip, ylo, dy0, dcnt, dlo, dhi)
        return
    if dy == 0:  # horizontal (hlineColor), whole too
        for x in range(max(min(xx0, xx0 + dx), 0), min(max(xx0, xx0 + dx), width - 1) + 1):
            _gfx_pixel(cs, pool, meta, cell, first, x, y1, color, flip, ylo, dy0, dcnt, dlo, dhi)
        return
    xdir = 1
    if dx < 0:
        xdir = -1
        dx = -dx
    erracc = 0
    _gfx_pixel(cs, pool, meta, cell, first, x1, y1, color, flip, ylo, dy0, dcnt, dlo, dhi)  # (x1, y1) as clipped
    if dy > dx:
        erradj = (((dx << 16) // dy) << 16) & M32
        x0pxdir = xx0 + xdir
        for _ in range(dy - 1):
            tmp = erracc
            erracc = (erracc + erradj) & M32
            if erracc <= tmp:
                xx0 = x0pxdir
                x0pxdir += xdir
            yy0 += 1
            wgt = (erracc >> 24) & 255
            _gfx_pixel_weight(cs, pool, meta, cell, first, xx0, yy0, color, 255 - wgt, flip, ylo, dy0, dcnt, dlo, dhi)
            _gfx_pixel_weight(cs, pool, meta, cell, first, x0pxdir, yy0, color, wgt, flip, ylo, dy0, dcnt, dlo, dhi)
    else:
        erradj = (((dy << 16) // dx) << 16) & M32  # dx == dy: 1 << 32 wraps to 0, as the C int does
        y0p1 = yy0 + 1
        for _ in range(dx - 1):
            tmp = erracc
            erracc = (erracc + erradj) & M32
            if erracc <= tmp:
                yy0 = y0p1
                y0p1 += 1
            xx0 += xdir
            wgt = (erracc >> 24) & 255
            _gfx_pixel_weight(cs, pool, meta, cell, first, xx0, yy0, color, 255 - wgt, flip, ylo, dy0, dcnt, dlo, dhi)
            _gfx_pixel_weight(cs, pool, meta, cell, first, xx0, y0p1, color, wgt, flip, ylo, dy0, dcnt, dlo, dhi)


@_inline
def _sort_ints(a, n, meta):
    """glibc qsort of a[:n] with `a - b` (a C int, which can overflow) as the comparator. Two values (a convex
    polygon's row) are swapped when the wrapped difference is positive, as glibc's merge sort (up to 2.36) and
    insertion sort (2.37 on) both do, except at a difference of exactly 2**31 where they disagree (flagged).
    More values are sorted ascending; an overflow among them makes the order the algorithm's business (flagged)."""
    if n == 2:
        d = _i32(a[0] - a[1])
        if d == -2147483648:
            meta[1] = 1
        if d > 0:
            a[0], a[1] = a[1], a[0]
        return
    for i in range(n):
        for k in range(i + 1, n):
            d = a[i] - a[k]
            if d >= 2147483648 or d <= -2147483648:
                meta[1] = 1
    for i in range(1, n):
        v = a[i]
        k = i - 1
        while k >= 0 and a[k] > v:
            a[k + 1] = a[k]
            k -= 1
        a[k + 1] = v


@_jit
def _fill_spans(vx, vy, height, width, meta, work):
    """The hlineColor calls of SDL_gfx `filledPolygonColorMT` (rows outside the window left out: hlineColor draws
    nothing there), clipped as hlineColor clips them: (first row, count per row, lo, hi (rows, MAXV/2)), views
    of work."""
    ints, cnt_out, lo, hi = work[0], work[1], work[2], work[3]
    n = len(vx)
    miny, maxy = vy[0], vy[0]
    for i in range(1, n):
        if vy[i] < miny:
            miny = vy[i]
        elif vy[i] > maxy:
            maxy = vy[i]
    y0 = max(miny, 0)
    rows = max(min(maxy, height - 1) + 1 - y0, 0)
    if n > MAXV:
        meta[1] = 1
        rows = 0
    edges = work[5]  # the non-horizontal edges (y1 < y2, x1, x2, 65536*x1), in the C loop's order
    ne = 0
    for i in range(n):
        ind1 = n - 1 if i == 0 else i - 1
        y1, y2 = vy[ind1], vy[i]
        if y1 < y2:
            x1, x2 = vx[ind1], vx[i]
        elif y1 > y2:
            y2, y1 = vy[ind1], vy[i]
            x2, x1 = vx[ind1], vx[i]
        else:
            continue
        edges[ne, 0], edges[ne, 1], edges[ne, 2], edges[ne, 3] = y1, y2, x2 - x1, _i32(65536 * x1)
        ne += 1
    for y in range(y0, y0 + rows):
        cnt = 0
        for e in range(ne):
            y1, y2 = edges[e, 0], edges[e, 1]
            if (y >= y1 and y < y2) or (y == maxy and y > y1 and y <= y2):
                num = _i32(65536 * (y - y1))
                q = num // (y2 - y1) if num >= 0 else -((-num) // (y2 - y1))  # C division truncates
                ints[cnt] = _i32(_i32(q * edges[e, 2]) + edges[e, 3])
                cnt += 1
        _sort_ints(ints, cnt, meta)
        if cnt % 2:
            meta[1] = 1  # the C code reads past the intersections it found
            cnt -= 1
        m = 0
        for i in range(0, cnt, 2):
            xa = _i32(ints[i] + 1)
            xa = _s16((xa >> 16) + ((xa & 32768) >> 15))
            xb = _i32(ints[i + 1] - 1)
            xb = _s16((xb >> 16) + ((xb & 32768) >> 15))
            if xa > xb:
                xa, xb = xb, xa
            if xb < 0 or xa > width - 1:
                continue
            lo[y - y0, m] = max(xa, 0)
            hi[y - y0, m] = min(xb, width - 1)
            m += 1
        cnt_out[y - y0] = m
    return y0, cnt_out[:rows], lo, hi


@_jit
def _gfx_polygon(cs, pool, meta, cell, first, last, work, vx, vy, color, flip, aa, filled, ylo):
    """`gfxdraw.aapolygon` (aa) then `gfxdraw.filled_polygon` (filled) of one polygon; with both, the edge pixels
    the fill overwrites are not blended first. Rows above ylo are left out (the caller draws over them)."""
    height, width = cs.shape[0], cell.shape[0]
    n = len(vx)
    dy0, dcnt, dlo, dhi = _fill_spans(vx, vy, height, width, meta, work)
    if aa:
        ecnt = dcnt if filled else dcnt[:0]  # no dead spans without the fill
        for i in range(1, n + 1):  # aapolygonColor's order: (0, 1), (1, 2), ..., (n-1, 0)
            i0, i1 = i - 1, i % n
            _aaline(cs, pool, meta, cell, first, last, vx[i0], vy[i0], vx[i1], vy[i1], color, flip, ylo, dy0, ecnt, dlo,
                    dhi)
    if filled:
        for k in range(max(ylo - dy0, 0), dcnt.shape[0]):
            r = _row(dy0 + k, height, flip)
            for m in range(dcnt[k]):
                _span(cs, pool, meta, cell, first, last, r, dlo[k, m], dhi[k, m], color)


@_jit
def aapolygon(cv, vx, vy, color, flip):
    """`pygame.gfxdraw.aapolygon(surf, points, color)`: vx, vy the Sint16 vertices, color 0x00RRGGBB (alpha 255)."""
    cs, pool, meta, cell, first, last, work = cv
    _gfx_polygon(cs, pool, meta, cell, first, last, work, vx, vy, color, flip, True, False, 0)


@_jit
def filled_polygon(cv, vx, vy, color, flip):
    """`pygame.gfxdraw.filled_polygon(surf, points, color)`."""
    cs, pool, meta, cell, first, last, work = cv
    _gfx_polygon(cs, pool, meta, cell, first, last, work, vx, vy, color, flip, False, True, 0)


@_jit
def transform(verts, c, s, zoom, tx, ty, width, height, margin, cull, ylo, vx, vy, idx):
    """gymnasium's `_draw_colored_polygon` up to the gfxdraw calls, for polygons verts (N, K, 2): each vertex
    rotated by (c, s) (`Vector2.rotate_rad`'s products, no FMA: numba contracts nothing without fastmath), zoomed
    and translated, the polygon kept when a vertex lies within the window grown by margin (when cull), the
    vertices as pygame.gfxdraw converts them: (Sint16)int(x). Kept polygons that draw nothing (all vertices left,
    right, above or below the window, or above row ylo, which the caller leaves out) are dropped too. Writes vx,
    vy (n, K) and idx (n,); returns n, or -1 when a coordinate is past a C long (where pygame raises)."""
    n = 0
    for i in range(verts.shape[0]):
        keep = not cull
        for k in range(verts.shape[1]):
            x, y = verts[i, k, 0], verts[i, k, 1]
            px = (c * x - s * y) * zoom + tx
            py = (s * x + c * y) * zoom + ty
            if -margin <= px <= width + margin and -margin <= py <= height + margin:
                keep = True
            if not (-9.0e18 < px < 9.0e18 and -9.0e18 < py < 9.0e18):
                return -1
            vx[n, k] = _s16(int(px))
            vy[n, k] = _s16(int(py))
        if keep:
            x0, x1, y0, y1 = vx[n, 0], vx[n, 0], vy[n, 0], vy[n, 0]
            for k in range(1, verts.shape[1]):
                x0, x1 = min(x0, vx[n, k]), max(x1, vx[n, k])
                y0, y1 = min(y0, vy[n, k]), max(y1, vy[n, k])
            # an edge with both ends beyond one side is rejected by _clipLine at once; the fill clips it away
            if x1 >= 0 and x0 <= width - 1 and y1 >= max(ylo, 0) and y0 <= height - 1:
                idx[n] = i
                n += 1
    return n


@_jit
def gfx_polygons(cv, vx, vy, colors, flip, ylo=0):
    """gymnasium's `_draw_colored_polygon` of each polygon i (vx, vy (N, K) Sint16 vertices) in order: aapolygon
    then filled_polygon; rows above ylo left out (for a caller that draws over them whole)."""
    cs, pool, meta, cell, first, last, work = cv
    for i in range(vx.shape[0]):
        _gfx_polygon(cs, pool, meta, cell, first, last, work, vx[i], vy[i], colors[i], flip, True, True, ylo)


# ------------------------------------------------------------------------------- pygame.draw.polygon
@_jit
def _draw_hline(cs, pool, meta, cell, first, last, x1, y, x2, color, flip):
    """draw.c `drawhorzlineclipbounding` (the bounding rect is not needed)."""
    height, width = cs.shape[0], cell.shape[0]
    if y < 0 or y >= height:
        return
    if x2 < x1:
        x1, x2 = x2, x1
    x1 = max(x1, 0)
    x2 = min(x2, width - 1)
    if x2 < 0 or x1 >= width:
        return
    _span(cs, pool, meta, cell, first, last, _row(y, height, flip), x1, x2, color)


@_jit
def _fill_polygon(cs, pool, meta, cell, first, last, work, px, py, color, flip):
    """draw.c `draw_fillpoly`: px, py the C ints (`(int)` of the Python floats)."""
    height = cs.shape[0]
    n = len(px)
    xs = work[0]
    if n > MAXV:
        meta[1] = 1
        return
    miny, maxy = py[0], py[0]
    for i in range(1, n):
        miny = min(miny, py[i])
        maxy = max(maxy, py[i])
    if miny == maxy:
        minx, maxx = px[0], px[0]
        for i in range(1, n):
            minx = min(minx, px[i])
            maxx = max(maxx, px[i])
        _draw_hline(cs, pool, meta, cell, first, last, minx, miny, maxx, color, flip)
        return
    for y in range(max(miny, 0), min(maxy, height - 1) + 1):
        cnt = 0
        for i in range(n):
            ip = n - 1 if i == 0 else i - 1
            y1, y2 = py[ip], py[i]
            if y1 < y2:
                x1, x2 = px[ip], px[i]
            elif y1 > y2:
                y2, y1 = py[ip], py[i]
                x2, x1 = px[ip], px[i]
            else:
                continue
            if (y >= y1 and y < y2) or (y == maxy and y2 == maxy):
                xs[cnt] = int(float(y - y1) * float(x2 - x1) / float(y2 - y1) + float(x1))  # doubles, (int)
                cnt += 1
        _sort_ints(xs, cnt, meta)
        if cnt % 2:
            meta[1] = 1
            cnt -= 1
        for i in range(0, cnt, 2):
            _draw_hline(cs, pool, meta, cell, first, last, xs[i], y, xs[i + 1], color, flip)
    for i in range(n):  # horizontal edges strictly between the top and bottom rows
        ip = n - 1 if i == 0 else i - 1
        y = py[i]
        if miny < y and py[ip] == y and y < maxy:
            _draw_hline(cs, pool, meta, cell, first, last, px[i], y, px[ip], color, flip)


@_jit
def fill_polygon(cv, px, py, color, flip):
    """`pygame.draw.polygon(surf, color, points)` (width 0)."""
    cs, pool, meta, cell, first, last, work = cv
    _fill_polygon(cs, pool, meta, cell, first, last, work, px, py, color, flip)


@_jit
def fill_polygons(cv, px, py, counts, colors, flip):
    """fill_polygon of polygons packed as rows of px, py (N, K) with counts[i] vertices each, in order."""
    cs, pool, meta, cell, first, last, work = cv
    for i in range(px.shape[0]):
        _fill_polygon(cs, pool, meta, cell, first, last, work, px[i, :counts[i]], py[i, :counts[i]], colors[i], flip)


# ------------------------------------------------------------------------------------------ sprites
@_jit
def put_sprite(cv, x0, y0, block, key, flip, check_border):
    """Copy block (w, h) of 0x00RRGGBB pixels, indexed [x, y] as pygame.surfarray has them, to (x0, y0), clipped;
    pixels equal to key are left out (key -1: none). check_border: the block's edge must be all key (what was
    drawn into it lies inside), else the status is set."""
    cs, pool, meta, cell, first, last, work = cv
    height, width = cs.shape[0], cell.shape[0]
    bw, bh = block.shape
    if check_border:
        for bx in range(bw):
            if block[bx, 0] != key or block[bx, bh - 1] != key:
                meta[1] = 1
        for by in range(bh):
            if block[0, by] != key or block[bw - 1, by] != key:
                meta[1] = 1
    for by in range(bh):
        y = y0 + by
        if y < 0 or y >= height:
            continue
        r = _row(y, height, flip)
        for bx in range(bw):
            x = x0 + bx
            c = block[bx, by]
            if 0 <= x < width and c != key:
                _put(cs, pool, meta, cell, first, r, x, c & 0xFFFFFF)


# ---------------------------------------------------------------------------------------- smoothscale
@_inline
def _xout(s, p, xc, xrecip):
    """One X output channel: s the sum so far (carry and whole pixels), p the split pixel's channel."""
    return min(((((s + (((p << 2) * xc) >> 16)) & 0xFFFF) * xrecip) >> 16), 255)


@_inline
def _yout(acc, t, yc, yrecip):
    return min(((((acc + (((t << 2) * yc) >> 16)) & 0xFFFF) * yrecip) >> 16), 255)


@_jit
def _ysplit(acc, out, k, j, t, yc, yf, yrecip):
    """The Y filter's split row in column j: output row k from the column's sums and this row's X outputs t
    (packed), then the sums restart with the row's remainder."""
    a = acc[j]
    t0, t1, t2 = t >> 32, (t >> 16) & 0xFFFF, t & 0xFFFF
    out[k, j, 0] = _yout(a >> 32, t0, yc, yrecip)
    out[k, j, 1] = _yout((a >> 16) & 0xFFFF, t1, yc, yrecip)
    out[k, j, 2] = _yout(a & 0xFFFF, t2, yc, yrecip)
    acc[j] = ((((t0 << 2) * yf) >> 16) << 32) | ((((t1 << 2) * yf) >> 16) << 16) | (((t2 << 2) * yf) >> 16)


@_jit
def shrink(cv, xgeom, ygeom, out):
    """`pygame.transform.smoothscale` of the canvas (rows as stored) to out (DH, DW, 3) RGB, the SSE path.

    X (per row, `filter_shrink_X_SSE`): an output sums its whole pixels and the carry the previous split pixel
    left, adds (4*s*c)>>16 of its own split pixel s, and is ((sum & 0xffff)*xrecip)>>16, saturated to 255; the
    split pixel carries (4*s*(0x4000-c))>>16 on. Y (`filter_shrink_Y_SSE`): the same over the X filter's rows,
    column by column, its running sums kept as three 16-bit lanes of one word per column (sums stay below 2**12).
    A one-colour cell after a pixel of its colour reads its X outputs from the colour's cached row.
    """
    cs, pool, meta, cell, first, last, work = cv
    xcnt, xrecip, tab, ckey, crow = xgeom
    ylast, ycnt, yrecip = ygeom
    height, dw = cs.shape
    acc = work[4][0]
    acc[:] = 0
    k = 0
    for r in range(height):
        split = k < ylast.shape[0] and r == ylast[k]
        yc = ycnt[k] if split else 0
        yf = ONE14 - yc
        prev = -1
        j = 0
        while j < dw:
            v = cs[r, j]
            if v == prev or (j == 0 and not v & DETAIL):
                # a run of cells of one colour after a pixel of it: the colour's cached row of X outputs
                h = ((v * 0x9E3779B1) & M32) >> 26
                if ckey[h] != v:
                    for i in range(dw):
                        crow[h, i] = (tab[i, (v >> 16) & 255] << 32) | (tab[i, (v >> 8) & 255] << 16) | tab[i, v & 255]
                    ckey[h] = v
                e = j + 1
                while e < dw and cs[r, e] == v:
                    e += 1
                if split:
                    for i in range(j, e):
                        _ysplit(acc, out, k, i, crow[h, i], yc, yf, yrecip)
                else:
                    for i in range(j, e):
                        acc[i] += crow[h, i]
                prev = v
                j = e
                continue
            s0 = s1 = s2 = 0
            if j > 0:
                xf = ONE14 - xcnt[j - 1]
                s0 = ((((prev >> 16) & 255) << 2) * xf) >> 16
                s1 = ((((prev >> 8) & 255) << 2) * xf) >> 16
                s2 = (((prev & 255) << 2) * xf) >> 16
            n = last[j] - first[j]
            if v & DETAIL:
                # R and B summed in one word, G in another: 10 pixels of 255 stay below 2**16 per lane
                sl = v & 0xFFFFFF
                rb = 0
                g = 0
                for i in range(n):
                    q = pool[sl, i]
                    rb += q & 0xFF00FF
                    g += q & 0xFF00
                s0 += rb >> 16
                s1 += g >> 8
                s2 += rb & 0xFFFF
                p = pool[sl, n]
            else:
                s0 += n * ((v >> 16) & 255)
                s1 += n * ((v >> 8) & 255)
                s2 += n * (v & 255)
                p = v
            xc = xcnt[j]
            t = ((_xout(s0, (p >> 16) & 255, xc, xrecip) << 32) | (_xout(s1, (p >> 8) & 255, xc, xrecip) << 16)
                 | _xout(s2, p & 255, xc, xrecip))
            if split:
                _ysplit(acc, out, k, j, t, yc, yf, yrecip)
            else:
                acc[j] += t
            prev = p
            j += 1
        if split:
            k += 1
