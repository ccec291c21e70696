"""GDAL's PAM files: the COG's sidecar (``labels.tif.aux.xml``: category names and a thematic
raster attribute table of value, class name, colour and pixel count that GDAL, QGIS and ArcGIS
read with the COG) and the Zarr store's multidimensional one (``pam.aux.xml``: the CRS)."""

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


def multidim_pam_xml(crs_wkt: str, arrays: Sequence[str]) -> str:
    """GDAL's multidimensional PAM document (``<store>/pam.aux.xml`` for the Zarr driver) giving
    each 2-D ``(y, x)`` array in ``arrays`` the CRS and its axis-to-dimension mapping.

    GDAL before 3.9 ignores the CF ``grid_mapping``, and GDAL 3.6 (Debian 12) reads a ``_CRS``
    attribute with the CRS's first axis on the array's first dimension: a ``(y, x)`` array in
    easting/northing lands on swapped coordinates (an EPSG:25833 scene near Potsdam at 58 E
    2.4 N). GDAL reads the SRS of this file only where the array has no ``_CRS``, with the
    mapping as written: for each CRS axis, the (1-based) array dimension it runs along
    (easting/longitude on ``x``, the second dimension).
    """
    from pyproj import CRS

    crs = CRS.from_user_input(crs_wkt)
    along_x = [a.direction in ("east", "west") for a in crs.axis_info[:2]]
    if len(set(along_x)) < 2:  # polar axes ("north along 90E", ...): go by the axis names
        along_x = [a.name.lower().startswith(("east", "lon", "x")) or a.abbrev in ("E", "X")
                   for a in crs.axis_info[:2]]
    dims = ["2" if x else "1" for x in along_x] if len(set(along_x)) == 2 else ["2", "1"]
    root = ET.Element("PAMDataset")
    for name in arrays:
        array = ET.SubElement(root, "Array", name=f"/{name}")
        srs = ET.SubElement(array, "SRS", dataAxisToSRSAxisMapping=",".join(dims))
        srs.text = crs.to_wkt("WKT2_2019")
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"
