"""GeoParquet (1.1) from a polygon layer: WKB geometry column plus the ``geo`` metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyogrio


def write_geoparquet(source: Path, layer: str, out_path: Path) -> Path:
    """Convert ``layer`` of an OGR file into GeoParquet at ``out_path`` (atomic)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise RuntimeError("GeoParquet output needs pyarrow (pip install pyarrow)") from None
    meta, _, geometry, fields = pyogrio.raw.read(source, layer=layer)
    columns = {name: values for name, values in zip(meta["fields"], fields, strict=True)}
    columns["geometry"] = pa.array(list(geometry), type=pa.binary())
    table = pa.table(columns)
    crs = None
    if meta.get("crs"):
        from pyproj import CRS

        crs = CRS.from_user_input(meta["crs"]).to_json_dict()
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"],
                                 "crs": crs}},
    }
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
