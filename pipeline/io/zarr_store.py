"""The georeferenced Zarr v3 label store, written block by block.

Layout (readable by ``xarray.open_zarr`` + rioxarray): ``labels`` and ``confidence`` (uint8,
dims y/x, chunks aligned with blocks), ``x``/``y`` cell-centre coordinates, a CF
``spatial_ref`` grid mapping (``crs_wkt``, ``GeoTransform``) and the ``proj:``/``spatial:``
convention attributes on the group. ``block_done`` holds one chunk per block: a block writes
its labels first and its done flag last, so a store killed mid-run tells which blocks are
complete. The store is built at a hidden ``.partial`` path and renamed when complete.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from affine import Affine

from pipeline.labels import NODATA, BlockOutput
from pipeline.tiling import Block, block_grid_shape


def partial_path(final: Path) -> Path:
    """Where a store is built before it is complete."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


def _cf_grid_mapping(crs_wkt: str | None, transform: Affine) -> dict[str, Any]:
    gt = f"{transform.c} {transform.a} {transform.b} {transform.f} {transform.d} {transform.e}"
    attrs: dict[str, Any] = {"GeoTransform": gt}
    if crs_wkt:
        from pyproj import CRS

        cf = CRS.from_wkt(crs_wkt).to_cf()
        attrs.update({k: v for k, v in cf.items() if isinstance(v, (str, int, float))})
        attrs["crs_wkt"] = crs_wkt
        attrs["spatial_ref"] = crs_wkt
    return attrs


def prepare_store(
    final: Path,
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
    fresh: bool = False,
) -> tuple[Path, bool]:
    """Open the partial store for resuming if its fingerprint matches, else create it anew.

    Returns ``(path, resumed)``.
    """
    path = partial_path(final)
    if path.exists() and not fresh:
        try:
            group = zarr.open_group(str(path), mode="r")
            if group.attrs.get("fingerprint") == fingerprint:
                return path, True
        except Exception:  # noqa: BLE001 - an unreadable partial store is rebuilt
            pass
    if path.exists():
        shutil.rmtree(path)
    group = zarr.open_group(str(path), mode="w")
    names = list(class_names)
    common = {
        "grid_mapping": "spatial_ref",
        "coordinates": "spatial_ref",
    }
    group.create_array(
        "labels", shape=(height, width), chunks=(chunk, chunk), dtype="uint8",
        fill_value=NODATA, dimension_names=["y", "x"],
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
    group.create_array(
        "confidence", shape=(height, width), chunks=(chunk, chunk), dtype="uint8",
        fill_value=0, dimension_names=["y", "x"],
        attributes={**common, "long_name": "max class probability x 255", "scale": 1 / 255},
    )
    x = transform.c + (np.arange(width) + 0.5) * transform.a
    y = transform.f + (np.arange(height) + 0.5) * transform.e
    projected = bool(crs_wkt)
    for name, values in (("x", x), ("y", y)):
        arr = group.create_array(
            name, shape=values.shape, chunks=values.shape, dtype="float64",
            dimension_names=[name],
            attributes={
                "axis": name.upper(),
                "standard_name": f"projection_{name}_coordinate" if projected else name,
            },
        )
        arr[:] = values
    sref = group.create_array(
        "spatial_ref", shape=(), dtype="int64", fill_value=0,
        attributes=_cf_grid_mapping(crs_wkt, transform),
    )
    sref[...] = 0
    nr, nc = block_grid_shape(height, width, block_size)
    group.create_array(
        "block_rows_done", shape=(nr, nc), chunks=(1, 1), dtype="int32", fill_value=0,
        dimension_names=["block_row", "block_col"],
        attributes={"long_name": "rows of the block's core already written (resume point)"},
    )
    group.create_array(
        "block_done", shape=(nr, nc), chunks=(1, 1), dtype="uint8", fill_value=0,
        dimension_names=["block_row", "block_col"],
        attributes={"long_name": "1 when the block's labels are written", "block_size": block_size},
    )
    group.attrs.update(
        {
            "fingerprint": fingerprint,
            "status": "running",
            "class_names": names,
            "class_colors": [list(c) for c in colors],
            "nodata": NODATA,
            "proj:wkt2": crs_wkt,
            "spatial:dimensions": ["y", "x"],
            "spatial:transform": list(transform)[:6],
            "spatial:shape": [height, width],
        }
    )
    return path, False


def done_blocks(path: Path) -> set[tuple[int, int]]:
    """(row, col) of blocks whose labels are completely written."""
    done = zarr.open_array(str(path), path="block_done", mode="r")[:]
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(done), strict=True)}


def write_block(path: Path, out: BlockOutput, confidence: bool = True) -> None:
    """Write a block's region (chunk-aligned, so no locks), then mark it done."""
    b = out.block
    region = (slice(b.row_off, b.row_off + b.height), slice(b.col_off, b.col_off + b.width))
    group = zarr.open_group(str(path), mode="r+")
    group["labels"][region] = out.labels
    if confidence:
        group["confidence"][region] = out.confidence
    group["block_rows_done"][b.row, b.col] = b.height
    group["block_done"][b.row, b.col] = 1


def block_rows_done(path: Path, block: Block) -> int:
    """Rows of ``block``'s core already written by an earlier, interrupted attempt."""
    group = zarr.open_group(str(path), mode="r")
    return int(group["block_rows_done"][block.row, block.col])


class BlockWriter:
    """Writes a block's finished rows in whole chunk rows as they stream in.

    After each write the block's resume point (``block_rows_done``) moves on, so a killed run
    restarts the block from its first unwritten chunk row. Blocks are chunk-aligned, so blocks
    never share a chunk and writers need no locks.
    """

    def __init__(self, path: Path, block: Block, start_row: int, chunk: int,
                 confidence: bool = True) -> None:
        self.group = zarr.open_group(str(path), mode="r+")
        self.block, self.chunk, self.confidence = block, chunk, confidence
        self.next_row = start_row  # first core row not yet written
        self._labels: list[np.ndarray] = []
        self._conf: list[np.ndarray] = []
        self._rows = 0

    def add(self, labels: np.ndarray, confidence: np.ndarray) -> None:
        """Append the next finished rows (in order); write every complete chunk row."""
        self._labels.append(labels)
        self._conf.append(confidence)
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
        self.group["block_done"][b.row, b.col] = 1

    def _write(self, n: int) -> None:
        labels = np.concatenate(self._labels)
        conf = np.concatenate(self._conf)
        b = self.block
        y0 = b.row_off + self.next_row
        region = (slice(y0, y0 + n), slice(b.col_off, b.col_off + b.width))
        self.group["labels"][region] = labels[:n]
        if self.confidence:
            self.group["confidence"][region] = conf[:n]
        self.next_row += n
        self.group["block_rows_done"][b.row, b.col] = self.next_row
        self._labels, self._conf = [labels[n:]], [conf[n:]]
        self._rows -= n


def finalize_store(path: Path, final: Path, summary: dict[str, Any]) -> Path:
    """Mark complete, consolidate metadata and move the store to its final path."""
    group = zarr.open_group(str(path), mode="r+")
    group.attrs.update({"status": "complete", **summary})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(str(path))
    final = Path(final)
    trash = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, trash)
    os.replace(path, final)
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    return final


def open_labels(path: Path) -> zarr.Array:
    """The labels array of a store, for block-wise reading."""
    return zarr.open_array(str(path), path="labels", mode="r")
