"""QGIS styles for the outputs: ``.qml`` sidecars and the GeoPackage ``layer_styles`` table.

QGIS loads ``<basename>.qml`` next to a file layer automatically (``labels.tif`` ->
``labels.qml``), and for a GeoPackage layer it prefers the default style stored in the
``layer_styles`` table. The XML mirrors what QGIS 3.x writes itself:

* raster: ``QgsPalettedRasterRenderer::writeXml`` (``<rasterrenderer type="paletted">`` with one
  ``<paletteEntry value color alpha label>`` per class) plus a ``<rasterTransparency>`` entry
  that makes the nodata value fully transparent (``QgsRasterTransparency::writeXml``);
* vector: ``QgsCategorizedSymbolRenderer::save`` (``<renderer-v2 type="categorizedSymbol">``,
  ``<category value type symbol label render>``, one ``SimpleFill`` fill symbol per class).
  Symbol-layer properties are written both as an ``<Option type="Map">`` (read by QGIS >= 3.18)
  and as legacy ``<prop k v>`` elements (read by older 3.x), as QGIS 3.16-3.26 did.

The ``layer_styles`` table follows ``QgsOgrProviderMetadata::saveStyle``: the same columns, an
empty ``f_table_schema`` (QGIS looks styles up with ``f_table_schema=''``), and the table
registered in ``gpkg_contents`` as ``attributes`` (what GDAL does when QGIS creates it).
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

from pipeline.io.files import write_text_atomic

QGIS_VERSION = "3.28.0-Firenze"
DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
OUTLINE_WIDTH_MM = 0.1
OUTLINE_DARKEN = 0.6
NOW_SQL = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"

# QGIS's layer_styles schema as GDAL's GPKG driver creates it for QGIS (FID "id", widths as
# TEXT(n), OFSTBoolean as BOOLEAN, DATETIME whose CURRENT_TIMESTAMP default GDAL writes as the
# GeoPackage-conformant ISO 8601 form).
LAYER_STYLES_DDL = f"""
CREATE TABLE IF NOT EXISTS "layer_styles" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    "f_table_catalog" TEXT(256),
    "f_table_schema" TEXT(256),
    "f_table_name" TEXT(256),
    "f_geometry_column" TEXT(256),
    "styleName" TEXT(30),
    "styleQML" TEXT,
    "styleSLD" TEXT,
    "useAsDefault" BOOLEAN,
    "description" TEXT,
    "owner" TEXT(30),
    "ui" TEXT(30),
    "update_time" DATETIME DEFAULT ({NOW_SQL})
)
"""


# --------------------------------------------------------------------------------------------
# QML documents


def raster_qml(
    class_names: Sequence[str], colors: Sequence[tuple[int, int, int]], nodata: int = 255
) -> str:
    """A QGIS paletted (unique values) style for a class raster; ``nodata`` is transparent."""
    entries = _classes(class_names, colors, nodata)
    root = _qgis_root()
    pipe = ET.SubElement(root, "pipe")
    provider = ET.SubElement(pipe, "provider")
    ET.SubElement(provider, "resampling", {
        "enabled": "false", "maxOversampling": "2",
        "zoomedInResamplingMethod": "nearestNeighbour",
        "zoomedOutResamplingMethod": "nearestNeighbour",
    })
    renderer = ET.SubElement(pipe, "rasterrenderer", {
        "type": "paletted", "band": "1", "opacity": "1", "alphaBand": "-1", "nodataColor": "",
    })
    transparency = ET.SubElement(renderer, "rasterTransparency")
    single = ET.SubElement(transparency, "singleValuePixelList")
    ET.SubElement(single, "pixelListEntry", {
        "min": str(nodata), "max": str(nodata), "percentTransparent": "100",
    })
    origin = ET.SubElement(renderer, "minMaxOrigin")
    for tag, text in (("limits", "None"), ("extent", "WholeRaster"),
                      ("statAccuracy", "Estimated"), ("cumulativeCutLower", "0.02"),
                      ("cumulativeCutUpper", "0.98"), ("stdDevFactor", "2")):
        ET.SubElement(origin, tag).text = text
    palette = ET.SubElement(renderer, "colorPalette")
    for value, name, rgb in entries:
        ET.SubElement(palette, "paletteEntry", {
            "value": str(value), "color": _hex(rgb), "alpha": "255", "label": name,
        })
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.SubElement(pipe, "huesaturation", {
        "saturation": "0", "grayscaleMode": "0", "invertColors": "0", "colorizeOn": "0",
        "colorizeRed": "255", "colorizeGreen": "128", "colorizeBlue": "128",
        "colorizeStrength": "100",
    })
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(pipe, "resamplingStage").text = "resamplingFilter"
    ET.SubElement(root, "blendMode").text = "0"
    return _serialize(root)


def polygon_qml(
    class_names: Sequence[str], colors: Sequence[tuple[int, int, int]], field: str = "class_id"
) -> str:
    """A QGIS categorized style on the integer ``field``: class colours, names as labels."""
    entries = _classes(class_names, colors, None)
    root = _qgis_root()
    renderer = ET.SubElement(root, "renderer-v2", {
        "type": "categorizedSymbol", "attr": field, "forceraster": "0", "symbollevels": "0",
        "enableorderby": "0", "referencescale": "-1",
    })
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, (value, name, rgb) in enumerate(entries):
        ET.SubElement(categories, "category", {
            "value": str(value), "type": "long", "symbol": str(i), "label": name,
            "render": "true",
        })
        symbols.append(_fill_symbol(str(i), rgb))
    source = ET.SubElement(renderer, "source-symbol")
    source.append(_fill_symbol("0", (190, 190, 190)))
    ET.SubElement(renderer, "rotation")
    ET.SubElement(renderer, "sizescale")
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "featureBlendMode").text = "0"
    ET.SubElement(root, "layerOpacity").text = "1"
    ET.SubElement(root, "layerGeometryType").text = "2"  # polygon
    return _serialize(root)


def _classes(
    class_names: Sequence[str], colors: Sequence[tuple[int, int, int]], nodata: int | None
) -> list[tuple[int, str, tuple[int, int, int]]]:
    """(value, name, rgb) per class, validated: one colour per class, values below nodata."""
    names = [str(n) for n in class_names]
    if len(colors) < len(names):
        raise ValueError(f"{len(names)} class names but only {len(colors)} colours")
    limit = 255 if nodata is None else nodata
    if len(names) > limit:
        raise ValueError(f"{len(names)} classes do not fit below the value {limit}")
    out = []
    for value, name in enumerate(names):
        rgb = tuple(int(c) for c in colors[value][:3])
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise ValueError(f"colour of class {value} is not an RGB triple 0-255: {colors[value]}")
        out.append((value, name, rgb))
    return out


def _qgis_root() -> ET.Element:
    return ET.Element("qgis", {"version": QGIS_VERSION, "styleCategories": "Symbology"})


def _serialize(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return DOCTYPE + "\n" + ET.tostring(root, encoding="unicode") + "\n"


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _qgis_color(rgb: Sequence[int], alpha: int = 255) -> str:
    """QGIS's encodeColor form ``r,g,b,a``."""
    return f"{rgb[0]},{rgb[1]},{rgb[2]},{alpha}"


def _data_defined(parent: ET.Element) -> None:
    """The empty data-defined property collection QGIS writes for symbols and layers."""
    ddp = ET.SubElement(parent, "data_defined_properties")
    option = ET.SubElement(ddp, "Option", {"type": "Map"})
    ET.SubElement(option, "Option", {"name": "name", "type": "QString", "value": ""})
    ET.SubElement(option, "Option", {"name": "properties"})
    ET.SubElement(option, "Option", {"name": "type", "type": "QString", "value": "collection"})


def _fill_symbol(name: str, rgb: Sequence[int]) -> ET.Element:
    """A fill symbol with one SimpleFill layer: solid class colour, thin darker outline."""
    outline = tuple(int(round(c * OUTLINE_DARKEN)) for c in rgb)
    props = {
        "border_width_map_unit_scale": "3x:0,0,0,0,0,0",
        "color": _qgis_color(rgb),
        "joinstyle": "bevel",
        "offset": "0,0",
        "offset_map_unit_scale": "3x:0,0,0,0,0,0",
        "offset_unit": "MM",
        "outline_color": _qgis_color(outline),
        "outline_style": "solid",
        "outline_width": str(OUTLINE_WIDTH_MM),
        "outline_width_unit": "MM",
        "style": "solid",
    }
    return symbol_element("fill", "SimpleFill", name, props)


def symbol_element(kind: str, layer_class: str, name: str, props: dict[str, str]) -> ET.Element:
    """A QGIS ``<symbol>`` of one symbol layer (``fill``/``SimpleFill``,
    ``marker``/``SimpleMarker``, ...) with ``props`` in both the new ``Option`` map and the
    older ``prop`` form, so every QGIS 3 reads it."""
    symbol = ET.Element("symbol", {
        "type": kind, "name": name, "alpha": "1", "clip_to_extent": "1", "force_rhr": "0",
        "frame_rate": "10", "is_animated": "0",
    })
    _data_defined(symbol)
    layer = ET.SubElement(symbol, "layer", {
        "class": layer_class, "enabled": "1", "locked": "0", "pass": "0",
    })
    options = ET.SubElement(layer, "Option", {"type": "Map"})
    for key, value in props.items():
        ET.SubElement(options, "Option", {"name": key, "type": "QString", "value": value})
    for key, value in props.items():
        ET.SubElement(layer, "prop", {"k": key, "v": value})
    _data_defined(layer)
    return symbol


# --------------------------------------------------------------------------------------------
# files


def write_styles(
    out_dir: Path,
    class_names: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    *,
    raster_name: str = "labels.tif",
    vector_name: str | None = "polygons.gpkg",
    layer: str = "polygons",
    embed: bool = True,
) -> dict[str, Path]:
    """Write labels.qml (+ polygons.qml and, with ``embed``, the gpkg layer_styles row when
    the gpkg exists; without it the caller embedded the style before the gpkg was renamed).

    The ``.qml`` files are written atomically (temporary sibling + rename). Returns the paths
    written under the keys ``raster_qml``, ``vector_qml`` and ``gpkg``.
    """
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    raster_path = out_dir / Path(raster_name).with_suffix(".qml").name
    written["raster_qml"] = write_text_atomic(raster_path, raster_qml(class_names, colors))
    if vector_name is None:
        return written
    vector = out_dir / vector_name
    if not vector.exists():
        return written
    qml = polygon_qml(class_names, colors)
    written["vector_qml"] = write_text_atomic(vector.with_suffix(".qml"), qml)
    if vector.suffix.lower() == ".gpkg" and embed:
        add_gpkg_layer_style(vector, layer, qml)
        written["gpkg"] = vector
    return written




# --------------------------------------------------------------------------------------------
# GeoPackage layer_styles


def add_gpkg_layer_style(
    gpkg: Path, layer: str, qml: str, style_name: str = "stego classes"
) -> None:
    """Store ``qml`` as the default QGIS style of ``layer`` in the GeoPackage, in place.

    Creates ``layer_styles`` (QGIS's schema) when missing and registers it in ``gpkg_contents``
    as an attributes table. Re-running replaces the row of the same layer and style name; other
    styles of the layer stop being the default. One transaction: on error nothing changes.
    """
    gpkg = Path(gpkg)
    if not gpkg.is_file():
        raise FileNotFoundError(f"GeoPackage not found: {gpkg}")
    if len(style_name) > 30:
        raise ValueError(f"style_name longer than 30 characters: {style_name!r}")
    uri = gpkg.resolve().as_uri() + "?mode=rw"
    with closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as con:
        con.execute("BEGIN IMMEDIATE")
        try:
            table, geom_col = _layer_table(con, layer)
            con.execute(LAYER_STYLES_DDL)
            _register_contents(con)
            key = (table, geom_col)
            con.execute(
                "UPDATE layer_styles SET useAsDefault = 0 "
                "WHERE f_table_name = ? AND f_geometry_column = ?", key,
            )
            con.execute(
                "DELETE FROM layer_styles WHERE f_table_name = ? AND f_geometry_column = ? "
                "AND styleName = ? AND coalesce(f_table_schema, '') = ''", (*key, style_name),
            )
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
                f"owner, update_time) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', {NOW_SQL})",
                (*key, style_name, qml, "Class colours and names written by stego-pipeline"),
            )
            _update_feature_count(con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def _layer_table(con: sqlite3.Connection, layer: str) -> tuple[str, str]:
    """(table name as stored, geometry column or '') of ``layer``; errors if it is not there."""
    has_contents = con.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gpkg_contents'"
    ).fetchone()
    if not has_contents:
        raise ValueError("not a GeoPackage (no gpkg_contents table)")
    row = con.execute(
        "SELECT table_name FROM gpkg_contents WHERE lower(table_name) = lower(?)", (layer,)
    ).fetchone()
    if row is None:
        raise ValueError(f"layer {layer!r} not found in the GeoPackage")
    table = row[0]
    geom = con.execute(
        "SELECT column_name FROM gpkg_geometry_columns WHERE lower(table_name) = lower(?)",
        (table,),
    ).fetchone()
    return table, (geom[0] if geom else "")


def _register_contents(con: sqlite3.Connection) -> None:
    """Register layer_styles in gpkg_contents as an attributes table (once), update its time."""
    exists = con.execute(
        "SELECT 1 FROM gpkg_contents WHERE lower(table_name) = 'layer_styles'"
    ).fetchone()
    if exists:
        con.execute(
            f"UPDATE gpkg_contents SET last_change = {NOW_SQL} "
            "WHERE lower(table_name) = 'layer_styles'"
        )
        return
    taken = con.execute(
        "SELECT 1 FROM gpkg_contents WHERE identifier = 'layer_styles'"
    ).fetchone()
    con.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, "
        f"last_change) VALUES ('layer_styles', 'attributes', ?, '', {NOW_SQL})",
        (None if taken else "layer_styles",),
    )


def _update_feature_count(con: sqlite3.Connection) -> None:
    """Keep GDAL's cached feature count (gpkg_ogr_contents) exact, where that table exists."""
    has_ogr = con.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gpkg_ogr_contents'"
    ).fetchone()
    if has_ogr:
        con.execute(
            "INSERT OR REPLACE INTO gpkg_ogr_contents (table_name, feature_count) "
            "VALUES ('layer_styles', (SELECT count(*) FROM layer_styles))"
        )
