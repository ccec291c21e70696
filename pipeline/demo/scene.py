"""The demo scene's arrays: lays out, textures and paints a suburb, then adds blur, sensor noise
and the nodata collar. Everything is drawn from ``np.random.default_rng(seed)`` in a fixed order,
so a given ``(size, seed)`` always yields the same arrays."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.demo.classes import BUILDING, CAR, GRASS, NODATA_LABEL, ROAD, TREE
from pipeline.demo.grid import DEMO_PIXEL_SIZE, MIN_SIZE, clip, object_scale, overlaps
from pipeline.demo.layout import make_buildings, make_cars, make_roads, make_trees, sidewalk_rect
from pipeline.demo.noise import collar, smooth_noise
from pipeline.demo.render import building_shadows, render_car, render_roof, tree_fields


def _linear(
    out: np.ndarray, base: float, terms: list[tuple[float, np.ndarray]], tmp: np.ndarray
) -> np.ndarray:
    """``out = base + sum(coef * field)`` in place, with ``tmp`` as scratch (float32 arrays)."""
    out.fill(base)
    for coef, field in terms:
        np.multiply(field, np.float32(coef), out=tmp)
        out += tmp
    return out


def generate_demo_arrays(
    size: int = 2560, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (rgb uint8 (3, size, size), labels uint8 (size, size) with 255 where invalid,
    valid bool (size, size))."""
    n = int(size)
    if n < MIN_SIZE:
        raise ValueError(f"demo scene size must be >= {MIN_SIZE}, got {size}")
    rng = np.random.default_rng(seed)
    scale = object_scale(n)

    def px(metres: float) -> int:
        return max(1, int(round(metres * scale / DEMO_PIXEL_SIZE)))

    # ---- layout -------------------------------------------------------------------------
    roads = make_roads(rng, n, px)
    buildings, driveways = make_buildings(rng, n, px, roads)
    cars = make_cars(rng, n, px, roads, driveways)
    trees = make_trees(rng, n, px, roads, buildings)

    # ---- noise fields -------------------------------------------------------------------
    fine = smooth_noise(rng, n, 0.8)  # grain
    leaf = smooth_noise(rng, n, 2.5)  # leaf clumps, grass tufts
    mid = smooth_noise(rng, n, 12.0)  # ~0.6 m patches
    large = smooth_noise(rng, n, 80.0)  # ~4 m: dryness, wear

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
    for rect in [sidewalk_rect(r) for r in roads] + driveways:
        sl = clip(rect, n)
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
        sl = clip(r.rect, n)
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
            if o.horizontal != r.horizontal and overlaps(r.rect, o.rect):
                lo, hi = (o.rect[1], o.rect[3]) if r.horizontal else (o.rect[0], o.rect[2])
                on[max(lo - margin, 0) : max(hi + margin, 0)] = False
        if r.horizontal:
            c0 = (y0 + y1) // 2 - line_w // 2
            sl = clip((c0, x0, c0 + line_w, x1), n)
            if sl is not None:
                marking[sl] |= on[None, sl[1]]
        else:
            c0 = (x0 + x1) // 2 - line_w // 2
            sl = clip((y0, c0, y1, c0 + line_w), n)
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
    building_shadows(buildings, n, shadow, px)

    # ---- roofs ---------------------------------------------------------------------------
    course = max(3, px(0.35))
    for b in buildings:
        sl = clip(b.rect, n)
        if sl is None:
            continue
        labels[sl] = BUILDING
        render_roof(rgb, b, n, fine, mid, rng, course)
    del mid

    # ---- cars ----------------------------------------------------------------------------
    for car in cars:
        sl = clip(car.rect, n)
        if sl is None:
            continue
        labels[sl] = CAR
        render_car(rgb, car, n, fine)

    # ---- trees ---------------------------------------------------------------------------
    height, light, index = tree_fields(trees, n, fine, leaf, shadow, float(px(4.0)))
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
    valid = collar(rng, n)
    labels[~valid] = NODATA_LABEL
    out[:, ~valid] = 0
    return out, labels, valid
