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
last) and is removed when the store is finalized and renamed into place; the writes
themselves, fenced by the run token, are :mod:`pipeline.io.zarr_writes`.
"""

from __future__ import annotations

import gzip
import os
import uuid
import warnings
from functools import cached_property
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
from pipeline.io.zarr_writes import RESUME, RUN_TOKEN, Location, new_token
from pipeline.labels import CONFIDENCE_SCALE, NODATA
from pipeline.tiling import block_grid_shape

LAYOUT = "stego-labels/4"  # bumped when the store's layout changes: older partials are rebuilt
ZLIB_LEVEL = 6
PAM_NAME = "pam.aux.xml"  # GDAL's multidimensional PAM file of a Zarr store (at its root)



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
            group = zarr.open_group(str(path), mode="r", use_consolidated=False)
            if (group.attrs.get("resume_key") == resume_key
                    and group.attrs.get("layout") == LAYOUT):
                return int(group[f"{RESUME}/block_done"].attrs["block_size"])
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
                new_token(path)
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
    new_token(path)
    return path, False


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
