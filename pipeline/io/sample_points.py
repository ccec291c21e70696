"""Stratified random points from a class raster: a validation sample of a map (strata = the
map's classes, as Olofsson et al. 2014 recommend) or training points drawn from a truth
raster. One pass over the raster in strips; each class keeps its ``n`` smallest random keys,
so the draw is uniform within each class whatever the raster size."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.errors import InputError

STRIP = 1024


def stratified_points(
    path: str | Path, per_class: int, seed: int = 0, ignore: Sequence[int] = (255,),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values): up to ``per_class`` pixels drawn uniformly at random from each
    value of band 1 (values in ``ignore`` and masked pixels skipped), sorted by value."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    best: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # value -> (keys, flat indices)
    try:
        with rasterio.open(path) as ds:
            width = ds.width
            for r0 in range(0, ds.height, STRIP):
                h = min(STRIP, ds.height - r0)
                win = Window(0, r0, width, h)
                data = ds.read(1, window=win).astype(np.int64)
                ok = ds.read_masks(1, window=win) > 0
                ok &= ~np.isin(data, list(ignore))
                flat = np.flatnonzero(ok)
                vals = data.reshape(-1)[flat]
                keys = rng.random(len(flat))
                for v in np.unique(vals):
                    sel = vals == v
                    k = np.concatenate([best.get(int(v), (np.zeros(0),))[0], keys[sel]])
                    i = np.concatenate([best.get(int(v), (None, np.zeros(0, np.int64)))[1],
                                        flat[sel] + r0 * width])
                    keep = np.argsort(k, kind="stable")[:per_class]
                    best[int(v)] = (k[keep], i[keep])
    except RasterioIOError as exc:
        raise InputError(path, f"cannot read ({str(exc).splitlines()[0]})") from None
    rows, cols, values = [], [], []
    for v in sorted(best):
        idx = np.sort(best[v][1])
        rows.append(idx // width)
        cols.append(idx % width)
        values.append(np.full(len(idx), v, dtype=np.int64))
    if not rows:
        raise InputError(path, "no classified pixels to draw points from")
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(values)


def write_points(
    path: Path, rows: np.ndarray, cols: np.ndarray, transform: tuple[float, ...],
    crs_wkt: str | None, fields: dict[str, np.ndarray], layer: str = "samples",
) -> Path:
    """A GeoPackage point layer at the pixel centres, with ``fields``; written under a
    temporary name, then renamed."""
    import pyogrio.raw
    import shapely
    from affine import Affine

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x, y = Affine(*transform[:6]) @ (cols + 0.5, rows + 0.5)
    wkb = shapely.to_wkb(shapely.points(np.asarray(x), np.asarray(y)))
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        pyogrio.raw.write(str(tmp), wkb, field_data=list(fields.values()),
                          fields=list(fields), geometry_type="Point", crs=crs_wkt,
                          driver="GPKG", layer=layer)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
