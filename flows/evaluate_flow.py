"""The `evaluate` flow: Hungarian-matched accuracy and mIoU of predictions against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from pipeline.evaluation import EvalPair, evaluate, write_evaluation


@task(name="confusion")
def confusion(pairs: list[EvalPair], mapping: str | None, ignore: list[int],
              class_field: str | None) -> dict[str, Any]:
    """Accumulate the dataset-level confusion matrix block by block and score it."""
    return evaluate(pairs, mapping=mapping, ignore=ignore, class_field=class_field)


@task(name="write-report")
def report(metrics: dict[str, Any], pairs: list[EvalPair], out_dir: str) -> dict[str, str]:
    """metrics.json, confusion.png and preview.png."""
    return {k: str(v) for k, v in write_evaluation(metrics, pairs, Path(out_dir)).items()}


@flow(name="evaluate")
def evaluate_flow(pairs: list[tuple[str, str]], out_dir: str, mapping: str | None = None,
                  ignore: list[int] | None = None, image: str | None = None,
                  class_field: str | None = None) -> dict[str, Any]:
    """Score PRED/GT pairs the way STEGO does and write the report."""
    eval_pairs = [EvalPair(p, g, image if i == 0 else None) for i, (p, g) in enumerate(pairs)]
    metrics = confusion(eval_pairs, mapping, list(ignore or []), class_field)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    files = report(metrics, eval_pairs, out_dir)
    return {"metrics": metrics, "files": files}
