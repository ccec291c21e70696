"""Procedural demo scene: an aerial-like 5 cm RGB orthophoto of a suburb plus its true labels.

The scene is a road grid (asphalt, lane markings, sidewalks, driveways), gable / hipped / flat
roofs, street and garden trees, lawns and cars, with per-pixel texture, building and tree
shadows, a slight optical blur and sensor noise. An irregular nodata collar (a triangle at one
corner and a strip along one side) is marked invalid with an internal GDAL mask.

Everything is drawn from ``np.random.default_rng(seed)`` in a fixed order, so a given
``(size, seed)`` always yields the same arrays and the same file bytes. Object sizes are given
in metres; for scenes smaller than 1024 px they are shrunk (down to 0.3x at 256 px and below)
so that small test scenes still hold a road, buildings, trees and cars. Textures stay at the
native 5 cm pixel scale.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import Affine
from scipy import ndimage

DEMO_CLASSES: list[str] = ["road", "building", "tree", "grass", "car"]
DEMO_COLORS: list[tuple[int, int, int]] = [
    (128, 128, 128),  # road: grey
    (205, 45, 40),  # building: red
    (25, 100, 35),  # tree: dark green
    (150, 220, 100),  # grass: light green
    (250, 210, 0),  # car: yellow
]
DEMO_CRS = "EPSG:25833"
DEMO_PIXEL_SIZE = 0.05
DEMO_ORIGIN: tuple[float, float] = (368000.0, 5808000.0)  # upper-left x, y (Potsdam)
NODATA_LABEL = 255
MIN_SIZE = 64

ROAD, BUILDING, TREE, GRASS, CAR = range(5)

Rect = tuple[int, int, int, int]  # y0, x0, y1, x1 (pixels, end-exclusive, may leave the scene)

# Shadows fall to the north-east (sun in the south-west); unit vector in (dy, dx) image order.
_SHADOW_DIR = (-0.8, 0.6)


def labels_path_for(image_path: Path) -> Path:
    """<stem>_labels.tif next to the image."""
    image_path = Path(image_path)
    return image_path.with_name(f"{image_path.stem}_labels.tif")


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


@dataclass
class _Road:
    rect: Rect  # carriageway
    horizontal: bool
    sidewalk: int  # sidewalk width in px


@dataclass
class _Building:
    rect: Rect
    roof: str  # "gable", "hip" or "flat"
    colour: tuple[float, float, float]
    height: float  # metres, for the shadow length
    tiles: bool


@dataclass
class _Car:
    rect: Rect
    horizontal: bool
    front: int  # +1: front at the high-coordinate end, -1: at the low end
    colour: tuple[float, float, float]


@dataclass
class _Tree:
    cy: float
    cx: float
    radius: float
    tint: tuple[float, float, float]
    harmonics: np.ndarray  # (k, amplitude, phase) rows for the crown outline


def _object_scale(size: int) -> float:
    """Factor applied to object sizes in metres (1 for size >= 1024 px)."""
    return float(np.clip(size / 1024.0, 0.3, 1.0))


def _overlaps(a: Rect, b: Rect, pad: int = 0) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def _clip(r: Rect, n: int) -> tuple[slice, slice] | None:
    y0, x0, y1, x1 = max(r[0], 0), max(r[1], 0), min(r[2], n), min(r[3], n)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _visible_area(r: Rect, n: int) -> int:
    return max(0, min(r[2], n) - max(r[0], 0)) * max(0, min(r[3], n) - max(r[1], 0))


def _road_positions(rng: np.random.Generator, n: int, spacing: float, first: float) -> list[int]:
    out: list[int] = []
    pos = first
    while pos < n:
        out.append(int(round(pos)))
        pos += spacing * rng.uniform(0.9, 1.12)
    return out


def _make_roads(rng: np.random.Generator, n: int, px: Callable[[float], int]) -> list[_Road]:
    roads: list[_Road] = []
    # Horizontal through roads; the first one always crosses the scene.
    spacing = px(rng.uniform(32.0, 40.0))
    ys = _road_positions(rng, n, spacing, rng.uniform(0.3, 0.7) * min(n, spacing))
    for y in ys:
        w = px(rng.uniform(5.5, 7.0))
        roads.append(
            _Road((y - w // 2, -n, y - w // 2 + w, 2 * n), True, px(rng.uniform(1.5, 2.2)))
        )
    # Vertical side streets, each segment between two horizontal roads present or not.
    spacing_v = px(rng.uniform(34.0, 44.0))
    xs = _road_positions(rng, n, spacing_v, rng.uniform(0.45, 0.95) * spacing_v)
    bounds = [-n, *ys, 2 * n]
    for x in xs:
        w = px(rng.uniform(5.0, 7.0))
        sw = px(rng.uniform(1.5, 2.2))
        for top, bottom in zip(bounds[:-1], bounds[1:], strict=True):
            if rng.random() < 0.7:
                roads.append(_Road((top, x - w // 2, bottom, x - w // 2 + w), False, sw))
    return roads


def _sidewalk_rect(road: _Road) -> Rect:
    y0, x0, y1, x1 = road.rect
    s = road.sidewalk
    return (y0 - s, x0, y1 + s, x1) if road.horizontal else (y0, x0 - s, y1, x1 + s)


_ROOF_COLOURS: list[tuple[tuple[float, float, float], bool, float]] = [
    # colour, tiled, weight
    ((168.0, 78.0, 58.0), True, 0.22),  # red tile
    ((185.0, 96.0, 66.0), True, 0.12),  # orange-red tile
    ((138.0, 66.0, 52.0), True, 0.12),  # dark red tile
    ((124.0, 88.0, 70.0), True, 0.08),  # brown tile
    ((136.0, 136.0, 140.0), False, 0.18),  # grey
    ((160.0, 158.0, 152.0), False, 0.08),  # light grey (flat, gravel)
    ((64.0, 65.0, 72.0), False, 0.12),  # anthracite
    ((48.0, 50.0, 56.0), False, 0.08),  # dark / bitumen
]


def _roof_style(
    rng: np.random.Generator, small: bool
) -> tuple[str, tuple[float, float, float], float, bool]:
    """Roof shape, colour, building height (m) and whether the roof is tiled."""
    weights = np.array([w for _, _, w in _ROOF_COLOURS])
    i = int(rng.choice(len(_ROOF_COLOURS), p=weights / weights.sum()))
    base, tiles, _ = _ROOF_COLOURS[i]
    jitter = rng.uniform(-10.0, 10.0)
    colour = tuple(float(c + jitter + rng.uniform(-5.0, 5.0)) for c in base)
    if tiles:
        roof = "gable" if rng.random() < 0.6 else "hip"
    else:
        roof = "flat" if small or rng.random() < 0.5 else ("gable" if rng.random() < 0.5 else "hip")
    height = rng.uniform(2.5, 3.5) if small else rng.uniform(6.0, 10.0)
    return roof, colour, height, tiles


def _make_buildings(
    rng: np.random.Generator, n: int, px: Callable[[float], int], roads: list[_Road]
) -> tuple[list[_Building], list[Rect]]:
    buildings: list[_Building] = []
    driveways: list[Rect] = []
    keep_out = [_sidewalk_rect(r) for r in roads]
    carriageways = [r.rect for r in roads]
    gap = px(3.0)
    clear = px(1.0)

    def free(rect: Rect) -> bool:
        if _visible_area(rect, n) < 0.3 * (rect[2] - rect[0]) * (rect[3] - rect[1]):
            return False
        if any(_overlaps(rect, k, clear) for k in keep_out + driveways):
            return False
        return not any(_overlaps(rect, b.rect, gap) for b in buildings)

    # Houses facing the streets.
    road_len = sum(
        min(r.rect[3], n) - max(r.rect[1], 0)
        if r.horizontal
        else min(r.rect[2], n) - max(r.rect[0], 0)
        for r in roads
    )
    attempts = 40 + int(10 * max(road_len, 0) / px(12.0))
    for _ in range(attempts):
        road = roads[int(rng.integers(len(roads)))]
        side = 1 if rng.random() < 0.5 else -1
        frontage, depth = px(rng.uniform(8.5, 15.0)), px(rng.uniform(7.5, 11.5))
        if rng.random() < 0.3:
            frontage, depth = depth, frontage
        setback = px(rng.uniform(2.5, 5.5)) + road.sidewalk
        y0, x0, y1, x1 = road.rect
        if road.horizontal:
            along = int(rng.integers(-frontage, n))
            near = y1 + setback if side > 0 else y0 - setback - depth
            rect = (near, along, near + depth, along + frontage)
        else:
            along = int(rng.integers(max(y0, -frontage), min(y1, n)))
            near = x1 + setback if side > 0 else x0 - setback - depth
            rect = (along, near, along + frontage, near + depth)
        if not free(rect):
            continue
        roof, colour, height, tiles = _roof_style(rng, small=False)
        buildings.append(_Building(rect, roof, colour, height, tiles))
        # Driveway from the front of the house to the carriageway, at one end of the frontage.
        dw = px(rng.uniform(2.8, 3.5))
        at_start = rng.random() < 0.5
        if road.horizontal:
            dx0 = rect[1] + px(0.5) if at_start else rect[3] - px(0.5) - dw
            drive = (y1, dx0, rect[0], dx0 + dw) if side > 0 else (rect[2], dx0, y0, dx0 + dw)
        else:
            dy0 = rect[0] + px(0.5) if at_start else rect[2] - px(0.5) - dw
            drive = (dy0, x1, dy0 + dw, rect[1]) if side > 0 else (dy0, rect[3], dy0 + dw, x0)
        if not any(_overlaps(drive, b.rect) for b in buildings[:-1]) and not any(
            _overlaps(drive, c) for c in carriageways if c != road.rect
        ):
            driveways.append(drive)

    # Garages and garden sheds in the back yards.
    for _ in range(10 + int(n * n / px(14.0) ** 2)):
        h, w = px(rng.uniform(3.0, 6.5)), px(rng.uniform(3.0, 6.5))
        y, x = int(rng.integers(-h // 2, n)), int(rng.integers(-w // 2, n))
        rect = (y, x, y + h, x + w)
        if free(rect):
            roof, colour, height, tiles = _roof_style(rng, small=True)
            buildings.append(_Building(rect, roof, colour, height, tiles))

    if not any(_visible_area(b.rect, n) > 0 for b in buildings):
        # Guarantee one house: on the roomier side of the first (always present) road.
        road = roads[0]
        y0, _, y1, _ = _sidewalk_rect(road)
        depth, frontage = px(10.0), px(12.0)
        x0 = n // 2 - frontage // 2
        if y0 > n - y1:
            rect = (y0 - clear - depth, x0, y0 - clear, x0 + frontage)
        else:
            rect = (y1 + clear, x0, y1 + clear + depth, x0 + frontage)
        roof, colour, height, tiles = _roof_style(rng, small=False)
        buildings.append(_Building(rect, roof, colour, height, tiles))
    return buildings, driveways


_CAR_COLOURS: list[tuple[tuple[float, float, float], float]] = [
    ((226.0, 226.0, 222.0), 0.22),  # white
    ((172.0, 174.0, 178.0), 0.18),  # silver
    ((32.0, 32.0, 36.0), 0.16),  # black
    ((80.0, 82.0, 86.0), 0.12),  # dark grey
    ((40.0, 70.0, 160.0), 0.10),  # blue
    ((175.0, 32.0, 30.0), 0.10),  # red
    ((225.0, 190.0, 35.0), 0.06),  # yellow
    ((35.0, 95.0, 70.0), 0.06),  # green
]


def _car_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    weights = np.array([w for _, w in _CAR_COLOURS])
    base = _CAR_COLOURS[int(rng.choice(len(_CAR_COLOURS), p=weights / weights.sum()))][0]
    return tuple(float(np.clip(c + rng.uniform(-8.0, 8.0), 0.0, 255.0)) for c in base)


def _make_cars(
    rng: np.random.Generator,
    n: int,
    px: Callable[[float], int],
    roads: list[_Road],
    driveways: list[Rect],
) -> list[_Car]:
    cars: list[_Car] = []
    pad = px(0.8)

    def place(rect: Rect, horizontal: bool, avoid: tuple[Rect, ...] = ()) -> None:
        if _visible_area(rect, n) == 0 or any(_overlaps(rect, c.rect, pad) for c in cars):
            return
        if any(_overlaps(rect, a, pad) for a in avoid):  # not in the middle of a junction
            return
        front = 1 if rng.random() < 0.5 else -1
        cars.append(_Car(rect, horizontal, front, _car_colour(rng)))

    for road in roads:
        y0, x0, y1, x1 = road.rect
        lo, hi = (max(x0, 0), min(x1, n)) if road.horizontal else (max(y0, 0), min(y1, n))
        cross = tuple(o.rect for o in roads if o.horizontal != road.horizontal)
        pos = lo + px(rng.uniform(0.0, 8.0))
        while pos < hi:
            length, width = px(rng.uniform(4.2, 4.9)), px(rng.uniform(1.75, 1.95))
            if rng.random() < 0.5:
                parked = rng.random() < 0.7
                inset = px(rng.uniform(0.2, 0.5)) if parked else px(rng.uniform(0.9, 1.4))
                upper = rng.random() < 0.5
                if road.horizontal:
                    cy = y0 + inset if upper else y1 - inset - width
                    place((cy, pos, cy + width, pos + length), True, cross)
                else:
                    cx = x0 + inset if upper else x1 - inset - width
                    place((pos, cx, pos + length, cx + width), False, cross)
            pos += length + px(rng.uniform(1.5, 10.0))

    for drive in driveways:
        if rng.random() < 0.5:
            continue
        y0, x0, y1, x1 = drive
        length, width = px(rng.uniform(4.2, 4.9)), px(rng.uniform(1.75, 1.95))
        if x1 - x0 < y1 - y0:  # vertical driveway
            if y1 - y0 < length + px(1.0):
                continue
            cy = int(rng.integers(y0, y1 - length))
            cx = (x0 + x1 - width) // 2
            place((cy, cx, cy + length, cx + width), False)
        else:
            if x1 - x0 < length + px(1.0):
                continue
            cx = int(rng.integers(x0, x1 - length))
            cy = (y0 + y1 - width) // 2
            place((cy, cx, cy + width, cx + length), True)
    return cars


def _new_tree(rng: np.random.Generator, cy: float, cx: float, radius: float) -> _Tree:
    k = np.arange(2, 6, dtype=np.float64)
    harmonics = np.stack(
        [k, rng.uniform(0.02, 0.08, k.size), rng.uniform(0.0, 2 * np.pi, k.size)], axis=1
    )
    if rng.random() < 0.25:  # yellowish (birch, lime) or bluish-dark (conifer) crowns
        tint = (1.15, 1.12, 0.9) if rng.random() < 0.5 else (0.8, 0.88, 0.95)
    else:
        tint = (1.0, 1.0, 1.0)
    tint = tuple(float(t * rng.uniform(0.92, 1.08)) for t in tint)
    return _Tree(cy, cx, radius, tint, harmonics)


def _make_trees(
    rng: np.random.Generator,
    n: int,
    px: Callable[[float], int],
    roads: list[_Road],
    buildings: list[_Building],
) -> list[_Tree]:
    trees: list[_Tree] = []
    carriageways = [r.rect for r in roads]

    def inside(y: float, x: float, rects: list[Rect]) -> bool:
        return any(r[0] <= y < r[2] and r[1] <= x < r[3] for r in rects)

    roofs = [b.rect for b in buildings]
    # Street trees on the sidewalks of some roads.
    for road in roads:
        if rng.random() < 0.45:
            continue
        y0, x0, y1, x1 = road.rect
        lo, hi = (max(x0, 0), min(x1, n)) if road.horizontal else (max(y0, 0), min(y1, n))
        step = px(rng.uniform(8.0, 14.0))
        pos = lo + rng.uniform(0.0, step)
        side = 1 if rng.random() < 0.5 else -1
        while pos < hi:
            off = road.sidewalk * 0.5
            if road.horizontal:
                cy, cx = (y1 + off if side > 0 else y0 - off), pos
            else:
                cy, cx = pos, (x1 + off if side > 0 else x0 - off)
            if not inside(cy, cx, carriageways) and not inside(cy, cx, roofs):
                trees.append(_new_tree(rng, cy, cx, px(rng.uniform(2.0, 3.5))))
            pos += step * rng.uniform(0.9, 1.1)

    # Garden trees, often in small groups.
    n_groups = 4 + int(n * n / px(16.0) ** 2)
    for _ in range(n_groups):
        cy, cx = rng.uniform(0, n), rng.uniform(0, n)
        for _ in range(1 + int(rng.integers(0, 4))):
            ty = cy + rng.normal(0.0, px(3.0))
            tx = cx + rng.normal(0.0, px(3.0))
            if inside(ty, tx, carriageways) or inside(ty, tx, roofs):
                continue
            trees.append(_new_tree(rng, ty, tx, px(rng.uniform(1.8, 4.8))))
    return trees


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Zero-mean, about unit-std Gaussian-correlated noise (n, n) float32; sigma in px."""
    if sigma <= 3.0:
        a = rng.standard_normal((n, n), dtype=np.float32)
        radius = int(4.0 * sigma + 0.5)  # scipy's default truncation
        k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        k /= k.sum()
        a = ndimage.gaussian_filter(a, sigma, mode="reflect", output=np.float32)
        a *= np.float32(1.0 / float((k * k).sum()))  # white noise std after the 2-D filter
        return a
    # Large sigma: filter a coarse grid, normalise it there (cheap), upsample bilinearly.
    f = max(1, int(sigma // 2))
    m = n // f + 2
    a = ndimage.gaussian_filter(rng.standard_normal((m, m)), sigma / f, mode="wrap")
    a = ((a - a.mean()) / max(float(a.std()), 1e-9)).astype(np.float32)
    return np.ascontiguousarray(ndimage.zoom(a, f, order=1, mode="nearest")[:n, :n])


def _linear(
    out: np.ndarray, base: float, terms: list[tuple[float, np.ndarray]], tmp: np.ndarray
) -> np.ndarray:
    """``out = base + sum(coef * field)`` in place, with ``tmp`` as scratch (float32 arrays)."""
    out.fill(base)
    for coef, field in terms:
        np.multiply(field, np.float32(coef), out=tmp)
        out += tmp
    return out


def _collar(rng: np.random.Generator, n: int) -> np.ndarray:
    """Valid-data mask: False in a corner triangle and a strip along one side (wobbly edges)."""
    idx = np.arange(n, dtype=np.float32)
    # Triangle in the top-left corner, then rotated to a random corner.
    leg = rng.uniform(0.22, 0.3) * n
    wob = _wobble(rng, 2 * n, n)
    rows = min(n, int(np.ceil(leg + np.abs(wob).max())) + 2)
    yy = np.arange(rows, dtype=np.int32)[:, None]
    xx = np.arange(n, dtype=np.int32)[None, :]
    tri = np.zeros((n, n), bool)
    tri[:rows] = (xx + yy) < leg + wob[np.clip(xx - yy + n, 0, 2 * n - 1)]
    tri = np.rot90(tri, int(rng.integers(4)))
    # Strip along the left side, then rotated to a random side.
    width = rng.uniform(0.02, 0.045) * n
    strip = idx[None, :] < width + _wobble(rng, n, n)[:, None]
    strip = np.rot90(strip, int(rng.integers(4)))
    return np.ascontiguousarray(~(tri | strip))


def _wobble(rng: np.random.Generator, length: int, n: int) -> np.ndarray:
    """Smooth 1-D offsets (px) for the collar edge, amplitude ~0.6 % of the scene."""
    w = ndimage.gaussian_filter1d(rng.standard_normal(length), max(length / 40.0, 1.0))
    w /= max(float(np.abs(w).max()), 1e-6)
    steps = rng.integers(-1, 2, length).cumsum()  # a little stair-step jaggedness
    jag = min(3, max(1, n // 800))
    return (w * 0.006 * n + np.clip(steps, -jag, jag)).astype(np.float32)


def _paint(rgb: np.ndarray, sl: tuple[slice, slice], colour: np.ndarray) -> None:
    """Write colour (3, h, w) into the window ``sl`` of rgb (3, n, n)."""
    rgb[(slice(None), *sl)] = colour


def _render_roof(
    rgb: np.ndarray,
    b: _Building,
    n: int,
    fine: np.ndarray,
    mid: np.ndarray,
    rng: np.random.Generator,
    course: int,
) -> None:
    sl = _clip(b.rect, n)
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
        box = _clip((cy, cx, cy + s, cx + s), n)
        if box is not None:
            rgb[(slice(None), *box)] = np.clip(
                np.asarray(b.colour, np.float32)[:, None, None] * tone, 20, 235
            )


def _render_car(rgb: np.ndarray, car: _Car, n: int, fine: np.ndarray) -> None:
    sl = _clip(car.rect, n)
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


def _tree_fields(
    trees: list[_Tree],
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
        sl = _clip(rect, n)
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
            dst = _clip((sl[0].start + oy, sl[1].start + ox, sl[0].stop + oy, sl[1].stop + ox), n)
            if dst is None:
                continue
            src = crown[
                dst[0].start - oy - sl[0].start : dst[0].stop - oy - sl[0].start,
                dst[1].start - ox - sl[1].start : dst[1].stop - ox - sl[1].start,
            ]
            shadow[dst] |= src
    return height, light, index


def _building_shadows(
    buildings: list[_Building], n: int, shadow: np.ndarray, px: Callable[[float], int]
) -> None:
    sy, sx = _SHADOW_DIR
    for b in buildings:
        length = px(b.height * 0.7)
        steps = max(2, length // 3)
        y0, x0, y1, x1 = b.rect
        for k in range(1, steps + 1):
            oy = int(round(sy * length * k / steps))
            ox = int(round(sx * length * k / steps))
            sl = _clip((y0 + oy, x0 + ox, y1 + oy, x1 + ox), n)
            if sl is not None:
                shadow[sl] = True


def generate_demo_arrays(
    size: int = 2560, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (rgb uint8 (3, size, size), labels uint8 (size, size) with 255 where invalid,
    valid bool (size, size))."""
    n = int(size)
    if n < MIN_SIZE:
        raise ValueError(f"demo scene size must be >= {MIN_SIZE}, got {size}")
    rng = np.random.default_rng(seed)
    scale = _object_scale(n)

    def px(metres: float) -> int:
        return max(1, int(round(metres * scale / DEMO_PIXEL_SIZE)))

    # ---- layout -------------------------------------------------------------------------
    roads = _make_roads(rng, n, px)
    buildings, driveways = _make_buildings(rng, n, px, roads)
    cars = _make_cars(rng, n, px, roads, driveways)
    trees = _make_trees(rng, n, px, roads, buildings)

    # ---- noise fields -------------------------------------------------------------------
    fine = _smooth_noise(rng, n, 0.8)  # grain
    leaf = _smooth_noise(rng, n, 2.5)  # leaf clumps, grass tufts
    mid = _smooth_noise(rng, n, 12.0)  # ~0.6 m patches
    large = _smooth_noise(rng, n, 80.0)  # ~4 m: dryness, wear

    labels = np.full((n, n), GRASS, np.uint8)
    rgb = np.empty((3, n, n), np.float32)
    work = np.empty((n, n), np.float32)
    tmp = np.empty((n, n), np.float32)

    # ---- grass (everywhere first) --------------------------------------------------------
    dry = _linear(work, 0.0, [(0.65, large), (0.35, mid)], tmp)
    for c, (base_c, a_dry, a_mid, a_leaf, a_fine) in enumerate(
        [(98.0, 16.0, 4.0, 7.0, 4.0), (128.0, 10.0, 6.0, 10.0, 5.0), (62.0, 7.0, 3.0, 4.0, 3.0)]
    ):
        terms = [(a_dry, dry), (a_mid, mid), (a_leaf, leaf), (a_fine, fine)]
        _linear(rgb[c], base_c, terms, tmp)
    soil = dry  # worn, brownish lawn patches: weight 0..0.6 where the lawn is driest
    soil -= 1.5
    soil *= 1.5
    np.clip(soil, 0.0, 0.6, out=soil)
    for c, soil_c in enumerate((128.0, 112.0, 88.0)):
        np.subtract(np.float32(soil_c), rgb[c], out=tmp)
        tmp *= soil
        rgb[c] += tmp
    del dry, soil

    # ---- sidewalks and driveways ---------------------------------------------------------
    paved = np.zeros((n, n), bool)
    for rect in [_sidewalk_rect(r) for r in roads] + driveways:
        sl = _clip(rect, n)
        if sl is not None:
            paved[sl] = True
    tile = max(4, px(0.4))
    ii = np.arange(n)
    joints = ((ii % tile) == 0)[:, None] | ((ii % tile) == 0)[None, :]
    _linear(work, 150.0, [(5.0, large), (6.0, fine), (-14.0, joints)], tmp)
    del joints
    for c, off in enumerate((0.0, -2.0, -7.0)):
        np.add(work, np.float32(off), out=tmp)
        np.copyto(rgb[c], tmp, where=paved)

    # ---- carriageways and lane markings --------------------------------------------------
    asphalt_mask = np.zeros((n, n), bool)
    for r in roads:
        sl = _clip(r.rect, n)
        if sl is not None:
            asphalt_mask[sl] = True
    terms = [(6.0, large), (3.0, mid), (7.0, fine), (-9.0, mid > 1.6), (-8.0, large < -1.5)]
    _linear(work, 98.0, terms, tmp)
    del terms, large
    for c, off in enumerate((-2.0, 0.0, 3.0)):
        np.add(work, np.float32(off), out=tmp)
        np.copyto(rgb[c], tmp, where=asphalt_mask)
    labels[paved | asphalt_mask] = ROAD
    del paved

    marking = np.zeros((n, n), bool)
    line_w = max(2, px(0.15))
    dash, period = px(3.0), px(9.0)
    margin = px(1.0)
    for r in roads:
        y0, x0, y1, x1 = r.rect
        on = ((ii + int(rng.integers(period))) % period) < dash
        for o in roads:  # no centre line across junctions
            if o.horizontal != r.horizontal and _overlaps(r.rect, o.rect):
                lo, hi = (o.rect[1], o.rect[3]) if r.horizontal else (o.rect[0], o.rect[2])
                on[max(lo - margin, 0) : max(hi + margin, 0)] = False
        if r.horizontal:
            c0 = (y0 + y1) // 2 - line_w // 2
            sl = _clip((c0, x0, c0 + line_w, x1), n)
            if sl is not None:
                marking[sl] |= on[None, sl[1]]
        else:
            c0 = (x0 + x1) // 2 - line_w // 2
            sl = _clip((y0, c0, y1, c0 + line_w), n)
            if sl is not None:
                marking[sl] |= on[sl[0], None]
    marking &= asphalt_mask & (fine < 1.8)  # slightly worn paint
    _linear(work, 214.0, [(7.0, fine)], tmp)
    for c, off in enumerate((0.0, 0.0, -4.0)):
        np.add(work, np.float32(off), out=tmp)
        np.copyto(rgb[c], tmp, where=marking)
    del marking, asphalt_mask, work, tmp

    # ---- shadows (computed now, applied after trees) -------------------------------------
    shadow = np.zeros((n, n), bool)
    _building_shadows(buildings, n, shadow, px)

    # ---- roofs ---------------------------------------------------------------------------
    course = max(3, px(0.35))
    for b in buildings:
        sl = _clip(b.rect, n)
        if sl is None:
            continue
        labels[sl] = BUILDING
        _render_roof(rgb, b, n, fine, mid, rng, course)
    del mid

    # ---- cars ----------------------------------------------------------------------------
    for car in cars:
        sl = _clip(car.rect, n)
        if sl is None:
            continue
        labels[sl] = CAR
        _render_car(rgb, car, n, fine)

    # ---- trees ---------------------------------------------------------------------------
    height, light, index = _tree_fields(trees, n, fine, leaf, shadow, float(px(4.0)))
    crown = height > 0
    if trees:
        tints = np.asarray([t.tint for t in trees], np.float32)[index[crown]]
        lit = light[crown]
        texture = 1.0 + 0.22 * leaf[crown] + 0.08 * fine[crown]
        texture = np.where(leaf[crown] < -1.3, texture * 0.65, texture)  # gaps between clumps
        for c, base_c in enumerate((50.0, 82.0, 38.0)):
            rgb[c][crown] = base_c * tints[:, c] * lit * texture
        labels[crown] = TREE
        del tints, lit, texture
    del height, light, index, leaf, fine

    # ---- apply shadows (soft-edged) on ground, cars and lawns -----------------------------
    ground = (labels == ROAD) | (labels == GRASS) | (labels == CAR)
    ground &= shadow
    del shadow
    soft = ndimage.gaussian_filter(ground.astype(np.float32), 1.0)
    del ground
    tmp = np.empty((n, n), np.float32)
    for c, k in enumerate((0.52, 0.55, 0.66)):
        np.multiply(soft, np.float32(k - 1.0), out=tmp)
        tmp += np.float32(1.0)
        rgb[c] *= tmp
    del soft

    # ---- optics and sensor ----------------------------------------------------------------
    out = np.empty((3, n, n), np.uint8)
    work = np.empty((n, n), np.float32)
    for c in range(3):
        ndimage.gaussian_filter(rgb[c], 0.6, output=work)
        rng.standard_normal(out=tmp, dtype=np.float32)
        tmp *= np.float32(2.5)
        work += tmp
        np.clip(work, 0.0, 255.0, out=work)
        np.rint(work, out=work)
        out[c] = work
    del rgb, work, tmp

    # ---- nodata collar --------------------------------------------------------------------
    valid = _collar(rng, n)
    labels[~valid] = NODATA_LABEL
    out[:, ~valid] = 0
    return out, labels, valid


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _block_size(n: int) -> int:
    """512 px tiles, or the largest multiple of 16 that fits a smaller scene."""
    return 512 if n >= 512 else max(16, n // 16 * 16)


def _base_profile(n: int, count: int) -> dict:
    bs = _block_size(n)
    return {
        "driver": "GTiff",
        "width": n,
        "height": n,
        "count": count,
        "dtype": "uint8",
        "crs": DEMO_CRS,
        "transform": Affine(
            DEMO_PIXEL_SIZE, 0.0, DEMO_ORIGIN[0], 0.0, -DEMO_PIXEL_SIZE, DEMO_ORIGIN[1]
        ),
        "tiled": True,
        "blockxsize": bs,
        "blockysize": bs,
        "compress": "deflate",
    }


def _write_image(path: Path, rgb: np.ndarray, valid: np.ndarray, size: int, seed: int) -> None:
    profile = _base_profile(rgb.shape[-1], 3)
    profile.update(photometric="RGB", interleave="pixel", predictor=2)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(rgb)
            dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
            for i, name in enumerate(("red", "green", "blue"), start=1):
                dst.set_band_description(i, name)
            dst.update_tags(DEMO_SCENE="synthetic suburb", DEMO_SIZE=str(size), DEMO_SEED=str(seed))
            dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))


def _write_labels(path: Path, labels: np.ndarray) -> None:
    profile = _base_profile(labels.shape[-1], 1)
    profile.update(nodata=NODATA_LABEL)
    with rasterio.open(path, "w", **profile) as dst:
        # The colour table goes in before any pixel data so that the TIFF is written with
        # photometric=palette.
        colormap = {i: (*c, 255) for i, c in enumerate(DEMO_COLORS)}
        colormap[NODATA_LABEL] = (0, 0, 0, 0)
        dst.write_colormap(1, colormap)
        dst.set_band_description(1, "labels")
        dst.update_tags(1, **{f"class_{i}": name for i, name in enumerate(DEMO_CLASSES)})
        dst.update_tags(classes=",".join(DEMO_CLASSES))
        dst.write(labels, 1)


def _temp_path(final: Path) -> Path:
    """A unique hidden name next to ``final`` (created by GDAL with the usual permissions)."""
    return final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def write_demo_scene(path: Path, size: int = 2560, seed: int = 0) -> tuple[Path, Path]:
    """Write the image GeoTIFF and its labels GeoTIFF; return (image_path, labels_path).

    Both files are written under temporary names in the target directory and then moved into
    place with ``os.replace`` (labels first), so the final paths never hold a partial file.
    """
    image_path = Path(path)
    labels_path = labels_path_for(image_path)
    rgb, labels, valid = generate_demo_arrays(size, seed)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    try:
        tmp_image = _temp_path(image_path)
        temps.append(tmp_image)
        tmp_labels = _temp_path(labels_path)
        temps.append(tmp_labels)
        _write_image(tmp_image, rgb, valid, size, seed)
        _write_labels(tmp_labels, labels)
        os.replace(tmp_labels, labels_path)
        os.replace(tmp_image, image_path)
    finally:
        for tmp in temps:
            for leftover in (
                tmp,
                tmp.with_name(tmp.name + ".msk"),
                tmp.with_name(tmp.name + ".aux.xml"),
            ):
                leftover.unlink(missing_ok=True)
    return image_path, labels_path
