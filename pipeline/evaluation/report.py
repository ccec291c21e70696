"""The evaluation's files: metrics.json, confusion.png and preview.png (image | prediction |
ground truth), each written atomically."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.evaluation.ground_truth import open_gt
from pipeline.evaluation.mapping import _json_key
from pipeline.evaluation.metrics import _pred_codes
from pipeline.evaluation.pairs import EvalPair
from pipeline.evaluation.readers import Overlap, PredReader, _open_rasterio, align
from pipeline.io.files import write_atomic

if TYPE_CHECKING:
    from PIL import Image


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_evaluation(metrics: dict[str, Any], pairs: list[EvalPair],
                     out_dir: Path) -> dict[str, Path]:
    """Write ``metrics.json``, ``confusion.png`` and ``preview.png`` (first pair), atomically."""
    from pipeline.evaluation import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_clean(metrics), indent=2)
    out = {"metrics": write_atomic(out_dir / "metrics.json",
                                    lambda p: p.write_text(text + "\n"))}
    conf = plots.confusion_image(metrics)
    out["confusion"] = write_atomic(out_dir / "confusion.png",
                                     lambda p: conf.save(p, format="PNG"))
    if pairs:
        prev = preview_image(metrics, pairs[0])
        out["preview"] = write_atomic(out_dir / "preview.png",
                                       lambda p: prev.save(p, format="PNG"))
    return out


def _read_image_rgb(path: str, pred: PredReader, o: Overlap,
                    out_shape: tuple[int, int]) -> np.ndarray:
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    ds = _open_rasterio(path)
    try:
        io = align(pred, path, ds.transform, ds.crs, (ds.height, ds.width), what="image")
        # The image window that covers PRED's evaluated window (boundless where it lacks data).
        win = Window(io.other_col - io.col + o.col, io.other_row - io.row + o.row,
                     o.width, o.height)
        bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
        with warnings.catch_warnings():  # rasterio's boundless path uses Affine's `*`
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            data = ds.read(bands, window=win, out_shape=(3, *out_shape), boundless=True,
                           fill_value=0, resampling=Resampling.nearest)
    finally:
        ds.close()
    if data.dtype != np.uint8:
        data = data.astype(np.float64)
        out = np.zeros(data.shape, dtype=np.uint8)
        for b in range(3):
            band = data[b]
            ok = np.isfinite(band) & (band != 0)
            if ok.any():
                lo, hi = np.percentile(band[ok], [2, 98])
                scaled = (band - lo) / max(hi - lo, 1e-12) * 255
                out[b] = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
        data = out
    return np.moveaxis(data, 0, -1)


def preview_image(metrics: dict[str, Any], pair: EvalPair, max_width: int = 1024) -> Image.Image:
    """image | prediction | ground truth (GT coloured by the matched clusters' colours)."""
    from pipeline.evaluation import plots

    pred = PredReader(pair.pred)
    try:
        field_name = None
        for inp in metrics.get("inputs", []):
            if inp.get("pred") == str(pair.pred) and inp.get("gt") == str(pair.gt):
                field_name = inp.get("class_field")
                break
        gt = open_gt(str(pair.gt), pred, field_name)
        try:
            o = gt.overlap
            panels = 3 if pair.image else 2
            gap = 8
            panel_w = (max_width - 16 - gap * (panels - 1)) // panels
            scale = min(panel_w / o.width, 640 / o.height)
            out_w, out_h = max(1, round(o.width * scale)), max(1, round(o.height * scale))
            read_shape = (min(o.height, out_h), min(o.width, out_w))
            p = _pred_codes(pred.read_decimated(o.row, o.row + o.height, o.col, o.col + o.width,
                                                read_shape), pred.nodata, pair.pred)
            g, g_invalid = gt.read_decimated(read_shape)
            image = _read_image_rgb(str(pair.image), pred, o, read_shape) if pair.image else None
            class_of = {(_json_key(e["value"]) if e["value"] is not None else None): e["class"]
                        for e in metrics.get("gt_values", [])}
            classes = metrics["classes"]
            gt_cls = np.full(g.shape, -1, dtype=np.int32)
            for code in np.unique(g).tolist():
                name = class_of.get(_json_key(gt.key(code)))
                if name is None and not isinstance(gt.key(code), str):
                    name = class_of.get(str(gt.key(code)))
                if name is not None:
                    gt_cls[g == code] = classes.index(name)
            if g_invalid is not None:
                gt_cls[g_invalid] = -1
        finally:
            gt.close()
        colors = metrics.get("cluster_colors") or [list(c) for c in pred.colors or []]
    finally:
        pred.close()
    n_clusters = len(metrics["clusters"])
    if len(colors) < n_clusters:
        from pipeline.models.base import default_colors

        colors = list(colors) + [list(c) for c in default_colors(n_clusters)[len(colors):]]
    return plots.preview_panels(
        metrics, pred=p, gt_classes=gt_cls, image=image,
        cluster_colors=[tuple(int(v) for v in c[:3]) for c in colors],
        size=(out_w, out_h), gap=gap,
    )
