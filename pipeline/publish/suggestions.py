"""The active-learning suggestions as a GeoPackage point layer the analyst labels in QGIS.

One point per suggested pixel (at the pixel centre, in the run's CRS) with an empty class
field to fill in, the predicted class, its confidence, an id and why it was chosen. The layer's
default style (``layer_styles``, plus a ``.qml`` sidecar) draws points still to label as a
bright marker and labelled ones in their class colour, labels them with their id, and makes the
class field a drop-down ("ValueMap" editor widget) of the run's class names. The GeoPackage is
built under a temporary name and renamed into place, so the final path never holds a
half-written file.
"""

from __future__ import annotations

import os
import struct
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pyogrio
from affine import Affine

from pipeline.io.files import write_text_atomic
from pipeline.publish.gis_styles import (
    QGIS_VERSION,
    _qgis_color,
    _serialize,
    add_gpkg_layer_style,
    symbol_element,
)

TO_LABEL_RGB = (255, 0, 255)  # magenta: stands out on imagery and on every class palette
MARKER_MM = 3.2
READ_ONLY = ("id", "predicted", "confidence", "reason", "x", "y", "row", "col")


class PointSet(Protocol):
    """What is written per point (e.g. ``pipeline.evaluation.suggest.SuggestedPoints``)."""

    rows: np.ndarray
    cols: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    reason: list[str]


# --------------------------------------------------------------------------------------------
# QML


def suggestions_qml(
    class_names: Sequence[str], colors: Sequence[tuple[int, int, int]], class_field: str = "class"
) -> str:
    """QGIS style of the point layer: categorized on ``class_field`` (unlabelled points in a
    bright marker), labelled with ``id``, ``class_field`` edited with a class drop-down."""
    names = [str(n) for n in class_names]
    if len(colors) < len(names):
        raise ValueError(f"{len(names)} class names but only {len(colors)} colours")
    root = ET.Element("qgis", {"version": QGIS_VERSION, "styleCategories": "AllStyleCategories",
                               "labelsEnabled": "1"})
    renderer = ET.SubElement(root, "renderer-v2", {
        "type": "categorizedSymbol", "attr": class_field, "forceraster": "0",
        "symbollevels": "0", "enableorderby": "0", "referencescale": "-1",
    })
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, name in enumerate(names):
        ET.SubElement(categories, "category", {"value": name, "type": "string",
                                               "symbol": str(i), "label": name, "render": "true"})
        symbols.append(_marker(str(i), tuple(int(v) for v in colors[i][:3]), MARKER_MM * 0.8))
    # the empty value is QGIS's "all other values" category: NULL, i.e. not labelled yet
    other = str(len(names))
    ET.SubElement(categories, "category", {"value": "", "type": "string", "symbol": other,
                                           "label": "to label", "render": "true"})
    symbols.append(_marker(other, TO_LABEL_RGB, MARKER_MM))
    ET.SubElement(renderer, "source-symbol").append(_marker("0", TO_LABEL_RGB, MARKER_MM))
    ET.SubElement(renderer, "rotation")
    ET.SubElement(renderer, "sizescale")
    _labeling(root)
    _fields(root, names, class_field)
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "featureBlendMode").text = "0"
    ET.SubElement(root, "layerOpacity").text = "1"
    ET.SubElement(root, "displayfield").text = "id"
    ET.SubElement(root, "layerGeometryType").text = "0"  # point
    return _serialize(root)


def _marker(name: str, rgb: Sequence[int], size_mm: float) -> ET.Element:
    """A marker symbol with one SimpleMarker layer: a filled circle with a black outline."""
    props = {
        "angle": "0", "color": _qgis_color(rgb), "horizontal_anchor_point": "1",
        "joinstyle": "bevel", "name": "circle", "offset": "0,0", "offset_unit": "MM",
        "outline_color": "0,0,0,255", "outline_style": "solid", "outline_width": "0.4",
        "outline_width_unit": "MM", "scale_method": "diameter", "size": f"{size_mm:g}",
        "size_unit": "MM", "vertical_anchor_point": "1",
    }
    return symbol_element("marker", "SimpleMarker", name, props)


def _labeling(root: ET.Element) -> None:
    """Simple labels from the ``id`` field: bold, with a white buffer, beside the point."""
    labeling = ET.SubElement(root, "labeling", {"type": "simple"})
    settings = ET.SubElement(labeling, "settings", {"calloutType": "simple"})
    style = ET.SubElement(settings, "text-style", {
        "fieldName": "id", "isExpression": "0", "fontSize": "10", "fontSizeUnit": "Point",
        "fontWeight": "75", "textColor": "0,0,0,255", "textOpacity": "1", "namedStyle": "Bold",
        "blendMode": "0", "multilineHeight": "1", "previewBkgrdColor": "255,255,255,255",
    })
    ET.SubElement(style, "text-buffer", {
        "bufferDraw": "1", "bufferSize": "1", "bufferSizeUnits": "MM",
        "bufferColor": "255,255,255,255", "bufferOpacity": "1", "bufferNoFill": "1",
        "bufferJoinStyle": "128", "bufferBlendMode": "0",
    })
    ET.SubElement(settings, "text-format", {"multilineAlign": "3", "wrapChar": "",
                                            "formatNumbers": "0"})
    ET.SubElement(settings, "placement", {
        "placement": "6", "dist": "1", "distUnits": "MM", "quadOffset": "2",
        "predefinedPositionOrder": "TR,TL,BR,BL,R,L,TSR,BSR", "priority": "5",
    })
    ET.SubElement(settings, "rendering", {
        "drawLabels": "1", "obstacle": "1", "obstacleType": "1", "displayAll": "1",
        "scaleVisibility": "0", "upsidedownLabels": "0",
    })


def _fields(root: ET.Element, names: Sequence[str], class_field: str) -> None:
    """The class field as a drop-down of the class names; the other fields read-only."""
    config = ET.SubElement(root, "fieldConfiguration")
    field = ET.SubElement(config, "field", {"name": class_field, "configurationFlags": "None"})
    widget = ET.SubElement(field, "editWidget", {"type": "ValueMap"})
    options = ET.SubElement(ET.SubElement(widget, "config"), "Option", {"type": "Map"})
    values = ET.SubElement(options, "Option", {"name": "map", "type": "List"})
    for name in names:  # a list of one-entry maps keeps the classes in their order
        entry = ET.SubElement(values, "Option", {"type": "Map"})
        ET.SubElement(entry, "Option", {"name": name, "type": "QString", "value": name})
    aliases = ET.SubElement(root, "aliases")
    ET.SubElement(aliases, "alias", {"field": class_field, "name": "class (pick one)"})
    editable = ET.SubElement(root, "editable")
    ET.SubElement(editable, "field", {"name": class_field, "editable": "1"})
    for name in READ_ONLY:
        ET.SubElement(editable, "field", {"name": name, "editable": "0"})


# --------------------------------------------------------------------------------------------
# the GeoPackage


def _point_wkb(x: np.ndarray, y: np.ndarray) -> list[bytes]:
    """ISO WKB points (little endian)."""
    return [struct.pack("<BIdd", 1, 1, float(a), float(b)) for a, b in zip(x, y, strict=True)]


def write_suggestions(
    path: Path,
    points: PointSet,
    class_names: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    crs_wkt: str | None,
    transform: Affine,
    class_field: str = "class",
    layer: str = "suggestions",
) -> Path:
    """Write ``points`` as a styled GeoPackage point layer at ``path`` (+ a ``.qml`` sidecar).

    Fields: ``id`` (1 = most useful), ``class_field`` (empty, for the analyst), ``predicted``
    (class name), ``confidence`` (0..1), ``reason``, ``x``/``y`` (pixel centre, map units of
    ``crs_wkt``) and ``row``/``col`` (pixel). Returns ``path``.
    """
    import pyarrow as pa  # here, not at import: `stego` starts without it

    path = Path(path)
    if path.suffix.lower() != ".gpkg":
        raise ValueError(f"the suggestions are a GeoPackage: {path} must end in .gpkg")
    if class_field in READ_ONLY or not class_field:
        raise ValueError(f"class_field {class_field!r} clashes with a field of the layer")
    names = [str(n) for n in class_names]
    qml = suggestions_qml(names, colors, class_field)
    rows = np.asarray(points.rows, dtype=np.int64)
    cols = np.asarray(points.cols, dtype=np.int64)
    predicted = np.asarray(points.predicted, dtype=np.int64)
    if len(predicted) and (predicted.min() < 0 or predicted.max() >= len(names)):
        raise ValueError(f"predicted classes must be 0..{len(names) - 1}")
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    x = a * (cols + 0.5) + b * (rows + 0.5) + c  # pixel centres in map units
    y = d * (cols + 0.5) + e * (rows + 0.5) + f
    n = len(rows)
    table = pa.table({
        "id": pa.array(np.arange(1, n + 1, dtype=np.int32)),
        class_field: pa.nulls(n, type=pa.string()),
        "predicted": pa.array([names[int(c)] for c in predicted], type=pa.string()),
        "confidence": pa.array(np.asarray(points.confidence, dtype=np.float64)),
        "reason": pa.array([str(r) for r in points.reason], type=pa.string()),
        "x": pa.array(x), "y": pa.array(y),
        "row": pa.array(rows.astype(np.int32)), "col": pa.array(cols.astype(np.int32)),
        "geometry": pa.array(_point_wkb(x, y), type=pa.binary()),
    })
    write_text_atomic(path.with_suffix(".qml"), qml)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        _remove_with_journals(tmp)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
            pyogrio.write_arrow(table, str(tmp), layer=layer, driver="GPKG",
                                geometry_name="geometry", geometry_type="Point", crs=crs_wkt)
        add_gpkg_layer_style(tmp, layer, qml, style_name="stego suggestions")
        os.replace(tmp, path)
    finally:
        _remove_with_journals(tmp)
    return path


def _remove_with_journals(db: Path) -> None:
    """Remove a SQLite file and the journal files SQLite may leave beside it."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
