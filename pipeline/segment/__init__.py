"""A segment run: planning and validation, block inference (tiles, blend, argmax), Dask execution,
resume receipts and the run summary, in the order the segment flow calls them."""
