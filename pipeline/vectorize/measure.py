"""Polygons ready to write (:class:`Features`): their area and perimeter in metres (planar,
geodesic or NaN depending on the CRS) and their WKB encoding."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
import pyproj
import shapely
from rasterio.crs import CRS
from rasterio.errors import CRSError

__all__ = ["Features", "make_features"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Features:
    """Polygons ready to write: WKB in CRS coordinates and their attributes."""

    wkb: list[bytes]
    class_id: np.ndarray  # uint8
    area_m2: np.ndarray
    perimeter_m: np.ndarray

    def __len__(self) -> int:
        return len(self.wkb)


def make_features(geoms: np.ndarray, classes: np.ndarray, crs_wkt: str | None) -> Features:
    """Measure polygons in CRS coordinates and encode them (empty ones dropped, multis split)."""
    geoms, classes = _drop_empty(np.asarray(geoms, dtype=object), np.asarray(classes, np.uint8))
    geoms, classes = _explode_multi(geoms, classes)
    area, perimeter = _measurer(crs_wkt)(geoms)
    wkb = list(shapely.to_wkb(geoms)) if geoms.size else []
    return Features(wkb, classes, np.asarray(area, np.float64), np.asarray(perimeter, np.float64))


def _drop_empty(geoms: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if geoms.size == 0:
        return geoms, classes
    keep = ~shapely.is_empty(geoms)
    return geoms[keep], classes[keep]


def _explode_multi(geoms: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split MultiPolygons (not expected from exact pixel geometry) so the layer stays Polygon."""
    if geoms.size == 0:
        return geoms, classes
    multi = shapely.get_type_id(geoms) != shapely.GeometryType.POLYGON
    if not multi.any():
        return geoms, classes
    log.warning("%d non-Polygon geometries split into parts", int(multi.sum()))
    parts, index = shapely.get_parts(geoms, return_index=True)
    keep = shapely.get_type_id(parts) == shapely.GeometryType.POLYGON
    return parts[keep], classes[index[keep]]


@lru_cache(maxsize=8)
def _measurer(crs_wkt: str | None) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Function giving (area m², perimeter m) per polygon in the CRS's coordinates."""
    if crs_wkt is None:
        return _nan_measure
    crs = CRS.from_wkt(crs_wkt)
    if crs.is_geographic:
        return partial(_geodesic_measure, pyproj.CRS.from_wkt(crs_wkt).get_geod())
    try:
        factor = float(crs.linear_units_factor[1])
    except CRSError:  # e.g. an engineering CRS without a linear unit
        log.warning("CRS has no linear unit; area_m2/perimeter_m are NaN")
        return _nan_measure
    return partial(_planar_measure, factor)


def _nan_measure(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nan = np.full(geoms.size, np.nan)
    return nan, nan.copy()


def _planar_measure(factor: float, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    area = shapely.area(geoms) * factor**2 if geoms.size else np.empty(0)
    length = shapely.length(geoms) * factor if geoms.size else np.empty(0)
    return np.asarray(area, dtype=np.float64), np.asarray(length, dtype=np.float64)


def _geodesic_measure(geod: pyproj.Geod, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Geodesic area (shell minus holes) and perimeter (all rings), ring by ring."""
    rings, owner = shapely.get_rings(geoms, return_index=True)
    is_shell = np.r_[True, owner[1:] != owner[:-1]] if owner.size else np.empty(0, bool)
    area = np.empty(rings.size)
    length = np.empty(rings.size)
    for k, ring in enumerate(rings):
        lon, lat = shapely.get_coordinates(ring).T
        ring_area, length[k] = geod.polygon_area_perimeter(lon, lat)
        area[k] = abs(ring_area)
    signed = np.where(is_shell, area, -area)
    return (
        np.bincount(owner, weights=signed, minlength=geoms.size),
        np.bincount(owner, weights=length, minlength=geoms.size),
    )
