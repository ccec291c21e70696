"""The demo scene's layout: roads, houses with driveways, sheds, cars and trees placed as pixel
rectangles and circles, each drawn from the scene's random generator in a fixed order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.demo.grid import Rect, overlaps, visible_area


@dataclass
class Road:
    """A carriageway (pixel rectangle) with a sidewalk along each side."""

    rect: Rect  # carriageway
    horizontal: bool
    sidewalk: int  # sidewalk width in px


@dataclass
class Building:
    """A building: footprint, roof shape, colour and tiles, and height."""

    rect: Rect
    roof: str  # "gable", "hip" or "flat"
    colour: tuple[float, float, float]
    height: float  # metres, for the shadow length
    tiles: bool


@dataclass
class Car:
    """A car: footprint, orientation, which end is the front, and body colour."""

    rect: Rect
    horizontal: bool
    front: int  # +1: front at the high-coordinate end, -1: at the low end
    colour: tuple[float, float, float]


@dataclass
class Tree:
    """A tree crown: centre and radius in px, colour tint and outline harmonics."""

    cy: float
    cx: float
    radius: float
    tint: tuple[float, float, float]
    harmonics: np.ndarray  # (k, amplitude, phase) rows for the crown outline


def _road_positions(rng: np.random.Generator, n: int, spacing: float, first: float) -> list[int]:
    out: list[int] = []
    pos = first
    while pos < n:
        out.append(int(round(pos)))
        pos += spacing * rng.uniform(0.9, 1.12)
    return out


def make_roads(rng: np.random.Generator, n: int, px: Callable[[float], int]) -> list[Road]:
    """Horizontal through roads, then vertical side-street segments between them."""
    roads: list[Road] = []
    # Horizontal through roads; the first one always crosses the scene.
    spacing = px(rng.uniform(32.0, 40.0))
    ys = _road_positions(rng, n, spacing, rng.uniform(0.3, 0.7) * min(n, spacing))
    for y in ys:
        w = px(rng.uniform(5.5, 7.0))
        roads.append(Road((y - w // 2, -n, y - w // 2 + w, 2 * n), True, px(rng.uniform(1.5, 2.2))))
    # Vertical side streets, each segment between two horizontal roads present or not.
    spacing_v = px(rng.uniform(34.0, 44.0))
    xs = _road_positions(rng, n, spacing_v, rng.uniform(0.45, 0.95) * spacing_v)
    bounds = [-n, *ys, 2 * n]
    for x in xs:
        w = px(rng.uniform(5.0, 7.0))
        sw = px(rng.uniform(1.5, 2.2))
        for top, bottom in zip(bounds[:-1], bounds[1:], strict=True):
            if rng.random() < 0.7:
                roads.append(Road((top, x - w // 2, bottom, x - w // 2 + w), False, sw))
    return roads


def sidewalk_rect(road: Road) -> Rect:
    """The road's carriageway widened by its sidewalk on both sides."""
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


def make_buildings(
    rng: np.random.Generator, n: int, px: Callable[[float], int], roads: list[Road]
) -> tuple[list[Building], list[Rect]]:
    """Houses facing the streets with driveways, then sheds; (buildings, driveways)."""
    buildings: list[Building] = []
    driveways: list[Rect] = []
    keep_out = [sidewalk_rect(r) for r in roads]
    carriageways = [r.rect for r in roads]
    gap = px(3.0)
    clear = px(1.0)

    def free(rect: Rect) -> bool:
        if visible_area(rect, n) < 0.3 * (rect[2] - rect[0]) * (rect[3] - rect[1]):
            return False
        if any(overlaps(rect, k, clear) for k in keep_out + driveways):
            return False
        return not any(overlaps(rect, b.rect, gap) for b in buildings)

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
        buildings.append(Building(rect, roof, colour, height, tiles))
        # Driveway from the front of the house to the carriageway, at one end of the frontage.
        dw = px(rng.uniform(2.8, 3.5))
        at_start = rng.random() < 0.5
        if road.horizontal:
            dx0 = rect[1] + px(0.5) if at_start else rect[3] - px(0.5) - dw
            drive = (y1, dx0, rect[0], dx0 + dw) if side > 0 else (rect[2], dx0, y0, dx0 + dw)
        else:
            dy0 = rect[0] + px(0.5) if at_start else rect[2] - px(0.5) - dw
            drive = (dy0, x1, dy0 + dw, rect[1]) if side > 0 else (dy0, rect[3], dy0 + dw, x0)
        if not any(overlaps(drive, b.rect) for b in buildings[:-1]) and not any(
            overlaps(drive, c) for c in carriageways if c != road.rect
        ):
            driveways.append(drive)

    # Garages and garden sheds in the back yards.
    for _ in range(10 + int(n * n / px(14.0) ** 2)):
        h, w = px(rng.uniform(3.0, 6.5)), px(rng.uniform(3.0, 6.5))
        y, x = int(rng.integers(-h // 2, n)), int(rng.integers(-w // 2, n))
        rect = (y, x, y + h, x + w)
        if free(rect):
            roof, colour, height, tiles = _roof_style(rng, small=True)
            buildings.append(Building(rect, roof, colour, height, tiles))

    if not any(visible_area(b.rect, n) > 0 for b in buildings):
        # Guarantee one house: on the roomier side of the first (always present) road.
        road = roads[0]
        y0, _, y1, _ = sidewalk_rect(road)
        depth, frontage = px(10.0), px(12.0)
        x0 = n // 2 - frontage // 2
        if y0 > n - y1:
            rect = (y0 - clear - depth, x0, y0 - clear, x0 + frontage)
        else:
            rect = (y1 + clear, x0, y1 + clear + depth, x0 + frontage)
        roof, colour, height, tiles = _roof_style(rng, small=False)
        buildings.append(Building(rect, roof, colour, height, tiles))
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


def make_cars(
    rng: np.random.Generator,
    n: int,
    px: Callable[[float], int],
    roads: list[Road],
    driveways: list[Rect],
) -> list[Car]:
    """Cars parked or driving along the roads, then parked in some driveways."""
    cars: list[Car] = []
    pad = px(0.8)

    def place(rect: Rect, horizontal: bool, avoid: tuple[Rect, ...] = ()) -> None:
        if visible_area(rect, n) == 0 or any(overlaps(rect, c.rect, pad) for c in cars):
            return
        if any(overlaps(rect, a, pad) for a in avoid):  # not in the middle of a junction
            return
        front = 1 if rng.random() < 0.5 else -1
        cars.append(Car(rect, horizontal, front, _car_colour(rng)))

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


def _new_tree(rng: np.random.Generator, cy: float, cx: float, radius: float) -> Tree:
    k = np.arange(2, 6, dtype=np.float64)
    harmonics = np.stack(
        [k, rng.uniform(0.02, 0.08, k.size), rng.uniform(0.0, 2 * np.pi, k.size)], axis=1
    )
    if rng.random() < 0.25:  # yellowish (birch, lime) or bluish-dark (conifer) crowns
        tint = (1.15, 1.12, 0.9) if rng.random() < 0.5 else (0.8, 0.88, 0.95)
    else:
        tint = (1.0, 1.0, 1.0)
    tint = tuple(float(t * rng.uniform(0.92, 1.08)) for t in tint)
    return Tree(cy, cx, radius, tint, harmonics)


def make_trees(
    rng: np.random.Generator,
    n: int,
    px: Callable[[float], int],
    roads: list[Road],
    buildings: list[Building],
) -> list[Tree]:
    """Street trees on some roads' sidewalks, then garden trees in small groups."""
    trees: list[Tree] = []
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
