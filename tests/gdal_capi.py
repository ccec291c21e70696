"""GDAL's own C API through ctypes, on the libgdal inside the rasterio or pyogrio wheel: tests
read outputs as GDAL clients (QGIS, gdalinfo) do, not through the project's readers."""

from __future__ import annotations

import ctypes
import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

GDAL_OF_RASTER, GDAL_OF_READONLY = 0x02, 0x00
_c = ctypes.c_void_p


def wheel_libgdal(package: str) -> Path | None:
    """The libgdal bundled in a wheel (``rasterio`` or ``pyogrio``), or None."""
    mod = __import__(package)
    hits = glob.glob(os.path.join(os.path.dirname(mod.__file__), "..", f"{package}.libs",
                                  "libgdal*.so*"))
    return Path(hits[0]) if hits else None


class Gdal:
    """The few GDAL C functions the tests call."""

    def __init__(self, libpath: Path) -> None:
        lib = ctypes.CDLL(str(libpath))
        lib.GDALAllRegister()
        sig = {
            "GDALVersionInfo": (ctypes.c_char_p, [ctypes.c_char_p]),
            "GDALOpenEx": (_c, [ctypes.c_char_p, ctypes.c_uint, _c, _c, _c]),
            "GDALClose": (None, [_c]),
            "GDALGetGeoTransform": (ctypes.c_int, [_c, ctypes.POINTER(ctypes.c_double)]),
            "GDALGetProjectionRef": (ctypes.c_char_p, [_c]),
            "GDALGetRasterXSize": (ctypes.c_int, [_c]),
            "GDALGetRasterYSize": (ctypes.c_int, [_c]),
            "GDALGetRasterBand": (_c, [_c, ctypes.c_int]),
            "GDALGetRasterNoDataValue": (ctypes.c_double, [_c, ctypes.POINTER(ctypes.c_int)]),
            "GDALGetRasterCategoryNames": (ctypes.POINTER(ctypes.c_char_p), [_c]),
            "GDALGetDefaultRAT": (_c, [_c]),
            "GDALRATGetColumnCount": (ctypes.c_int, [_c]),
            "GDALRATGetRowCount": (ctypes.c_int, [_c]),
            "GDALRATGetNameOfCol": (ctypes.c_char_p, [_c, ctypes.c_int]),
            "GDALRATGetUsageOfCol": (ctypes.c_int, [_c, ctypes.c_int]),
            "GDALRATGetValueAsString": (ctypes.c_char_p, [_c, ctypes.c_int, ctypes.c_int]),
            "GDALGetRasterScale": (ctypes.c_double, [_c, ctypes.POINTER(ctypes.c_int)]),
        }
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.lib = lib
        self.version = lib.GDALVersionInfo(b"RELEASE_NAME").decode()

    def describe(self, name: str) -> dict[str, Any]:
        """Size, geotransform, CRS WKT, band 1 nodata/scale, category names and RAT rows."""
        lib = self.lib
        ds = lib.GDALOpenEx(name.encode(), GDAL_OF_RASTER | GDAL_OF_READONLY, None, None, None)
        if not ds:
            raise OSError(f"GDAL {self.version} cannot open {name}")
        try:
            gt = (ctypes.c_double * 6)()
            has_gt = lib.GDALGetGeoTransform(ds, gt) == 0
            band = lib.GDALGetRasterBand(ds, 1)
            ok = ctypes.c_int()
            nodata = lib.GDALGetRasterNoDataValue(band, ctypes.byref(ok))
            has_nodata = ok.value
            scale = lib.GDALGetRasterScale(band, ctypes.byref(ok))
            names = []
            cats = lib.GDALGetRasterCategoryNames(band)
            while cats and cats[len(names)] is not None:
                names.append(cats[len(names)].decode())
            rat = lib.GDALGetDefaultRAT(band)
            columns, rows = [], []
            if rat:
                ncol = lib.GDALRATGetColumnCount(rat)
                columns = [(lib.GDALRATGetNameOfCol(rat, c).decode(),
                            lib.GDALRATGetUsageOfCol(rat, c)) for c in range(ncol)]
                rows = [[lib.GDALRATGetValueAsString(rat, r, c).decode() for c in range(ncol)]
                        for r in range(lib.GDALRATGetRowCount(rat))]
            return {
                "gdal": self.version,
                "size": [lib.GDALGetRasterXSize(ds), lib.GDALGetRasterYSize(ds)],
                "geotransform": list(gt) if has_gt else None,
                "wkt": (lib.GDALGetProjectionRef(ds) or b"").decode(),
                "nodata": nodata if has_nodata else None,
                "scale": scale if ok.value else None,
                "category_names": names, "rat_columns": columns, "rat_rows": rows,
            }
        finally:
            lib.GDALClose(ds)


def rasterio_gdal() -> Gdal:
    """GDAL as bundled in the rasterio wheel (the one `stego` itself runs)."""
    lib = wheel_libgdal("rasterio")
    if lib is None:
        pytest.skip("rasterio is not a wheel with a bundled libgdal")
    import rasterio  # noqa: F401 - loads the library with its data paths set

    return Gdal(lib)


def describe_with_pyogrio_gdal(name: str) -> dict[str, Any]:
    """``Gdal.describe`` through the (newer) libgdal of the pyogrio wheel, in a subprocess."""
    if wheel_libgdal("pyogrio") is None:
        pytest.skip("pyogrio is not a wheel with a bundled libgdal")
    code = ("import json, sys, pyogrio; from tests.gdal_capi import Gdal, wheel_libgdal; "
            "print(json.dumps(Gdal(wheel_libgdal('pyogrio')).describe(sys.argv[1])))")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True,
                          cwd=root, timeout=120)
    if proc.returncode:
        raise OSError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])
