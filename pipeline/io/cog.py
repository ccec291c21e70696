"""Cloud-Optimized GeoTIFF of the labels, assembled from blocks, with GDAL's ``.aux.xml``
sidecar (category names, raster attribute table) beside it.

The expensive work is done block by block wherever ``map_fn`` sends it (this process, or the
Dask workers of a scheduler: :mod:`pipeline.segment.vectorize_blocks`): a block reads its
labels, computes the overview levels of its window (:mod:`pipeline.io.overviews`, GDAL's
rules, so they do not depend on how the scene is cut), has GDAL compress its tiles (a tiled
GeoTIFF in memory with the file's tile size, codec and nodata: GDAL's codecs and edge-tile
padding) and returns the compressed tiles, its per-class pixel counts and, for the overview
levels whose tiles span several blocks, the small array of its window. The client spools the
tiles to a temporary file as they come, makes the coarse levels from the stitched arrays (at
most 1/64 of the scene), then writes the file as GDAL's COG driver lays it out
(:mod:`pipeline.io.cog_layout`) with the tags GDAL writes, taken from a sparse header file
that rasterio creates with the same size, georeferencing, nodata, palette and metadata.

The bytes do not depend on the block size, on where the blocks ran or on how many workers
there were.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from pipeline.io.cog_layout import Image, Layout, Tag, overview_tags, read_tags
from pipeline.io.overviews import Method, mode_chunk_rows, reduce, size_at, source_span
from pipeline.io.pam import aux_path, write_pam_sidecar
from pipeline.labels import NODATA

MIN_BLOCK = 2048  # COG blocks are at least this wide (pixels), and squares
MAX_BLOCK = 16384  # ... and at most this, unless the tile alone is wider


def overview_factors(height: int, width: int, tile: int) -> list[int]:
    """Powers of two until the smallest overview fits in one tile."""
    factors, f = [], 2
    while max(height, width) / (f // 2) > tile:
        factors.append(f)
        f *= 2
    return factors


def overview_tile(tile: int) -> int:
    """The tile edge of the overviews: GDAL keeps the image's for a power of two from 64 to
    4096, else uses 128 (``GTIFFGetOverviewBlockSize``, GDAL_TIFF_OVR_BLOCKSIZE unset)."""
    return tile if 64 <= tile <= 4096 and tile & (tile - 1) == 0 else 128


def cog_block_size(tile: int) -> int:
    """Edge of the COG's blocks: a multiple of the tile such that the overview levels 2 and 4
    of a block are whole overview tiles, at least :data:`MIN_BLOCK` (2048 for tile 512 or 128;
    4608 for tile 144). Where that would exceed :data:`MAX_BLOCK` (odd tile sizes), whole
    tiles only: the overviews are then made in the client from level 2 on."""
    unit = math.lcm(tile, 4 * overview_tile(tile))
    if unit > MAX_BLOCK:
        unit = tile
    return unit * max(1, -(-MIN_BLOCK // unit))


@dataclass(frozen=True)
class CogPlan:
    """The levels, tiles and blocks of one COG: small, sent with every block."""

    height: int
    width: int
    tile: int
    compress: str
    method: Method
    block: int

    @property
    def factors(self) -> list[int]:
        """Overview factors (2, 4, ...)."""
        return overview_factors(self.height, self.width, self.tile)

    @property
    def levels(self) -> int:
        """Number of images: full resolution and the overviews."""
        return 1 + len(self.factors)

    @property
    def ovr_tile(self) -> int:
        """Tile edge of the overviews (:func:`overview_tile`)."""
        return overview_tile(self.tile)

    def level_tile(self, level: int) -> int:
        """Tile edge of ``level`` (0: full resolution, k: the overview of factor 2**k)."""
        return self.tile if level == 0 else self.ovr_tile

    def level_shape(self, level: int) -> tuple[int, int]:
        """(rows, columns) of ``level``: ``ceil(n / 2**level)`` each, as GDAL sizes them."""
        f = 2 ** level
        return size_at(self.height, f), size_at(self.width, f)

    @property
    def local(self) -> int:
        """The last level whose tiles a block makes itself: each block's window of it is
        whole tiles (all of them but the scene's last row and column)."""
        last = 0
        for level in range(1, self.levels):
            f = 2 ** level
            if self.block % f or (self.block // f) % self.ovr_tile:
                break
            last = level
        return last

    @property
    def coarse(self) -> int | None:
        """The first level made in the client from the blocks' windows, if any."""
        return self.local + 1 if self.local + 1 < self.levels else None

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """(row, column) of every block, row-major; blocks start at multiples of ``block``."""
        rows, cols = -(-self.height // self.block), -(-self.width // self.block)
        return [(r, c) for r in range(rows) for c in range(cols)]

    def window(self, block: tuple[int, int], level: int) -> tuple[int, int, int, int]:
        """The block's own pixels of ``level``: rows r0:r1, cols c0:c1 (global indices)."""
        f = 2 ** level
        r0, c0 = block[0] * self.block, block[1] * self.block
        r1, c1 = min(r0 + self.block, self.height), min(c0 + self.block, self.width)
        return r0 // f, size_at(r1, f), c0 // f, size_at(c1, f)

    def chunk_rows(self, level: int) -> int | None:
        """GDAL's chunk of rows when ``mode`` makes ``level + 1`` from ``level``."""
        if self.method != "mode":
            return None
        return mode_chunk_rows(self.level_shape(level)[1], self.level_tile(level))


def cog_plan(height: int, width: int, tile: int = 512, compress: str = "DEFLATE",
             resampling: str = "nearest") -> CogPlan:
    """The plan of :func:`write_cog` for a scene of ``height`` x ``width``."""
    if resampling not in ("nearest", "mode"):
        raise ValueError(f"overview resampling must be 'nearest' or 'mode', got {resampling!r}")
    return CogPlan(int(height), int(width), int(tile), str(compress).upper(),
                   resampling, cog_block_size(int(tile)))  # type: ignore[arg-type]


@dataclass
class BlockTiles:
    """What one block sends back: its compressed tiles of the levels 0..plan.local (per
    level: first tile row and column, tiles per row, the tiles row-major), its window of the
    first coarse level and its pixel count per value."""

    block: tuple[int, int]
    counts: np.ndarray
    tiles: dict[int, tuple[int, int, int, list[bytes]]] = field(default_factory=dict)
    coarse: np.ndarray | None = None


def cog_block(labels: Any, plan: CogPlan, block: tuple[int, int]) -> BlockTiles:
    """Worker side: read one block of ``labels`` (plus the few rows and columns before it
    that an odd-sized level reads), compute its levels, compress their tiles."""
    deepest = plan.coarse if plan.coarse is not None else plan.local
    need = {deepest: plan.window(block, deepest)}
    for level in range(deepest - 1, -1, -1):  # what each level must hold for the next one
        rows, cols = plan.level_shape(level)
        r0, r1, c0, c1 = need[level + 1]
        sr0, sr1 = source_span(rows, r0, r1, plan.method, plan.chunk_rows(level))
        sc0, sc1 = source_span(cols, c0, c1, plan.method)
        w = plan.window(block, level)
        need[level] = (min(w[0], sr0), max(w[1], sr1), min(w[2], sc0), max(w[3], sc1))
    r0, r1, c0, c1 = need[0]
    arrays = {0: np.asarray(labels[r0:r1, c0:c1], dtype=np.uint8)}
    for level in range(1, deepest + 1):
        prev = need[level - 1]
        arrays[level] = reduce(arrays[level - 1], (prev[0], prev[2]),
                               plan.level_shape(level - 1), need[level], plan.method,
                               plan.chunk_rows(level - 1))
    result = BlockTiles(block, np.zeros(256, np.int64))
    for level in range(deepest + 1):
        w, n = plan.window(block, level), need[level]
        own = arrays[level][w[0] - n[0]:w[1] - n[0], w[2] - n[2]:w[3] - n[2]]
        if level == 0:
            result.counts = np.bincount(own.ravel(), minlength=256).astype(np.int64)
        if level <= plan.local:
            t = plan.level_tile(level)
            result.tiles[level] = (w[0] // t, w[2] // t, -(-own.shape[1] // t),
                                   encode_tiles(own, t, plan.compress))
        else:
            result.coarse = np.ascontiguousarray(own)
    return result


def encode_tiles(array: np.ndarray, tile: int, compress: str) -> list[bytes]:
    """The tiles of ``array`` (row-major) as GDAL compresses them in a tiled GeoTIFF with
    nodata 255, edge tiles padded as GDAL pads them."""
    height, width = array.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1,
               "dtype": "uint8", "nodata": NODATA, "tiled": True, "blockxsize": tile,
               "blockysize": tile, "compress": compress}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write(array, 1)
            data = mem.read()
    return _tiles_of(data)


def _tiles_of(tiff: bytes) -> list[bytes]:
    with tifffile.TiffFile(io.BytesIO(tiff)) as tif:
        page = tif.pages.first
        return [tiff[o:o + n] for o, n in zip(page.dataoffsets, page.databytecounts,
                                              strict=True)]


def header_tags(plan: CogPlan, *, transform: Affine, crs_wkt: str | None,
                class_names: list[str], colors: list[tuple[int, int, int]]) -> list[Tag]:
    """The full-resolution IFD's tags as GDAL writes them: rasterio creates a sparse tiled
    GeoTIFF (nothing written) with the COG's size, tiling, codec, georeferencing, nodata,
    palette (nodata transparent), band description and class tags, and its tags are taken
    as they are (TileOffsets and TileByteCounts are replaced)."""
    profile = {
        "driver": "GTiff", "width": plan.width, "height": plan.height, "count": 1,
        "dtype": "uint8", "nodata": NODATA, "transform": transform, "crs": crs_wkt,
        "tiled": True, "blockxsize": plan.tile, "blockysize": plan.tile,
        "compress": plan.compress, "SPARSE_OK": "TRUE", "BIGTIFF": "NO",
    }
    palette = {i: tuple(colors[i]) + (255,) for i in range(len(colors))}
    palette[NODATA] = (0, 0, 0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write_colormap(1, palette)
                dst.set_band_description(1, "class label")
                dst.update_tags(1, **{f"class_{i}": n for i, n in enumerate(class_names)})
                dst.update_tags(CLASS_NAMES=",".join(class_names))
            data = mem.read()
    return [t for t in read_tags(data) if t.code not in (324, 325)]


def bigtiff_if_safer(plan: CogPlan) -> bool:
    """GDAL's ``BIGTIFF=IF_SAFER`` for this COG (``GTiffDataset::CreateLL`` with the space
    ``CreateCopy`` adds for copied overviews): the full-resolution tiles uncompressed (edge
    tiles whole) plus the overviews exceed 2e9 bytes. (A classic file that would still pass
    4 GiB, which compressed labels do not, is written as a BigTIFF all the same.)"""
    t = plan.tile
    size = -(-plan.height // t) * -(-plan.width // t) * t * t
    for level in range(1, plan.levels):
        h, w = plan.level_shape(level)
        size += h * w
    return size > 2_000_000_000


class _Spool:
    """The tiles as they arrive, appended to a temporary file: (level, row, col) -> where."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = open(path, "w+b")  # noqa: SIM115 - closed by close()
        self.at: dict[tuple[int, int, int], tuple[int, int]] = {}
        self.end = 0

    def add(self, level: int, row0: int, col0: int, per_row: int,
            tiles: list[bytes]) -> None:
        for k, data in enumerate(tiles):
            self.fh.write(data)
            self.at[level, row0 + k // per_row, col0 + k % per_row] = (self.end, len(data))
            self.end += len(data)

    def read(self, level: int, row: int, col: int) -> bytes:
        offset, size = self.at[level, row, col]
        self.fh.seek(offset)
        data = self.fh.read(size)
        return data

    def close(self) -> None:
        self.fh.close()


def write_cog(
    labels: Any,
    out_path: Path,
    *,
    transform: Affine,
    crs_wkt: str | None,
    class_names: list[str],
    colors: list[tuple[int, int, int]],
    tile: int = 512,
    compress: str = "DEFLATE",
    resampling: str = "nearest",
    sidecar: bool = True,
    map_fn: Callable[..., Iterable[BlockTiles]] = map,
    histogram: np.ndarray | None = None,
) -> Path:
    """Write ``labels`` (2-D array-like, uint8, sliceable as ``labels[r0:r1, c0:c1]``) as a
    paletted COG with overviews (``overview_factors``, ``resampling`` "nearest" or "mode" as
    GDAL makes them); atomic via temporary files and a rename.

    The blocks are processed by ``map_fn(functools.partial(cog_block, labels, plan), blocks)``
    (``map`` in this process by default; :class:`pipeline.segment.vectorize_blocks.WorkerMap`
    sends them to Dask workers, which then read ``labels`` themselves), which returns their
    results in any order. With ``sidecar`` (the default) ``<out>.aux.xml`` follows with the
    class names and a raster attribute table holding each class's pixel count; a stale
    sidecar is removed otherwise. ``histogram`` (256 int64, optional) receives the pixels per
    label value (255 = nodata), summed from the blocks: nobody reads the labels again for it.
    """
    out_path = Path(out_path)
    height, width = (int(n) for n in labels.shape)
    plan = cog_plan(height, width, tile, compress, resampling)
    stem = f".{out_path.name}.{os.getpid()}"
    spool_path = out_path.with_name(f"{stem}.tmp-tiles")
    tmp = out_path.with_name(f"{stem}.cog.tif")
    counts = np.zeros(256, dtype=np.int64)
    coarse = None
    if plan.coarse is not None:
        coarse = np.full(plan.level_shape(plan.coarse), NODATA, np.uint8)
    spool = None
    try:
        spool = _Spool(spool_path)
        for result in map_fn(partial(cog_block, labels, plan), plan.blocks):
            counts += result.counts
            for level, (row0, col0, per_row, tiles) in result.tiles.items():
                spool.add(level, row0, col0, per_row, tiles)
            if coarse is not None and result.coarse is not None:
                w = plan.window(result.block, plan.coarse)
                coarse[w[0]:w[1], w[2]:w[3]] = result.coarse
        if coarse is not None:
            _coarse_levels(plan, coarse, spool)
        images = _images(plan, spool, header_tags(
            plan, transform=transform, crs_wkt=crs_wkt, class_names=class_names,
            colors=colors))
        layout = Layout(images, bigtiff=bigtiff_if_safer(plan))
        if layout.size > 0xFFFFFFFF and not layout.bigtiff:  # incompressible beyond IF_SAFER
            layout = Layout(images, bigtiff=True)
        grid = [_grid(plan, level) for level in range(plan.levels)]
        with open(tmp, "wb") as fh:
            layout.write(fh, lambda i, k: spool.read(i, k // grid[i][1], k % grid[i][1]))
        os.replace(tmp, out_path)
    finally:
        if spool is not None:
            spool.close()
        for p in (spool_path, tmp):
            p.unlink(missing_ok=True)
    if histogram is not None:
        histogram[:] = counts
    if sidecar:
        write_pam_sidecar(out_path, class_names, colors, counts.tolist())
    else:
        aux_path(out_path).unlink(missing_ok=True)
    return out_path


def _coarse_levels(plan: CogPlan, array: np.ndarray, spool: _Spool) -> None:
    """The levels from ``plan.coarse`` on, from the stitched first one, in this process."""
    t = plan.ovr_tile
    for level in range(plan.coarse, plan.levels):  # type: ignore[arg-type]
        if level > plan.coarse:
            rows, cols = plan.level_shape(level)
            array = reduce(array, (0, 0), plan.level_shape(level - 1), (0, rows, 0, cols),
                           plan.method, plan.chunk_rows(level - 1))
        spool.add(level, 0, 0, -(-array.shape[1] // t), encode_tiles(array, t, plan.compress))


def _grid(plan: CogPlan, level: int) -> tuple[int, int]:
    rows, cols = plan.level_shape(level)
    t = plan.level_tile(level)
    return -(-rows // t), -(-cols // t)


def _images(plan: CogPlan, spool: _Spool, main: list[Tag]) -> list[Image]:
    images = []
    for level in range(plan.levels):
        t = plan.level_tile(level)
        rows, cols = _grid(plan, level)
        sizes = tuple(spool.at[level, r, c][1] for r in range(rows) for c in range(cols))
        if level == 0:
            tags = tuple(main)
        else:
            h, w = plan.level_shape(level)
            tags = overview_tags(main, h, w, t)
        images.append(Image(tags, sizes, t * t))
    return images
