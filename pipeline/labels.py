"""The label raster's conventions, shared by the writers and readers: the nodata value and
the result of one block."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.tiling import Block

NODATA = 255
# confidence = round(max class probability x 254): 0..254, so 255 is nodata as in the labels
# and the two arrays share one nodata value (one multi-band GeoTIFF, one xarray mask)
CONFIDENCE_SCALE = 254


@dataclass
class BlockOutput:
    """Labels and confidence for a block core, plus small statistics."""

    block: Block
    labels: np.ndarray  # uint8 (h, w), 255 = nodata
    confidence: np.ndarray  # uint8 (h, w), max probability * 254, 255 = nodata
    stats: dict = field(default_factory=dict)
    # uint8 (h, w): winning minus runner-up probability * 254, 255 = nodata (None: not made)
    margin: np.ndarray | None = None
