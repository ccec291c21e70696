"""Config sections of the classic segmenters: the threshold index and the region / edge
segmenters (part of ``pipeline.config.RunConfig``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.section import Section


class ThresholdConfig(Section):
    """`stego fit --method threshold`: the per-pixel index multi-level Otsu thresholds."""

    index: Literal["brightness", "ndvi", "exg"] = Field(
        default="brightness", description="brightness (mean of the bands), ndvi (needs "
        "nir_band) or exg (excess green 2g-r-b; bands in R,G,B order)")
    nir_band: int | None = Field(default=None, description="ndvi: 1-based raster band of "
                                 "near-infrared (must be among input.bands)")
    red_band: int | None = Field(default=None, description="ndvi: 1-based raster band of red; "
                                 "null = the first of input.bands that is not nir_band")


class RegionsConfig(Section):
    """`stego fit --method region | edge`: how images are cut into regions."""

    tolerance: float = Field(default=0.1, gt=0, description="region: max colour distance "
                             "(bands in [0, 1]) of a pixel to its seed")
    seed_spacing: int = Field(default=12, ge=2, description="region: one seed (gradient "
                              "minimum) per cell of this many pixels")
    smoothing: float = Field(default=1.0, ge=0, description="Gaussian sigma (px) before the "
                             "Sobel gradient")
    edge_sigma: float = Field(default=1.5, gt=0, description="edge: Canny's Gaussian sigma")
    edge_closing: int = Field(default=1, ge=0, description="edge: edges dilated by a disk of "
                              "this radius to close gaps")
