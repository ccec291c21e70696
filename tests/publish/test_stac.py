"""The STAC Item describing a run's outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyproj
import pytest
import shapely
from affine import Affine
from shapely.geometry import shape

from pipeline.publish.stac import (
    CLASSIFICATION_EXT,
    COG_TYPE,
    PROJECTION_EXT,
    RASTER_EXT,
    build_stac_item,
    stac_item_id,
    write_stac_item,
)

NAMES = ["water", "forest & park", "urban"]
COLORS = [(0, 90, 200), (34, 139, 34), (200, 30, 10)]
UTM33 = pyproj.CRS.from_epsg(25833)
TRANSFORM = Affine(0.05, 0.0, 385_000.0, 0.0, -0.05, 5_820_000.0)  # 5 cm, Berlin area
WIDTH, HEIGHT = 3000, 2000
ASSETS = {
    "labels": "labels.tif",
    "zarr": "labels.zarr",
    "polygons": "polygons.gpkg",
    "run": "run.json",
    "preview": "preview.png",
}

# The core of the STAC 1.0.0 item schema (item.json + GeoJSON Feature), offline.
ITEM_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["stac_version", "id", "type", "geometry", "properties", "links", "assets"],
    "properties": {
        "type": {"const": "Feature"},
        "stac_version": {"type": "string", "pattern": r"^1\.[01]\.0$"},
        "stac_extensions": {
            "type": "array", "uniqueItems": True,
            "items": {"type": "string", "format": "iri", "pattern": "^https://"},
        },
        "id": {"type": "string", "minLength": 1},
        "geometry": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object", "required": ["type", "coordinates"],
                    "properties": {
                        "type": {"const": "Polygon"},
                        "coordinates": {
                            "type": "array", "minItems": 1,
                            "items": {
                                "type": "array", "minItems": 4,
                                "items": {
                                    "type": "array", "minItems": 2, "maxItems": 3,
                                    "items": {"type": "number"},
                                },
                            },
                        },
                    },
                },
            ]
        },
        "bbox": {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "number"}},
        "properties": {
            "type": "object", "required": ["datetime"],
            "properties": {
                "datetime": {
                    "type": "string",
                    "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$",
                },
                "proj:code": {"type": ["string", "null"]},
                "proj:wkt2": {"type": ["string", "null"]},
                "proj:shape": {
                    "type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer"},
                },
                "proj:transform": {
                    "type": "array", "minItems": 6, "maxItems": 9, "items": {"type": "number"},
                },
                "proj:bbox": {"type": "array", "minItems": 4, "items": {"type": "number"}},
            },
        },
        "links": {
            "type": "array",
            "items": {"type": "object", "required": ["rel", "href"]},
        },
        "assets": {
            "type": "object",
            "additionalProperties": {
                "type": "object", "required": ["href"],
                "properties": {
                    "href": {"type": "string", "minLength": 1},
                    "type": {"type": "string"},
                    "roles": {"type": "array", "items": {"type": "string"}},
                    "raster:bands": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "nodata": {"type": "number"},
                                "sampling": {"enum": ["area", "point"]},
                                "data_type": {"const": "uint8"},
                                "spatial_resolution": {"type": "number"},
                                "classification:classes": {
                                    "type": "array", "minItems": 1, "uniqueItems": True,
                                    "items": {
                                        "type": "object", "required": ["value", "name"],
                                        "properties": {
                                            "value": {"type": "integer"},
                                            "name": {
                                                "type": "string", "pattern": "^[0-9A-Za-z-_]+$",
                                            },
                                            "title": {"type": "string"},
                                            "description": {"type": "string"},
                                            "color_hint": {
                                                "type": "string", "pattern": "^[0-9A-Fa-f]{6}$",
                                            },
                                            "nodata": {"type": "boolean"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "if": {"properties": {"geometry": {"type": "null"}}},
    "then": {"not": {"required": ["bbox"]}},
    "else": {"required": ["bbox"]},
}


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An output directory with (empty stand-ins for) the run's files."""
    for name in ("labels.tif", "polygons.gpkg", "run.json", "preview.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "labels.zarr").mkdir()
    return tmp_path


def build(out_dir: Path, **kw) -> dict:
    args = dict(
        item_id="scene-3f9a1c2e", out_dir=out_dir, width=WIDTH, height=HEIGHT,
        transform=TRANSFORM, crs_wkt=UTM33.to_wkt(), class_names=NAMES, colors=COLORS,
        datetime_utc="2024-05-06T07:08:09+02:00", assets=ASSETS,
    )
    args.update(kw)
    return build_stac_item(**args)


def labels_band(item: dict) -> dict:
    (band,) = item["assets"]["labels"]["raster:bands"]
    return band


# ---------------------------------------------------------------------------------------------


def test_item_has_the_required_stac_structure(out_dir: Path):
    item = build(out_dir)
    assert item["type"] == "Feature"
    assert item["stac_version"] in ("1.0.0", "1.1.0")
    assert item["id"] == "scene-3f9a1c2e"
    assert isinstance(item["links"], list)
    assert item["properties"]["datetime"] == "2024-05-06T05:08:09Z"  # normalised to UTC
    assert set(item["stac_extensions"]) == {PROJECTION_EXT, RASTER_EXT, CLASSIFICATION_EXT}
    for url in item["stac_extensions"]:
        assert re.fullmatch(r"https://stac-extensions\.github\.io/[a-z]+/v\d+\.\d+\.\d+/schema"
                            r"\.json", url)
    json.dumps(item, allow_nan=False)  # strict JSON


def test_item_validates_against_the_core_schema(out_dir: Path):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft7Validator.check_schema(ITEM_SCHEMA)
    jsonschema.validate(build(out_dir), ITEM_SCHEMA)
    jsonschema.validate(build(out_dir, crs_wkt=None), ITEM_SCHEMA)
    broken = build(out_dir)
    broken["assets"]["labels"]["raster:bands"][0]["classification:classes"][0]["color_hint"] = (
        "#005ac8"
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ITEM_SCHEMA)


def _full_out_dir(out_dir: Path) -> dict[str, str]:
    """Every asset a run publishes, as (empty) files in out_dir."""
    assets = {"labels": "labels.tif", "labels_aux": "labels.tif.aux.xml",
              "labels_style": "labels.qml", "zarr": "labels.zarr",
              "polygons": "polygons.parquet", "polygons_style": "polygons.qml",
              "preview": "preview.png", "manifest": "run.json", "fgb": "polygons.fgb"}
    for name in assets.values():
        if not (out_dir / name).exists():
            (out_dir / name).write_bytes(b"")
    (out_dir / "labels.zarr" / ".zgroup").write_text("{}")
    return assets


def test_item_validates_offline_against_the_published_schemas(out_dir: Path):
    """The STAC 1.0.0 item schema and each declared extension (projection 2.0.0, raster 1.1.0,
    classification 2.0.0), from local copies, with a real JSON-schema validator."""
    from tests.schemas import stac_item_errors

    assets = _full_out_dir(out_dir)
    item = build(out_dir, assets=assets, created_utc="2025-01-02T03:04:05Z")
    assert stac_item_errors(item) == []
    assert stac_item_errors(build(out_dir, crs_wkt=None, assets=assets)) == []
    assert item["properties"]["created"] == "2025-01-02T03:04:05Z"
    assert item["properties"]["datetime"] == "2024-05-06T05:08:09Z"


@pytest.mark.parametrize("breakage", ["no datetime", "bad proj:shape", "bad class name",
                                      "bad nodata", "asset without href", "geometry not closed"])
def test_a_broken_item_fails_the_same_validation(out_dir: Path, breakage: str):
    from tests.schemas import stac_item_errors

    item = build(out_dir, assets=_full_out_dir(out_dir))
    band = labels_band(item)
    if breakage == "no datetime":
        del item["properties"]["datetime"]
    elif breakage == "bad proj:shape":
        item["properties"]["proj:shape"] = [HEIGHT]
    elif breakage == "bad class name":
        band["classification:classes"][1]["name"] = "forest & park"
    elif breakage == "bad nodata":
        band["nodata"] = "none"
    elif breakage == "asset without href":
        del item["assets"]["zarr"]["href"]
    else:
        item["geometry"]["coordinates"][0] = item["geometry"]["coordinates"][0][:3]
    assert stac_item_errors(item) != []


def test_every_asset_has_its_media_type_and_a_title(out_dir: Path):
    item = build(out_dir, assets=_full_out_dir(out_dir))
    types = {k: (a["type"], a["title"]) for k, a in item["assets"].items()}
    assert types["polygons"] == ("application/vnd.apache.parquet", "Class polygons (GeoParquet)")
    assert types["fgb"] == ("application/vnd.flatgeobuf", "Class polygons (FlatGeobuf)")
    assert types["zarr"] == ("application/vnd+zarr", "Class labels and confidence (Zarr v2)")
    assert types["labels_aux"][0] == "application/xml"
    assert item["assets"]["labels_aux"]["roles"] == ["metadata"]
    assert all(t != "application/octet-stream" and title for t, title in types.values())


def test_acquisition_time_comes_from_the_input_tags(tmp_path: Path):
    import numpy as np
    import rasterio

    from pipeline.publish.stac import acquisition_datetime

    def tif(name: str, **tags: str) -> Path:
        path = tmp_path / name
        with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1,
                           dtype="uint8") as ds:
            ds.write(np.zeros((1, 4, 4), np.uint8))
            ds.update_tags(**tags)
        return path

    assert acquisition_datetime(tif("a.tif", TIFFTAG_DATETIME="2021:06:30 09:15:00")) == (
        "2021-06-30T09:15:00Z", "TIFFTAG_DATETIME")
    assert acquisition_datetime(tif("b.tif")) is None
    assert acquisition_datetime(tif("c.tif", TIFFTAG_DATETIME="not a date")) is None
    assert acquisition_datetime(tmp_path / "missing.tif") is None


def test_bbox_and_geometry_are_wgs84_and_contain_the_raster_centre(out_dir: Path):
    item = build(out_dir)
    west, south, east, north = item["bbox"]
    cx, cy = TRANSFORM @ (WIDTH / 2, HEIGHT / 2)
    lon, lat = pyproj.Transformer.from_crs(UTM33, 4326, always_xy=True).transform(cx, cy)
    assert west < lon < east and south < lat < north
    assert 12 < west < east < 14 and 52 < south < north < 53  # Berlin, in degrees
    footprint = shape(item["geometry"])
    assert footprint.geom_type == "Polygon" and footprint.is_valid
    assert footprint.contains(shapely.Point(lon, lat))
    assert footprint.exterior.is_ccw  # RFC 7946 winding
    assert footprint.bounds == pytest.approx((west, south, east, north))
    # every raster corner lies on the footprint
    for col, row in ((0, 0), (WIDTH, 0), (WIDTH, HEIGHT), (0, HEIGHT)):
        x, y = TRANSFORM @ (col, row)
        corner = shapely.Point(pyproj.Transformer.from_crs(UTM33, 4326, always_xy=True)
                               .transform(x, y))
        assert footprint.distance(corner) < 1e-7


def test_projection_fields_match_the_input(out_dir: Path):
    props = build(out_dir)["properties"]
    assert props["proj:code"] == "EPSG:25833"
    assert pyproj.CRS.from_wkt(props["proj:wkt2"]).equals(UTM33)
    assert props["proj:shape"] == [HEIGHT, WIDTH]
    assert props["proj:transform"] == list(TRANSFORM)[:6]
    assert props["proj:bbox"] == pytest.approx(
        [385_000.0, 5_820_000.0 - 0.05 * HEIGHT, 385_000.0 + 0.05 * WIDTH, 5_820_000.0]
    )


def test_labels_asset_has_raster_and_classification_fields(out_dir: Path):
    item = build(out_dir)
    labels = item["assets"]["labels"]
    assert labels["href"] == "./labels.tif" and labels["type"] == COG_TYPE
    assert labels["roles"] == ["data"]
    band = labels_band(item)
    assert band["nodata"] == 255 and band["data_type"] == "uint8"
    assert band["sampling"] == "area"
    assert band["spatial_resolution"] == pytest.approx(0.05)
    classes = band["classification:classes"]
    by_value = {c["value"]: c for c in classes}
    assert [by_value[i]["title"] for i in range(3)] == NAMES
    assert [by_value[i]["color_hint"] for i in range(3)] == ["005AC8", "228B22", "C81E0A"]
    assert by_value[1]["name"] == "forest_park"  # machine-readable name
    assert not any(by_value[i].get("nodata") for i in range(3))
    assert by_value[255]["nodata"] is True
    assert len(classes) == 4


def test_other_assets_have_media_types_roles_and_relative_hrefs(out_dir: Path):
    assets = build(out_dir)["assets"]
    expected = {
        "zarr": ("./labels.zarr", "application/vnd+zarr", ["data"]),
        "polygons": ("./polygons.gpkg", "application/geopackage+sqlite3", ["data"]),
        "run": ("./run.json", "application/json", ["metadata"]),
        "preview": ("./preview.png", "image/png", ["overview"]),
    }
    for key, (href, media, roles) in expected.items():
        assert (assets[key]["href"], assets[key]["type"], assets[key]["roles"]) == (
            href, media, roles
        )


def test_missing_optional_files_are_left_out(out_dir: Path):
    (out_dir / "preview.png").unlink()
    assert "preview" not in build(out_dir)["assets"]


def test_raster_without_crs_has_null_geometry_and_no_bbox(out_dir: Path):
    item = build(out_dir, crs_wkt=None, transform=Affine.identity())
    assert item["geometry"] is None
    assert "bbox" not in item
    props = item["properties"]
    assert props["proj:code"] is None and props["proj:wkt2"] is None
    assert props["proj:shape"] == [HEIGHT, WIDTH]
    assert "spatial_resolution" not in labels_band(item)
    json.dumps(item, allow_nan=False)


def test_geographic_raster_resolution_is_in_metres(out_dir: Path):
    degrees = Affine(1e-5, 0, 13.0, 0, -1e-5, 52.5)  # ~0.68 m x 1.11 m at 52.5 N
    item = build(out_dir, crs_wkt=pyproj.CRS.from_epsg(4326).to_wkt(), transform=degrees)
    assert 0.6 < labels_band(item)["spatial_resolution"] < 1.2
    assert item["bbox"] == pytest.approx(
        [13.0, 52.5 - 1e-5 * HEIGHT, 13.0 + 1e-5 * WIDTH, 52.5], abs=1e-9
    )


def test_extra_properties_are_merged(out_dir: Path):
    item = build(out_dir, properties={"stego:method": "stego", "title": "scene"})
    assert item["properties"]["stego:method"] == "stego"
    assert item["properties"]["title"] == "scene"


def test_naive_datetime_is_rejected(out_dir: Path):
    with pytest.raises(ValueError, match="time zone"):
        build(out_dir, datetime_utc="2024-05-06T07:08:09")


def test_item_id_and_atomic_write(out_dir: Path):
    assert stac_item_id("/data/My Scene.tif", "3f9a1c2e5b7d9f00") == "My_Scene-3f9a1c2e"
    item = build(out_dir)
    path = write_stac_item(item, out_dir / "item.json")
    assert json.loads(path.read_text(encoding="utf-8")) == item
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".item.json")]
