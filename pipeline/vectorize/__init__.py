"""Block-wise vectorizing of a class raster into one polygon layer.

The label raster (``uint8`` class ids, ``255`` = nodata) may be far larger than memory. It is
read in ``block_size`` squares (2048² by default, plus a halo when sieving), each block is
optionally sieved (:func:`sieve`, seamless thanks to the halo) and polygonized with
4-connectivity in integer pixel coordinates of the whole raster: regions are labelled and
their boundaries traced into rings by compiled loops (``kernels``, numba), giving the same
polygons as GDAL's polygonize, about four times faster. Polygons that touch an interior block
seam ("seam pieces") are held back; pieces of the same class sharing a boundary of positive
length are unioned, so that every 4-connected raster region becomes exactly one polygon (and
the polygons are the same as with one single block). Shared boundaries are found exactly from
the pieces' ring segments lying on seam lines (integer pixel coordinates), not by geometric
predicates. All other polygons are streamed to the writer as soon as their block is done, and
each group of seam pieces as soon as every block around it is done, so memory stays bounded by
a few blocks plus the seam pieces of the blocks in flight, whatever the raster size.

Output attributes: ``class_id``, ``class_name`` (``class_<id>`` for ids beyond ``class_names``),
``area_m2`` and ``perimeter_m``: planar (times the CRS unit factor) in a projected CRS, geodesic on
the CRS ellipsoid in a geographic CRS, NaN without a CRS. Simplification is applied per polygon,
so with ``simplify_tolerance > 0`` neighbouring polygons no longer share boundaries exactly.

Modules, each depending only on those listed before it: ``kernels`` (compiled labelling,
sieve counts and ring tracing), ``sieve`` (small-region sieving), ``measure`` (area, perimeter
and WKB of the polygons to write), ``seams`` (exact seam merging), ``blocks`` (the per-block
work), ``pool`` (seam pieces waiting for their neighbour blocks), ``writer`` (one streamed
write of the layer and its atomic temporary file) and ``run`` (:func:`vectorize_labels`, the
driver).
"""

from pipeline.labels import NODATA
from pipeline.vectorize.blocks import BlockResult, BlockTask, block_tasks, process_block
from pipeline.vectorize.measure import Features, make_features
from pipeline.vectorize.run import VectorizeStats, vectorize_labels
from pipeline.vectorize.seams import merge_seam_pieces
from pipeline.vectorize.sieve import sieve

__all__ = [
    "NODATA",
    "BlockResult",
    "BlockTask",
    "Features",
    "VectorizeStats",
    "block_tasks",
    "make_features",
    "merge_seam_pieces",
    "process_block",
    "sieve",
    "vectorize_labels",
]
