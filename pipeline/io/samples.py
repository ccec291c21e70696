"""An analyst's training samples on the pixel grids of the input rasters (``stego fit --samples``).

A sample file is a vector layer (points, multipoints, polygons, multipolygons in any format
pyogrio reads: GeoPackage, GeoJSON, Shapefile, FlatGeobuf, GeoParquet, ...) or a single-band
label raster (GDAL's mask marks unlabelled pixels; without any nodata or mask, 0 does). Classes
come from a class field (text or integer; recognised by name when not given, e.g. ArcGIS
``Classvalue``/``Classname``, SCP ``C_ID``/``C_Info``), from ``path=class name``, or from the
label values; names and colours from companion fields, a class table, or a colour map.

Every source is reprojected to each raster (points on the pixel that contains them, polygons
by pixel centres, label rasters by nearest neighbour), block by block, so memory follows the
samples, not the raster size. A pixel claimed by several classes is dropped, and so is a pixel
on the raster's nodata. Each sample keeps a group id (its feature, or its connected region of
a label raster), so whole polygons can be held out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.io.raster import RasterInfo
from pipeline.io.samples_grid import (
    BLOCK,
    Candidates,
    GroupCounter,
    block_at,
    bottom_k,
    merge_groups,
    resolve_pixels,
    valid_on_raster,
)
from pipeline.io.samples_label import LabelOnGrid, LabelRaster
from pipeline.io.samples_table import ClassRegistry, ClassTable, read_class_table
from pipeline.io.samples_vector import VECTOR_SUFFIXES, VectorLayer, read_layer
from pipeline.io.samples_vector_grid import VectorOnGrid

__all__ = ["ClassTable", "RasterSamples", "SampleSet", "SampleSpec", "parse_sample_spec",
           "read_class_table", "read_samples"]

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".png", ".asc", ".nc", ".bil"}


@dataclass(frozen=True)
class SampleSpec:
    """A sample file, and the class all its features belong to when given (``path=class``)."""

    path: str
    fixed_class: str | None = None


def parse_sample_spec(text: str) -> SampleSpec:
    """``path`` or ``path=class name``: split on the last ``=`` when the part before it is an
    existing file or ends in a known vector or raster suffix (else it is all one path)."""
    head, sep, tail = text.rpartition("=")
    if not sep or os.path.exists(text):
        return SampleSpec(text)
    known = Path(head).suffix.lower() in VECTOR_SUFFIXES | RASTER_SUFFIXES
    if not (known or os.path.exists(head)):
        return SampleSpec(text)
    if not tail.strip():
        raise InputError(head, f"empty class name after '=' in {text!r}")
    return SampleSpec(head, tail.strip())


@dataclass
class RasterSamples:
    """The samples on one raster: pixel rows/cols, class index and group id per sample (int64),
    sorted by row then column."""

    raster: str
    rows: np.ndarray
    cols: np.ndarray
    classes: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        """The number of samples."""
        return len(self.rows)


@dataclass
class SampleSet:
    """Samples of every raster (in the order given), their classes and the files they came
    from; ``class_fields`` says which field gave the classes of each source (``None`` for a
    fixed class or a label raster); ``warnings`` lists what was dropped or guessed."""

    classes: ClassTable
    per_raster: list[RasterSamples]
    sources: list[str]
    class_fields: list[str | None] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def pixel_counts(self) -> np.ndarray:
        """Labelled pixels per class over all rasters."""
        counts = np.zeros(len(self.classes.names), dtype=np.int64)
        for rs in self.per_raster:
            counts += np.bincount(rs.classes, minlength=len(counts))
        return counts


def _open_source(spec: SampleSpec, class_field: str | None) -> VectorLayer | LabelRaster:
    path = spec.path
    remote = path.startswith("/vsi") or "://" in path
    if not remote and not os.path.exists(path):
        raise InputError(path, "sample file not found")
    if not remote and os.path.isfile(path) and os.path.getsize(path) == 0:
        raise InputError(path, "is an empty (0-byte) file")
    suffix = Path(path).suffix.lower()
    if suffix in VECTOR_SUFFIXES:
        return read_layer(path, class_field, spec.fixed_class)
    try:
        return LabelRaster(path, spec.fixed_class)
    except InputError as exc:
        if suffix in RASTER_SUFFIXES or "cannot be read as a label raster" not in exc.problem:
            raise
    try:
        return read_layer(path, class_field, spec.fixed_class)
    except InputError as exc:
        if "cannot be read as a vector layer" not in exc.problem:
            raise
    raise InputError(path, "cannot be read as a vector layer or a label raster")


def read_samples(specs: Sequence[SampleSpec], rasters: Sequence[RasterInfo],
                 class_field: str | None, class_table: str | None = None,
                 min_pixels_per_class: int = 3, max_pixels_per_feature: int | None = None,
                 seed: int = 0) -> SampleSet:
    """Read the sample files and place them on every raster's grid (see the module docstring).

    A label raster's unlabelled pixels are those GDAL's mask marks (nodata value, internal
    mask, alpha); when it has no nodata and no mask, the value 0 means unlabelled.

    ``max_pixels_per_feature`` keeps a seeded random subset of at most that many pixels per
    group. One-line InputErrors: unreadable files, a missing or unrecognised class field, no
    CRS, invalid or unsupported geometries, empty class values, samples outside every raster,
    fewer than two classes, a class under ``min_pixels_per_class`` pixels.
    """
    if not specs:
        raise InputError("--samples", "no sample files given")
    table = read_class_table(class_table) if class_table else None
    registry = ClassRegistry(table, class_table)
    sources: list[VectorLayer | LabelRaster] = []
    try:
        for spec in specs:
            sources.append(_open_source(spec, class_field))
        return _place_all(sources, rasters, registry, min_pixels_per_class,
                          max_pixels_per_feature, seed)
    finally:
        for s in sources:
            if isinstance(s, LabelRaster):
                s.close()


def _place_all(sources: list[VectorLayer | LabelRaster], rasters: Sequence[RasterInfo],
               registry: ClassRegistry, min_pixels: int, cap: int | None,
               seed: int) -> SampleSet:
    import rasterio

    counter = GroupCounter()
    layers = [s for s in sources if isinstance(s, VectorLayer)]
    for layer in layers:
        for value, name, _color in layer.entries:
            registry.learn_name(value, name)
    for layer in layers:
        ids = np.array([registry.class_id(layer.path, v, n, c) for v, n, c in layer.entries],
                       dtype=np.int64)
        layer.class_ids = ids[layer.entry] if len(ids) else np.zeros(0, dtype=np.int64)
        layer.groups = counter.take(len(layer.fids)) + np.arange(len(layer.fids), dtype=np.int64)
    warnings = [w for layer in layers for w in layer.warnings]
    rng = np.random.default_rng(seed)
    seen = np.zeros(0, dtype=bool)
    kept: list[tuple[int, Candidates, np.ndarray]] = []
    edges: list[np.ndarray] = []
    for ri, info in enumerate(rasters):
        grids = [VectorOnGrid(s, info, BLOCK) if isinstance(s, VectorLayer) else
                 LabelOnGrid(s, info, registry, counter, BLOCK) for s in sources]
        keys = sorted(set().union(*(g.blocks() for g in grids)))
        ambiguous = on_nodata = 0
        with rasterio.open(info.path) as ds:
            for key in keys:
                block = block_at(info.affine, info.width, info.height, *key, size=BLOCK)
                cand = Candidates.concat([g.candidates(key, block) for g in grids])
                if len(cand) == 0:
                    continue
                seen = _mark(seen, cand.classes)
                cand, n_amb = resolve_pixels(cand)
                ambiguous += n_amb
                valid = valid_on_raster(ds, info.bands, cand)
                on_nodata += int((~valid).sum())
                cand = cand.take(valid)
                prio = rng.random(len(cand))
                if cap is not None:
                    sel = bottom_k(cand.groups, prio, cap)
                    cand, prio = cand.take(sel), prio[sel]
                kept.append((ri, cand, prio))
        edges += [e for g in grids if isinstance(g, LabelOnGrid) for e in g.edges]
        if ambiguous:
            warnings.append(f"{info.path}: {ambiguous} pixel(s) under samples of different "
                            "classes dropped as ambiguous")
        if on_nodata:
            warnings.append(f"{info.path}: {on_nodata} sample pixel(s) on nodata dropped")
    _check_outside(sources, rasters, warnings)
    return _assemble(sources, rasters, registry, kept, edges, seen, cap, min_pixels, warnings)


def _mark(seen: np.ndarray, classes: np.ndarray) -> np.ndarray:
    top = int(classes.max()) + 1
    if top > len(seen):
        seen = np.concatenate([seen, np.zeros(top - len(seen), dtype=bool)])
    seen[classes] = True
    return seen


def _check_outside(sources: list[VectorLayer | LabelRaster], rasters: Sequence[RasterInfo],
                   warnings: list[str]) -> None:
    names = ", ".join(r.path for r in rasters)
    for s in sources:
        if isinstance(s, LabelRaster):
            if s.placed == 0:
                raise InputError(s.path, f"no labelled pixel falls on the input raster(s) "
                                         f"({names})")
            continue
        assert s.placed is not None
        missed = int((~s.placed).sum())
        if len(s.placed) == 0:
            raise InputError(s.path, "the layer has no features with a geometry")
        if missed == len(s.placed):
            raise InputError(s.path, f"all {missed} samples fall outside every input raster "
                                     f"({names}); check the layer's CRS and extent")
        if missed:
            warnings.append(f"{s.path}: {missed} of {len(s.placed)} features fall outside "
                            "every input raster or cover no pixel")


def _assemble(sources: list[VectorLayer | LabelRaster], rasters: Sequence[RasterInfo],
              registry: ClassRegistry, kept: list[tuple[int, Candidates, np.ndarray]],
              edges: list[np.ndarray], seen: np.ndarray, cap: int | None, min_pixels: int,
              warnings: list[str]) -> SampleSet:
    which = np.concatenate([np.full(len(c), ri) for ri, c, _ in kept] + [np.zeros(0, int)])
    allc = Candidates.concat([c for _, c, _ in kept])
    prio = np.concatenate([p for _, _, p in kept] + [np.zeros(0)])
    groups = merge_groups(allc.groups, np.concatenate(edges) if edges else np.zeros((0, 2)))
    if cap is not None:  # the per-block caps kept every group's lowest priorities: finish
        sel = bottom_k(groups, prio, cap)
        allc, which, groups = allc.take(sel), which[sel], groups[sel]
    table, lut = registry.finish(seen)
    classes = lut[allc.classes] if len(allc) else allc.classes
    groups = np.unique(groups, return_inverse=True)[1].astype(np.int64).reshape(-1)
    per_raster = []
    for ri, info in enumerate(rasters):
        sel = np.flatnonzero(which == ri)
        sel = sel[np.lexsort((allc.cols[sel], allc.rows[sel]))]
        per_raster.append(RasterSamples(info.path, allc.rows[sel], allc.cols[sel],
                                        classes[sel], groups[sel]))
    paths = [s.path for s in sources]
    fields = [s.field if isinstance(s, VectorLayer) else None for s in sources]
    out = SampleSet(table, per_raster, paths, fields, warnings + registry.warnings)
    _check_classes(out, registry, min_pixels)
    return out


def _check_classes(samples: SampleSet, registry: ClassRegistry, min_pixels: int) -> None:
    names = samples.classes.names
    first = samples.sources[0]
    if len(names) < 2:
        only = f" (only {names[0]!r})" if names else ""
        raise InputError(first if len(samples.sources) == 1 else ", ".join(samples.sources),
                         f"training needs at least two classes{only}")
    counts = samples.pixel_counts()
    low = [i for i, c in enumerate(counts.tolist()) if c < min_pixels]
    if low:
        i = low[0]
        src = registry.sources[registry.names.index(names[i])]
        others = f" (and {len(low) - 1} more)" if len(low) > 1 else ""
        raise InputError(src, f"class {names[i]!r} has {int(counts[i])} labelled pixel(s) on "
                              f"the input rasters; at least {min_pixels} needed{others}")
