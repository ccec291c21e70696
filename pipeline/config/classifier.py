"""Config section of the few-labels classifier: `stego fit --samples` (part of
``pipeline.config.RunConfig``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.config.section import Section


class ClassifierConfig(Section):
    """A classifier trained on the analyst's samples over per-pixel features (defaults: the
    best measured on Potsdam-3 with 20 points per class, benchmarks/few_labels.py)."""

    head: Literal["trees", "linear"] = Field(
        default="trees", description="trees: extremely randomized trees (scikit-learn "
        "ExtraTrees); linear: multinomial logistic regression on standardised features")
    trees: int = Field(default=100, ge=1, le=2000, description="trees in the ensemble")
    max_depth: int | None = Field(default=None, ge=1, description="tree depth limit; null: "
                                  "grown until pure")
    linear_c: float = Field(default=0.1, gt=0, description="linear: inverse L2 strength")
    local_radii: list[int] = Field(
        default=[2, 4, 8], description="local mean and standard deviation of each band in "
        "(2r+1)² windows, one pair per radius; [] for none")
    backbone_features: bool = Field(
        default=True, description="append the backbone's patch features (unit length, "
        "bilinearly upsampled to pixels)")
    holdout: float = Field(
        default=0.2, ge=0, lt=1, description="share of sample features (whole polygons or "
        "points, per class) held out to measure accuracy before the final fit on all")
    min_pixels_per_class: int = Field(default=3, ge=1,
                                      description="fewer labelled pixels in a class: an error")
    max_pixels_per_feature: int = Field(
        default=200, ge=1, description="pixels drawn from one polygon at most (seeded)")
    max_pixels: int = Field(default=100_000, ge=100,
                            description="labelled pixels used in all at most (seeded)")
    seed: int = Field(default=0, description="seeds the pixel draws, hold-out split and trees")

    @field_validator("local_radii")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(r < 1 for r in v):
            raise ValueError("radii must be positive integers")
        return sorted(set(v))
