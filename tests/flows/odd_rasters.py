"""Generated odd rasters for the property-based bad-input tests and benchmarks/bad_inputs_sweep.py:
dtypes, band counts, nodata patterns, sizes, transforms, palettes, VRTs with missing sources."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from hypothesis import strategies as st

DTYPES = ("uint8", "uint16", "int16", "float32", "float64", "complex64")
NODATA = ("none", "value", "mask", "alpha", "nan_band", "inf_pixels", "empty_band", "empty_rows",
          "all")
TRANSFORMS = ("north-up", "south-up", "rotated", "no-crs", "geographic")
SIDES = (1, 2, 5, 33, 70)  # 70: not a multiple of the 32 px tiles, blocks or chunks
FINAL = ("labels.tif", "labels.zarr", "polygons.gpkg", "run.json")
TILING = ["--set", "tiling.tile_size=32", "--set", "tiling.overlap=8",
          "--set", "tiling.block_size=64", "--set", "tiling.chunk_size=32",
          "--set", "dask.processes=false", "-q"]


@dataclass(frozen=True)
class Spec:
    """One generated input raster and how it is passed to `stego segment`."""

    dtype: str
    count: int
    height: int
    width: int
    nodata: str
    transform: str
    bands: tuple[int, ...] | None  # --bands
    kind: str = "tiff"  # tiff, palette, vrt-missing
    seed: int = 0


@st.composite
def specs(draw: Any) -> Spec:
    """A random odd raster: every family of the issue, small enough for the test budget."""
    kind = draw(st.sampled_from(("tiff",) * 8 + ("palette", "vrt-missing")))
    dtype = "uint8" if kind == "palette" else draw(st.sampled_from(DTYPES))
    count = 1 if kind == "palette" else draw(st.integers(1, 6))
    bands = draw(st.one_of(st.none(), st.lists(st.integers(1, count), min_size=3, max_size=3)
                           .map(tuple)))
    return Spec(dtype=dtype, count=count, height=draw(st.sampled_from(SIDES)),
                width=draw(st.sampled_from(SIDES)), nodata=draw(st.sampled_from(NODATA)),
                transform=draw(st.sampled_from(TRANSFORMS)), bands=bands, kind=kind,
                seed=draw(st.integers(0, 3)))


def _transform(kind: str) -> tuple[Affine, str | None]:
    if kind == "south-up":
        return Affine(0.5, 0, 500000, 0, 0.5, 5800000), "EPSG:32633"
    if kind == "rotated":
        return Affine.translation(500000, 5800000) * Affine.rotation(30) * \
            Affine.scale(0.5, -0.5), "EPSG:32633"
    if kind == "geographic":
        return Affine(1e-5, 0, 13.4, 0, -1e-5, 52.5), "EPSG:4326"
    if kind == "no-crs":
        return Affine(1, 0, 0, 0, 1, 0), None
    return Affine(0.5, 0, 500000, 0, -0.5, 5800000), "EPSG:32633"


def _data(spec: Spec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    shape = (spec.count, spec.height, spec.width)
    if spec.dtype == "int16":
        return rng.integers(-2000, 2000, size=shape).astype(np.int16)
    if spec.dtype.startswith(("float", "complex")):
        return (rng.normal(0, 100, size=shape) * 10.0 ** rng.integers(-3, 6)).astype(spec.dtype)
    return rng.integers(1, np.iinfo(spec.dtype).max, size=shape).astype(spec.dtype)


def write_spec(spec: Spec, folder: Path) -> Path:
    """Write the raster described by ``spec`` under ``folder``; its path."""
    transform, crs = _transform(spec.transform)
    data = _data(spec)
    nodata = None
    mask = None
    h, w = spec.height, spec.width
    floating = spec.dtype.startswith("float")
    if spec.nodata == "value" or (spec.nodata in ("empty_band", "empty_rows", "all")
                                  and not floating):
        nodata = 0
    fill = np.nan if floating else 0
    if spec.nodata == "value":
        data[:, : max(1, h // 3)] = 0
    elif spec.nodata == "mask":
        mask = np.ones((h, w), bool)
        mask[:, : max(1, w // 2)] = False
    elif spec.nodata == "nan_band" and floating:
        data[spec.seed % spec.count, : max(1, h // 2)] = np.nan
    elif spec.nodata == "inf_pixels" and floating:
        data[:, 0, 0] = np.inf
        data[-1, -1, -1] = -np.inf
    elif spec.nodata == "empty_band":
        data[spec.seed % spec.count] = fill
    elif spec.nodata == "empty_rows":
        data[:, ::2] = fill
    elif spec.nodata == "all":
        data[:] = fill
    extra: dict[str, Any] = {}
    if spec.nodata == "alpha" and spec.dtype in ("uint8", "uint16"):
        alpha = np.full((1, h, w), np.iinfo(spec.dtype).max, dtype=spec.dtype)
        alpha[0, : max(1, h // 2)] = 0
        data = np.concatenate([data, alpha])
        extra["photometric"] = "RGB" if spec.count == 3 else None
    path = folder / f"in_{spec.kind}.tif"
    profile = {"driver": "GTiff", "width": w, "height": h, "count": data.shape[0],
               "dtype": spec.dtype, "transform": transform, "nodata": nodata}
    if crs:
        profile["crs"] = crs
    if extra.get("photometric"):
        profile["photometric"] = extra["photometric"]
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if spec.nodata == "alpha" and data.shape[0] > spec.count:
            from rasterio.enums import ColorInterp

            interp = [ColorInterp.gray] * spec.count + [ColorInterp.alpha]
            dst.colorinterp = interp
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)
        if spec.kind == "palette":
            dst.write_colormap(1, {i: (i, 255 - i, (7 * i) % 256, 255) for i in range(256)})
    if spec.kind == "vrt-missing":
        return _vrt_with_missing_source(path, spec, folder)
    return path


def _vrt_with_missing_source(src: Path, spec: Spec, folder: Path) -> Path:
    """A VRT mosaic of ``src`` and a second tile that does not exist (deleted, unmounted)."""
    vrt = folder / "mosaic.vrt"
    gdt = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32",
           "float64": "Float64", "complex64": "CFloat32"}[spec.dtype]
    bands = []
    for b in range(1, spec.count + 1):
        sources = "".join(
            f"<SimpleSource><SourceFilename relativeToVRT=\"1\">{name}</SourceFilename>"
            f"<SourceBand>{b}</SourceBand><SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{spec.width}\" "
            f"ySize=\"{spec.height}\"/><DstRect xOff=\"{off}\" yOff=\"0\" xSize=\"{spec.width}\" "
            f"ySize=\"{spec.height}\"/></SimpleSource>"
            for name, off in ((src.name, 0), ("missing_tile.tif", spec.width)))
        bands.append(f"<VRTRasterBand dataType=\"{gdt}\" band=\"{b}\">{sources}</VRTRasterBand>")
    vrt.write_text(f"<VRTDataset rasterXSize=\"{2 * spec.width}\" rasterYSize=\"{spec.height}\">"
                   + "".join(bands) + "</VRTDataset>")
    return vrt


def segment_argv(spec: Spec, src: Path, model: Path, out: Path) -> list[str]:
    """`stego segment` arguments for a generated input."""
    argv = ["segment", str(src), "--model", str(model), "--out", str(out), *TILING]
    if spec.bands is not None:
        argv += ["--bands", ",".join(map(str, spec.bands))]
    return argv


def check_contract(spec: Spec, src: Path, out: Path, code: int, err: str,
                   seconds: float, bound_s: float) -> str:
    """Assert the contract of one run; "ok" or "error: …" (its one line)."""
    assert seconds < bound_s, f"{spec}: took {seconds:.1f} s"
    assert code in (0, 2), f"{spec}: exit {code}\n{err}"
    if code == 0:
        with rasterio.open(out / "labels.tif") as ds:
            with rasterio.open(src) as inp:
                assert (ds.width, ds.height) == (inp.width, inp.height)
            labels = ds.read(1)
            assert ds.dtypes[0] == "uint8" and ds.nodata == 255
        doc = json.loads((out / "run.json").read_text())
        assert doc["status"] == "complete"
        assert (labels != 255).any() or spec.nodata != "none"
        return "ok"
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, f"{spec}: {err}"
    assert err.rstrip().splitlines()[-1] == lines[0], f"{spec}: error not last\n{err}"
    assert "Traceback" not in err, err
    # the line names the file (or the flag) and the problem
    assert str(src) in lines[0] or "--bands" in lines[0] or "bands" in lines[0], lines[0]
    assert not any((out / name).exists() for name in FINAL), f"{spec}: half outputs"
    return lines[0]


def run_spec(spec: Spec, folder: Path, model: Path, bound_s: float = 60.0) -> dict[str, Any]:
    """Write, segment in-process, check the contract; a row for the sweep's table."""
    import contextlib
    import io

    from flows.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    src = write_spec(spec, folder)
    out = folder / "out"
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(segment_argv(spec, src, model, out))
    seconds = time.perf_counter() - t0
    result = check_contract(spec, src, out, code, err.getvalue(), seconds, bound_s)
    return {**asdict(spec), "exit": code, "seconds": round(seconds, 2), "result": result}
