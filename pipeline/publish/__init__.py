"""What GIS clients and catalogues read beside the label raster: QGIS styles, STAC item,
preview image."""
