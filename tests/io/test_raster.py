"""Reading input rasters: validation, band selection, scaling, nodata, padding."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.io.raster import compute_scaling, open_raster_info, read_window
from tests.conftest import write_raster


def _rgb(h=32, w=40, seed=0, dtype=np.uint8, high=255):
    return np.random.default_rng(seed).integers(1, high, size=(3, h, w)).astype(dtype)


def test_uint8_is_used_as_is(tmp_path):
    data = _rgb()
    info = open_raster_info(write_raster(tmp_path / "a.tif", data))
    scaling = compute_scaling(info)
    img, valid = read_window(info, scaling, 0, 0, 32, 40)
    assert scaling.kind == "uint8"
    np.testing.assert_allclose(img, data / 255.0, atol=1e-6)
    assert valid.all()


def test_uint16_is_scaled_by_robust_percentiles_once_per_scene(tmp_path):
    data = _rgb(64, 64, dtype=np.uint16, high=4000)
    data[0, 0, 0] = 65000  # an outlier must not stretch the range
    info = open_raster_info(write_raster(tmp_path / "a.tif", data))
    scaling = compute_scaling(info, (2, 98))
    assert scaling.kind == "percentile"
    assert scaling.high[0] < 5000
    np.testing.assert_allclose(scaling.low[1], np.percentile(data[1], 2), rtol=0.02)
    img, _ = read_window(info, scaling, 0, 0, 64, 64)
    assert img.min() >= 0 and img.max() <= 1 and img[0, 0, 0] == 1.0


def test_nodata_comes_from_the_files_mask(tmp_path):
    mask = np.ones((32, 40), dtype=bool)
    mask[:5] = False
    info = open_raster_info(write_raster(tmp_path / "a.tif", _rgb(), mask=mask))
    _, valid = read_window(info, compute_scaling(info), 0, 0, 32, 40)
    np.testing.assert_array_equal(valid, mask)


def test_nodata_value_is_honoured_too(tmp_path):
    data = _rgb()
    data[:, :3, :] = 0
    info = open_raster_info(write_raster(tmp_path / "a.tif", data, nodata=0))
    _, valid = read_window(info, compute_scaling(info), 0, 0, 32, 40)
    assert not valid[:3].any() and valid[3:].all()


def test_nan_and_inf_in_float_input_are_nodata(tmp_path):
    data = _rgb(dtype=np.float32)
    data[0, 1, 1] = np.nan
    data[2, 2, 2] = np.inf
    info = open_raster_info(write_raster(tmp_path / "a.tif", data))
    img, valid = read_window(info, compute_scaling(info), 0, 0, 32, 40)
    assert not valid[1, 1] and not valid[2, 2] and valid.sum() == 32 * 40 - 2
    assert np.isfinite(img).all()


def test_windows_past_the_edge_are_reflect_padded_and_invalid(tmp_path):
    data = _rgb(8, 8)
    info = open_raster_info(write_raster(tmp_path / "a.tif", data))
    img, valid = read_window(info, compute_scaling(info), -3, -2, 14, 12)
    assert img.shape == (3, 14, 12)
    assert valid[3:11, 2:10].all() and valid.sum() == 64
    expected = np.pad(data / 255.0, ((0, 0), (3, 3), (2, 2)), mode="reflect")
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_band_selection_picks_and_repeats_bands(tmp_path):
    data = np.stack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30, 40)])
    info = open_raster_info(write_raster(tmp_path / "a.tif", data), bands=[4, 1, 1])
    img, _ = read_window(info, compute_scaling(info), 0, 0, 8, 8)
    np.testing.assert_allclose(img[:, 0, 0], np.array([40, 10, 10]) / 255.0, atol=1e-6)


def test_default_bands_are_the_first_three(tmp_path):
    data = np.stack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30, 40)])
    info = open_raster_info(write_raster(tmp_path / "a.tif", data))
    assert info.bands == (1, 2, 3)


def _error(fn) -> str:
    with pytest.raises(InputError) as exc:
        fn()
    return str(exc.value)


def test_bad_inputs_get_one_line_errors_naming_the_file(tmp_path):
    single = write_raster(tmp_path / "pan.tif", _rgb()[:1])
    text = tmp_path / "notes.tif"
    text.write_text("hello")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    cplx = write_raster(tmp_path / "c.tif", _rgb().astype(np.complex64))
    cases = {
        "file not found": lambda: open_raster_info(tmp_path / "missing.tif"),
        "is a directory": lambda: open_raster_info(tmp_path),
        "not a raster": lambda: open_raster_info(text),
        "empty (0-byte)": lambda: open_raster_info(empty),
        "has 1 band(s)": lambda: open_raster_info(single),
        "out of range": lambda: open_raster_info(single, bands=[1, 2, 1]),
        "exactly 3 bands": lambda: open_raster_info(single, bands=[1]),
        "unsupported data type complex64": lambda: open_raster_info(cplx),
    }
    for expected, fn in cases.items():
        message = _error(fn)
        assert expected in message and "\n" not in message


def test_an_all_nodata_raster_is_refused_clearly(tmp_path):
    data = _rgb(dtype=np.uint16)
    path = write_raster(tmp_path / "a.tif", data, mask=np.zeros((32, 40), bool))
    assert "every pixel is nodata" in _error(lambda: compute_scaling(open_raster_info(path)))


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_a_band_without_any_valid_pixel_is_named(tmp_path, dtype):
    """One rule for every dtype: a chosen band with no valid pixel is an error naming it."""
    data = _rgb(dtype=dtype)
    nodata = None
    if np.dtype(dtype).kind == "f":
        data[1] = np.nan
        data[1, 3, 3] = np.inf  # inf is no more valid than NaN
    else:
        nodata = 0
        data[1] = 0
    path = write_raster(tmp_path / "a.tif", data, nodata=nodata)
    message = _error(lambda: compute_scaling(open_raster_info(path)))
    assert "band 2 has no valid pixel" in message and "--bands" in message
    # leaving the band out works, and so does a NaN-free band in its place
    assert compute_scaling(open_raster_info(path, bands=[1, 3, 3])).low is not None


def test_a_constant_band_and_sparse_valid_pixels_scale(tmp_path):
    data = np.full((3, 300, 300), np.nan, dtype=np.float32)
    data[:, 7, 11] = (5.0, 7.0, -3.0)  # one valid pixel: missed by the decimated sample
    data[:, 200, 150] = (5.0, 9.0, -1.0)
    data[0, 200, 150] = 5.0  # band 1 constant
    path = write_raster(tmp_path / "a.tif", data)
    info = open_raster_info(path)
    scaling = compute_scaling(info)
    assert scaling.low[0] == 5.0 and scaling.high[0] == 6.0  # constant: range widened to 1
    img, valid = read_window(info, scaling, 0, 0, 300, 300)
    assert valid.sum() == 2 and np.isfinite(img).all() and img[0][valid].max() == 0.0


def test_float64_beyond_float32_range_scales_finitely(tmp_path):
    data = np.random.default_rng(0).random((3, 16, 16)) * 1e300
    info = open_raster_info(write_raster(tmp_path / "a.tif", data))
    img, valid = read_window(info, compute_scaling(info), 0, 0, 16, 16)
    assert valid.all() and np.isfinite(img).all() and 0 < img.mean() < 1


def test_a_raster_without_crs_opens(tmp_path):
    info = open_raster_info(write_raster(tmp_path / "a.tif", _rgb(), crs=None))
    assert info.crs_wkt is None


def test_vrt_and_vsi_paths_are_read_like_files(tmp_path):
    import zipfile

    data = _rgb(16, 24)
    tif = write_raster(tmp_path / "a.tif", data)
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">a.tif</SourceFilename><SourceBand>{b}</SourceBand>'
        "</SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    vrt = tmp_path / "a.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="24" rasterYSize="16">{bands}</VRTDataset>')
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.write(tif, "inner/a.tif")
    for path in (str(vrt), f"/vsizip/{tmp_path / 'a.zip'}/inner/a.tif"):
        info = open_raster_info(path)
        img, valid = read_window(info, compute_scaling(info), 0, 0, 16, 24)
        np.testing.assert_allclose(img, data / 255.0, atol=1e-6)
        assert valid.all()


@pytest.mark.parametrize("window", [(-40, -7, 50, 30), (20, 30, 60, 50), (-5, 33, 90, 12),
                                    (0, 0, 37, 45)])
def test_padding_mirrors_the_raster_edges_whatever_the_window(tmp_path, window):
    """Any window is a slice of one padded image, so tiles never depend on who reads them."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, size=(3, 37, 45), dtype=np.uint8)
    info = open_raster_info(write_raster(tmp_path / "r.tif", data))
    scaling = compute_scaling(info)
    big, big_valid = read_window(info, scaling, -100, -100, 237, 245)
    r, c, h, w = window
    img, valid = read_window(info, scaling, r, c, h, w)
    np.testing.assert_array_equal(img, big[:, r + 100 : r + 100 + h, c + 100 : c + 100 + w])
    np.testing.assert_array_equal(valid, big_valid[r + 100 : r + 100 + h, c + 100 : c + 100 + w])
    inside = big_valid[100:137, 100:145]
    assert inside.all() and big_valid.sum() == inside.size
    np.testing.assert_array_equal(big[:, 100:137, 100:145], data / np.float32(255))


def test_input_identity_is_the_content_not_the_name_size_or_mtime(tmp_path):
    import os
    import shutil
    import zipfile

    import rasterio

    from pipeline.io.files import input_checksum

    data = np.random.default_rng(0).integers(0, 255, size=(3, 32, 32), dtype=np.uint8)
    path = write_raster(tmp_path / "a.tif", data)
    first = input_checksum(str(path))
    assert first["kind"] == "sha256"
    moved = tmp_path / "moved.tif"
    shutil.copy(path, moved)
    assert input_checksum(str(moved)) == first
    st = os.stat(path)
    with rasterio.open(path, "r+") as ds:  # uncompressed: rewritten in place, same size
        ds.write(np.full((1, 1), 7, dtype=np.uint8), 1, window=((3, 4), (3, 4)))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    assert input_checksum(str(path)) != first
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        z.write(moved, "moved.tif")
    zipped = input_checksum(f"/vsizip/{tmp_path}/z.zip/moved.tif")
    assert zipped["kind"] == "sha256"


def test_crops_drawn_again_are_read_once_and_get_their_own_arrays(tmp_path, monkeypatch):
    """A raster the size of the crop has one window: 40 draws read it once, as 40 crops."""
    import pipeline.io.crops as crops

    data = np.random.default_rng(0).integers(0, 255, size=(3, 32, 32), dtype=np.uint8)
    info = open_raster_info(write_raster(tmp_path / "small.tif", data))
    rasters = [(info, compute_scaling(info))]
    windows = crops.sample_crop_windows(rasters, 40, 32, seed=0)
    reads = []
    real = crops.read_crop
    monkeypatch.setattr(crops, "read_crop", lambda r, w: reads.append(w) or real(r, w))
    out = list(crops.read_crops(rasters, windows))
    assert len(out) == 40 and len(reads) == 1
    np.testing.assert_array_equal(out[0].image, out[39].image)
    out[0].image[:] = 0  # one crop's pixels are not another's
    assert out[39].image.any()
