"""stego-pipeline library: raster I/O, tiling, models, chunked inference, writers, vectorizing.

Nothing in this package imports Prefect; the flows in ``flows/`` compose these parts.
"""

__version__ = "0.1.0"
