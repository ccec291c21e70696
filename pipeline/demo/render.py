"""Painting the demo scene's objects into the RGB array: roofs, cars, tree crowns and the shadows
cast by buildings and trees."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.demo.grid import clip
from pipeline.demo.layout import Building, Car, Tree

# Shadows fall to the north-east (sun in the south-west); unit vector in (dy, dx) image order.
_SHADOW_DIR = (-0.8, 0.6)


def _paint(rgb: np.ndarray, sl: tuple[slice, slice], colour: np.ndarray) -> None:
    """Write colour (3, h, w) into the window ``sl`` of rgb (3, n, n)."""
    rgb[(slice(None), *sl)] = colour


def render_roof(
    rgb: np.ndarray,
    b: Building,
    n: int,
    fine: np.ndarray,
    mid: np.ndarray,
    rng: np.random.Generator,
    course: int,
) -> None:
    """Paint a roof (facets, tile courses, ridge or parapet) and maybe a chimney."""
    sl = clip(b.rect, n)
    if sl is None:
        return
    y0, x0, y1, x1 = b.rect
    yy = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None]
    xx = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :]
    dt, db = yy - y0, (y1 - 1) - yy
    dl, dr = xx - x0, (x1 - 1) - xx
    h, w = y1 - y0, x1 - x0
    shade = np.ones((yy.size, xx.size), np.float32)
    ridge_x = w >= h  # ridge runs along the long axis
    if b.roof != "flat":
        # Facet brightness for sun from the south-west: south/west bright, north/east dark.
        if ridge_x:
            across = np.where(dt < db, 0.8, 1.12) * np.ones_like(shade)
            dist = np.minimum(dt, db) * np.ones_like(shade)
            if b.roof == "hip":
                ends = np.minimum(dl, dr)
                end_val = np.where(dl < dr, 1.04, 0.86)
                use_end = ends < dist
                across = np.where(use_end, end_val, across)
                dist = np.where(use_end, ends, dist)
            ridge = np.abs(dt - db) <= 1.0
        else:
            across = np.where(dl < dr, 1.1, 0.82) * np.ones_like(shade)
            dist = np.minimum(dl, dr) * np.ones_like(shade)
            if b.roof == "hip":
                ends = np.minimum(dt, db)
                end_val = np.where(dt < db, 0.8, 1.12)
                use_end = ends < dist
                across = np.where(use_end, end_val, across)
                dist = np.where(use_end, ends, dist)
            ridge = np.abs(dl - dr) <= 1.0
        shade *= across
        if b.tiles:  # tile courses parallel to the eaves
            shade *= 1.0 - 0.09 * ((dist % course) < 1.0)
        shade = np.where(
            ridge & ~(np.minimum(np.minimum(dt, db), np.minimum(dl, dr)) < 2), 0.9, shade
        )
    else:
        border = np.minimum(np.minimum(dt, db), np.minimum(dl, dr))
        shade *= np.where((border >= 2) & (border < 5), 1.12, 1.0)  # parapet
    edge = np.minimum(np.minimum(dt, db), np.minimum(dl, dr)) < 2
    shade = np.where(edge, shade * 0.75, shade)
    f = fine[sl]
    m = mid[sl]
    tex = 1.0 + (0.06 if b.roof == "flat" else 0.035) * f + 0.04 * m
    colour = np.asarray(b.colour, np.float32)[:, None, None] * (shade * tex)[None]
    _paint(rgb, sl, colour)
    # A chimney or a skylight / roof unit now and then.
    if min(h, w) > 24 and rng.random() < 0.5:
        s = max(3, min(h, w) // 8)
        cy = int(rng.integers(y0 + s, y1 - 2 * s))
        cx = int(rng.integers(x0 + s, x1 - 2 * s))
        tone = rng.choice([0.55, 1.35])
        box = clip((cy, cx, cy + s, cx + s), n)
        if box is not None:
            rgb[(slice(None), *box)] = np.clip(
                np.asarray(b.colour, np.float32)[:, None, None] * tone, 20, 235
            )


def render_car(rgb: np.ndarray, car: Car, n: int, fine: np.ndarray) -> None:
    """Paint a car seen from above: body, windscreen, rear window, dark edges."""
    sl = clip(car.rect, n)
    if sl is None:
        return
    y0, x0, y1, x1 = car.rect
    yy = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None]
    xx = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :]
    if car.horizontal:
        t = (xx - x0 + 0.5) / (x1 - x0)
        u = (yy - y0 + 0.5) / (y1 - y0)
    else:
        t = (yy - y0 + 0.5) / (y1 - y0)
        u = (xx - x0 + 0.5) / (x1 - x0)
    if car.front > 0:
        t = 1.0 - t  # t = 0 at the front bumper
    t, u = np.broadcast_arrays(t, u)
    body = np.asarray(car.colour, np.float32)
    side = (u < 0.14) | (u > 0.86)
    windshield = (t >= 0.27) & (t < 0.42) & ~side
    rear = (t >= 0.78) & (t < 0.88) & ~side
    roof = (t >= 0.42) & (t < 0.78) & ~side
    edge = (t < 0.04) | (t > 0.96) | (u < 0.08) | (u > 0.92)
    shade = np.ones(t.shape, np.float32)
    shade = np.where(roof, 1.08, shade)
    shade = np.where(edge, 0.7, shade)
    colour = body[:, None, None] * shade[None] + 4.0 * fine[sl][None]
    glass = np.asarray([38.0, 44.0, 52.0], np.float32)[:, None, None] + 6.0 * fine[sl][None]
    colour = np.where((windshield | rear)[None], glass, colour)
    _paint(rgb, sl, colour)


def tree_fields(
    trees: list[Tree],
    n: int,
    fine: np.ndarray,
    leaf: np.ndarray,
    shadow: np.ndarray,
    shadow_len: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crown height (0 outside), lighting and tree index per pixel; marks tree shadows."""
    height = np.zeros((n, n), np.float32)
    light = np.zeros((n, n), np.float32)
    index = np.zeros((n, n), np.int16 if len(trees) < 32000 else np.int32)
    sy, sx = _SHADOW_DIR
    for i, tree in enumerate(trees):
        r = tree.radius
        reach = int(np.ceil(r * 1.35)) + 2
        cy, cx = int(round(tree.cy)), int(round(tree.cx))
        rect = (cy - reach, cx - reach, cy + reach + 1, cx + reach + 1)
        sl = clip(rect, n)
        if sl is None:
            continue
        dy = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None] - tree.cy
        dx = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :] - tree.cx
        d = np.sqrt(dy * dy + dx * dx)
        theta = np.arctan2(dy, dx)
        outline = np.ones_like(d)
        for k, amp, phase in tree.harmonics:
            outline += amp * np.cos(k * theta + phase)
        rr = d / (r * outline) + 0.05 * leaf[sl] + 0.02 * fine[sl]
        h = np.sqrt(np.clip(1.0 - rr * rr, 0.0, 1.0))
        # Brighter towards the sun (south-west), darker on the far side.
        facing = -(dy * sy + dx * sx) / r
        lit = (0.5 + 0.55 * h) * (0.85 + 0.25 * np.clip(facing, -1.0, 1.0))
        top = h > height[sl]
        height[sl] = np.where(top, h, height[sl])
        light[sl] = np.where(top, lit, light[sl])
        index[sl] = np.where(top, i, index[sl])
        # Shadow: the crown displaced away from the sun.
        crown = h > 0
        for frac in (0.5, 1.0):
            oy, ox = int(round(sy * shadow_len * frac)), int(round(sx * shadow_len * frac))
            dst = clip((sl[0].start + oy, sl[1].start + ox, sl[0].stop + oy, sl[1].stop + ox), n)
            if dst is None:
                continue
            src = crown[
                dst[0].start - oy - sl[0].start : dst[0].stop - oy - sl[0].start,
                dst[1].start - ox - sl[1].start : dst[1].stop - ox - sl[1].start,
            ]
            shadow[dst] |= src
    return height, light, index


def building_shadows(
    buildings: list[Building], n: int, shadow: np.ndarray, px: Callable[[float], int]
) -> None:
    """Mark the shadows the buildings cast (to the north-east) in ``shadow``."""
    sy, sx = _SHADOW_DIR
    for b in buildings:
        length = px(b.height * 0.7)
        steps = max(2, length // 3)
        y0, x0, y1, x1 = b.rect
        for k in range(1, steps + 1):
            oy = int(round(sy * length * k / steps))
            ox = int(round(sx * length * k / steps))
            sl = clip((y0 + oy, x0 + ox, y1 + oy, x1 + ox), n)
            if sl is not None:
                shadow[sl] = True
