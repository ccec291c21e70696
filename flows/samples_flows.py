"""Flows of the few-labels loop after `fit --samples` and `segment`: accuracy against
validation samples (`stego evaluate RUN --samples`) and where to label next (`stego suggest`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from pipeline.evaluation.sample_eval import evaluate_samples, write_accuracy
from pipeline.evaluation.suggest import read_run_blocks, suggest_points
from pipeline.publish.suggestions import write_suggestions


@task(name="score-samples")
def score_samples(run: str, samples: list[str], class_field: str | None,
                  class_table: str | None, design: str) -> dict[str, Any]:
    """The map's class at each validation sample, and the accuracy report."""
    return evaluate_samples(run, samples, class_field, class_table, design)


@flow(name="evaluate-samples")
def evaluate_samples_flow(run: str, samples: list[str], out_dir: str,
                          class_field: str | None = None, class_table: str | None = None,
                          design: str = "none") -> dict[str, Any]:
    """Accuracy of a segment run against validation samples; accuracy.json and .md."""
    report = score_samples(run, samples, class_field, class_table, design)
    for w in report["warnings"]:
        get_run_logger().warning(w)
    return {"report": report, "files": write_accuracy(report, Path(out_dir))}


@flow(name="suggest")
def suggest_flow(run: str, out: str, n: int = 30, seed: int = 0,
                 class_field: str = "class", interior: int = 3) -> dict[str, Any]:
    """Points where the run's model is least certain (smallest margin between its two most
    probable classes), spread over the scene and the
    predicted classes, as a GeoPackage with an empty class field and a QGIS style."""
    rb = read_run_blocks(Path(run))
    points = suggest_points(rb.blocks(), rb.height, rb.width, len(rb.class_names), n,
                            seed=seed, class_names=rb.class_names, interior=interior,
                            measure=rb.measure)
    # ranked by the top-two margin; the layer's confidence is the winning probability
    points.confidence = rb.confidence_at(points.rows, points.cols)
    path = write_suggestions(Path(out), points, rb.class_names, rb.colors, rb.crs_wkt,
                             rb.transform, class_field=class_field)
    per_class: dict[str, int] = {}
    for k in points.predicted.tolist():
        per_class[rb.class_names[k]] = per_class.get(rb.class_names[k], 0) + 1
    return {"path": str(path), "points": len(points), "candidates": points.candidates,
            "per_predicted_class": per_class,
            "mean_confidence": float(points.confidence.mean()) if len(points) else None}
