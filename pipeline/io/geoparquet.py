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

GEOMETRY_TYPES = {3: "Polygon", 6: "MultiPolygon"}  # shapely type ids GeoParquet names


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
    """Convert ``layer`` of an OGR file into GeoParquet at ``out_path`` (atomic), one row group
    in memory at a time: the spatial order comes from the bounds alone, then each row group's
    features are read by id and appended."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise RuntimeError("GeoParquet output needs pyarrow (pip install pyarrow)") from None
    fids, bounds = pyogrio.read_bounds(source, layer=layer)
    bounds = np.asarray(bounds, dtype=np.float64).T.reshape(-1, 4)
    order = spatial_order(bounds, row_group_size)
    info = pyogrio.read_info(source, layer=layer)
    types: set[int] = set()
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    writer = None
    try:
        for start in range(0, max(len(order), 1), row_group_size):
            rows = order[start:start + row_group_size]
            table, group_types = _row_group(source, layer, fids[rows], bounds[rows], pa)
            types |= group_types
            if writer is None:
                # the schema's metadata is taken from the footer's key-value pairs, where the
                # geo key lands once every geometry type is known
                writer = pq.ParquetWriter(tmp, table.schema, write_statistics=True,
                                          store_schema=False)
            writer.write_table(table, row_group_size=row_group_size)
        if types - set(GEOMETRY_TYPES):
            raise ValueError(f"{source}: layer {layer!r} holds non-polygon geometries")
        geo = _geo_metadata(info.get("crs"), sorted(types), bounds)
        writer.add_key_value_metadata({"geo": json.dumps(geo)})
        writer.close()
        writer = None
        os.replace(tmp, out_path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return out_path



def _row_group(source: Path, layer: str, fids: np.ndarray, bounds: np.ndarray, pa):
    """One row group's Arrow table (features in the given order) and its geometry type ids."""
    if len(fids):
        meta, got, wkb, fields = pyogrio.raw.read(source, layer=layer, fids=fids,
                                                  return_fids=True)
        if not np.array_equal(got, fids):  # GDAL returns them in the asked order; check
            raise ValueError(f"{source}: layer {layer!r} did not return features by id")
    else:  # an empty layer still gets its columns
        meta, _, wkb, fields = pyogrio.raw.read(source, layer=layer, max_features=0)
    columns = {name: values for name, values in zip(meta["fields"], fields, strict=True)}
    columns["geometry"] = pa.array(list(wkb), type=pa.binary())
    columns["bbox"] = pa.StructArray.from_arrays(
        [pa.array(bounds[:, i], type=pa.float64()) for i in range(4)],
        names=["xmin", "ymin", "xmax", "ymax"])
    types = set(shapely.get_type_id(shapely.from_wkb(wkb)).tolist()) if len(wkb) else set()
    return pa.table(columns), types


def _geo_metadata(crs_text: str | None, types: list[int], bounds: np.ndarray) -> dict:
    """GeoParquet 1.1 ``geo`` metadata: WKB, CRS as PROJJSON, types, bbox covering."""
    crs = None
    if crs_text:
        from pyproj import CRS

        crs = CRS.from_user_input(crs_text).to_json_dict()
    column = {
        "encoding": "WKB", "crs": crs, "geometry_types": [GEOMETRY_TYPES[t] for t in types],
        "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if len(bounds):
        column["bbox"] = [float(bounds[:, 0].min()), float(bounds[:, 1].min()),
                          float(bounds[:, 2].max()), float(bounds[:, 3].max())]
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}
