"""Block-wise vectorizing of a class raster into one polygon layer.

The label raster (``uint8`` class ids, ``255`` = nodata) may be far larger than memory. It is
read in ``block_size`` squares (plus a halo when sieving), each block is optionally sieved
(:func:`sieve`, seamless thanks to the halo) and polygonized with 4-connectivity in integer pixel
coordinates of the whole raster. Polygons that touch an interior block seam ("seam pieces") are
held back and, at the end, pieces of the same class sharing a boundary of positive length are
unioned, so that every 4-connected raster region becomes exactly one polygon (and the polygons
are the same as with one single block). Shared boundaries are found exactly from the pieces'
ring segments lying on seam lines (integer pixel coordinates), not by geometric predicates. All
other polygons are written as soon as their block is done, so memory stays bounded by one block
plus the seam pieces.

Output attributes: ``class_id``, ``class_name`` (``class_<id>`` for ids beyond ``class_names``),
``area_m2`` and ``perimeter_m``: planar (times the CRS unit factor) in a projected CRS, geodesic on
the CRS ellipsoid in a geographic CRS, NaN without a CRS. Simplification is applied per polygon,
so with ``simplify_tolerance > 0`` neighbouring polygons no longer share boundaries exactly.

Modules, each depending only on those listed before it: ``sieve`` (small-region sieving),
``measure`` (area, perimeter and WKB of the polygons to write), ``seams`` (exact seam merging),
``blocks`` (the per-block work), ``writer`` (the layer and its atomic temporary file) and
``run`` (:func:`vectorize_labels`, the driver).
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
