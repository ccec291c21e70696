"""The georeferenced label store (Zarr v2 or v3), written block by block, that GDAL, QGIS and
xarray open as it is.

The root group holds only georeferenced data: ``labels``, ``confidence`` and ``margin`` (uint8,
dims y/x, chunks aligned with blocks, nodata 255 as the fill value), ``x``/``y`` cell-centre
coordinates and
a CF ``spatial_ref`` grid mapping (read by GDAL >= 3.9 and xarray/rioxarray) and the
``proj:``/``spatial:`` convention attributes on the group. A v2 store also carries GDAL's
multidimensional PAM file (``pam.aux.xml``: the CRS with its axis-to-dimension mapping) for GDAL
3.4-3.8, which ignore the CF grid mapping and misplace a ``_CRS`` attribute (see
:func:`pipeline.io.pam.multidim_pam_xml`), so the store writes no ``_CRS``. Chunks are
gzip (v3) or zlib (v2): codecs every GDAL build has. Resume bookkeeping lives in the
``_resume`` sub-group while the run is going (a block writes its labels first and its done flag
last) and is removed when the store is finalized and renamed into place.
"""

from __future__ import annotations

import gzip
import os
import uuid
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import numcodecs
import numcodecs.compat
import numpy as np
import zarr
import zarr.registry
from affine import Affine
from zarr.codecs import GzipCodec

from pipeline.io.pam import multidim_pam_xml
from pipeline.io.remote import (
    exists,
    join,
    move_tree,
    parent_and_name,
    remove_tree,
    sibling_dirs,
    write_bytes,
)
from pipeline.labels import CONFIDENCE_SCALE, NODATA, BlockOutput
from pipeline.tiling import Block, block_grid_shape

RESUME = "_resume"  # sub-group of the partial store with the per-block bookkeeping
RUN_TOKEN = "run_token"  # the partial store's current run; writers of another run are fenced
LAYOUT = "stego-labels/4"  # bumped when the store's layout changes: older partials are rebuilt
ZLIB_LEVEL = 6
PAM_NAME = "pam.aux.xml"  # GDAL's multidimensional PAM file of a Zarr store (at its root)


Location = Path | str  # a local path, or an object-store URL (s3://, gs://, az://)


def partial_path(final: Location, run_id: str) -> Location:
    """Where the run ``run_id`` builds a store before it is complete: one directory per run
    (kept by the runs that resume it), so that a block of an earlier run whose client is gone
    can never write into a later run's store, even between its token check and its write."""
    parent, name = parent_and_name(final)
    return join(parent, f".{name}.partial-{run_id}")


def partial_stores(final: Location) -> list[Location]:
    """The partial stores of ``final`` (normally one; more after a crash while an orphaned
    block of an older run recreated its own)."""
    _, name = parent_and_name(final)
    return sibling_dirs(final, f".{name}.partial-")


def _remove_partials(final: Location, keep: Location | None = None) -> None:
    for p in partial_stores(final):
        if keep is None or str(p) != str(keep):
            remove_tree(p)


def _crs_attrs(crs_wkt: str | None) -> tuple[str | None, dict[str, Any]]:
    """(WKT2 of the CRS, CF attributes for ``spatial_ref``)."""
    if not crs_wkt:
        return None, {}
    from pyproj import CRS

    crs = CRS.from_wkt(crs_wkt)
    cf = {k: v for k, v in crs.to_cf().items() if isinstance(v, (str, int, float))}
    cf.update({"crs_wkt": crs_wkt, "spatial_ref": crs_wkt})
    return crs.to_wkt("WKT2_2019"), cf


class _GzipNoTime(numcodecs.GZip):
    """numcodecs' gzip with a zero header time, so a re-run writes the same chunk bytes."""

    def encode(self, buf: Any) -> bytes:
        """Standard gzip of the chunk, header mtime 0."""
        data = numcodecs.compat.ensure_contiguous_ndarray(buf)
        return gzip.compress(memoryview(data).cast("B"), compresslevel=self.level, mtime=0)


class DeterministicGzip(GzipCodec):
    """Zarr v3 ``gzip`` codec (same metadata, readable by any client) with reproducible bytes."""

    @cached_property
    def _gzip_codec(self) -> numcodecs.GZip:
        return _GzipNoTime(self.level)


# chunks are written through arrays reopened from their metadata ({"name": "gzip"}), so this
# implementation is the one zarr picks for "gzip" in every process that imports the store
_GZIP = f"{__name__}.DeterministicGzip"
zarr.registry.register_codec("gzip", DeterministicGzip, qualname=_GZIP)
zarr.config.set({"codecs.gzip": _GZIP})


def _create(group: zarr.Group, name: str, zarr_format: int, dims: list[str],
            attributes: dict[str, Any], **kwargs: Any) -> zarr.Array:
    """An array with dimension names and a zlib/gzip codec in the group's Zarr format."""
    if zarr_format == 2:  # the fill value is xarray's _FillValue; dimension names: attribute
        attributes = {**attributes, "_ARRAY_DIMENSIONS": dims}
        return group.create_array(name, compressors=numcodecs.Zlib(level=ZLIB_LEVEL),
                                  attributes=attributes, **kwargs)
    if kwargs.get("dtype") == "uint8" and dims == ["y", "x"]:  # v3: the mask is an attribute
        attributes = {**attributes, "_FillValue": kwargs["fill_value"]}
    return group.create_array(name, compressors=DeterministicGzip(level=ZLIB_LEVEL),
                              dimension_names=dims, attributes=attributes, **kwargs)


def unfinished_block_size(final: Location, resume_key: str) -> int | None:
    """The block edge of an unfinished run of ``final`` planned under ``resume_key`` (the
    run's identity with ``tiling.block_size`` as asked, e.g. ``auto``), or None: a rerun
    whose ``auto`` resolves to another edge (a cluster of another size) keeps that one and
    resumes instead of starting over."""
    for path in partial_stores(final):
        try:
            attrs = zarr.open_group(str(path), mode="r", use_consolidated=False).attrs
            if attrs.get("resume_key") == resume_key and attrs.get("layout") == LAYOUT:
                return int(attrs["block_size"])
        except Exception:  # noqa: BLE001 - an unreadable partial store is rebuilt anyway
            continue
    return None


def _resumable(path: Location, fingerprint: str, zarr_format: int) -> bool:
    try:
        group = zarr.open_group(str(path), mode="r", use_consolidated=False)
        return (group.attrs.get("fingerprint") == fingerprint
                and group.attrs.get("layout") == LAYOUT
                and group.metadata.zarr_format == zarr_format and RESUME in group)
    except Exception:  # noqa: BLE001 - an unreadable partial store is rebuilt
        return False


def prepare_store(
    final: Location,
    *,
    height: int,
    width: int,
    chunk: int,
    block_size: int,
    transform: Affine,
    crs_wkt: str | None,
    class_names: list[str],
    colors: list[tuple[int, int, int]],
    fingerprint: str,
    resume_key: str | None = None,
    fresh: bool = False,
    zarr_format: int = 2,
) -> tuple[Location, bool]:
    """Open the partial store for resuming if its fingerprint matches, else create a new one
    under a new name (:func:`partial_path`) and remove the others.

    Returns ``(path, resumed)``.
    """
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format}")
    if not fresh:
        for path in partial_stores(final):
            if _resumable(path, fingerprint, zarr_format):
                _new_token(path)
                _remove_partials(final, keep=path)
                return path, True
    _remove_partials(final)
    path = partial_path(final, uuid.uuid4().hex[:12])
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    names = list(class_names)
    wkt2, cf = _crs_attrs(crs_wkt)
    common = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
    _create(
        group, "labels", zarr_format, ["y", "x"], shape=(height, width), chunks=(chunk, chunk),
        dtype="uint8", fill_value=NODATA,
        attributes={
            **common,
            "long_name": "class label",
            "nodata": NODATA,
            "flag_values": list(range(len(names))),
            "flag_meanings": " ".join(n.replace(" ", "_") for n in names),
            "class_names": names,
            "class_colors": [list(c) for c in colors],
        },
    )
    _create(
        group, "confidence", zarr_format, ["y", "x"], shape=(height, width),
        chunks=(chunk, chunk), dtype="uint8", fill_value=NODATA,
        attributes={**common, "long_name": f"max class probability x {CONFIDENCE_SCALE}",
                    "nodata": NODATA, "valid_range": [0, CONFIDENCE_SCALE]},
    )
    _create(
        group, "margin", zarr_format, ["y", "x"], shape=(height, width),
        chunks=(chunk, chunk), dtype="uint8", fill_value=NODATA,
        attributes={**common, "long_name": "winning minus runner-up class probability x "
                    f"{CONFIDENCE_SCALE}", "nodata": NODATA,
                    "valid_range": [0, CONFIDENCE_SCALE]},
    )
    x = transform.c + (np.arange(width) + 0.5) * transform.a
    y = transform.f + (np.arange(height) + 0.5) * transform.e
    for name, values in (("x", x), ("y", y)):
        arr = _create(
            group, name, zarr_format, [name], shape=values.shape, chunks=values.shape,
            dtype="float64",
            attributes={
                "axis": name.upper(),
                "standard_name": f"projection_{name}_coordinate" if crs_wkt else name,
            },
        )
        arr[:] = values
    gt = f"{transform.c} {transform.a} {transform.b} {transform.f} {transform.d} {transform.e}"
    sref = _create(group, "spatial_ref", zarr_format, [], shape=(), chunks=(), dtype="int64",
                   fill_value=0, attributes={"GeoTransform": gt, **cf})
    sref[...] = 0
    _create_resume_arrays(group, zarr_format, *block_grid_shape(height, width, block_size),
                          block_size)
    group.attrs.update(
        {
            "fingerprint": fingerprint,
            "resume_key": resume_key,
            "block_size": block_size,
            "layout": LAYOUT,
            "status": "running",
            "class_names": names,
            "class_colors": [list(c) for c in colors],
            "nodata": NODATA,
            "proj:wkt2": wkt2,
            "spatial:dimensions": ["y", "x"],
            "spatial:transform": list(transform)[:6],
            "spatial:shape": [height, width],
        }
    )
    _new_token(path)
    return path, False


class StaleRunError(RuntimeError):
    """A block of an earlier run (its client gone) tried to write into a later run's store."""


def _new_token(path: Location) -> None:
    """Give the store a new run token: every writer holding an older one is fenced off."""
    zarr.open_group(str(path), mode="r+").attrs[RUN_TOKEN] = uuid.uuid4().hex


def store_token(path: Location) -> str | None:
    """The run token writers of this run must hold (None: the store is gone or unfenced)."""
    try:
        return zarr.open_group(str(path), mode="r").attrs.get(RUN_TOKEN)
    except Exception:  # noqa: BLE001 - a missing or half-deleted store has no token
        return None


def check_token(path: Location, token: str | None) -> None:
    """Raise :class:`StaleRunError` unless the store still belongs to ``token``'s run (read
    from disk right before each write: a rerun renews the token when it takes the store)."""
    if token is not None and store_token(path) != token:
        raise StaleRunError(f"{path}: another run has taken this store; this block's "
                            "writes are dropped")


def _create_resume_arrays(group: zarr.Group, zarr_format: int, nr: int, nc: int,
                          block_size: int) -> None:
    sub = group.create_group(RESUME)
    dims = ["block_row", "block_col"]
    _create(sub, "block_rows_done", zarr_format, dims, shape=(nr, nc), chunks=(1, 1),
            dtype="int32", fill_value=0,
            attributes={"long_name": "rows of the block's core already written (resume point)"})
    _create(sub, "block_done", zarr_format, dims, shape=(nr, nc), chunks=(1, 1), dtype="uint8",
            fill_value=0,
            attributes={"long_name": "1 when the block's labels are written",
                        "block_size": block_size})


def done_blocks(path: Location) -> set[tuple[int, int]]:
    """(row, col) of blocks whose labels are completely written."""
    done = zarr.open_array(str(path), path=f"{RESUME}/block_done", mode="r")[:]
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(done), strict=True)}


def write_block(path: Location, out: BlockOutput, confidence: bool = True,
                token: str | None = None) -> None:
    """Write a block's region (chunk-aligned, so no locks), then mark it done; with a run
    ``token``, only while the store still belongs to that run."""
    check_token(path, token)
    b = out.block
    region = (slice(b.row_off, b.row_off + b.height), slice(b.col_off, b.col_off + b.width))
    group = zarr.open_group(str(path), mode="r+")
    group["labels"][region] = out.labels
    if confidence:
        group["confidence"][region] = out.confidence
        if out.margin is not None:
            group["margin"][region] = out.margin
    group[f"{RESUME}/block_rows_done"][b.row, b.col] = b.height
    group[f"{RESUME}/block_done"][b.row, b.col] = 1


def block_rows_done(path: Location, block: Block) -> int:
    """Rows of ``block``'s core already written by an earlier, interrupted attempt."""
    group = zarr.open_group(str(path), mode="r")
    return int(group[f"{RESUME}/block_rows_done"][block.row, block.col])


class BlockWriter:
    """Writes a block's finished rows in whole chunk rows as they stream in.

    After each write the block's resume point (``block_rows_done``) moves on, so a killed run
    restarts the block from its first unwritten chunk row. Blocks are chunk-aligned, so blocks
    never share a chunk and writers need no locks.
    """

    def __init__(self, path: Location, block: Block, start_row: int, chunk: int,
                 confidence: bool = True, token: str | None = None) -> None:
        self.path, self.token = path, token
        check_token(path, token)
        self.group = zarr.open_group(str(path), mode="r+")
        self.block, self.chunk, self.confidence = block, chunk, confidence
        self.next_row = start_row  # first core row not yet written
        self._labels: list[np.ndarray] = []
        self._conf: list[np.ndarray] = []
        self._margin: list[np.ndarray] = []
        self._rows = 0

    def add(self, labels: np.ndarray, confidence: np.ndarray,
            margin: np.ndarray | None = None) -> None:
        """Append the next finished rows (in order); write every complete chunk row."""
        self._labels.append(labels)
        self._conf.append(confidence)
        self._margin.append(np.full_like(labels, NODATA) if margin is None else margin)
        self._rows += labels.shape[0]
        n = (self._rows // self.chunk) * self.chunk
        if n:
            self._write(n)

    def finish(self) -> None:
        """Write the remaining rows and mark the block done."""
        if self._rows:
            self._write(self._rows)
        b = self.block
        if self.next_row != b.height:
            raise RuntimeError(f"block {b.key}: {self.next_row} of {b.height} rows written")
        check_token(self.path, self.token)
        self.group[f"{RESUME}/block_done"][b.row, b.col] = 1

    def _write(self, n: int) -> None:
        labels = np.concatenate(self._labels)
        conf = np.concatenate(self._conf)
        margin = np.concatenate(self._margin)
        b = self.block
        y0 = b.row_off + self.next_row
        region = (slice(y0, y0 + n), slice(b.col_off, b.col_off + b.width))
        check_token(self.path, self.token)
        self.group["labels"][region] = labels[:n]
        if self.confidence:
            self.group["confidence"][region] = conf[:n]
            self.group["margin"][region] = margin[:n]
        self.next_row += n
        self.group[f"{RESUME}/block_rows_done"][b.row, b.col] = self.next_row
        self._labels, self._conf, self._margin = [labels[n:]], [conf[n:]], [margin[n:]]
        self._rows -= n


def finalize_store(path: Location, final: Location, summary: dict[str, Any]) -> Location:
    """Drop the bookkeeping, mark complete, consolidate metadata, add GDAL's PAM file (v2 with a
    CRS), move the store into place."""
    group = zarr.open_group(str(path), mode="r+")
    if RESUME in group:
        del group[RESUME]
    attrs = dict(group.attrs)
    attrs.pop(RUN_TOKEN, None)  # a finished store is the same bytes whichever run made it
    group.attrs.put({**attrs, "status": "complete", **summary})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(str(path))
    if attrs.get("proj:wkt2") and group.metadata.zarr_format == 2:
        # GDAL 3.4-3.8 (v2 only) take the CRS from here. Written after consolidating, which
        # would warn about a file that is no Zarr node
        write_bytes(join(path, PAM_NAME), multidim_pam_xml(
            attrs["proj:wkt2"], ["labels", "confidence", "margin"]).encode("utf-8"))
    parent, name = parent_and_name(final)
    trash = join(parent, f".{name}.old-{os.getpid()}")
    if exists(final):
        move_tree(final, trash)
    move_tree(path, final)  # object storage: copied (readers wait for the run's manifest)
    remove_tree(trash)
    _remove_partials(final)  # what orphaned blocks of earlier runs may have recreated
    return final


def open_labels(path: Location) -> zarr.Array:
    """The labels array of a store, for block-wise reading."""
    return zarr.open_array(str(path), path="labels", mode="r")
