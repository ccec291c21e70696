"""GeoParquet output: ``geo`` metadata valid against the GeoParquet 1.1.0 schema, a bbox covering
column, and row groups a bbox filter can skip."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely

from pipeline.io.geoparquet import spatial_order, write_geoparquet

BOX = (368_300.0, 5_807_400.0, 368_420.0, 5_807_480.0)  # xmin, ymin, xmax, ymax


@pytest.fixture(scope="module")
def polygons(tmp_path_factory):
    """A GeoPackage of 1600 small polygons (squares, some rotated) in EPSG:25833."""
    rng = np.random.default_rng(3)
    polys = []
    for i in range(40):
        for j in range(40):
            x0, y0 = 368_000 + 20 * j, 5_808_000 - 20 * i
            p = shapely.box(x0, y0 - 15, x0 + 15, y0)
            if rng.random() < 0.3:
                p = shapely.affinity.rotate(p, 30)
            polys.append(p)
    order = rng.permutation(len(polys))  # written in no spatial order
    geoms = shapely.to_wkb([polys[k] for k in order])
    path = tmp_path_factory.mktemp("gp") / "p.gpkg"
    pyogrio.raw.write(path, geometry=np.asarray(geoms, dtype=object),
                      field_data=[order.astype(np.int64)], fields=["class_id"],
                      geometry_type="Polygon", crs="EPSG:25833", layer="polygons")
    return path


def test_geo_metadata_validates_against_the_geoparquet_1_1_schema(polygons, tmp_path):
    from tests.schemas import geoparquet_errors

    out = write_geoparquet(polygons, "polygons", tmp_path / "p.parquet", row_group_size=100)
    geo = json.loads(pq.read_schema(out).metadata[b"geo"])
    assert geoparquet_errors(geo) == []
    column = geo["columns"]["geometry"]
    assert column["covering"] == {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax",
                                                                    "ymax")}}
    assert column["geometry_types"] == ["Polygon"] and column["crs"]["id"]["code"] == 25833
    broken = {**geo, "columns": {"geometry": {**column, "covering": {"bbox": {"xmin": "x"}}}}}
    assert geoparquet_errors(broken) != []


def test_bbox_filter_skips_row_groups_and_returns_exactly_the_intersecting_polygons(
        polygons, tmp_path):
    out = write_geoparquet(polygons, "polygons", tmp_path / "p.parquet", row_group_size=100)
    meta = pq.ParquetFile(out).metadata
    assert meta.num_row_groups == 16
    xmin, ymin, xmax, ymax = BOX
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    touched = 0
    for g in range(meta.num_row_groups):
        stats = {n: meta.row_group(g).column(i).statistics for i, n in enumerate(names)}
        if (stats["bbox.xmin"].min <= xmax and stats["bbox.xmax"].max >= xmin
                and stats["bbox.ymin"].min <= ymax and stats["bbox.ymax"].max >= ymin):
            touched += 1
    assert touched <= 4  # of 16: the statistics let a reader skip the rest
    # the read a bbox-aware client does: filter on the covering column, then on the geometry
    flt = ((pc.field("bbox", "xmin") <= xmax) & (pc.field("bbox", "xmax") >= xmin)
           & (pc.field("bbox", "ymin") <= ymax) & (pc.field("bbox", "ymax") >= ymin))
    table = pads.dataset(out, format="parquet").to_table(filter=flt)
    geoms = shapely.from_wkb(table["geometry"].to_numpy(zero_copy_only=False))
    got = set(np.asarray(table["class_id"])[shapely.intersects(geoms, shapely.box(*BOX))])
    _, _, wkb, fields = pyogrio.raw.read(polygons, layer="polygons")
    every = shapely.from_wkb(wkb)
    expected = set(fields[0][shapely.intersects(every, shapely.box(*BOX))])
    assert got == expected and 10 < len(expected) < 100
    assert pq.read_table(out).num_rows == len(every)  # nothing lost by the reordering


def test_spatial_order_is_a_permutation_and_deterministic():
    rng = np.random.default_rng(0)
    xy = rng.random((1000, 2)) * 1000
    bounds = np.hstack([xy, xy + 1])
    a, b = spatial_order(bounds, 50), spatial_order(bounds, 50)
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == list(range(1000))
    np.testing.assert_array_equal(spatial_order(bounds[:10], 50), np.arange(10))


def test_rows_hold_the_same_features_and_attributes_as_the_layer_in_spatial_order(
        polygons, tmp_path):
    out = write_geoparquet(polygons, "polygons", tmp_path / "p.parquet", row_group_size=100)
    table = pq.read_table(out)
    _, _, wkb, fields = pyogrio.raw.read(polygons, layer="polygons")
    bounds = shapely.bounds(shapely.from_wkb(wkb))
    order = spatial_order(bounds, 100)
    np.testing.assert_array_equal(np.asarray(table["class_id"]), fields[0][order])
    assert table["geometry"].to_pylist() == [bytes(wkb[i]) for i in order]
    np.testing.assert_allclose(np.asarray(table["bbox"].flatten()[0]), bounds[order, 0])


def test_an_empty_layer_gives_a_valid_file_with_the_layer_columns(tmp_path):
    from tests.schemas import geoparquet_errors

    src = tmp_path / "empty.gpkg"
    pyogrio.raw.write(src, geometry=np.empty(0, dtype=object),
                      field_data=[np.empty(0, dtype=np.int64)], fields=["class_id"],
                      geometry_type="Polygon", crs="EPSG:25833", layer="polygons")
    out = write_geoparquet(src, "polygons", tmp_path / "e.parquet")
    table = pq.read_table(out)
    assert table.num_rows == 0 and {"class_id", "geometry", "bbox"} <= set(table.column_names)
    geo = json.loads(pq.read_schema(out).metadata[b"geo"])
    assert geoparquet_errors(geo) == [] and geo["columns"]["geometry"]["geometry_types"] == []


def test_a_layer_with_lines_is_refused_and_leaves_no_file(tmp_path):
    src = tmp_path / "lines.gpkg"
    pyogrio.raw.write(src, geometry=np.asarray(shapely.to_wkb([shapely.LineString([(0, 0),
                                                                                    (1, 1)])]),
                                               dtype=object),
                      field_data=[np.zeros(1, dtype=np.int64)], fields=["class_id"],
                      geometry_type="LineString", crs="EPSG:25833", layer="polygons")
    with pytest.raises(ValueError, match="non-polygon"):
        write_geoparquet(src, "polygons", tmp_path / "l.parquet")
    assert list(tmp_path.glob("*.parquet*")) == [] and list(tmp_path.glob(".l.parquet*")) == []
