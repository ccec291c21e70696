"""GDAL's PAM sidecar (``labels.tif.aux.xml``): category names and a thematic raster attribute
table (value, class name, colour, pixel count) that GDAL, QGIS and ArcGIS read with the COG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from pipeline.io.files import write_text_atomic

# GDALRATFieldType and GDALRATFieldUsage values (gdal.h)
GFT_INTEGER, GFT_REAL, GFT_STRING = 0, 1, 2
GFU_GENERIC, GFU_PIXEL_COUNT, GFU_NAME, GFU_MIN_MAX = 0, 1, 2, 5
GFU_RED, GFU_GREEN, GFU_BLUE = 6, 7, 8
RAT_FIELDS = [  # name, type, usage
    ("Value", GFT_INTEGER, GFU_MIN_MAX),
    ("Class_Name", GFT_STRING, GFU_NAME),
    ("Red", GFT_INTEGER, GFU_RED),
    ("Green", GFT_INTEGER, GFU_GREEN),
    ("Blue", GFT_INTEGER, GFU_BLUE),
    ("Count", GFT_REAL, GFU_PIXEL_COUNT),  # real: counts of large rasters exceed int32
]


def aux_path(raster: Path) -> Path:
    """The sidecar GDAL reads for ``raster`` (``labels.tif`` -> ``labels.tif.aux.xml``)."""
    return Path(f"{raster}.aux.xml")


def pam_xml(class_names: Sequence[str], colors: Sequence[tuple[int, int, int]],
            counts: Sequence[int]) -> str:
    """The PAM document for band 1: CategoryNames and a thematic GDALRasterAttributeTable."""
    if len(colors) < len(class_names) or len(counts) < len(class_names):
        raise ValueError("need a colour and a pixel count for every class")
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    cats = ET.SubElement(band, "CategoryNames")
    for name in class_names:
        ET.SubElement(cats, "Category").text = str(name)
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    for i, (name, ftype, usage) in enumerate(RAT_FIELDS):
        field = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(ftype)
        ET.SubElement(field, "Usage").text = str(usage)
    for value, name in enumerate(class_names):
        r, g, b = (int(c) for c in colors[value][:3])
        row = ET.SubElement(rat, "Row", index=str(value))
        for cell in (value, name, r, g, b, int(counts[value])):
            ET.SubElement(row, "F").text = str(cell)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def write_pam_sidecar(raster: Path, class_names: Sequence[str],
                      colors: Sequence[tuple[int, int, int]], counts: Sequence[int]) -> Path:
    """Write ``raster``'s ``.aux.xml`` (temporary name, then rename); return its path."""
    return write_text_atomic(aux_path(raster), pam_xml(class_names, colors, counts))
