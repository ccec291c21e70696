"""Training samples on the input rasters' grids: vector layers in every common format, label
rasters, class fields as analysts write them (ArcGIS, SCP, dzetsaka), reprojection, groups,
colours, class tables and every one-line input error."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
from affine import Affine

from pipeline.errors import InputError
from pipeline.io.raster import RasterInfo, open_raster_info
from pipeline.io.samples import (
    SampleSpec,
    parse_sample_spec,
    read_class_table,
    read_samples,
)

UTM = "EPSG:32633"
X0, Y0, RES = 500000.0, 5000000.0, 10.0
WATER = [(2, 3), (5, 6), (7, 1)]  # (row, col) pixels
FOREST = [(20, 30), (25, 35), (10, 20)]


def make_raster(path, width=40, height=30, x0=X0, y0=Y0, crs=UTM, nodata_box=None) -> RasterInfo:
    data = np.full((3, height, width), 100, dtype=np.uint8)
    if nodata_box is not None:
        r0, r1, c0, c1 = nodata_box
        data[:, r0:r1, c0:c1] = 0
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3,
                       dtype="uint8", crs=crs, transform=Affine(RES, 0, x0, 0, -RES, y0),
                       nodata=0) as ds:
        ds.write(data)
    return open_raster_info(path)


@pytest.fixture
def raster(tmp_path) -> RasterInfo:
    return make_raster(tmp_path / "scene.tif")


def centre(info: RasterInfo, row: float, col: float) -> tuple[float, float]:
    return info.affine @ (col + 0.5, row + 0.5)


def square(info: RasterInfo, r0: int, c0: int, r1: int, c1: int) -> shapely.Polygon:
    """Pixels rows r0..r1-1, cols c0..c1-1 exactly."""
    (xa, ya), (xb, yb) = info.affine @ (c0, r0), info.affine @ (c1, r1)
    return shapely.box(min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))


def _geometry_type(geoms) -> str:
    kinds = {g.geom_type for g in geoms}
    return kinds.pop() if len(kinds) == 1 else "Unknown"


def write_layer(path, geoms, crs: str | None = UTM, **fields):
    geoms = np.array(geoms, dtype=object)
    wkb = shapely.to_wkb(geoms)
    if str(path).endswith((".parquet", ".geoparquet")):
        _write_geoparquet(path, wkb, crs, fields)
        return str(path)
    pyogrio.raw.write(str(path), geometry=wkb, field_data=[np.asarray(v) for v in fields.values()],
                      fields=list(fields), crs=crs, geometry_type=_geometry_type(geoms))
    return str(path)


def _write_geoparquet(path, wkb, crs, fields):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyproj import CRS

    cols = {k: pa.array(list(v)) for k, v in fields.items()}
    cols["geometry"] = pa.array(list(wkb), type=pa.binary())
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {
        "encoding": "WKB", "geometry_types": [],
        "crs": CRS.from_user_input(crs).to_json_dict() if crs else None}}}
    table = pa.table(cols).replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    pq.write_table(table, path)


def points_layer(info, path, **kw):
    pts = [shapely.Point(centre(info, r, c)) for r, c in WATER + FOREST]
    names = ["water"] * len(WATER) + ["forest"] * len(FOREST)
    return write_layer(path, pts, **{"class": np.array(names, dtype=object), **kw})


def polygons_layer(info, path, **kw):
    polys = [square(info, 2, 2, 5, 6), square(info, 10, 20, 15, 25)]
    return write_layer(path, polys, **{"class": np.array(["water", "forest"], dtype=object),
                                       **kw})


def pixels(rs, cls=None) -> set[tuple[int, int]]:
    sel = np.ones(len(rs.rows), bool) if cls is None else rs.classes == cls
    return set(zip(rs.rows[sel].tolist(), rs.cols[sel].tolist(), strict=True))


def specs(*paths) -> list[SampleSpec]:
    return [parse_sample_spec(str(p)) for p in paths]


FORMATS = ["gpkg", "geojson", "shp", "fgb", "parquet"]


@pytest.mark.parametrize("ext", FORMATS)
def test_points_in_every_format_land_on_their_pixels(tmp_path, raster, ext):
    path = points_layer(raster, tmp_path / f"pts.{ext}")
    s = read_samples(specs(path), [raster], None)
    assert s.classes.names == ["forest", "water"]  # text: alphabetical
    rs = s.per_raster[0]
    assert pixels(rs, 1) == set(WATER) and pixels(rs, 0) == set(FOREST)
    assert len(set(rs.groups.tolist())) == 6  # one group per point
    assert rs.rows.dtype == np.int64 and rs.groups.dtype == np.int64


@pytest.mark.parametrize("ext", FORMATS)
def test_polygons_in_every_format_cover_their_pixel_centres(tmp_path, raster, ext):
    """(GeoParquet goes through pyarrow when pyogrio's GDAL lacks the Parquet driver.)"""
    path = polygons_layer(raster, tmp_path / f"poly.{ext}")
    s = read_samples(specs(path), [raster], "class")
    rs = s.per_raster[0]
    water = {(r, c) for r in range(2, 5) for c in range(2, 6)}
    forest = {(r, c) for r in range(10, 15) for c in range(20, 25)}
    assert pixels(rs, 1) == water and pixels(rs, 0) == forest
    assert list(s.pixel_counts()) == [25, 12]
    # one group per polygon, distinct between polygons
    assert len(set(rs.groups[rs.classes == 1].tolist())) == 1
    assert set(rs.groups[rs.classes == 0].tolist()).isdisjoint(rs.groups[rs.classes == 1])


def test_integer_class_field_orders_classes_by_value(tmp_path, raster):
    pts = [shapely.Point(centre(raster, r, c)) for r, c in WATER + FOREST]
    path = write_layer(tmp_path / "dz.gpkg", pts, Class=np.array([7] * 3 + [2] * 3))
    s = read_samples(specs(path), [raster], None)  # dzetsaka: an integer 'Class' column
    assert s.classes.values == [2, 7] and s.classes.names == ["class 2", "class 7"]
    assert s.classes.colors == [None, None]
    assert pixels(s.per_raster[0], 1) == set(WATER)


def test_arcgis_classvalue_classname_and_rgb_fields_are_recognised(tmp_path, raster):
    pts = [shapely.Point(centre(raster, r, c)) for r, c in WATER + FOREST]
    path = write_layer(tmp_path / "arcgis.shp", pts,
                       Classname=np.array(["Water"] * 3 + ["Forest"] * 3, dtype=object),
                       Classvalue=np.array([20] * 3 + [10] * 3), RED=np.array([0] * 3 + [34] * 3),
                       GREEN=np.array([0] * 3 + [139] * 3), BLUE=np.array([255] * 3 + [34] * 3),
                       Count=np.array([1] * 6))
    s = read_samples(specs(path), [raster], None)
    assert s.class_fields == ["Classvalue"]
    assert s.classes.names == ["Forest", "Water"] and s.classes.values == [10, 20]
    assert s.classes.colors == [(34, 139, 34), (0, 0, 255)]


def test_scp_class_ids_take_their_names_from_c_info(tmp_path, raster):
    polys = [square(raster, 2, 2, 5, 6), square(raster, 10, 20, 15, 25)]
    path = write_layer(tmp_path / "roi.gpkg", polys, MC_ID=np.array([1, 2]),
                       MC_Info=np.array(["vegetation", "built"], dtype=object),
                       C_ID=np.array([3, 5]), C_Info=np.array(["grass", "roof"], dtype=object))
    s = read_samples(specs(path), [raster], None)
    assert s.class_fields == ["C_ID"] and s.classes.names == ["grass", "roof"]
    s = read_samples(specs(path), [raster], "mc_id")  # field names match case-insensitively
    assert s.classes.names == ["vegetation", "built"] and s.classes.values == [1, 2]


def test_a_fixed_class_needs_no_field_and_merges_by_name(tmp_path, raster):
    a = write_layer(tmp_path / "buildings.gpkg", [square(raster, 20, 2, 23, 6)], n=np.array([1]))
    b = write_layer(tmp_path / "roads.fgb", [shapely.Point(centre(raster, 20, 30)),
                                             shapely.Point(centre(raster, 21, 30))],
                    x=np.array([1, 2]))
    c = polygons_layer(raster, tmp_path / "more.gpkg")  # its class field is not used
    s = read_samples([parse_sample_spec(f"{a}=building"), parse_sample_spec(f"{b}=road"),
                      parse_sample_spec(f"{c}=road")], [raster], "no_such_field")
    assert s.classes.names == ["building", "road"]
    assert s.classes.values == ["building", "road"]
    assert list(s.pixel_counts()) == [12, 2 + 12 + 25]
    assert s.class_fields == [None, None, None]


def test_parse_sample_spec(tmp_path):
    assert parse_sample_spec("a.gpkg") == SampleSpec("a.gpkg")
    assert parse_sample_spec("dir/b.gpkg=old town") == SampleSpec("dir/b.gpkg", "old town")
    assert parse_sample_spec("x=1.tif=water") == SampleSpec("x=1.tif", "water")
    assert parse_sample_spec("weird=name.gpkg") == SampleSpec("weird=name.gpkg")
    f = tmp_path / "noext"
    f.write_text("x")
    assert parse_sample_spec(f"{f}=roof") == SampleSpec(str(f), "roof")
    with pytest.raises(InputError, match="empty class name"):
        parse_sample_spec("a.gpkg=")


def test_a_layer_in_lon_lat_lands_on_the_right_utm_pixels(tmp_path, raster):
    from pyproj import Transformer

    to_ll = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    pts = [shapely.Point(to_ll.transform(*centre(raster, r, c))) for r, c in WATER + FOREST]
    poly = shapely.transform(square(raster, 12, 2, 15, 6),
                             lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    names = np.array(["water"] * 3 + ["forest"] * 3 + ["field"], dtype=object)
    path = write_layer(tmp_path / "ll.geojson", pts + [poly], crs="EPSG:4326", landcover=names)
    rs = read_samples(specs(path), [raster], None).per_raster[0]
    assert pixels(rs, 2) == set(WATER) and pixels(rs, 1) == set(FOREST)
    assert pixels(rs, 0) == {(r, c) for r in range(12, 15) for c in range(2, 6)}


def test_two_rasters_each_get_the_samples_on_them(tmp_path, placement):
    left = make_raster(tmp_path / "left.tif")
    right = make_raster(tmp_path / "right.tif", x0=X0 + 40 * RES)  # its east neighbour
    # a polygon across the seam, points on either side
    poly = shapely.box(X0 + 38 * RES, Y0 - 5 * RES, X0 + 42 * RES, Y0 - 2 * RES)
    pts = [shapely.Point(X0 + 5 * RES + 5, Y0 - 20 * RES - 5),
           shapely.Point(X0 + 45 * RES + 5, Y0 - 20 * RES - 5)]
    path = write_layer(tmp_path / "s.gpkg", [poly, *pts],
                       label=np.array(["crop", "road", "road"], dtype=object))
    s = read_samples(specs(path), [left, right], None, min_pixels_per_class=2)
    a, b = s.per_raster
    assert (a.raster, b.raster) == (left.path, right.path)
    assert pixels(a, 0) == {(r, c) for r in range(2, 5) for c in (38, 39)}
    assert pixels(b, 0) == {(r, c) for r in range(2, 5) for c in (0, 1)}
    assert pixels(a, 1) == {(20, 5)} and pixels(b, 1) == {(20, 5)}
    # the polygon is one group on both rasters; the two points are two others
    assert set(a.groups[a.classes == 0]) == set(b.groups[b.classes == 0])
    assert len({*a.groups.tolist(), *b.groups.tolist()}) == 3


def test_a_polygon_smaller_than_a_pixel_gives_its_centroid_pixel(tmp_path, raster, placement):
    x, y = centre(raster, 7, 9)
    tiny = shapely.box(x + 1, y + 1, x + 3, y + 4)  # misses the pixel centre
    path = write_layer(tmp_path / "t.gpkg", [tiny, square(raster, 20, 20, 22, 22)],
                       classname=np.array(["car", "road"], dtype=object))
    rs = read_samples(specs(path), [raster], None, min_pixels_per_class=1).per_raster[0]
    assert pixels(rs, 0) == {(7, 9)}
    assert len(pixels(rs, 1)) == 4


@pytest.fixture(params=["one block", "small blocks, one window per polygon"])
def placement(request, monkeypatch):
    """Place samples in one block, or in 8-px blocks with each polygon burnt on its own."""
    if request.param != "one block":
        import pipeline.io.samples as samples
        import pipeline.io.samples_vector_grid as vector_grid

        monkeypatch.setattr(samples, "BLOCK", 8)
        monkeypatch.setattr(vector_grid, "CALL_COST_PIXELS", 0)
    return request.param


def test_overlapping_polygons_of_two_classes_drop_the_shared_pixels(tmp_path, raster,
                                                                    placement):
    a, b = square(raster, 0, 0, 4, 4), square(raster, 2, 2, 6, 6)
    same = square(raster, 3, 3, 5, 5)  # also class "a": not ambiguous against a
    path = write_layer(tmp_path / "o.gpkg", [a, b, same],
                       category=np.array(["a", "b", "a"], dtype=object))
    s = read_samples(specs(path), [raster], None)
    rs = s.per_raster[0]
    shared = ({(r, c) for r in range(2, 4) for c in range(2, 4)}  # a and b
              | {(r, c) for r in range(3, 5) for c in range(3, 5)})  # "same" and b
    assert not pixels(rs) & shared
    assert pixels(rs, 0) == {(r, c) for r in range(4) for c in range(4)} - shared
    assert any("ambiguous" in w for w in s.warnings)


def test_samples_on_nodata_and_outside_the_raster_are_dropped(tmp_path):
    info = make_raster(tmp_path / "nd.tif", nodata_box=(0, 3, 0, 40))
    pts = [shapely.Point(centre(info, r, c)) for r, c in WATER + FOREST]
    pts.append(shapely.Point(X0 - 100, Y0 + 100))  # outside
    path = write_layer(tmp_path / "p.gpkg", pts,
                       **{"class": np.array(["w"] * 3 + ["f"] * 3 + ["w"], dtype=object)})
    s = read_samples(specs(path), [info], None, min_pixels_per_class=2)
    assert pixels(s.per_raster[0], 1) == set(WATER) - {(2, 3)}
    assert any("nodata" in w for w in s.warnings)
    assert any("1 of 7 features fall outside" in w for w in s.warnings)


def test_max_pixels_per_feature_caps_a_big_polygon_with_a_seeded_subset(tmp_path, raster):
    path = polygons_layer(raster, tmp_path / "p.gpkg")
    a = read_samples(specs(path), [raster], None, max_pixels_per_feature=5, seed=1)
    b = read_samples(specs(path), [raster], None, max_pixels_per_feature=5, seed=1)
    c = read_samples(specs(path), [raster], None, max_pixels_per_feature=5, seed=2)
    assert list(a.pixel_counts()) == [5, 5]
    assert pixels(a.per_raster[0]) == pixels(b.per_raster[0]) != pixels(c.per_raster[0])
    assert pixels(a.per_raster[0], 1) <= {(r, c) for r in range(2, 5) for c in range(2, 6)}


def test_colours_from_a_colour_field(tmp_path, raster):
    path = points_layer(raster, tmp_path / "c.gpkg",
                        color=np.array(["#0000ff"] * 3 + [None, "34 139 34", None],
                                       dtype=object))
    s = read_samples(specs(path), [raster], None)
    assert s.classes.colors == [(34, 139, 34), (0, 0, 255)]


def test_class_tables_give_names_and_colours_to_values(tmp_path, raster):
    csv = tmp_path / "classes.csv"
    csv.write_text("value,name,color\n2,Forest,#228b22\n7,Water,0 0 255\n9,Snow,\n")
    yml = tmp_path / "classes.yaml"
    yml.write_text("classes:\n  2: {name: Forest, color: '#228b22'}\n  7: Water\n")
    assert read_class_table(str(csv)).names == ["Forest", "Water", "Snow"]
    assert read_class_table(str(csv)).colors == [(34, 139, 34), (0, 0, 255), None]
    pts = [shapely.Point(centre(raster, r, c)) for r, c in WATER + FOREST]
    path = write_layer(tmp_path / "v.gpkg", pts, class_id=np.array([7] * 3 + [2] * 3))
    s = read_samples(specs(path), [raster], None, class_table=str(csv))
    assert s.classes.names == ["Forest", "Water"] and s.classes.values == [2, 7]
    assert s.classes.colors == [(34, 139, 34), (0, 0, 255)]
    s = read_samples(specs(path), [raster], None, class_table=str(yml))
    assert s.classes.colors == [(34, 139, 34), None]
    bad = tmp_path / "short.csv"
    bad.write_text("2,Forest\n")
    with pytest.raises(InputError, match="class value 7 is not in the class table") as e:
        read_samples(specs(path), [raster], None, class_table=str(bad))
    assert e.value.path == path
    bad.write_text("2,Forest\n2,Again\n")
    with pytest.raises(InputError, match="appears twice") as e:
        read_class_table(str(bad))
    assert e.value.path == str(bad)


def write_labels(path, data, crs=UTM, transform=None, nodata=None, count=1):
    data = np.asarray(data)
    kw = {} if crs is None else {"crs": crs, "transform": transform or
                                 Affine(RES, 0, X0, 0, -RES, Y0)}
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[-1], height=data.shape[-2],
                       count=count, dtype=data.dtype, nodata=nodata, **kw) as ds:
        ds.write(data if data.ndim == 3 else data[None].repeat(count, 0))
    return str(path)


def test_a_label_raster_with_nodata_keeps_zero_as_a_class(tmp_path, raster):
    lab = np.full((30, 40), 255, dtype=np.uint8)
    lab[0:3, 0:4] = 0
    lab[10:12, 10:12] = 4
    lab[20:22, 30:33] = 4  # a second region of class 4
    path = write_labels(tmp_path / "lab.tif", lab, nodata=255)
    s = read_samples(specs(path), [raster], None)
    assert s.classes.values == [0, 4] and s.classes.names == ["class 0", "class 4"]
    rs = s.per_raster[0]
    assert list(s.pixel_counts()) == [12, 10]
    assert len(set(rs.groups[rs.classes == 1].tolist())) == 2  # one group per region


def test_a_label_raster_without_nodata_leaves_zero_unlabelled_and_is_reprojected(tmp_path,
                                                                               raster):
    lab = np.zeros((15, 20), dtype=np.uint8)  # 20 m pixels: each covers 2x2 of the raster's
    lab[1, 1], lab[5, 10] = 3, 8
    path = write_labels(tmp_path / "coarse.tif", lab,
                        transform=Affine(2 * RES, 0, X0, 0, -2 * RES, Y0))
    s = read_samples(specs(path), [raster], None, min_pixels_per_class=4)
    rs = s.per_raster[0]
    assert pixels(rs, 0) == {(2, 2), (2, 3), (3, 2), (3, 3)}
    assert pixels(rs, 1) == {(10, 20), (10, 21), (11, 20), (11, 21)}


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # rasterio's own Affine use
def test_a_label_raster_in_lon_lat_is_reprojected_by_nearest_neighbour(tmp_path, raster):
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    lab = np.zeros((30, 40), dtype=np.uint8)
    lab[5:15, 5:20], lab[18:28, 22:38] = 1, 2
    tr, w, h = calculate_default_transform(UTM, "EPSG:4326", 40, 30, *raster_bounds(raster),
                                           resolution=RES / 111_320 / 2)
    ll = np.zeros((h, w), dtype=np.uint8)
    reproject(lab, ll, src_transform=raster.affine, src_crs=UTM, dst_transform=tr,
              dst_crs="EPSG:4326", resampling=Resampling.nearest)
    path = write_labels(tmp_path / "ll.tif", ll, crs="EPSG:4326", transform=tr)
    rs = read_samples(specs(path), [raster], None).per_raster[0]
    got = np.zeros_like(lab)
    got[rs.rows, rs.cols] = rs.classes + 1
    assert (got == lab).mean() > 0.97


def raster_bounds(info: RasterInfo) -> tuple[float, float, float, float]:
    (xa, ya), (xb, yb) = info.affine @ (0, 0), info.affine @ (info.width, info.height)
    return min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_an_ungeoreferenced_label_raster_must_match_the_raster_size(tmp_path, raster):
    lab = np.zeros((30, 40), dtype=np.uint8)
    lab[0, 0:3], lab[29, 37:40] = 1, 2
    path = write_labels(tmp_path / "plain.tif", lab, crs=None)
    rs = read_samples(specs(path), [raster], None).per_raster[0]
    assert pixels(rs, 0) == {(0, 0), (0, 1), (0, 2)}
    path = write_labels(tmp_path / "small.tif", lab[:20], crs=None)
    with pytest.raises(InputError, match="no georeferencing and its size 40x20") as e:
        read_samples(specs(path), [raster], None)
    assert e.value.path == path


def test_label_regions_crossing_blocks_stay_one_group(tmp_path, monkeypatch):
    import pipeline.io.samples as samples

    monkeypatch.setattr(samples, "BLOCK", 8)
    info = make_raster(tmp_path / "r.tif")
    lab = np.zeros((30, 40), dtype=np.uint8)
    lab[3:20, 5] = 1  # a long line across three block rows
    lab[5, 5:30] = 1
    lab[25:28, 30:35] = 2
    path = write_labels(tmp_path / "lab.tif", lab)
    rs = read_samples(specs(path), [info], None).per_raster[0]
    assert len(set(rs.groups[rs.classes == 0].tolist())) == 1
    assert len(set(rs.groups.tolist())) == 2


def test_mixed_sources_share_classes_by_name(tmp_path, raster):
    lab = np.zeros((30, 40), dtype=np.uint8)
    lab[0:2, 30:40] = 20
    labels = write_labels(tmp_path / "l.tif", lab)
    pts = [shapely.Point(centre(raster, r, c)) for r, c in WATER + FOREST]
    vec = write_layer(tmp_path / "v.shp", pts, Classvalue=np.array([20] * 3 + [10] * 3),
                      Classname=np.array(["Water"] * 3 + ["Forest"] * 3, dtype=object))
    s = read_samples(specs(vec, labels), [raster], None)
    assert s.classes.names == ["Forest", "Water"]  # value 20 of the raster is "Water"
    assert list(s.pixel_counts()) == [3, 23]
    assert s.sources == [vec, labels]


def test_multipoints_and_many_points_are_placed_quickly(tmp_path, raster):
    import time

    rng = np.random.default_rng(0)
    n = 30000
    rows, cols = rng.integers(0, 30, n), rng.integers(0, 40, n)
    xy = np.column_stack([X0 + (cols + 0.5) * RES, Y0 - (rows + 0.5) * RES])
    cls = (rows >= 15).astype(np.int64) + 1
    geoms = list(shapely.points(xy))
    geoms[0] = shapely.MultiPoint([xy[0], xy[1]])
    path = write_layer(tmp_path / "many.gpkg", geoms, class_value=cls)
    t0 = time.perf_counter()
    s = read_samples(specs(path), [raster], None)
    assert time.perf_counter() - t0 < 3.0
    rs = s.per_raster[0]
    assert s.classes.values == [1, 2]
    assert pixels(rs) == set(zip(rows.tolist(), cols.tolist(), strict=True))
    assert np.array_equal(rs.classes, (rs.rows >= 15).astype(np.int64))


# ---- errors: one line naming the file and the problem


def test_error_missing_and_unreadable_files(tmp_path, raster):
    with pytest.raises(InputError, match="not found") as e:
        read_samples(specs(tmp_path / "nope.gpkg"), [raster], None)
    assert e.value.path == str(tmp_path / "nope.gpkg")
    junk = tmp_path / "junk.gpkg"
    junk.write_bytes(b"not a geopackage at all")
    with pytest.raises(InputError, match="cannot be read as a vector layer") as e:
        read_samples(specs(junk), [raster], None)
    assert e.value.path == str(junk)
    other = tmp_path / "junk.dat"
    other.write_bytes(b"\x00\x01garbage")
    with pytest.raises(InputError, match="cannot be read as a vector layer or a label raster"):
        read_samples(specs(other), [raster], None)


def test_error_class_field_missing_or_not_found(tmp_path, raster):
    path = points_layer(raster, tmp_path / "p.gpkg", extra=np.arange(6))
    with pytest.raises(InputError, match=r"no class field 'kind' \(fields: class, extra\)") as e:
        read_samples(specs(path), [raster], "kind")
    assert e.value.path == path
    path = write_layer(tmp_path / "q.gpkg", [shapely.Point(0, 0)], height=np.array([3]))
    with pytest.raises(InputError, match=r"no class field found.*--class-field.*height"):
        read_samples(specs(path), [raster], None)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_error_no_crs(tmp_path, raster):
    path = points_layer(raster, tmp_path / "p.shp", crs=None)
    with pytest.raises(InputError, match="no CRS") as e:
        read_samples(specs(path), [raster], None)
    assert e.value.path == path


def test_error_invalid_geometry_names_the_feature(tmp_path, raster):
    bowtie = shapely.Polygon([(X0, Y0 - 100), (X0 + 100, Y0), (X0 + 100, Y0 - 100), (X0, Y0)])
    path = write_layer(tmp_path / "b.gpkg", [square(raster, 0, 0, 2, 2), bowtie],
                       label=np.array(["a", "b"], dtype=object))
    with pytest.raises(InputError, match=r"feature 2 has an invalid geometry \(Self-inter"):
        read_samples(specs(path), [raster], None)


def test_features_with_an_empty_class_are_skipped_with_a_warning(tmp_path, raster):
    """`stego suggest` layers come back with the points the analyst could not name empty."""
    path = points_layer(raster, tmp_path / "p.geojson",
                        **{"class": np.array(["w", "w", None, "f", "f", "f"], dtype=object)})
    got = read_samples(specs(path), [raster], None, min_pixels_per_class=1)
    assert got.pixel_counts().sum() == 5
    assert any("1 feature(s) with an empty 'class' skipped" in w for w in got.warnings)


def test_error_samples_outside_every_raster(tmp_path, raster):
    pts = [shapely.Point(X0 - 1000, Y0), shapely.Point(X0 - 2000, Y0)]
    path = write_layer(tmp_path / "far.gpkg", pts, label=np.array(["a", "b"], dtype=object))
    with pytest.raises(InputError, match="fall outside every input raster") as e:
        read_samples(specs(path), [raster], None)
    assert e.value.path == path


def test_error_needs_two_classes_and_enough_pixels(tmp_path, raster):
    pts = [shapely.Point(centre(raster, r, c)) for r, c in WATER]
    path = write_layer(tmp_path / "one.gpkg", pts, label=np.array(["w"] * 3, dtype=object))
    with pytest.raises(InputError, match="needs at least two classes") as e:
        read_samples(specs(path), [raster], None)
    assert e.value.path == path
    pts.append(shapely.Point(centre(raster, *FOREST[0])))
    path = write_layer(tmp_path / "few.gpkg", pts, label=np.array(["w"] * 3 + ["x"], dtype=object))
    with pytest.raises(InputError, match=r"class 'x' has 1 labelled pixel.*at least 3") as e:
        read_samples(specs(path), [raster], None)
    assert e.value.path == path


def test_error_one_value_with_two_names(tmp_path, raster):
    path = points_layer(raster, tmp_path / "p.gpkg", class_id=np.array([1, 1, 1, 2, 2, 2]),
                        class_name=np.array(["w", "W", "w", "f", "f", None], dtype=object))
    with pytest.raises(InputError, match="class value 1 has several names in 'class_name'"):
        read_samples(specs(path), [raster], "class_id")


def test_error_lines_and_multiband_label_rasters(tmp_path, raster):
    line = shapely.LineString([centre(raster, 1, 1), centre(raster, 5, 5)])
    path = write_layer(tmp_path / "l.gpkg", [line], label=np.array(["road"], dtype=object))
    with pytest.raises(InputError, match="feature 1 is a line; .*points or polygons") as e:
        read_samples(specs(path), [raster], None)
    assert e.value.path == path
    lab = write_labels(tmp_path / "rgb.tif", np.zeros((30, 40), np.uint8), count=3)
    with pytest.raises(InputError, match="3 bands; expected one band") as e:
        read_samples(specs(lab), [raster], None)
    assert e.value.path == lab
