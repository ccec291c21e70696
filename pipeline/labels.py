"""The label raster's conventions, shared by the writers and readers: the nodata value and
the result of one block."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.tiling import Block

NODATA = 255


@dataclass
class BlockOutput:
    """Labels and confidence for a block core, plus small statistics."""

    block: Block
    labels: np.ndarray  # uint8 (h, w), 255 = nodata
    confidence: np.ndarray  # uint8 (h, w), max probability * 255
    stats: dict = field(default_factory=dict)
