"""Fitting models without labels on crops of the user's rasters: pixel and feature k-means, and
STEGO's head training (feature cache, kNN pairs, correspondence loss, shift calibration)."""
