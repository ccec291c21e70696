"""A STAC Item (``item.json``) describing one run's outputs, so catalogues can index them.

STAC 1.0.0 Item with the projection (v2.0.0), raster (v1.1.0) and classification (v2.0.0)
extensions. Geometry and bbox are in WGS84: the raster's outline is densified along its edges
in pixel space, mapped through the affine transform and reprojected with pyproj. A raster
without a CRS gets ``geometry: null`` and no ``bbox``, as the STAC spec allows. Asset hrefs are
relative to ``item.json``, which lives in the output directory next to the files.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import shapely
from shapely.geometry import mapping
from shapely.geometry.polygon import orient

from pipeline.io.files import write_text_atomic

STAC_VERSION = "1.0.0"
PROJECTION_EXT = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_EXT = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
CLASSIFICATION_EXT = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOTIFF_TYPE = "image/tiff; application=geotiff"
ZARR_TYPE = "application/vnd+zarr"
GPKG_TYPE = "application/geopackage+sqlite3"
PARQUET_TYPE = "application/vnd.apache.parquet"
FGB_TYPE = "application/vnd.flatgeobuf"
XML_TYPE = "application/xml"
NODATA = 255
EDGE_POINTS = 21  # points per raster edge when reprojecting the outline
COORD_DIGITS = 9

# suffix -> (media type, roles, title)
_ASSET_KINDS: dict[str, tuple[str, list[str], str]] = {
    ".tif": (GEOTIFF_TYPE, ["data"], "GeoTIFF"),
    ".tiff": (GEOTIFF_TYPE, ["data"], "GeoTIFF"),
    ".zarr": (ZARR_TYPE, ["data"], "Class labels and confidence (Zarr)"),
    ".gpkg": (GPKG_TYPE, ["data"], "Class polygons (GeoPackage)"),
    ".parquet": (PARQUET_TYPE, ["data"], "Class polygons (GeoParquet)"),
    ".fgb": (FGB_TYPE, ["data"], "Class polygons (FlatGeobuf)"),
    ".xml": (XML_TYPE, ["metadata"], "GDAL class names and attribute table (.aux.xml)"),
    ".json": ("application/json", ["metadata"], "Run manifest"),
    ".png": ("image/png", ["overview"], "Preview"),
    ".jpg": ("image/jpeg", ["overview"], "Preview"),
    ".jpeg": ("image/jpeg", ["overview"], "Preview"),
    ".webp": ("image/webp", ["overview"], "Preview"),
    ".qml": (XML_TYPE, ["style"], "QGIS style"),
}
# TIFF/GDAL tags holding when the image was taken, best first; GDAL's IMAGERY domain is UTC
_TIME_TAGS = (("IMAGERY", "ACQUISITIONDATETIME"), (None, "ACQUISITIONDATETIME"),
              (None, "TIFFTAG_DATETIME"))


def acquisition_datetime(path: str | Path) -> tuple[str, str] | None:
    """``(UTC ISO time, source tag)`` of when the raster was taken, from its tags; else None.

    TIFF ``DateTime`` (``YYYY:MM:DD HH:MM:SS``) carries no time zone: it is read as UTC.
    """
    import rasterio

    try:
        with rasterio.open(path) as ds:
            tags = {(ns, key): ds.tags(ns=ns).get(key) for ns, key in _TIME_TAGS}
    except rasterio.errors.RasterioIOError:
        return None
    for (ns, key), value in tags.items():
        if not value:
            continue
        text = re.sub(r"^(\d{4}):(\d\d):(\d\d)", r"\1-\2-\3", value.strip())
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return _iso_utc(parsed.isoformat()), f"{ns}:{key}" if ns else key
    return None


def stac_item_id(input_path: str | Path, fingerprint: str, length: int = 8) -> str:
    """Item id: the input's stem and a short run fingerprint, e.g. ``scene-3f9a1c2e``."""
    stem = re.sub(r"[^0-9A-Za-z._-]+", "_", Path(str(input_path)).stem).strip("_") or "run"
    short = re.sub(r"[^0-9A-Za-z]+", "", str(fingerprint))[:length]
    return f"{stem}-{short}" if short else stem


def build_stac_item(
    *,
    item_id: str,
    out_dir: Path,
    width: int,
    height: int,
    transform: Sequence[float],
    crs_wkt: str | None,
    class_names: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    datetime_utc: str,
    assets: dict[str, str],
    properties: dict | None = None,
    created_utc: str | None = None,
) -> dict:
    """The STAC Item (a JSON-ready dict) for one run's outputs.

    ``assets`` maps asset keys to file names relative to ``out_dir`` (where ``item.json`` is
    written), e.g. ``{"labels": "labels.tif", "zarr": "labels.zarr", "polygons":
    "polygons.gpkg", "run": "run.json", "preview": "preview.png"}``. Media type and roles follow
    the suffix; the labels GeoTIFF (key ``labels`` or stem ``labels``) is typed as a COG and
    carries ``raster:bands`` with the classification. Assets whose file is missing from
    ``out_dir`` (e.g. an optional preview) are left out. ``transform`` is the GDAL/rasterio
    affine ``(a, b, c, d, e, f)``; ``properties`` are merged into the item's properties.
    ``datetime_utc`` is when the scene was taken; ``created_utc`` (default: the same) when the
    outputs were made.
    """
    if width < 1 or height < 1:
        raise ValueError(f"raster size must be positive, got {width}x{height}")
    affine = tuple(float(v) for v in tuple(transform)[:6])
    if len(affine) != 6:
        raise ValueError(f"transform needs 6 coefficients, got {tuple(transform)}")
    crs = pyproj.CRS.from_user_input(crs_wkt) if crs_wkt else None
    when = _iso_utc(datetime_utc)
    classes = _classification(class_names, colors)

    props: dict[str, Any] = {"datetime": when, "created": _iso_utc(created_utc or when)}
    props.update(_projection(crs, affine, width, height))
    props.update(properties or {})

    extensions = [PROJECTION_EXT]
    item_assets: dict[str, dict] = {}
    for key, href in assets.items():
        asset = _asset(Path(out_dir), key, href)
        if asset is None:
            continue
        if _is_labels(key, href):
            asset["type"] = COG_TYPE
            asset["title"] = "Class labels (Cloud-Optimized GeoTIFF)"
            band: dict[str, Any] = {
                "nodata": NODATA, "data_type": "uint8", "sampling": "area",
                "bits_per_sample": 8,
            }
            resolution = _spatial_resolution(crs, affine, width, height)
            if resolution is not None:
                band["spatial_resolution"] = resolution
            band["classification:classes"] = classes
            asset["raster:bands"] = [band]
            extensions += [e for e in (RASTER_EXT, CLASSIFICATION_EXT) if e not in extensions]
        item_assets[key] = asset

    geometry, bbox = _footprint(crs, affine, width, height)
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": extensions,
        "id": item_id,
        "geometry": geometry,
    }
    if bbox is not None:
        item["bbox"] = bbox
    item["properties"] = props
    item["links"] = []
    item["assets"] = item_assets
    return item


def write_stac_item(item: dict, path: Path) -> Path:
    """Write the item as strict JSON (no NaN) to a temporary sibling, then rename over path."""
    path = Path(path)
    text = json.dumps(item, indent=2, allow_nan=False, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")


# --------------------------------------------------------------------------------------------
# pieces


def _iso_utc(value: str) -> str:
    """``value`` (ISO 8601 with a time zone) as UTC ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``."""
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"datetime_utc needs a time zone (e.g. 'Z'), got {value!r}")
    return parsed.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _classification(
    class_names: Sequence[str], colors: Sequence[tuple[int, int, int]]
) -> list[dict[str, Any]]:
    """classification:classes: one per class (machine name, title, colour) plus nodata."""
    names = [str(n) for n in class_names]
    if len(colors) < len(names):
        raise ValueError(f"{len(names)} class names but only {len(colors)} colours")
    classes: list[dict[str, Any]] = []
    used: set[str] = set()
    for value, title in enumerate(names):
        name = re.sub(r"[^0-9A-Za-z_-]+", "_", title).strip("_") or f"class_{value}"
        if name in used:
            name = f"{name}_{value}"
        used.add(name)
        r, g, b = (int(c) for c in colors[value][:3])
        classes.append({
            "value": value, "name": name, "title": title, "description": title,
            "color_hint": f"{r:02X}{g:02X}{b:02X}",
        })
    classes.append({
        "value": NODATA, "name": "nodata", "title": "No data",
        "description": "No data: outside the input's valid area", "nodata": True,
    })
    return classes


def _corners(affine: tuple[float, ...], width: int, height: int) -> np.ndarray:
    """The raster's four outer corners in CRS coordinates, (4, 2)."""
    cols = np.array([0, width, width, 0], dtype=float)
    rows = np.array([0, 0, height, height], dtype=float)
    return _apply(affine, cols, rows)


def _apply(affine: tuple[float, ...], cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    a, b, c, d, e, f = affine
    return np.column_stack([a * cols + b * rows + c, d * cols + e * rows + f])


def _projection(
    crs: pyproj.CRS | None, affine: tuple[float, ...], width: int, height: int
) -> dict[str, Any]:
    corners = _corners(affine, width, height)
    code = None
    if crs is not None:
        authority = crs.to_authority()
        code = f"{authority[0]}:{authority[1]}" if authority else None
    return {
        "proj:code": code,
        "proj:wkt2": crs.to_wkt("WKT2_2019") if crs is not None else None,
        "proj:shape": [int(height), int(width)],
        "proj:transform": list(affine),
        "proj:bbox": [
            float(corners[:, 0].min()), float(corners[:, 1].min()),
            float(corners[:, 0].max()), float(corners[:, 1].max()),
        ],
    }


def _footprint(
    crs: pyproj.CRS | None, affine: tuple[float, ...], width: int, height: int
) -> tuple[dict | None, list[float] | None]:
    """GeoJSON polygon and bbox in WGS84 of the densified raster outline; (None, None) w/o CRS."""
    if crs is None:
        return None, None
    t = np.linspace(0.0, 1.0, EDGE_POINTS)[:-1]
    cols = np.concatenate([t * width, np.full_like(t, width), (1 - t) * width, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * height, np.full_like(t, height), (1 - t) * height])
    xy = _apply(affine, cols, rows)
    to_wgs84 = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(xy[:, 0], xy[:, 1])
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    ok = np.isfinite(lon) & np.isfinite(lat)
    if ok.sum() < 3:
        return None, None
    ring = np.round(np.column_stack([lon[ok], lat[ok]]), COORD_DIGITS)
    polygon = shapely.make_valid(shapely.Polygon(ring))
    if not isinstance(polygon, shapely.Polygon) or polygon.is_empty:
        polygon = shapely.convex_hull(polygon)
    if not isinstance(polygon, shapely.Polygon) or polygon.is_empty:
        return None, None
    polygon = orient(polygon, sign=1.0)  # RFC 7946: exterior ring counter-clockwise
    geometry = json.loads(json.dumps(mapping(polygon)))  # tuples -> lists
    west, south, east, north = polygon.bounds
    return geometry, [west, south, east, north]


def _spatial_resolution(
    crs: pyproj.CRS | None, affine: tuple[float, ...], width: int, height: int
) -> float | None:
    """Mean pixel size in metres (geodesic at the centre for geographic CRSs); None w/o CRS."""
    if crs is None:
        return None
    a, b, _, d, e, _ = affine
    if crs.is_geographic:
        cx, cy = width / 2.0, height / 2.0
        pts = _apply(affine, np.array([cx, cx + 1, cx]), np.array([cy, cy, cy + 1]))
        lonlat = pyproj.Transformer.from_crs(crs, crs.geodetic_crs or crs, always_xy=True)
        lon, lat = lonlat.transform(pts[:, 0], pts[:, 1])
        geod = crs.get_geod() or pyproj.Geod(ellps="WGS84")
        _, _, dx = geod.inv(lon[0], lat[0], lon[1], lat[1])
        _, _, dy = geod.inv(lon[0], lat[0], lon[2], lat[2])
        size = (abs(dx) + abs(dy)) / 2.0
    else:
        factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        size = (math.hypot(a, d) + math.hypot(b, e)) / 2.0 * factor
    return float(size) if math.isfinite(size) and size > 0 else None


def _is_labels(key: str, href: str) -> bool:
    path = Path(href)
    return path.suffix.lower() in (".tif", ".tiff") and (key == "labels" or path.stem == "labels")


def _asset(out_dir: Path, key: str, href: str) -> dict[str, Any] | None:
    """Asset object for a file under out_dir, or None when the file is missing."""
    rel = Path(str(href).removeprefix("./"))
    if rel.is_absolute():
        try:
            rel = rel.relative_to(out_dir.resolve())
        except ValueError as err:
            raise ValueError(f"asset {key!r} is not under {out_dir}: {href}") from err
    if not (out_dir / rel).exists():
        return None
    media, roles, title = _ASSET_KINDS.get(
        rel.suffix.lower(), ("application/octet-stream", ["data"], rel.name)
    )
    if rel.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") and "thumb" in key.lower():
        roles = ["thumbnail"]
    if rel.suffix.lower() == ".zarr":
        version = 3 if (out_dir / rel / "zarr.json").exists() else 2
        title = f"Class labels and confidence (Zarr v{version})"
    return {"href": f"./{rel.as_posix()}", "type": media, "title": title, "roles": list(roles)}
