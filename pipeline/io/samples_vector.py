"""Reading training-sample layers (any vector format pyogrio reads, GeoParquet also through
pyarrow): the class field and its companion name and colour fields, per-feature class values,
and the geometry checks (points, multipoints, polygons, multipolygons; valid; 2-D)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.io.samples_table import Color, class_value, parse_color

VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".sqlite",
                   ".parquet", ".geoparquet", ".zip", ".csv", ".tab", ".mif", ".gdb"}
# recognised class fields, case-insensitively: an integer id with its name field first, then
# text name fields, then integer ids on their own
ID_NAME_PAIRS = (("classvalue", "classname"), ("class_value", "class_name"),
                 ("class_id", "class_name"), ("classid", "classname"), ("c_id", "c_info"),
                 ("mc_id", "mc_info"), ("label_id", "label_name"), ("labelid", "labelname"),
                 ("category_id", "category_name"))
NAME_FIELDS = ("classname", "class_name", "class", "label", "label_name", "category",
               "landcover", "land_cover", "lulc", "c_info", "mc_info", "macroclass")
ID_FIELDS = ("classvalue", "class_value", "class_id", "classid", "c_id", "mc_id", "label_id",
             "labelid", "category_id", "classcode", "class_code")
_POINTS, _POLYGONS = (0, 4), (3, 6)
_TYPE_NAMES = {1: "line", 2: "linear ring", 5: "multi-line", 7: "geometry collection"}


@dataclass
class VectorLayer:
    """A layer's features with a class entry each: ``entries[entry[i]]`` is (value, name,
    colour) of feature ``i``; ``class_ids`` and ``groups`` are filled once all files are read."""

    path: str
    field: str | None
    fids: np.ndarray
    geoms: np.ndarray
    crs: str | None
    entry: np.ndarray
    entries: list[tuple[Any, str | None, Color | None]]
    warnings: list[str] = field(default_factory=list)
    class_ids: np.ndarray | None = None
    groups: np.ndarray | None = None  # group id per feature, unique over all files
    placed: np.ndarray | None = None  # features that fell on at least one raster
    projected: dict[str, np.ndarray] = field(default_factory=dict)  # geometries per CRS


def find_field(fields: list[str], wanted: str) -> str | None:
    """``wanted`` among ``fields``: exactly, else case-insensitively."""
    if wanted in fields:
        return wanted
    lower = [f for f in fields if f.lower() == wanted.lower()]
    return lower[0] if lower else None


def choose_class_field(path: str, fields: list[str], class_field: str | None
                       ) -> tuple[str, str | None]:
    """The class field and its companion name field (``None`` if absent)."""
    if class_field is not None:
        found = find_field(fields, class_field)
        if found is None:
            raise InputError(path, f"no class field {class_field!r} (fields: "
                                   f"{', '.join(fields) or 'none'})")
        return found, _companion(fields, found)
    for id_name, name_name in ID_NAME_PAIRS:
        id_f, name_f = find_field(fields, id_name), find_field(fields, name_name)
        if id_f and name_f:
            return id_f, name_f
    for cand in NAME_FIELDS + ID_FIELDS:
        found = find_field(fields, cand)
        if found:
            return found, _companion(fields, found)
    raise InputError(path, "no class field found; name it with --class-field (fields: "
                           f"{', '.join(fields) or 'none'})")


def _companion(fields: list[str], id_field: str) -> str | None:
    low = id_field.lower()
    for id_name, name_name in ID_NAME_PAIRS:
        if low == id_name:
            return find_field(fields, name_name)
    for suffix in ("_id", "id", "_value", "value", "_code", "code"):
        if low.endswith(suffix) and len(low) > len(suffix):
            stem = id_field[: -len(suffix)]
            for tail in ("_name", "name", "_info", "info"):
                found = find_field(fields, stem + tail)
                if found and found != id_field:
                    return found
    return None


def _color_fields(fields: list[str]) -> tuple[str, ...]:
    for name in ("color", "colour"):
        found = find_field(fields, name)
        if found:
            return (found,)
    rgb = tuple(find_field(fields, n) for n in ("red", "green", "blue"))
    return rgb if all(rgb) else ()  # type: ignore[return-value]


def read_layer(path: str, class_field: str | None, fixed_class: str | None) -> VectorLayer:
    """Read a sample layer and check it; one-line InputErrors name the file and feature."""
    fields, crs, nlayers = _layer_info(path)
    warnings = [f"{path}: {nlayers} layers; the first one is used"] if nlayers > 1 else []
    name_field = cfield = None
    if fixed_class is None:
        cfield, name_field = choose_class_field(path, fields, class_field)
    color_fields = _color_fields(fields)
    columns = [f for f in (cfield, name_field, *color_fields) if f]
    fids, wkb, data = _read_columns(path, list(dict.fromkeys(columns)))
    geoms = _check_geometries(path, fids, wkb, warnings)
    keep = ~_missing(geoms)
    fids, geoms = fids[keep], geoms[keep]
    data = {k: v[keep] for k, v in data.items()}
    if fixed_class is not None:
        entry = np.zeros(len(fids), dtype=np.int64)
        colors = _first_colors(path, fids, data, color_fields, entry, 1, warnings)
        entries = [(fixed_class, fixed_class, colors[0])]
    else:
        assert cfield is not None
        values = _class_values(path, fids, data[cfield], cfield)
        labelled = np.array([v is not None for v in values], dtype=bool)
        if not labelled.all():  # e.g. `stego suggest` points the analyst left unlabelled
            warnings.append(f"{path}: {int((~labelled).sum())} feature(s) with an empty "
                            f"{cfield!r} skipped (unlabelled)")
            values = [v for v in values if v is not None]
            fids, geoms = fids[labelled], geoms[labelled]
            data = {k: v[labelled] for k, v in data.items()}
        index: dict[Any, int] = {}
        entry = np.fromiter((index.setdefault(v, len(index)) for v in values),
                            dtype=np.int64, count=len(values))
        keys = list(index)
        names = _entry_names(path, entry, data.get(name_field), keys, name_field) \
            if name_field else [None] * len(keys)
        colors = _first_colors(path, fids, data, color_fields, entry, len(keys), warnings)
        entries = list(zip(keys, names, colors, strict=True))
    layer = VectorLayer(path, cfield, fids, geoms, crs, entry, entries, warnings)
    layer.placed = np.zeros(len(fids), dtype=bool)
    return layer


def _layer_info(path: str) -> tuple[list[str], str | None, int]:
    if _use_pyarrow(path):
        schema, geo, col = _parquet_geo(path)
        bbox_cols = {v[0] for v in geo["columns"][col].get("covering", {}).get("bbox", {})
                     .values() if isinstance(v, list) and v}
        fields = [f.name for f in schema if f.name != col and f.name not in bbox_cols]
        return fields, _parquet_crs(geo["columns"][col]), 1
    import pyogrio
    import pyogrio.errors

    try:
        layers = pyogrio.list_layers(path)
        info = pyogrio.read_info(path)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(path, f"cannot be read as a vector layer ({first})") from None
    return [str(f) for f in info["fields"]], info.get("crs"), len(layers)


def _use_pyarrow(path: str) -> bool:
    if Path(path).suffix.lower() not in (".parquet", ".geoparquet"):
        return False
    import pyogrio

    return "Parquet" not in pyogrio.list_drivers()


def _parquet_geo(path: str):
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise InputError(path, f"cannot be read as GeoParquet ({exc})") from None
    raw = (schema.metadata or {}).get(b"geo")
    if raw is None:
        raise InputError(path, "a Parquet file without GeoParquet 'geo' metadata")
    geo = json.loads(raw)
    col = geo.get("primary_column", "geometry")
    enc = str(geo.get("columns", {}).get(col, {}).get("encoding", "WKB"))
    if enc.upper() != "WKB":
        raise InputError(path, f"GeoParquet geometry encoding {enc!r} is not supported (WKB)")
    return schema, geo, col


def _parquet_crs(column: dict) -> str | None:
    if "crs" not in column:
        return "OGC:CRS84"  # the GeoParquet default
    crs = column["crs"]
    return None if crs is None else crs if isinstance(crs, str) else json.dumps(crs)


def _read_columns(path: str, columns: list[str]
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    if _use_pyarrow(path):
        import pyarrow.parquet as pq

        _, _, col = _parquet_geo(path)
        table = pq.read_table(path, columns=[col, *columns])
        wkb = np.array(table.column(col).to_pylist(), dtype=object)
        data = {c: np.array(table.column(c).to_pylist(), dtype=object) for c in columns}
        return np.arange(len(wkb)), wkb, data
    import pyogrio.raw

    meta, fids, wkb, values = pyogrio.raw.read(path, columns=columns, return_fids=True)[:4]
    data = dict(zip([str(f) for f in meta["fields"]], values, strict=True))
    if wkb is None:
        wkb = np.full(len(fids), None, dtype=object)
    return np.asarray(fids), wkb, data


def _missing(geoms: np.ndarray) -> np.ndarray:
    import shapely

    return shapely.is_missing(geoms) | shapely.is_empty(geoms)


def _check_geometries(path: str, fids: np.ndarray, wkb: np.ndarray,
                      warnings: list[str]) -> np.ndarray:
    import shapely

    geoms = shapely.force_2d(shapely.from_wkb(wkb))
    missing = _missing(geoms)
    if missing.any():
        warnings.append(f"{path}: {int(missing.sum())} feature(s) without a geometry skipped")
    types = np.where(missing, -1, shapely.get_type_id(geoms))
    bad = ~missing & ~np.isin(types, _POINTS + _POLYGONS)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kind = _TYPE_NAMES.get(int(types[i]), "unsupported geometry")
        raise InputError(path, f"feature {fids[i]} is a {kind}; training samples must be "
                               f"points or polygons ({int(bad.sum())} such feature(s))")
    polys = np.flatnonzero(np.isin(types, _POLYGONS))
    invalid = polys[~shapely.is_valid(geoms[polys])]
    if len(invalid):
        i = int(invalid[0])
        more = f" (and {len(invalid) - 1} more)" if len(invalid) > 1 else ""
        raise InputError(path, f"feature {fids[i]} has an invalid geometry "
                               f"({shapely.is_valid_reason(geoms[i])}){more}; repair it, "
                               "e.g. with QGIS 'Fix geometries'")
    return geoms


def _class_values(path: str, fids: np.ndarray, raw: np.ndarray, cfield: str) -> list[Any]:
    """The class value of each feature; None where it is empty (unlabelled)."""
    if raw.dtype.kind in "iu":
        return raw.tolist()
    cache: dict[Any, Any] = {}
    out = []
    for i, v in enumerate(raw.tolist()):
        try:
            key = (type(v), v)
            parsed = cache[key] if key in cache else cache.setdefault(key, class_value(v))
        except TypeError:  # unhashable
            parsed = class_value(v)
        except ValueError as exc:
            raise InputError(path, f"feature {fids[i]}: {exc} in {cfield!r}") from None
        out.append(parsed)
    return out


def _entry_names(path: str, entry: np.ndarray, raw: np.ndarray | None, keys: list[Any],
                 name_field: str | None) -> list[str | None]:
    """The name of each class value; every feature of a value must give the same name (blank
    names take the value's)."""
    if raw is None:
        return [None] * len(keys)
    seen: dict[int, set[str]] = {}
    for e, v in zip(entry.tolist(), raw.tolist(), strict=True):
        s = "" if v is None or (isinstance(v, float) and v != v) else str(v).strip()
        if s:
            seen.setdefault(e, set()).add(s)
    names: list[str | None] = []
    for e, key in enumerate(keys):
        found = seen.get(e, set())
        if len(found) > 1:
            raise InputError(path, f"class value {key!r} has several names in {name_field!r}: "
                                   f"{', '.join(map(repr, sorted(found)))}")
        names.append(found.pop() if found else None)
    return names


def _first_colors(path: str, fids: np.ndarray, data: dict[str, np.ndarray],
                  color_fields: tuple[str, ...], entry: np.ndarray, n: int,
                  warnings: list[str]) -> list[Color | None]:
    colors: list[Color | None] = [None] * n
    if not color_fields:
        return colors
    cols = [data[f].tolist() for f in color_fields]
    for i, e in enumerate(entry.tolist()):
        if colors[e] is not None:
            continue
        raw = cols[0][i] if len(cols) == 1 else [c[i] for c in cols]
        if isinstance(raw, list) and any(v is None or v != v for v in raw):
            continue
        try:
            colors[e] = parse_color(raw)
        except ValueError as exc:
            warnings.append(f"{path}: feature {fids[i]}: {exc}; colour ignored")
    return colors
