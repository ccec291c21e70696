"""Accuracy of a map against validation samples (points or polygons, as `fit --samples`
reads them): the error matrix, user's / producer's accuracy, F1 and, for a random sample,
area-weighted accuracy and class areas with 95 % intervals (Olofsson et al. 2014)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.accuracy import sample_accuracy
from pipeline.errors import InputError
from pipeline.evaluation.readers import PredReader
from pipeline.io.files import write_json_atomic, write_text_atomic
from pipeline.io.raster import RasterInfo
from pipeline.io.samples import parse_sample_spec, read_samples
from pipeline.labels import NODATA

STRIP = 1024  # rows of the map read at a time


def resolve_map(path: str | Path) -> tuple[Path, dict[str, Any] | None]:
    """The label raster of a segment run directory (labels.tif, else labels.zarr) or the
    path itself, and the run's run.json when there is one."""
    p = Path(path)
    if p.is_dir() and p.suffix != ".zarr":
        run = p / "run.json"
        doc = json.loads(run.read_text()) if run.is_file() else None
        for name in ("labels.tif", "labels.zarr"):
            if (p / name).exists():
                return p / name, doc
        raise InputError(p, "no labels.tif or labels.zarr (is this a `stego segment` output?)")
    if not p.exists():
        raise InputError(p, "not found")
    run = p.parent / "run.json"
    return p, json.loads(run.read_text()) if run.is_file() else None


def _pred_info(pred: PredReader) -> RasterInfo:
    crs = pred.crs.to_wkt() if pred.crs is not None else None
    return RasterInfo(pred.path, pred.width, pred.height, 1, str(pred.dtype), (1,),
                      tuple(pred.transform)[:6], crs, float(NODATA))


def map_values(pred: PredReader, rows: np.ndarray, cols: np.ndarray, n_classes: int,
               ) -> tuple[np.ndarray, np.ndarray]:
    """The map's class at each (row, col) and the pixels mapped as each class (read in
    strips of rows: bounded memory on any map size)."""
    values = np.full(len(rows), NODATA, dtype=np.int64)
    counts = np.zeros(n_classes, dtype=np.int64)
    for r0 in range(0, pred.height, STRIP):
        r1 = min(pred.height, r0 + STRIP)
        strip = pred.read(r0, r1, 0, pred.width).astype(np.int64)
        ok = (strip >= 0) & (strip < n_classes)
        counts += np.bincount(strip[ok], minlength=n_classes)[:n_classes]
        sel = (rows >= r0) & (rows < r1)
        values[sel] = strip[rows[sel] - r0, cols[sel]]
    return values, counts


def evaluate_samples(
    map_path: str | Path, samples: list[str], class_field: str | None = None,
    class_table: str | None = None, design: str = "none",
) -> dict[str, Any]:
    """Score the map at every validation sample pixel. Map and reference classes are matched
    by name (case-insensitive); reference classes the map lacks get a column of their own."""
    path, run = resolve_map(map_path)
    pred = PredReader(path)
    try:
        names = list(pred.class_names or (run or {}).get("model", {}).get("class_names") or [])
        if not names:
            raise InputError(path, "the map has no class names (not a `stego segment` output?)")
        sset = read_samples([parse_sample_spec(s) for s in samples], [_pred_info(pred)],
                            class_field, class_table=class_table, min_pixels_per_class=1)
        rs = sset.per_raster[0]
        values, mapped = map_values(pred, rs.rows, rs.cols, len(names))
    finally:
        pred.close()
    lower = {n.lower(): i for i, n in enumerate(names)}
    classes = list(names)
    ref = np.empty(len(rs.classes), dtype=np.int64)
    for k, name in enumerate(sset.classes.names):
        if name.lower() not in lower:
            lower[name.lower()] = len(classes)
            classes.append(name)
        ref[rs.classes == k] = lower[name.lower()]
    on_map = values < len(names)
    q = len(classes)
    counts = np.zeros((q, q), dtype=np.int64)
    np.add.at(counts, (values[on_map], ref[on_map]), 1)
    mapped_all = np.concatenate([mapped, np.zeros(q - len(names), dtype=np.int64)])
    t = pred.transform
    pixel_area = abs(t.a * t.e - t.b * t.d) if pred.georeferenced else None
    report = sample_accuracy(counts, classes, mapped_pixels=mapped_all,
                             pixel_area=pixel_area, design=design)
    unmatched = [n for n in classes[len(names):]]
    if unmatched:
        report["warnings"].append(f"reference classes absent from the map: "
                                  f"{', '.join(unmatched)} (every sample of them is an error)")
    if not on_map.all():
        report["warnings"].append(f"{int((~on_map).sum())} sample pixels on the map's nodata "
                                  "were left out")
    report.update(map=str(path), samples=sset.sources, sample_pixels=int(on_map.sum()),
                  sample_features=int(len(np.unique(rs.groups[on_map]))),
                  sample_warnings=list(sset.warnings))
    return report


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def accuracy_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables: error matrix, per-class accuracy, area estimates."""
    names = [c["name"] for c in report["classes"]]
    lines = [f"# Accuracy of {report['map']}", "",
             f"{report['n']} sample units, overall accuracy {_pct(report['overall_accuracy'])} %"
             f" (design: {report['design']})", "", "## Error matrix (rows: map, columns: "
             "reference)", "", "| map \\ reference | " + " | ".join(names) + " | total |",
             "|---" * (len(names) + 2) + "|"]
    for name, row in zip(names, report["confusion"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + f" | {sum(row)} |")
    lines += ["", "## Per class", "", "| class | user's % | producer's % | F1 % | map samples "
              "| reference samples |", "|---|---|---|---|---|---|"]
    for c in report["classes"]:
        lines.append(f"| {c['name']} | {_pct(c['users_accuracy'])} | "
                     f"{_pct(c['producers_accuracy'])} | {_pct(c['f1'])} | {c['map_samples']} "
                     f"| {c['reference_samples']} |")
    aw = report.get("area_weighted")
    if aw:
        oa = aw["overall_accuracy"]
        lines += ["", "## Area-weighted (Olofsson et al. 2014), 95 % intervals", "",
                  f"Overall accuracy {_ci(oa)}", "", "| class | map share % | user's % | "
                  "producer's % | area share % | area |", "|---|---|---|---|---|---|"]
        for c in aw["classes"]:
            area = c.get("area") or c.get("area_pixels")
            lines.append(f"| {c['name']} | {_pct(c['map_proportion'])} | "
                         f"{_ci(c['users_accuracy'])} | {_ci(c['producers_accuracy'])} | "
                         f"{_ci(c['area_proportion'])} | {_ci(area, 1.0)} |")
    if report.get("note"):
        lines += ["", report["note"]]
    lines += [f"- {w}" for w in report["warnings"] + report.get("sample_warnings", [])]
    return "\n".join(lines) + "\n"


def _ci(est: dict[str, Any] | None, scale: float = 100.0) -> str:
    if not est or est.get("estimate") is None:
        return "-"
    e = est["estimate"] * scale
    m = est.get("margin95")
    fmt = "{:.1f}" if scale == 100.0 else "{:,.0f}"
    return fmt.format(e) + ("" if m is None else " ± " + fmt.format(m * scale))


def write_accuracy(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """accuracy.json and accuracy.md in ``out_dir`` (temporary names, then renamed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"accuracy": str(write_json_atomic(out_dir / "accuracy.json", report)),
            "report": str(write_text_atomic(out_dir / "accuracy.md",
                                            accuracy_markdown(report)))}
