"""Active-learning suggestions: where the analyst should label next.

Selection is pure and streams the label map block by block (only a few values per cell of a
coarse grid are kept, never the raster):

* uncertainty: the smallest margin between the winning and the runner-up class's
  probabilities (the store's ``margin``; stores written before it: the least confidence, the
  winning class's probability), lowest first;
* spread over the scene: a grid of square cells (several times more cells than points), at most
  one point per cell. A cell offers, for each class predicted in it, its least-confident pixel
  of that class (ties broken by a seeded hash of the pixel's position, so the result does not
  depend on how the map is cut into blocks); equally uncertain cells are taken in an order
  that covers the scene's quadrants, then their quadrants, and so on;
* spread over classes: candidates are taken round-robin over the predicted classes, each class
  in its own order of uncertainty, so a rare class (even one smaller than a cell) is not
  starved; when a class runs out the others fill in. An optional minimum spacing (pixels)
  drops candidates too close to a pick.

:func:`read_run_blocks` opens a finished ``stego segment`` directory (``run.json`` +
``labels.zarr``) and yields chunk-aligned blocks of labels and their uncertainty measure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from pipeline.errors import InputError
from pipeline.evaluation.readers import PredReader
from pipeline.io.files import read_json
from pipeline.labels import CONFIDENCE_SCALE, NODATA

OVERSAMPLE = 4  # grid cells per requested point when the cell size is chosen automatically
READ_TARGET = 2048  # read blocks of about this many pixels a side, in whole chunks
_NONE = np.uint64(np.iinfo(np.uint64).max)  # a cell without a candidate
_NO_PIXEL = np.iinfo(np.int64).max
MAX_SLOTS = 2**25  # cells x classes kept while streaming (16 bytes each)

LabelBlock = tuple[int, int, np.ndarray, np.ndarray]  # (row_off, col_off, labels, confidence)


@dataclass
class SuggestedPoints:
    """The chosen pixels, in the order they were picked (the first is the most useful)."""

    rows: np.ndarray  # int64 pixel rows
    cols: np.ndarray  # int64 pixel columns
    predicted: np.ndarray  # int64 predicted class index
    confidence: np.ndarray  # float64 0..1: the measure ranked (see suggest_points' measure)
    reason: list[str] = field(default_factory=list)
    cell: int = 1  # side of the grid cells, pixels
    candidates: int = 0  # cells that offered a candidate (the most points there can be)

    def __len__(self) -> int:
        return len(self.rows)


def cell_size(height: int, width: int, n: int) -> int:
    """Side of square cells giving at least ``OVERSAMPLE * n`` cells over the raster."""
    return max(1, math.isqrt(max(1, (height * width) // max(1, OVERSAMPLE * n))))


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: a bijective hash of uint64 values (wraps, as intended)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class _CellMinima:
    """Per grid cell and class (a slot, ``cell * n_classes + class``): the smallest
    (confidence, seeded hash) key seen so far and its pixel."""

    def __init__(self, height: int, width: int, n_classes: int, cell: int, seed: int,
                 exclude: Sequence[tuple[int, int]]) -> None:
        self.height, self.width, self.n_classes, self.cell = height, width, n_classes, cell
        self.grid_cols = -(-width // cell)
        size = -(-height // cell) * self.grid_cols
        if size * n_classes > MAX_SLOTS:
            raise ValueError(f"{size} cells x {n_classes} classes is too many: use larger cells "
                             "or fewer points")
        self.salt = np.random.SeedSequence(seed).generate_state(1, np.uint64)[0]
        self.key = np.full(size * n_classes, _NONE, dtype=np.uint64)
        self.pix = np.full(size * n_classes, _NO_PIXEL, dtype=np.int64)
        self.excluded = np.zeros(size, dtype=bool)
        for r, c in exclude:
            if 0 <= r < height and 0 <= c < width:
                self.excluded[self._cell_of(np.int64(r), np.int64(c))] = True

    def _cell_of(self, rows: Any, cols: Any) -> Any:
        return (rows // self.cell) * self.grid_cols + cols // self.cell

    def add(self, row_off: int, col_off: int, labels: np.ndarray, conf: np.ndarray) -> None:
        labels, conf = np.asarray(labels), np.asarray(conf)
        if labels.ndim != 2 or labels.shape != conf.shape:
            raise ValueError(f"block at ({row_off}, {col_off}): labels {labels.shape} and "
                             f"confidence {conf.shape} must be equal 2-D shapes")
        h, w = labels.shape
        if row_off < 0 or col_off < 0 or row_off + h > self.height or col_off + w > self.width:
            raise ValueError(f"block at ({row_off}, {col_off}) of {h}x{w} is outside the "
                             f"{self.height}x{self.width} raster")
        valid = (labels != NODATA) & (labels < self.n_classes) & (conf <= CONFIDENCE_SCALE)
        rr, cc = np.nonzero(valid)
        rr, cc = rr.astype(np.int64) + row_off, cc.astype(np.int64) + col_off
        cid = self._cell_of(rr, cc)
        keep = ~self.excluded[cid]
        rr, cc, cid = rr[keep], cc[keep], cid[keep]
        slot = cid * self.n_classes + labels[valid][keep].astype(np.int64)
        pix = rr * self.width + cc
        hashed = _mix(pix.astype(np.uint64) ^ self.salt) >> np.uint64(8)
        key = (conf[valid][keep].astype(np.uint64) << np.uint64(56)) | hashed
        before = self.key.copy()
        np.minimum.at(self.key, slot, key)
        self.pix[self.key < before] = _NO_PIXEL  # a new best key: forget the old pixel
        win = key == self.key[slot]
        np.minimum.at(self.pix, slot[win], pix[win])  # equal keys (hash clash): first pixel

    def candidates(self) -> np.ndarray:
        """Slots with a candidate, most uncertain first; equally uncertain ones in an order
        that spreads them over the scene (:meth:`spread_rank`)."""
        idx = np.flatnonzero(self.key != _NONE)
        keys = self.key[idx]
        return idx[np.lexsort((self.pix[idx], keys, self.spread_rank(idx // self.n_classes),
                               keys >> np.uint64(56)))]

    def spread_rank(self, cells: np.ndarray) -> np.ndarray:
        """A 2-D van der Corput order of cells: the first 4 lie in the 4 quadrants of the
        scene, the first 16 in its 16 sub-quadrants, and so on (the quadrants' order seeded)."""
        grid_rows = -(-self.height // self.cell)
        bits = max(1, (max(grid_rows, self.grid_cols) - 1).bit_length())
        gr, gc = np.divmod(cells, self.grid_cols)
        # cell centres on a 2**bits grid over the scene: the top bit says which half, ...
        qr = ((2 * gr + 1) << bits) // (2 * grid_rows)
        qc = ((2 * gc + 1) << bits) // (2 * self.grid_cols)
        mask = int(self.salt) & ((1 << 2 * bits) - 1)
        rank = np.zeros(len(cells), dtype=np.int64)
        for level in range(bits):  # coarsest level in the lowest bits of the rank
            b = bits - 1 - level
            rank |= ((qr >> b) & 1) << (2 * level + 1) | ((qc >> b) & 1) << (2 * level)
        return rank ^ mask


class _Spacing:
    """Points already picked, bucketed by ``spacing`` so a distance check looks at 9 buckets."""

    def __init__(self, spacing: float | None) -> None:
        self.spacing = float(spacing or 0.0)
        self.buckets: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def _bucket(self, r: int, c: int) -> tuple[int, int]:
        return int(r // self.spacing), int(c // self.spacing)

    def allows(self, r: int, c: int) -> bool:
        if self.spacing <= 0:
            return True
        br, bc = self._bucket(r, c)
        limit = self.spacing ** 2
        return not any((r - pr) ** 2 + (c - pc) ** 2 < limit
                       for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                       for pr, pc in self.buckets.get((br + dr, bc + dc), ()))

    def add(self, r: int, c: int) -> None:
        if self.spacing > 0:
            self.buckets.setdefault(self._bucket(r, c), []).append((r, c))


def suggest_points(
    blocks: Iterable[LabelBlock],
    height: int,
    width: int,
    n_classes: int,
    n: int,
    seed: int = 0,
    cell: int | None = None,
    exclude: Sequence[tuple[int, int]] = (),
    min_spacing: float | None = None,
    class_names: Sequence[str] | None = None,
    interior: int = 0,
    measure: str = "confidence",
) -> SuggestedPoints:
    """Pick ``n`` pixels to label next: least certain, spread over cells and classes.

    ``blocks`` yields ``(row_off, col_off, labels, certainty)`` (uint8 x 254, nodata 255; the
    certainty is named ``measure`` in the reasons: the store's ``margin`` or ``confidence``)
    covering
    the ``height`` x ``width`` map in any order; ``cell`` is the grid cell side in pixels
    (default: :func:`cell_size`); cells holding an ``exclude`` pixel (row, col) are skipped;
    ``min_spacing`` (pixels) keeps picks at least that far apart; ``interior`` > 0 takes
    only pixels whose (2·interior+1)² window is one predicted class, ranked by the window's
    mean confidence: uncertain *areas* an analyst can name, not class edges (see
    :func:`interior_block`). Deterministic for a seed.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= n_classes <= NODATA:
        raise ValueError(f"n_classes must be 1..{NODATA}, got {n_classes}")
    if height < 1 or width < 1:
        raise ValueError(f"empty raster ({height}x{width})")
    cell = cell_size(height, width, n) if cell is None else int(cell)
    if cell < 1:
        raise ValueError(f"cell must be >= 1 pixel, got {cell}")
    minima = _CellMinima(height, width, n_classes, cell, seed, exclude)
    for row_off, col_off, labels, conf in blocks:
        if interior > 0:
            labels, conf = interior_block(labels, conf, interior)
        minima.add(int(row_off), int(col_off), labels, conf)
    names = [str(s) for s in class_names] if class_names else []
    names += [f"class {i}" for i in range(len(names), n_classes)]
    return _round_robin(minima, n, _Spacing(min_spacing), names, measure)


def interior_block(labels: np.ndarray, conf: np.ndarray, radius: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A block with class edges removed (labels set to nodata where the (2r+1)² window holds
    another class or nodata) and confidence averaged over that window. Windows stop at the
    block's edge (blocks are thousands of pixels; the effect is a few pixels wide)."""
    from scipy import ndimage

    size = 2 * radius + 1
    lab = labels.astype(np.int16)
    same = (ndimage.maximum_filter(lab, size, mode="nearest")
            == ndimage.minimum_filter(lab, size, mode="nearest")) & (labels != NODATA)
    mean = ndimage.uniform_filter(conf.astype(np.float32), size, mode="nearest")
    out_conf = np.where(same, np.rint(mean), NODATA).astype(np.uint8)
    return np.where(same, labels, NODATA).astype(np.uint8), out_conf


def _round_robin(minima: _CellMinima, n: int, spacing: _Spacing,
                 names: list[str], measure: str = "confidence") -> SuggestedPoints:
    """Each round, every class with candidates left gives its next one in a cell without a
    point yet (classes in fewer cells first, so a rare class keeps its few cells; then the
    class whose next candidate is least confident) until ``n`` are picked."""
    order = minima.candidates()
    labels = order % minima.n_classes
    queues = {c: order[labels == c] for c in range(minima.n_classes) if np.any(labels == c)}
    counts = {c: len(q) for c, q in queues.items()}
    head = dict.fromkeys(queues, 0)
    n_with = len(queues)
    picks: list[tuple[int, int, int, int]] = []  # (slot, class, rank in class, classes left)
    taken = dict.fromkeys(queues, 0)
    used: set[int] = set()  # cells with a point
    while len(picks) < n and queues:
        for c in sorted(queues, key=lambda c: (counts[c], minima.key[queues[c][head[c]]], c)):
            queue = queues[c]
            while head[c] < len(queue):
                slot = int(queue[head[c]])
                head[c] += 1
                r, col = divmod(int(minima.pix[slot]), minima.width)
                if slot // minima.n_classes not in used and spacing.allows(r, col):
                    used.add(slot // minima.n_classes)
                    spacing.add(r, col)
                    taken[c] += 1
                    picks.append((slot, c, taken[c], len(queues)))
                    break
            if head[c] >= len(queue):
                del queues[c]
            if len(picks) == n:
                break
    slots = np.array([p[0] for p in picks], dtype=np.int64)
    pix = minima.pix[slots]
    conf = (minima.key[slots] >> np.uint64(56)).astype(np.float64) / CONFIDENCE_SCALE
    side = minima.cell
    reasons = []
    for (_, c, rank, left), p in zip(picks, conf, strict=True):
        text = (f"{measure} {p:.2f}, the lowest of '{names[c]}' in its {side}x{side} px "
                f"cell; pick {rank} for '{names[c]}' (predicted in {counts[c]} cells)")
        if left < n_with:
            text += " (filling in for classes with no candidates left)"
        reasons.append(text)
    return SuggestedPoints(rows=pix // minima.width, cols=pix % minima.width,
                           predicted=slots % minima.n_classes, confidence=conf,
                           reason=reasons, cell=side,
                           candidates=len(np.unique(order // minima.n_classes)))


# --------------------------------------------------------------------------------------------
# a finished segment run


@dataclass
class RunBlocks:
    """A finished segment run's label map, read block by block (chunk-aligned)."""

    store: Path
    height: int
    width: int
    class_names: list[str]
    colors: list[tuple[int, int, int]]
    crs_wkt: str | None
    transform: Affine
    chunks: tuple[int, int]
    _pred: Any = field(default=None, repr=False)
    _conf: Any = field(default=None, repr=False)
    _rank: Any = field(default=None, repr=False)  # the array suggestions are ranked by
    measure: str = "confidence"  # its name: "margin", or "confidence" for older stores

    def confidence_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The winning class's probability (0..1) at the given pixels."""
        values = [int(self._conf[int(r), int(c)]) for r, c in zip(rows, cols, strict=True)]
        return np.asarray(values, dtype=np.float64) / CONFIDENCE_SCALE

    def blocks(self) -> Iterator[LabelBlock]:
        """``(row_off, col_off, labels, confidence)`` over the map, whole chunks at a time."""
        step_r = self.chunks[0] * max(1, READ_TARGET // self.chunks[0])
        step_c = self.chunks[1] * max(1, READ_TARGET // self.chunks[1])
        for r0 in range(0, self.height, step_r):
            r1 = min(self.height, r0 + step_r)
            for c0 in range(0, self.width, step_c):
                c1 = min(self.width, c0 + step_c)
                labels = np.asarray(self._pred.read(r0, r1, c0, c1))
                yield r0, c0, labels, np.asarray(self._rank[r0:r1, c0:c1])


def read_run_blocks(out_dir: Path) -> RunBlocks:
    """Open the ``labels.zarr`` of a finished ``stego segment`` output directory.

    Raises :class:`InputError` when ``out_dir`` is not a finished run (no ``run.json``, status
    not complete, no store) or when the store has no usable confidence array.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise InputError(out, "not found" if not out.exists() else "not a directory")
    run_json = out / "run.json"
    if not run_json.is_file():
        raise InputError(out, "not a segment run directory (no run.json): give the --out "
                              "directory of a finished `stego segment`")
    try:
        doc = read_json(run_json)
    except (OSError, ValueError) as exc:
        raise InputError(run_json, f"cannot read the run manifest ({exc})") from None
    status = doc.get("status") if isinstance(doc, dict) else None
    if status != "complete":
        raise InputError(run_json, f"the segment run is not finished (status {status!r}): "
                                   "run or resume `stego segment` first")
    store = out / "labels.zarr"
    if not store.is_dir():
        raise InputError(store, "not found: the run has no Zarr label store")
    output = ((doc.get("config") or {}).get("output") or {})
    if output.get("confidence") is False:
        raise InputError(store, "the run was made without confidence (output.confidence: "
                                "false); segment again with --set output.confidence=true")
    pred = PredReader(store)
    conf = _open_confidence(store, (pred.height, pred.width))
    rank, measure = conf, "confidence"
    if (store / "margin").is_dir():  # written since the store kept the top-two margin
        rank, measure = _open_confidence(store, (pred.height, pred.width), "margin"), "margin"
    model = doc.get("model") or {}
    names = pred.class_names or [str(n) for n in model.get("class_names") or []]
    if not names:
        raise InputError(store, "no class names in the store or run.json")
    raw_colors = pred.colors or [tuple(c) for c in model.get("colors") or []]
    colors = [tuple(int(v) for v in c[:3]) for c in raw_colors]
    colors += [(128, 128, 128)] * (len(names) - len(colors))
    crs_wkt = pred.crs.to_wkt() if pred.crs is not None else (doc.get("input") or {}).get("crs")
    return RunBlocks(store=store, height=pred.height, width=pred.width, class_names=names,
                     colors=colors, crs_wkt=crs_wkt or None, transform=pred.transform,
                     chunks=(int(conf.chunks[0]), int(conf.chunks[1])), _pred=pred, _conf=conf,
                     _rank=rank, measure=measure)


def _open_confidence(store: Path, shape: tuple[int, int], name: str = "confidence") -> Any:
    """The store's confidence (or margin) array, checked against the labels' shape."""
    import zarr

    try:
        conf = zarr.open_array(str(store), path=name, mode="r")
    except Exception as exc:  # noqa: BLE001 - any failure means "no confidence array"
        raise InputError(store, f"has no {name} array ({exc.__class__.__name__}): segment "
                                "again with --set output.confidence=true") from None
    if tuple(conf.shape) != shape:
        raise InputError(store, f"{name} is {tuple(conf.shape)}, labels {shape}")
    return conf
