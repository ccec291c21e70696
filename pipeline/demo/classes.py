"""The demo scene's classes: names, label ids and legend colours of its true labels, and the
label value of nodata pixels."""

from __future__ import annotations

DEMO_CLASSES: list[str] = ["road", "building", "tree", "grass", "car"]
DEMO_COLORS: list[tuple[int, int, int]] = [
    (128, 128, 128),  # road: grey
    (205, 45, 40),  # building: red
    (25, 100, 35),  # tree: dark green
    (150, 220, 100),  # grass: light green
    (250, 210, 0),  # car: yellow
]
NODATA_LABEL = 255

ROAD, BUILDING, TREE, GRASS, CAR = range(5)
