"""Writers: the georeferenced Zarr store and the paletted Cloud-Optimized GeoTIFF."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline.io.cog import write_cog
from pipeline.io.zarr_store import (
    done_blocks,
    finalize_store,
    open_labels,
    partial_path,
    prepare_store,
    write_block,
)
from pipeline.labels import BlockOutput
from pipeline.tiling import plan_blocks

T = Affine(0.05, 0, 368000, 0, -0.05, 5808000)
NAMES = ["road", "roof", "tree"]
COLORS = [(128, 128, 128), (200, 30, 30), (20, 120, 20)]


def _labels(h=300, w=200, seed=0):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
    lab[:10, :10] = 255
    return lab


def _store(tmp_path, lab, block=128, chunk=64, fingerprint="abc", crs="EPSG:25833"):
    from pyproj import CRS

    wkt = CRS.from_user_input(crs).to_wkt() if crs else None
    final = tmp_path / "labels.zarr"
    path, resumed = prepare_store(final, height=lab.shape[0], width=lab.shape[1], chunk=chunk,
                                  block_size=block, transform=T, crs_wkt=wkt, class_names=NAMES,
                                  colors=COLORS, fingerprint=fingerprint)
    return final, path, resumed


def _write_all(path, lab, block=128, only=None):
    for b in plan_blocks(*lab.shape, block):
        if only is not None and b.index not in only:
            continue
        core = lab[b.row_off : b.row_off + b.height, b.col_off : b.col_off + b.width]
        write_block(path, BlockOutput(b, core, (core != 255).astype(np.uint8) * 200))


def test_zarr_store_is_georeferenced_for_xarray_and_rioxarray(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    lab = _labels()
    final, path, _ = _store(tmp_path, lab)
    _write_all(path, lab)
    finalize_store(path, final, {})
    assert not partial_path(final).exists()
    ds = xr.open_zarr(final)
    assert ds["labels"].dims == ("y", "x")
    assert ds.rio.crs.to_epsg() == 25833
    da = ds["labels"].rio.write_crs(ds.rio.crs)
    assert tuple(da.rio.transform())[:6] == tuple(T)[:6]
    np.testing.assert_array_equal(np.asarray(ds["labels"].values), lab)
    assert ds["labels"].attrs["class_names"] == NAMES
    assert ds.attrs["status"] == "complete"
    assert ds["x"].values[0] == pytest.approx(368000.025)


def test_blocks_write_their_own_chunks_and_record_completion(tmp_path):
    lab = _labels()
    final, path, _ = _store(tmp_path, lab)
    _write_all(path, lab, only={0, 3})
    done = done_blocks(path)
    assert done == {(0, 0), (1, 1)}
    # reopening with the same fingerprint resumes; another fingerprint starts over
    assert _store(tmp_path, lab)[2] is True
    assert _store(tmp_path, lab, fingerprint="other")[2] is False
    assert done_blocks(partial_path(final)) == set()


def test_finalize_replaces_an_earlier_complete_store(tmp_path):
    lab = _labels()
    final, path, _ = _store(tmp_path, lab)
    _write_all(path, lab)
    finalize_store(path, final, {})
    lab2 = _labels(seed=1)
    _, path, _ = _store(tmp_path, lab2, fingerprint="new")
    _write_all(path, lab2)
    finalize_store(path, final, {})
    np.testing.assert_array_equal(open_labels(final)[:], lab2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr"]


def test_cog_is_valid_paletted_and_identical_to_the_labels(tmp_path):
    lab = _labels(700, 900)
    out = write_cog(lab, tmp_path / "labels.tif", transform=T, crs_wkt="EPSG:25833",
                    class_names=NAMES, colors=COLORS, tile=256)
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.profile["tiled"] and ds.profile["blockxsize"] == 256
        assert ds.overviews(1) == [2, 4]
        assert ds.nodata == 255 and ds.crs.to_epsg() == 25833 and ds.transform == T
        assert ds.colormap(1)[1][:3] == COLORS[1]
        assert ds.tags(1)["class_2"] == "tree"
        np.testing.assert_array_equal(ds.read(1), lab)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]


def test_overviews_use_nearest_or_mode_so_they_hold_only_class_values(tmp_path):
    lab = _labels(512, 512)
    for method in ("nearest", "mode"):
        out = write_cog(lab, tmp_path / f"{method}.tif", transform=T, crs_wkt=None,
                        class_names=NAMES, colors=COLORS, tile=128, resampling=method)
        with rasterio.open(out) as ds:
            ov = ds.read(1, out_shape=(128, 128))
            assert set(np.unique(ov)) <= {0, 1, 2, 255}
            assert ds.crs is None


def test_a_failed_cog_write_leaves_nothing_at_the_final_path(tmp_path):
    class Broken:
        shape = (600, 600)

        def __getitem__(self, key):
            raise OSError("disk gone")

    with pytest.raises(OSError):
        write_cog(Broken(), tmp_path / "labels.tif", transform=T, crs_wkt=None,
                  class_names=NAMES, colors=COLORS, tile=256)
    assert list(tmp_path.iterdir()) == []
