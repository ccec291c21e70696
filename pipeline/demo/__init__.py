"""Procedural demo scene: an aerial-like 5 cm RGB orthophoto of a suburb (roads, roofs, trees,
lawns, cars, shadows, a nodata collar) and its true labels, written as GeoTIFFs."""

from pipeline.demo.classes import DEMO_CLASSES, DEMO_COLORS, NODATA_LABEL
from pipeline.demo.grid import DEMO_CRS, DEMO_ORIGIN, DEMO_PIXEL_SIZE, MIN_SIZE
from pipeline.demo.scene import generate_demo_arrays
from pipeline.demo.write import labels_path_for, write_demo_scene

__all__ = [
    "DEMO_CLASSES",
    "DEMO_COLORS",
    "DEMO_CRS",
    "DEMO_ORIGIN",
    "DEMO_PIXEL_SIZE",
    "MIN_SIZE",
    "NODATA_LABEL",
    "generate_demo_arrays",
    "labels_path_for",
    "write_demo_scene",
]
