"""Writers: the georeferenced Zarr store (v2 and v3) and the paletted Cloud-Optimized GeoTIFF,
checked through GDAL's own API and xarray/rioxarray as well as the project's readers."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline.io.cog import write_cog
from pipeline.io.zarr_store import finalize_store, open_labels, partial_stores, prepare_store
from pipeline.io.zarr_writes import RESUME, done_blocks, write_block
from pipeline.labels import BlockOutput
from pipeline.tiling import plan_blocks
from tests.gdal_capi import describe_with_pyogrio_gdal, rasterio_gdal
from tests.system_gis import system_tool, tool_version

T = Affine(0.05, 0, 368000, 0, -0.05, 5808000)
NAMES = ["road", "roof", "tree"]
COLORS = [(128, 128, 128), (200, 30, 30), (20, 120, 20)]


def _labels(h=300, w=200, seed=0):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
    lab[:10, :10] = 255
    return lab


def _store(tmp_path, lab, block=128, chunk=64, fingerprint="abc", crs="EPSG:25833", fmt=2):
    from rasterio.crs import CRS

    wkt = CRS.from_user_input(crs).to_wkt() if crs else None  # WKT1, as plan.info has it
    final = tmp_path / "labels.zarr"
    path, resumed = prepare_store(final, height=lab.shape[0], width=lab.shape[1], chunk=chunk,
                                  block_size=block, transform=T, crs_wkt=wkt, class_names=NAMES,
                                  colors=COLORS, fingerprint=fingerprint, zarr_format=fmt)
    return final, path, resumed


def _write_all(path, lab, block=128, only=None):
    for b in plan_blocks(*lab.shape, block):
        if only is not None and b.index not in only:
            continue
        core = lab[b.row_off : b.row_off + b.height, b.col_off : b.col_off + b.width]
        write_block(path, BlockOutput(b, core, _confidence(core)))


def _confidence(core):
    return np.where(core == 255, 255, 200).astype(np.uint8)


def _finished(tmp_path, fmt, lab=None):
    lab = _labels() if lab is None else lab
    final, path, _ = _store(tmp_path, lab, fmt=fmt)
    _write_all(path, lab)
    finalize_store(path, final, {})
    assert not path.exists() and not partial_stores(final)
    return final, lab


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_store_is_georeferenced_for_xarray_and_rioxarray(tmp_path, fmt):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    final, lab = _finished(tmp_path, fmt)
    ds = xr.open_zarr(final, mask_and_scale=False)
    assert ds["labels"].dims == ("y", "x")
    assert ds.rio.crs.to_epsg() == 25833
    da = ds["labels"].rio.write_crs(ds.rio.crs)
    assert tuple(da.rio.transform())[:6] == tuple(T)[:6]
    np.testing.assert_array_equal(np.asarray(ds["labels"].values), lab)
    np.testing.assert_array_equal(np.asarray(ds["confidence"].values), _confidence(lab))
    assert ds["labels"].attrs["class_names"] == NAMES
    assert ds.attrs["status"] == "complete"
    assert ds["x"].values[0] == pytest.approx(368000.025)
    # only georeferenced data in the group: the resume bookkeeping is gone
    assert set(ds.data_vars) == {"labels", "confidence", "margin"}
    assert set(ds.coords) == {"x", "y", "spatial_ref"}
    from pyproj import CRS

    wkt2 = ds.attrs["proj:wkt2"]
    assert wkt2.startswith("PROJCRS[") and CRS.from_wkt(wkt2).to_epsg() == 25833


@pytest.mark.parametrize("fmt", [2, 3])
def test_whole_dataset_reprojects_and_exports_with_rioxarray(tmp_path, fmt):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    final, lab = _finished(tmp_path, fmt)
    ds = xr.open_zarr(final)  # CF decoding: nodata masked in both variables
    assert float(ds["confidence"].max()) == 200 and int(ds["confidence"].isnull().sum()) == 100
    assert int(ds["labels"].isnull().sum()) == int((lab == 255).sum())
    wgs84 = ds.rio.reproject("EPSG:4326")
    assert wgs84.rio.crs.to_epsg() == 4326
    assert set(wgs84.data_vars) == {"labels", "confidence", "margin"}
    assert 13.0 < float(wgs84.x.mean()) < 13.2  # 368 km east in UTM 33N: 13.1° E
    out = tmp_path / "both.tif"
    ds.rio.to_raster(out)
    with rasterio.open(out) as tif:
        assert tif.count == 3 and tif.crs.to_epsg() == 25833  # labels, confidence, margin
        assert tif.transform.almost_equals(T, precision=1e-9)
        assert tif.nodata == 255
        band = {name: i + 1 for i, name in enumerate(tif.descriptions)}
        np.testing.assert_array_equal(tif.read(band["class label"]), lab)
        np.testing.assert_array_equal(tif.read(band["max class probability x 254"]),
                                      _confidence(lab))


def test_zarr_v2_opens_in_the_gdal_of_the_rasterio_wheel(tmp_path):
    final, lab = _finished(tmp_path, 2)
    info = rasterio_gdal().describe(f'ZARR:"{final}":/labels')
    assert info["size"] == [lab.shape[1], lab.shape[0]] and info["nodata"] == 255
    assert info["geotransform"] == pytest.approx(T.to_gdal(), rel=1e-9, abs=1e-9)
    assert 'AUTHORITY["EPSG","25833"]' in info["wkt"]
    conf = rasterio_gdal().describe(f'ZARR:"{final}":/confidence')
    assert conf["nodata"] == 255
    with rasterio.open(f'ZARR:"{final}":/labels') as ds:  # rasterio itself, as users call it
        assert ds.crs.to_epsg() == 25833 and ds.nodata == 255
        assert ds.transform.almost_equals(T, precision=1e-9)
        np.testing.assert_array_equal(ds.read(1), lab)


def test_zarr_v3_opens_in_gdal_3_11_and_later(tmp_path):
    final, lab = _finished(tmp_path, 3)
    try:
        info = describe_with_pyogrio_gdal(f'ZARR:"{final}":/labels')
    except OSError as exc:
        pytest.fail(f"GDAL (pyogrio wheel) cannot open the v3 store: {exc}")
    major, minor = (int(v) for v in info["gdal"].split(".")[:2])
    if (major, minor) < (3, 11):
        pytest.skip(f"the pyogrio wheel's GDAL {info['gdal']} predates Zarr v3's bytes codec")
    assert info["size"] == [lab.shape[1], lab.shape[0]] and info["nodata"] == 255
    assert info["geotransform"] == pytest.approx(T.to_gdal(), rel=1e-9, abs=1e-9)
    assert 'AUTHORITY["EPSG","25833"]' in info["wkt"]


@pytest.mark.parametrize("crs, transform", [
    ("EPSG:25833", T),  # easting, northing
    ("EPSG:4326", Affine(1e-6, 0, 13.06, 0, -1e-6, 52.41)),  # latitude first
    ("EPSG:32661", Affine(0.5, 0, 2000000, 0, -0.5, 1000000)),  # polar: northing first
], ids=["utm", "lat-lon", "polar"])
def test_zarr_v2_lands_in_place_in_the_system_gdal(tmp_path, crs, transform):
    """The oldest GDAL at hand (Debian 12: 3.6) places the store where the COG is. GDAL 3.6 put
    the CRS of a ``_CRS`` attribute on the wrong array dimensions (axis mapping 2,1: an
    EPSG:25833 scene near Potsdam at 58 E 2.4 N); the store's PAM file sets the mapping."""
    from pyproj import Transformer
    from rasterio.crs import CRS

    gdalinfo, locate = system_tool("gdalinfo"), system_tool("gdallocationinfo")
    lab = _labels()
    final = tmp_path / "labels.zarr"
    path, _ = prepare_store(final, height=lab.shape[0], width=lab.shape[1], chunk=64,
                            block_size=128, transform=transform,
                            crs_wkt=CRS.from_user_input(crs).to_wkt(), class_names=NAMES,
                            colors=COLORS, fingerprint="abc")
    _write_all(path, lab)
    finalize_store(path, final, {})
    name, version = f'ZARR:"{final}":/labels', tool_version(gdalinfo)
    info = json.loads(subprocess.run([gdalinfo, "-json", name], capture_output=True,
                                     text=True, timeout=120, check=True).stdout)
    assert info["coordinateSystem"]["wkt"], version
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    h, w = lab.shape
    corners = [to_wgs84.transform(*(transform * (c, r)))
               for c, r in ((0, 0), (0, h), (w, h), (w, 0))]
    extent = info["wgs84Extent"]["coordinates"][0][:4]
    assert np.allclose(extent, corners, atol=1e-7), (version, extent, corners)
    for row, col in ((150, 100), (20, 180), (290, 5)):
        lon, lat = to_wgs84.transform(*(transform * (col + 0.5, row + 0.5)))
        proc = subprocess.run([locate, "-valonly", "-wgs84", name, repr(lon), repr(lat)],
                              capture_output=True, text=True, timeout=120)
        assert proc.stdout.strip() == str(lab[row, col]), (version, proc.stderr)


@pytest.mark.parametrize("fmt", [2, 3])
def test_blocks_write_their_own_chunks_and_record_completion(tmp_path, fmt):
    import zarr

    lab = _labels()
    final, path, _ = _store(tmp_path, lab, fmt=fmt)
    assert zarr.open_group(str(path), mode="r").metadata.zarr_format == fmt
    _write_all(path, lab, only={0, 3})
    done = done_blocks(path)
    assert done == {(0, 0), (1, 1)}
    # reopening with the same fingerprint and format resumes; another one starts over
    assert _store(tmp_path, lab, fmt=fmt)[2] is True
    _write_all(path, lab, only={1, 2, 4, 5})
    assert RESUME in zarr.open_group(str(path), mode="r")
    finalize_store(path, final, {})
    np.testing.assert_array_equal(open_labels(final)[:], lab)
    assert RESUME not in zarr.open_group(str(final), mode="r")
    first = _store(tmp_path, lab, fmt=fmt)[1]
    _write_all(first, lab, only={0})
    _, other, resumed = _store(tmp_path, lab, fingerprint="other", fmt=fmt)
    assert resumed is False and done_blocks(other) == set()
    # another run's store is another directory: the earlier one is removed, never reused
    assert other != first and partial_stores(final) == [other]
    _write_all(other, lab, only={0})
    _, rebuilt, resumed = _store(tmp_path, lab, fmt=5 - fmt)  # the other format: rebuilt
    assert resumed is False and done_blocks(rebuilt) == set()
    assert partial_stores(final) == [rebuilt]


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "labels.tif.aux.xml"]


def test_cog_palette_holds_the_class_colours_and_a_transparent_nodata(tmp_path):
    """A uint8 GeoTIFF palette has 256 entries whatever one writes (TIFF's ColorMap holds
    2**bits; GDAL pads a short table and reads all 256, 3.6 to 3.12): the classes first, nodata
    255 transparent. The class list for clients is the attribute table and labels.qml."""
    out = write_cog(_labels(), tmp_path / "labels.tif", transform=T, crs_wkt="EPSG:25833",
                    class_names=NAMES, colors=COLORS)
    with rasterio.open(out) as ds:
        cmap = ds.colormap(1)
    assert len(cmap) == 256
    assert [cmap[i] for i in range(len(NAMES))] == [(*c, 255) for c in COLORS]
    assert cmap[255] == (0, 0, 0, 0)
    assert len(rasterio_gdal().describe(str(out))["rat_rows"]) == len(NAMES)


def test_class_names_and_attribute_table_travel_with_the_cog_through_gdal(tmp_path):
    lab = _labels(700, 900)
    out = write_cog(lab, tmp_path / "labels.tif", transform=T, crs_wkt="EPSG:25833",
                    class_names=NAMES, colors=COLORS, tile=256)
    sent = tmp_path / "colleague"  # the COG and its sidecar, copied elsewhere
    sent.mkdir()
    for p in (out, tmp_path / "labels.tif.aux.xml"):
        (sent / p.name).write_bytes(p.read_bytes())
    info = rasterio_gdal().describe(str(sent / "labels.tif"))
    assert info["category_names"] == NAMES
    names = [name for name, _ in info["rat_columns"]]
    usage = dict(info["rat_columns"])
    assert names == ["Value", "Class_Name", "Red", "Green", "Blue", "Count"]
    assert (usage["Value"], usage["Class_Name"], usage["Count"]) == (5, 2, 1)  # GFU_MinMax..
    rows = info["rat_rows"]
    assert [r[1] for r in rows] == NAMES
    for value, row in enumerate(rows):
        assert int(row[0]) == value
        assert tuple(int(v) for v in row[2:5]) == COLORS[value]
        assert int(float(row[5])) == int((lab == value).sum())
    # a COG written without the sidecar leaves no stale one behind
    write_cog(lab, out, transform=T, crs_wkt="EPSG:25833", class_names=NAMES, colors=COLORS,
              tile=256, sidecar=False)
    assert not (tmp_path / "labels.tif.aux.xml").exists()
    assert rasterio_gdal().describe(str(out))["category_names"] == []


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


@pytest.mark.parametrize("fmt", [2, 3])
def test_a_rerun_writes_the_same_store_bytes(tmp_path, fmt):
    """Deterministic output: no time stamps in chunks (gzip headers) or metadata."""
    import hashlib
    import os

    def digest(root):
        out = {}
        for folder, _, files in os.walk(root):
            for f in files:
                p = os.path.join(folder, f)
                out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
        return out

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _ = _finished(tmp_path / "a", fmt)
    import time

    time.sleep(1.1)  # gzip header times have a one-second resolution
    second, _ = _finished(tmp_path / "b", fmt)
    assert digest(first) == digest(second)


@pytest.mark.parametrize("fmt", [2, 3])
def test_a_block_of_an_earlier_run_cannot_write_into_a_later_runs_store(tmp_path, fmt):
    """The stale-write fence: a block whose client died keeps running; a rerun (here with
    another model: another fingerprint) takes the store, and every later write of the orphan
    is refused, so the rerun's store holds only the rerun's labels."""
    from pipeline.io.zarr_writes import BlockWriter, StaleRunError, store_token

    old = _labels(seed=1)
    new = _labels(seed=2)
    final, path, _ = _store(tmp_path, old, fmt=fmt)
    block = plan_blocks(*old.shape, 128)[0]
    orphan = BlockWriter(path, block, 0, 64, token=store_token(path))
    core = old[:block.height, :block.width]
    orphan.add(core[:64], _confidence(core[:64]))  # the first chunk row lands (its own run)
    late = orphan.group["labels"]  # the orphan's next write, already past its token check
    # the rerun makes its own store (and removes the orphan's)
    _, rerun, _ = _store(tmp_path, new, fingerprint="another model", fmt=fmt)
    assert rerun != path
    with pytest.raises(StaleRunError, match="another run has taken this store"):
        orphan.add(core[64:], _confidence(core[64:]))
    with pytest.raises(StaleRunError):
        orphan.finish()
    with pytest.raises(StaleRunError):  # a retried attempt of the orphan is refused at once
        BlockWriter(path, block, 64, 64, token=orphan.token)
    for b in plan_blocks(*new.shape, 128):
        c = new[b.row_off:b.row_off + b.height, b.col_off:b.col_off + b.width]
        write_block(rerun, BlockOutput(b, c, _confidence(c)), token=store_token(rerun))
    # the orphan passed its check before the rerun began and writes only now: its chunk goes
    # to its own (removed) run's directory, never into the rerun's store
    late[64:128, :128] = core[64:]
    finalize_store(rerun, final, {})
    assert not partial_stores(final)  # what the orphan recreated is cleaned up
    np.testing.assert_array_equal(open_labels(final)[:], new)
    import zarr

    assert "run_token" not in zarr.open_group(str(final), mode="r").attrs


def test_a_resumed_run_fences_the_blocks_of_the_run_it_resumes(tmp_path):
    """Same fingerprint: the resumed run takes over, and the killed run's blocks stop."""
    from pipeline.io.zarr_writes import BlockWriter, StaleRunError, store_token

    lab = _labels()
    final, path, _ = _store(tmp_path, lab)
    token = store_token(path)
    assert _store(tmp_path, lab)[1:] == (path, True)  # resumed in the same store
    assert store_token(path) != token
    with pytest.raises(StaleRunError):
        BlockWriter(path, plan_blocks(*lab.shape, 128)[0], 0, 64, token=token)
