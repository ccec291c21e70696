"""QGIS styles: the .qml documents and the GeoPackage layer_styles table."""

from __future__ import annotations

import sqlite3
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import shapely

from pipeline.publish.gis_styles import add_gpkg_layer_style, polygon_qml, raster_qml, write_styles
from tests.system_gis import qgis_legend

NAMES = ["water", "forest & park", "urban <dense>"]
COLORS = [(0, 90, 200), (34, 139, 34), (200, 30, 10)]


def _layer_styles(gpkg: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(gpkg) as con:
        con.row_factory = sqlite3.Row
        return con.execute("SELECT * FROM layer_styles ORDER BY id").fetchall()


@pytest.fixture
def gpkg(tmp_path: Path) -> Path:
    """A small GeoPackage written the way vectorize writes polygons.gpkg."""
    path = tmp_path / "polygons.gpkg"
    geoms = [shapely.box(i * 10.0, 0.0, i * 10.0 + 8, 8.0) for i in range(3)]
    pyogrio.raw.write(
        str(path),
        geometry=np.array(shapely.to_wkb(geoms), dtype=object),
        field_data=[np.array([0, 1, 2], np.int32), np.array(NAMES, dtype=object)],
        fields=["class_id", "class_name"],
        layer="polygons",
        driver="GPKG",
        geometry_type="Polygon",
        crs="EPSG:25833",
    )
    return path


# ---------------------------------------------------------------------------------------------
# QML


def test_raster_qml_is_a_paletted_renderer_with_one_entry_per_class():
    root = ET.fromstring(raster_qml(NAMES, COLORS))
    assert root.tag == "qgis" and root.get("version", "").startswith("3.")
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("color"), e.get("label"), e.get("alpha")) for e in entries] == [
        ("0", "#005ac8", "water", "255"),
        ("1", "#228b22", "forest & park", "255"),
        ("2", "#c81e0a", "urban <dense>", "255"),
    ]


def test_raster_qml_makes_nodata_transparent():
    renderer = ET.fromstring(raster_qml(NAMES, COLORS, nodata=255)).find("pipe/rasterrenderer")
    assert renderer.get("nodataColor") == ""  # empty: nodata pixels are drawn transparent
    values = {e.get("value") for e in renderer.iter("paletteEntry")}
    assert "255" not in values
    (entry,) = renderer.findall("rasterTransparency/singleValuePixelList/pixelListEntry")
    assert (entry.get("min"), entry.get("max"), entry.get("percentTransparent")) == (
        "255", "255", "100"
    )


def test_polygon_qml_is_categorized_on_class_id_with_class_colours():
    root = ET.fromstring(polygon_qml(NAMES, COLORS))
    renderer = root.find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "class_id"
    categories = renderer.findall("categories/category")
    assert [(c.get("value"), c.get("label"), c.get("type")) for c in categories] == [
        ("0", "water", "long"), ("1", "forest & park", "long"), ("2", "urban <dense>", "long"),
    ]
    symbols = {s.get("name"): s for s in renderer.findall("symbols/symbol")}
    for category, rgb in zip(categories, COLORS, strict=True):
        symbol = symbols[category.get("symbol")]
        assert symbol.get("type") == "fill"
        layer = symbol.find("layer")
        assert layer.get("class") == "SimpleFill"
        options = {o.get("name"): o.get("value") for o in layer.findall("Option/Option")}
        props = {p.get("k"): p.get("v") for p in layer.findall("prop")}
        assert options["color"] == props["color"] == "{},{},{},255".format(*rgb)
        assert options["style"] == "solid" and options["outline_style"] == "solid"
        assert float(options["outline_width"]) <= 0.26 and options["outline_width_unit"] == "MM"
    assert root.findtext("layerGeometryType") == "2"


def test_polygon_qml_field_is_configurable():
    renderer = ET.fromstring(polygon_qml(NAMES, COLORS, field="klasse")).find("renderer-v2")
    assert renderer.get("attr") == "klasse"


def test_styles_reject_missing_colours():
    with pytest.raises(ValueError, match="colours"):
        raster_qml(NAMES, COLORS[:2])
    with pytest.raises(ValueError, match="colours"):
        polygon_qml(NAMES, COLORS[:1])


# ---------------------------------------------------------------------------------------------
# GeoPackage layer_styles


def test_add_gpkg_layer_style_writes_a_default_style_row(gpkg: Path):
    qml = polygon_qml(NAMES, COLORS)
    add_gpkg_layer_style(gpkg, "polygons", qml)

    (row,) = _layer_styles(gpkg)
    with sqlite3.connect(gpkg) as con:
        geom_col = con.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = 'polygons'"
        ).fetchone()[0]
        contents = con.execute(
            "SELECT data_type, identifier FROM gpkg_contents WHERE table_name = 'layer_styles'"
        ).fetchone()
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert row["f_table_name"] == "polygons"
    assert row["f_geometry_column"] == geom_col
    assert row["f_table_schema"] == ""  # QGIS selects styles with f_table_schema=''
    assert row["useAsDefault"] == 1
    assert row["styleQML"] == qml
    assert row["styleName"] == "stego classes"
    assert contents == ("attributes", "layer_styles")


def test_gpkg_stays_readable_after_adding_the_style(gpkg: Path):
    add_gpkg_layer_style(gpkg, "polygons", polygon_qml(NAMES, COLORS))

    layers = {str(name): geom for name, geom in pyogrio.list_layers(gpkg)}
    assert layers["polygons"] == "Polygon"
    assert layers.get("layer_styles", None) is None  # an attribute table, if listed at all
    info = pyogrio.read_info(gpkg, layer="polygons")
    assert info["features"] == 3 and info["geometry_type"] == "Polygon"
    assert "25833" in info["crs"]
    _, _, geometry, fields = pyogrio.raw.read(gpkg, layer="polygons")
    assert len(geometry) == 3 and list(fields[0]) == [0, 1, 2]

    # GDAL reads the style table with the types QGIS expects, without complaints
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        style_info = pyogrio.read_info(gpkg, layer="layer_styles")
        _, _, _, style_fields = pyogrio.raw.read(gpkg, layer="layer_styles")
    dtypes = dict(zip(style_info["fields"], style_info["dtypes"], strict=True))
    assert dtypes["useAsDefault"] == "bool"
    assert dtypes["update_time"].startswith("datetime64")
    assert style_info["features"] == 1
    assert not np.isnat(style_fields[list(style_info["fields"]).index("update_time")][0])


def test_add_gpkg_layer_style_is_idempotent(gpkg: Path):
    add_gpkg_layer_style(gpkg, "polygons", "<qgis>old</qgis>")
    add_gpkg_layer_style(gpkg, "polygons", polygon_qml(NAMES, COLORS))
    add_gpkg_layer_style(gpkg, "polygons", polygon_qml(NAMES, COLORS))

    rows = _layer_styles(gpkg)
    assert len(rows) == 1
    assert rows[0]["styleQML"] == polygon_qml(NAMES, COLORS)
    with sqlite3.connect(gpkg) as con:
        n = con.execute(
            "SELECT count(*) FROM gpkg_contents WHERE table_name = 'layer_styles'"
        ).fetchone()[0]
        cached = con.execute(
            "SELECT feature_count FROM gpkg_ogr_contents WHERE table_name = 'layer_styles'"
        ).fetchone()
    assert n == 1
    assert cached in (None, (1,))
    assert pyogrio.read_info(gpkg, layer="layer_styles")["features"] == 1


def test_a_new_default_style_demotes_other_styles_of_the_layer(gpkg: Path):
    add_gpkg_layer_style(gpkg, "polygons", "<qgis/>", style_name="analyst edit")
    add_gpkg_layer_style(gpkg, "polygons", polygon_qml(NAMES, COLORS))
    defaults = {r["styleName"]: r["useAsDefault"] for r in _layer_styles(gpkg)}
    assert defaults == {"analyst edit": 0, "stego classes": 1}


def test_add_gpkg_layer_style_errors_leave_the_file_untouched(gpkg: Path, tmp_path: Path):
    before = gpkg.read_bytes()
    with pytest.raises(ValueError, match="not found"):
        add_gpkg_layer_style(gpkg, "no_such_layer", "<qgis/>")
    assert gpkg.read_bytes() == before
    with pytest.raises(FileNotFoundError):
        add_gpkg_layer_style(tmp_path / "missing.gpkg", "polygons", "<qgis/>")
    assert not (tmp_path / "missing.gpkg").exists()


# ---------------------------------------------------------------------------------------------
# write_styles


def test_write_styles_writes_sidecars_and_the_gpkg_style(gpkg: Path):
    out = gpkg.parent
    written = write_styles(out, NAMES, COLORS)
    assert written == {
        "raster_qml": out / "labels.qml", "vector_qml": out / "polygons.qml", "gpkg": gpkg,
    }
    assert (out / "labels.qml").read_text(encoding="utf-8") == raster_qml(NAMES, COLORS)
    assert (out / "polygons.qml").read_text(encoding="utf-8") == polygon_qml(NAMES, COLORS)
    assert _layer_styles(gpkg)[0]["styleQML"] == polygon_qml(NAMES, COLORS)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_write_styles_without_gpkg_writes_only_the_raster_style(tmp_path: Path):
    assert write_styles(tmp_path, NAMES, COLORS) == {"raster_qml": tmp_path / "labels.qml"}
    assert write_styles(tmp_path, NAMES, COLORS, vector_name=None) == {
        "raster_qml": tmp_path / "labels.qml"
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.qml"]


# ---------------------------------------------------------------------------------------------
# In QGIS itself (the system's QGIS, e.g. Debian 12's 3.22; skipped where it is absent)


def _delivered_labels(out: Path) -> Path:
    """labels.tif and labels.tif.aux.xml as segment writes them."""
    from affine import Affine

    from pipeline.io.cog import write_cog

    lab = (np.arange(40 * 60).reshape(40, 60) % 3).astype(np.uint8)
    lab[:5, :5] = 255
    return write_cog(lab, out / "labels.tif", crs_wkt="EPSG:25833", class_names=NAMES,
                     colors=COLORS, transform=Affine(0.05, 0, 368000, 0, -0.05, 5808000))


def test_qgis_shows_the_labels_with_exactly_the_classes_in_the_legend(tmp_path: Path):
    tif = _delivered_labels(tmp_path)
    write_styles(tmp_path, NAMES, COLORS, vector_name=None)  # QGIS loads labels.qml by itself
    shown = qgis_legend(str(tif))
    assert shown["valid"] and shown["crs"] == "EPSG:25833" and shown["renderer"] == "paletted"
    assert shown["legend"] == NAMES, shown["qgis"]


def test_without_labels_qml_qgis_lists_the_attribute_table_or_every_palette_entry(
    tmp_path: Path,
):
    """docs/usage.md: a GeoTIFF palette has 256 entries (TIFF's ColorMap has 2**bits; GDAL
    pads a shorter table and exposes all 256, 3.6 to 3.12). QGIS >= 3.30 builds the legend from
    the attribute table of labels.tif.aux.xml; older QGIS lists every palette entry."""
    shown = qgis_legend(str(_delivered_labels(tmp_path)))
    version = tuple(int(v) for v in shown["qgis"].split("-")[0].split(".")[:2])
    if version >= (3, 30):
        assert shown["legend"] == NAMES, shown["qgis"]
    else:
        assert shown["legend"][:3] == NAMES and len(shown["legend"]) == 256, shown["qgis"]
