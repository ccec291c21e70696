"""GeoParquet 1.1 from a polygon layer: WKB geometry, a ``bbox`` covering column declared in the
``geo`` metadata, and rows ordered in spatial strips so each row group covers a compact area
(readers with a bbox filter, e.g. DuckDB, GDAL >= 3.9, geopandas ``bbox=``, skip the others)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pyogrio
import shapely

ROW_GROUP_SIZE = 8192  # polygons per row group: the unit a bbox filter can skip


def spatial_order(bounds: np.ndarray, group_size: int) -> np.ndarray:
    """Row order putting nearby polygons in the same row group: the centres are cut into
    horizontal strips (about as many as row groups per strip), each read west to east."""
    n = len(bounds)
    if n <= group_size:
        return np.arange(n)
    cx = (bounds[:, 0] + bounds[:, 2]) / 2
    cy = (bounds[:, 1] + bounds[:, 3]) / 2
    strips = max(1, round(math.sqrt(math.ceil(n / group_size))))
    rank = np.argsort(np.argsort(-cy, kind="stable"), kind="stable")  # north first
    strip = rank * strips // n
    return np.lexsort((cx, strip))


def write_geoparquet(source: Path, layer: str, out_path: Path,
                     row_group_size: int = ROW_GROUP_SIZE) -> Path:
    """Convert ``layer`` of an OGR file into GeoParquet at ``out_path`` (atomic)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise RuntimeError("GeoParquet output needs pyarrow (pip install pyarrow)") from None
    meta, _, geometry, fields = pyogrio.raw.read(source, layer=layer)
    geoms = shapely.from_wkb(geometry)
    bounds = shapely.bounds(geoms).reshape(-1, 4)
    order = spatial_order(bounds, row_group_size)
    columns = {name: values[order] for name, values in zip(meta["fields"], fields, strict=True)}
    columns["geometry"] = pa.array([geometry[i] for i in order], type=pa.binary())
    columns["bbox"] = pa.StructArray.from_arrays(
        [pa.array(bounds[order, i], type=pa.float64()) for i in range(4)],
        names=["xmin", "ymin", "xmax", "ymax"])
    table = pa.table(columns)
    crs = None
    if meta.get("crs"):
        from pyproj import CRS

        crs = CRS.from_user_input(meta["crs"]).to_json_dict()
    names = {3: "Polygon", 6: "MultiPolygon"}
    types = sorted(set(shapely.get_type_id(geoms).tolist()))
    if set(types) - set(names):
        raise ValueError(f"{source}: layer {layer!r} holds non-polygon geometries")
    column = {
        "encoding": "WKB", "crs": crs, "geometry_types": [names[t] for t in types],
        "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if len(geoms):
        column["bbox"] = [float(bounds[:, 0].min()), float(bounds[:, 1].min()),
                          float(bounds[:, 2].max()), float(bounds[:, 3].max())]
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size, write_statistics=True)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
