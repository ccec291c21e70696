"""Pillow drawings for ``stego evaluate``: the confusion matrix and the side-by-side preview."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Color = tuple[int, int, int]
NODATA_COLOR: Color = (0, 0, 0)
# Colours for classes no cluster was matched to (they have no cluster colour to borrow).
UNMATCHED_COLORS: list[Color] = [(255, 255, 255), (160, 160, 160), (96, 64, 32), (255, 0, 255),
                                 (0, 255, 255), (255, 255, 0), (64, 64, 64), (0, 128, 128)]
LOW: Color = (255, 255, 255)
HIGH: Color = (8, 48, 107)


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(font: Any, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right - left), int(bottom - top)


def _vertical_text(text: str, font: Any, fill: Color) -> Image.Image:
    w, h = _text_size(font, text)
    img = Image.new("RGBA", (w + 4, h + 6), (255, 255, 255, 0))
    ImageDraw.Draw(img).text((2, 1), text, font=font, fill=fill)
    return img.rotate(90, expand=True)


def _shade(frac: float) -> Color:
    f = min(max(frac, 0.0), 1.0)
    return tuple(int(round(lo + (hi - lo) * f)) for lo, hi in zip(LOW, HIGH, strict=True))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def cluster_order(metrics: dict[str, Any]) -> list[int]:
    """Clusters matched to classes, in class order, then the unmatched ones."""
    by_class = {name: int(k) for k, name in metrics["matching"].items()}
    order = [by_class[c] for c in metrics["classes"] if c in by_class]
    return order + [k for k in range(len(metrics["clusters"])) if k not in order]


def confusion_image(metrics: dict[str, Any]) -> Image.Image:
    """Rows: classes; columns: clusters (matched first). Cells: % of the class's pixels."""
    m = np.asarray(metrics["confusion"]["matrix"], dtype=np.float64)  # clusters x classes
    classes: list[str] = list(metrics["classes"])
    clusters: list[str] = list(metrics["clusters"])
    order = cluster_order(metrics)
    matched = {int(k): name for k, name in metrics["matching"].items()}
    totals = m.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(totals[None, :] > 0, 100.0 * m / totals[None, :], np.nan).T  # class x k
    font, bold = _font(12), _font(13)
    cell_w = max(52, _text_size(font, "100.0")[0] + 14)
    cell_h = 26
    row_labels = [f"{c}  ({int(t):,} px)" for c, t in zip(classes, totals, strict=True)]
    col_labels = [f"{k}: {clusters[k]}" + ("" if k in matched else " (unmatched)")
                  for k in order] + ["IoU %"]
    left = max(_text_size(font, t)[0] for t in row_labels) + 16
    top_labels = [_vertical_text(t, font, (0, 0, 0)) for t in col_labels]
    title = "Confusion: % of each class's pixels in each cluster (matched cells outlined)"
    sub = (f"accuracy {_fmt(metrics.get('accuracy'))} %   mIoU {_fmt(metrics.get('mIoU'))} %   "
           f"STEGO variant: {_fmt(metrics['stego_variant'].get('accuracy'))} / "
           f"{_fmt(metrics['stego_variant'].get('mIoU'))} %")
    head = 2 * 20 + 8
    label_h = max(im.height for im in top_labels) + 6
    ncols = len(order) + 1
    width = max(left + ncols * cell_w + 16, _text_size(bold, title)[0] + 24,
                _text_size(font, sub)[0] + 24)
    height = head + label_h + len(classes) * cell_h + 16
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((12, 6), title, font=bold, fill=(0, 0, 0))
    draw.text((12, 26), sub, font=font, fill=(60, 60, 60))
    y0 = head + label_h
    for i, im in enumerate(top_labels):
        x = left + i * cell_w + (cell_w - im.width) // 2
        img.paste(im, (x, y0 - im.height - 4), im)
    iou = metrics.get("per_class_iou", {})
    for r, cls in enumerate(classes):
        y = y0 + r * cell_h
        tw, th = _text_size(font, row_labels[r])
        draw.text((left - 8 - tw, y + (cell_h - th) // 2 - 2), row_labels[r], font=font,
                  fill=(0, 0, 0))
        for ci, k in enumerate(order):
            x = left + ci * cell_w
            v = pct[r, k]
            fill = _shade(0.0 if np.isnan(v) else v / 100.0)
            draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=fill,
                           outline=(220, 220, 220))
            text = "-" if np.isnan(v) else f"{v:.1f}"
            color = (255, 255, 255) if not np.isnan(v) and v > 55 else (0, 0, 0)
            tw, th = _text_size(font, text)
            draw.text((x + (cell_w - tw) // 2, y + (cell_h - th) // 2 - 2), text, font=font,
                      fill=color)
            if matched.get(k) == cls:
                draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], outline=(220, 30, 30),
                               width=2)
        x = left + len(order) * cell_w
        draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=(245, 245, 245),
                       outline=(220, 220, 220))
        text = _fmt(iou.get(cls))
        tw, th = _text_size(font, text)
        draw.text((x + (cell_w - tw) // 2, y + (cell_h - th) // 2 - 2), text, font=font,
                  fill=(0, 0, 0))
    return img


def _colorize(codes: np.ndarray, colors: Sequence[Color], fallback: Color) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = fallback
    for i, c in enumerate(colors[:255]):
        lut[i] = c
    lut[255] = NODATA_COLOR
    return lut[codes.astype(np.int64).clip(0, 255)]


def gt_class_colors(metrics: dict[str, Any], cluster_colors: Sequence[Color]) -> list[Color]:
    """Each class takes its matched cluster's colour; unmatched classes get distinct others."""
    by_class = {name: int(k) for k, name in metrics["matching"].items()}
    used = set(cluster_colors)
    spare = [c for c in UNMATCHED_COLORS if c not in used] or UNMATCHED_COLORS
    out, n = [], 0
    for cls in metrics["classes"]:
        if cls in by_class and by_class[cls] < len(cluster_colors):
            out.append(tuple(cluster_colors[by_class[cls]]))
        else:
            out.append(spare[n % len(spare)])
            n += 1
    return out


def preview_panels(
    metrics: dict[str, Any], *, pred: np.ndarray, gt_classes: np.ndarray,
    image: np.ndarray | None, cluster_colors: Sequence[Color], size: tuple[int, int],
    gap: int = 8,
) -> Image.Image:
    """[image |] prediction | ground truth, with titles and a legend underneath.

    ``pred`` holds cluster ids (255 nodata), ``gt_classes`` class indices (-1 ignored); both
    are resized (nearest) to ``size`` = (width, height) per panel.
    """
    w, h = size
    font = _font(12)
    class_colors = gt_class_colors(metrics, cluster_colors)
    gt_rgb = np.zeros((*gt_classes.shape, 3), dtype=np.uint8)
    for j, c in enumerate(class_colors):
        gt_rgb[gt_classes == j] = c
    tiles: list[tuple[str, np.ndarray]] = []
    if image is not None:
        tiles.append(("image", image))
    tiles.append(("prediction (clusters)", _colorize(pred, cluster_colors, (128, 128, 128))))
    tiles.append(("ground truth (matched cluster colours)", gt_rgb))
    by_class = {name: int(k) for k, name in metrics["matching"].items()}
    matched = {int(k): name for k, name in metrics["matching"].items()}
    entries: list[tuple[Color, str]] = []
    for k, name in enumerate(metrics["clusters"]):
        label = f"{k}: {name} -> {matched[k]}" if k in matched else f"{k}: {name} (unmatched)"
        entries.append((tuple(cluster_colors[k]), label))
    for cls, color in zip(metrics["classes"], class_colors, strict=True):
        if cls not in by_class:
            entries.append((color, f"{cls} (no cluster)"))
    entries.append((NODATA_COLOR, "nodata / ignored"))
    total_w = len(tiles) * w + (len(tiles) - 1) * gap
    sw = 14
    entry_w = max(_text_size(font, t)[0] for _, t in entries) + sw + 18
    per_row = max(1, (total_w + 16) // entry_w)
    legend_rows = -(-len(entries) // per_row)
    title_h, line_h = 20, 20
    footer = (f"accuracy {_fmt(metrics.get('accuracy'))} %   mIoU {_fmt(metrics.get('mIoU'))} %"
              f"   ({metrics.get('pixels', {}).get('evaluated', 0):,} px evaluated)")
    width = max(total_w + 16, entry_w + 16, _text_size(font, footer)[0] + 16)
    height = title_h + h + 10 + legend_rows * line_h + line_h + 8
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (title, arr) in enumerate(tiles):
        x = 8 + i * (w + gap)
        tile = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB")
        if tile.size != (w, h):
            tile = tile.resize((w, h), Image.Resampling.NEAREST)
        canvas.paste(tile, (x, title_h))
        draw.text((x, 3), title, font=font, fill=(0, 0, 0))
    y = title_h + h + 10
    for n, (color, text) in enumerate(entries):
        x = 8 + (n % per_row) * entry_w
        yy = y + (n // per_row) * line_h
        draw.rectangle([x, yy + 2, x + sw, yy + 2 + sw], fill=color, outline=(0, 0, 0))
        draw.text((x + sw + 6, yy + 2), text, font=font, fill=(0, 0, 0))
    draw.text((8, y + legend_rows * line_h + 2), footer, font=font, fill=(60, 60, 60))
    return canvas
