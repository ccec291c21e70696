"""Reading and writing files: rasters in (validation, scaling, windows, training crops), label
stores and GIS files out (Zarr, COG, GeoParquet), atomic JSON, input checksums, output locks."""
