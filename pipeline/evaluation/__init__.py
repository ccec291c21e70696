"""Evaluation of unsupervised label maps against ground truth, as STEGO scores them.

One confusion matrix (clusters x classes) over all PRED/GT pairs, counted block by block, then
clusters matched to classes by the Hungarian assignment; the ground truth is a class-index raster
aligned with PRED or a polygon layer rasterized onto PRED's grid. ``plots`` (Pillow) is imported
only when images are drawn.
"""

from __future__ import annotations

from pipeline.evaluation.ground_truth import (
    CLASS_FIELD_NAMES,
    VECTOR_SUFFIXES,
    RasterGT,
    VectorGT,
    open_gt,
)
from pipeline.evaluation.mapping import (
    BACKGROUND,
    IGNORE,
    POTSDAM3,
    POTSDAM6,
    Mapping,
    load_mapping,
)
from pipeline.evaluation.metrics import hungarian_metrics
from pipeline.evaluation.naming import (
    cluster_names_from_file,
    cluster_names_from_metrics,
    parse_color,
    rename_model_classes,
)
from pipeline.evaluation.pairs import EvalPair, evaluate
from pipeline.evaluation.readers import Overlap, PredReader, align
from pipeline.evaluation.report import preview_image, write_evaluation
from pipeline.labels import NODATA

__all__ = [
    "BACKGROUND",
    "CLASS_FIELD_NAMES",
    "IGNORE",
    "NODATA",
    "POTSDAM3",
    "POTSDAM6",
    "VECTOR_SUFFIXES",
    "EvalPair",
    "Mapping",
    "Overlap",
    "PredReader",
    "RasterGT",
    "VectorGT",
    "align",
    "cluster_names_from_file",
    "cluster_names_from_metrics",
    "evaluate",
    "hungarian_metrics",
    "load_mapping",
    "open_gt",
    "parse_color",
    "preview_image",
    "rename_model_classes",
    "write_evaluation",
]
