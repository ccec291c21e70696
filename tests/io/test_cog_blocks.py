"""The labels COG assembled from blocks (:func:`pipeline.io.cog.write_cog`): every block reads its
labels, makes its overview levels and has GDAL compress its tiles, in the client or on Dask
workers; the client lays the tiles out as GDAL's COG driver does.

The reference is the path it replaced, kept here as ``gdal_cog``: rasterio writes a tiled
GeoTIFF, ``build_overviews`` makes the overviews, GDAL's COG driver copies it. The new file is
that file, byte for byte, whatever the block size and wherever the blocks ran. Two things are
GDAL's rules rather than ours, and are checked against GDAL itself here:

* ``mode`` (``pipeline.io.overviews``): the most frequent value that is not nodata; of equally
  frequent values, the one that reached that count first scanning the window row by row;
  nodata when the window holds nothing else; along an odd-sized level the windows are up to 3
  pixels wide; each level is made from the one before it; and windows are clipped to the rows
  GDAL reads at once (a chunk of a few MiB), which changes a row at each chunk edge of a level
  with an odd height (reproduced, see ``test_mode_clips_its_windows_at_gdal_s_chunks``).
* ``nearest``: pixel ``int(0.5 + i * n_prev / n)`` of the level before (``2 i`` for an even
  level, ``2 i - 1`` in the far half of an odd one).
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import tifffile
from affine import Affine
from rasterio.enums import Resampling

import pipeline.io.cog as cog
import pipeline.segment.vectorize_blocks as vectorize_blocks
from pipeline.config import DaskConfig
from pipeline.io.cog import cog_plan, overview_factors, write_cog
from pipeline.io.cog_layout import GHOST_AREA, TYPE_SIZE
from pipeline.io.overviews import reduce, source_span
from pipeline.io.zarr_store import finalize_store, prepare_store
from pipeline.io.zarr_writes import write_block
from pipeline.labels import NODATA, BlockOutput
from pipeline.tiling import plan_blocks

T = Affine(0.05, 0, 368000, 0, -0.05, 5808000)
NAMES = ["road", "roof", "tree", "water"]
COLORS = [(128, 128, 128), (200, 30, 30), (20, 120, 20), (30, 30, 200)]
STYLE = {"transform": T, "class_names": NAMES, "colors": COLORS}


def scene(height, width, seed=0):
    """Labels with patches, noise (ties in most 2 x 2 windows), a nodata corner and
    scattered nodata pixels."""
    rng = np.random.default_rng(seed)
    patches = np.kron(rng.integers(0, 4, (height // 16 + 1, width // 16 + 1)),
                      np.ones((16, 16), np.int64))[:height, :width]
    noise = rng.integers(0, 4, (height, width))
    lab = np.where(rng.random((height, width)) < 0.3, noise, patches).astype(np.uint8)
    lab[: height // 3, : width // 4] = NODATA  # whole tiles of nodata
    lab[rng.random((height, width)) < 0.05] = NODATA
    return lab


def gdal_cog(labels, out, *, crs_wkt, tile=512, compress="DEFLATE", resampling="nearest",
             bigtiff="IF_SAFER"):
    """The writer this replaced: a tiled GeoTIFF with GDAL's overviews, copied by the COG
    driver (``OVERVIEWS=FORCE_USE_EXISTING``)."""
    height, width = labels.shape
    tmp = out.with_name(out.name + ".build.tif")
    palette = {i: tuple(c) + (255,) for i, c in enumerate(COLORS)}
    palette[NODATA] = (0, 0, 0, 0)
    with rasterio.open(tmp, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="uint8", nodata=NODATA, transform=T, crs=crs_wkt, tiled=True,
                       blockxsize=tile, blockysize=tile, compress=compress,
                       BIGTIFF="IF_SAFER") as dst:
        dst.write(labels, 1)
        dst.write_colormap(1, palette)
        dst.set_band_description(1, "class label")
        dst.update_tags(1, **{f"class_{i}": n for i, n in enumerate(NAMES)})
        dst.update_tags(CLASS_NAMES=",".join(NAMES))
        factors = overview_factors(height, width, tile)
        if factors:
            dst.build_overviews(factors, getattr(Resampling, resampling))
            dst.update_tags(ns="rio_overview", resampling=resampling)
    rasterio.shutil.copy(tmp, out, driver="COG", COMPRESS=compress, BLOCKSIZE=tile,
                         OVERVIEWS="FORCE_USE_EXISTING" if factors else "NONE",
                         BIGTIFF=bigtiff)
    tmp.unlink()
    return out


def gdal_overviews(labels, factors, resampling, tile=128):
    """What ``build_overviews`` makes of ``labels`` (nodata 255, a palette), level by level."""
    with rasterio.MemoryFile() as mem:
        with mem.open(driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=1,
                      dtype="uint8", nodata=NODATA, tiled=True, blockxsize=tile,
                      blockysize=tile, compress="DEFLATE") as dst:
            dst.write(labels, 1)
            dst.write_colormap(1, {0: (1, 2, 3, 255), NODATA: (0, 0, 0, 0)})
            dst.build_overviews(factors, getattr(Resampling, resampling))
        levels = []
        for k in range(len(factors)):
            with mem.open(overview_level=k) as ds:
                levels.append(ds.read(1))
    return levels


def small_blocks(monkeypatch, minimum=1):
    """COG blocks as small as the tiles allow (512 px at tile 128): many blocks, seams."""
    monkeypatch.setattr(cog, "MIN_BLOCK", minimum)


def has_zstd():
    try:
        cog.encode_tiles(np.zeros((16, 16), np.uint8), 16, "ZSTD")
    except Exception:  # noqa: BLE001 - any refusal of the codec
        return False
    return True


# --------------------------------------------------------------------------------------------
# the file


def test_gdal_reads_a_cog_laid_out_as_its_cog_driver_lays_it_out(tmp_path, monkeypatch):
    small_blocks(monkeypatch)
    lab = scene(1100, 1300)
    out = write_cog(lab, tmp_path / "labels.tif", crs_wkt="EPSG:25833", tile=128, **STYLE)
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.overviews(1) == [2, 4, 8, 16]
    data = out.read_bytes()
    with tifffile.TiffFile(out) as tif:
        pages = list(tif.pages)
        assert not tif.is_bigtiff and [p.shape for p in pages] == [
            (1100, 1300), (550, 650), (275, 325), (138, 163), (69, 82)]
        ifd_end = max(p.offset + 2 + 12 * len(p.tags) + 4 for p in pages)
        values_end = max(t.valueoffset + t.count * TYPE_SIZE[int(t.dtype)]
                         for p in pages for t in p.tags)
        first_tile = min(min(p.dataoffsets) for p in pages)
        assert max(ifd_end, values_end) <= first_tile - 4  # every IFD before any tile
        assert pages[0].offset == 8 + len(GHOST_AREA) + 1  # right after the ghost area
        for older, newer in zip(pages, pages[1:], strict=False):  # smallest overview first
            assert max(newer.dataoffsets) < min(older.dataoffsets)
            assert newer.tags["NewSubfileType"].value == 1
            assert "GeoKeyDirectoryTag" not in newer.tags and "GDAL_METADATA" not in newer.tags
        for page in pages:
            offsets, counts = page.dataoffsets, page.databytecounts
            assert list(offsets) == sorted(offsets)  # row-major, one level after the other
            for o, n in zip(offsets, counts, strict=True):
                assert struct.unpack("<I", data[o - 4:o])[0] == n  # leader: the size
                assert data[o + n:o + n + 4] == data[o + n - 4:o + n]  # trailer: last 4
            for o, n, nxt in zip(offsets, counts, offsets[1:], strict=False):
                assert nxt == o + n + 8  # nothing between tiles
    assert data[8:8 + len(GHOST_AREA)].decode() == (
        "GDAL_STRUCTURAL_METADATA_SIZE=000140 bytes\nLAYOUT=IFDS_BEFORE_DATA\n"
        "BLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
        "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "labels.tif.aux.xml"]


@pytest.mark.parametrize("resampling", ["nearest", "mode"])
def test_pixels_overviews_and_tags_are_those_of_the_gdal_path(tmp_path, monkeypatch,
                                                              resampling):
    """A scene whose size is not a multiple of the tile or the block, nodata areas: the
    full-resolution pixels are the labels, every overview is what ``build_overviews`` makes,
    and georeferencing, nodata, palette and tags are the old writer's; in fact the file is."""
    small_blocks(monkeypatch)
    lab = scene(1100, 1300, seed=1)
    new = write_cog(lab, tmp_path / "new.tif", crs_wkt="EPSG:25833", tile=128,
                    resampling=resampling, **STYLE)
    old = gdal_cog(lab, tmp_path / "old.tif", crs_wkt="EPSG:25833", tile=128,
                   resampling=resampling)
    expected = gdal_overviews(lab, [2, 4, 8, 16], resampling)
    with rasterio.open(new) as ds, rasterio.open(old) as ref:
        np.testing.assert_array_equal(ds.read(1), lab)
        for k, level in enumerate(expected):
            with rasterio.open(new, overview_level=k) as ov:
                np.testing.assert_array_equal(ov.read(1), level)
        assert ds.crs == ref.crs and ds.transform == ref.transform == T
        assert ds.nodata == ref.nodata == NODATA
        assert ds.colormap(1) == ref.colormap(1) and ds.colormap(1)[NODATA] == (0, 0, 0, 0)
        assert ds.tags() == ref.tags() and ds.tags(1) == ref.tags(1)
        assert ds.descriptions == ref.descriptions == ("class label",)
        assert ds.tags(ns="rio_overview") == ref.tags(ns="rio_overview") == {}
    assert new.read_bytes() == old.read_bytes()
    assert (tmp_path / "new.tif.aux.xml").read_text().count("<Row ") == len(NAMES)


@pytest.mark.parametrize(("height", "width", "tile", "compress", "crs", "resampling"), [
    (300, 200, 128, "DEFLATE", "EPSG:25833", "nearest"),  # one block
    (90, 100, 128, "DEFLATE", "EPSG:25833", "nearest"),  # one tile, no overviews
    (1001, 1333, 128, "LZW", None, "mode"),  # odd sizes, no CRS
    (700, 600, 144, "DEFLATE", "EPSG:4326", "mode"),  # overview tiles 128 (not a power of 2)
    (650, 530, 64, "DEFLATE", "EPSG:25833", "nearest"),  # SHORT tile byte counts
    (900, 1100, 256, "ZSTD", (
        'PROJCS["unnamed",GEOGCS["GRS 1980(IUGG, 1980)",DATUM["unknown",SPHEROID["GRS80",'
        '6378137,298.257222101]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
        'PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],'
        'PARAMETER["central_meridian",15],PARAMETER["scale_factor",0.9996],'
        'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]'),
     "mode"),
])
def test_the_bytes_are_the_gdal_cog_driver_s(tmp_path, monkeypatch, height, width, tile,
                                             compress, crs, resampling):
    if compress == "ZSTD" and not has_zstd():
        pytest.skip("this GDAL has no ZSTD codec")
    small_blocks(monkeypatch)
    lab = scene(height, width, seed=height)
    new = write_cog(lab, tmp_path / "new.tif", crs_wkt=crs, tile=tile, compress=compress,
                    resampling=resampling, **STYLE)
    old = gdal_cog(lab, tmp_path / "old.tif", crs_wkt=crs, tile=tile, compress=compress,
                   resampling=resampling)
    with rasterio.open(new) as ds:
        assert ds.compression.name.upper() == compress
        np.testing.assert_array_equal(ds.read(1), lab)
    assert new.read_bytes() == old.read_bytes()


def test_a_bigtiff_is_laid_out_as_gdal_s_too(tmp_path, monkeypatch):
    """BigTIFF when ``BIGTIFF=IF_SAFER`` would choose it (forced here on a small scene)."""
    monkeypatch.setattr(cog, "bigtiff_if_safer", lambda plan: True)
    lab = scene(700, 500, seed=3)
    new = write_cog(lab, tmp_path / "new.tif", crs_wkt="EPSG:25833", tile=128, **STYLE)
    old = gdal_cog(lab, tmp_path / "old.tif", crs_wkt="EPSG:25833", tile=128, bigtiff="YES")
    with tifffile.TiffFile(new) as tif:
        assert tif.is_bigtiff
    assert new.read_bytes() == old.read_bytes()


def test_bigtiff_if_safer_counts_whole_edge_tiles_and_the_overviews():
    """GDAL's IF_SAFER: the full-resolution tiles uncompressed, edge tiles whole, plus the
    overviews, over 2e9 bytes (a sparse GTiff of 44544² is classic, of 44545 x 44544 not)."""
    assert not cog.bigtiff_if_safer(cog_plan(30000, 30000))
    assert cog.bigtiff_if_safer(cog_plan(40000, 40000))  # 1.64e9 + 0.55e9 of overviews
    assert cog.bigtiff_if_safer(cog_plan(44544, 44545))


def test_the_bytes_do_not_depend_on_the_block_size(tmp_path, monkeypatch):
    lab = scene(1500, 1700, seed=4)
    digests = set()
    for minimum in (1, 1024, 2048, 4096):
        small_blocks(monkeypatch, minimum)
        plan = cog_plan(*lab.shape, 128, resampling="mode")
        out = write_cog(lab, tmp_path / f"b{plan.block}.tif", crs_wkt="EPSG:25833", tile=128,
                        resampling="mode", sidecar=False, **STYLE)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_a_failed_block_leaves_nothing_behind(tmp_path, monkeypatch):
    small_blocks(monkeypatch)

    class Broken:
        shape = (1300, 900)

        def __getitem__(self, key):
            if key[0].start >= 512:
                raise OSError("disk gone")
            return np.zeros((key[0].stop - key[0].start, key[1].stop - key[1].start),
                            np.uint8)

    (tmp_path / "labels.tif").write_bytes(b"earlier")
    with pytest.raises(OSError, match="disk gone"):
        write_cog(Broken(), tmp_path / "labels.tif", crs_wkt=None, tile=128, **STYLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]
    assert (tmp_path / "labels.tif").read_bytes() == b"earlier"


# --------------------------------------------------------------------------------------------
# GDAL's overview rules


def test_mode_takes_the_first_value_to_reach_the_highest_count_and_skips_nodata():
    """2 x 2 windows scanned row by row: of two values twice each, the one whose second pixel
    comes first; nodata does not count unless it is all there is. Along an odd width the
    windows are 3 wide and overlap."""
    windows = [
        [[1, 2], [2, 1]],  # 1, 2, 2 (2 reaches 2 first), 1 -> 2
        [[2, 1], [1, 2]],  # -> 1
        [[3, 0], [1, 2]],  # all once: the first -> 3
        [[NODATA, NODATA], [NODATA, 3]],  # -> 3
        [[NODATA, NODATA], [NODATA, NODATA]],  # -> nodata
        [[NODATA, 4], [NODATA, 5]],  # nodata twice does not win -> 4
    ]
    lab = np.hstack([np.array(w, np.uint8) for w in windows])
    ours = reduce(lab, (0, 0), lab.shape, (0, 1, 0, len(windows)), "mode")
    assert ours.tolist() == [[2, 1, 3, 3, NODATA, 4]]
    odd = np.array([[1, 1, 2, 2, 3], [4, 4, 2, 2, 3]], np.uint8)  # 5 wide -> 3 wide
    assert reduce(odd, (0, 0), odd.shape, (0, 1, 0, 3), "mode").tolist() == [[1, 2, 2]]
    for array in (lab, odd):
        np.testing.assert_array_equal(
            reduce(array, (0, 0), array.shape, (0, 1, 0, -(-array.shape[1] // 2)), "mode"),
            gdal_overviews(array, [2], "mode", tile=16)[0])


@pytest.mark.parametrize("resampling", ["nearest", "mode"])
@pytest.mark.parametrize(("height", "width"), [(257, 129), (333, 999), (512, 384)])
def test_levels_from_any_window_are_gdal_s_levels(resampling, height, width):
    """Each level from the one before it, computed over a window with a margin of the level
    before: the pixels of GDAL's whole level, so blocks agree at their seams."""
    lab = scene(height, width, seed=width)
    expected = gdal_overviews(lab, [2, 4, 8], resampling)
    level, shape = lab, lab.shape
    for want in expected:
        rows, cols = want.shape
        top, left = rows // 3, cols // 5  # a window away from the origin
        span_r = source_span(shape[0], top, rows, resampling)
        span_c = source_span(shape[1], left, cols, resampling)
        part = reduce(level[span_r[0]:span_r[1], span_c[0]:span_c[1]],
                      (span_r[0], span_c[0]), shape, (top, rows, left, cols), resampling)
        np.testing.assert_array_equal(part, want[top:, left:])
        level = reduce(level, (0, 0), shape, (0, rows, 0, cols), resampling)
        np.testing.assert_array_equal(level, want)
        shape = want.shape


def test_mode_clips_its_windows_at_gdal_s_chunks(tmp_path, monkeypatch):
    """GDAL reads a level in chunks of rows (here 256: the tile height, as 256 rows of 20481
    already make 5 MiB) and clips the windows of an odd-height level at a chunk's edge; the
    writer does the same: rows 128 (its window starts at source row 255, in the chunk before)
    and 256 (source row 512 is a chunk of its own, which makes no output row) of the first
    overview are GDAL's, not the 3-row mode."""
    small_blocks(monkeypatch, 2048)
    lab = scene(513, 20481, seed=5)
    new = write_cog(lab, tmp_path / "new.tif", crs_wkt=None, tile=256, resampling="mode",
                    sidecar=False, **STYLE)
    old = gdal_cog(lab, tmp_path / "old.tif", crs_wkt=None, tile=256, resampling="mode")
    unclipped = reduce(lab, (0, 0), lab.shape, (0, 257, 0, 10241), "mode")
    with rasterio.open(new, overview_level=0) as ov:
        first = ov.read(1)
    assert (first[128] != unclipped[128]).any() and (first[256] != unclipped[256]).any()
    np.testing.assert_array_equal(np.delete(first, [128, 256], 0),
                                  np.delete(unclipped, [128, 256], 0))
    assert new.read_bytes() == old.read_bytes()


# --------------------------------------------------------------------------------------------
# blocks on Dask workers


def labels_store(final, lab, block, chunk):
    """A finished labels store of ``lab`` written by inference blocks of ``block``."""
    path, _ = prepare_store(final, height=lab.shape[0], width=lab.shape[1], chunk=chunk,
                            block_size=block, transform=T, crs_wkt=None, class_names=NAMES,
                            colors=COLORS, fingerprint="abc")
    for b in plan_blocks(*lab.shape, block):
        core = lab[b.row_off:b.row_off + b.height, b.col_off:b.col_off + b.width]
        write_block(path, BlockOutput(b, core, np.where(core == NODATA, NODATA, 200)
                                      .astype(np.uint8)))
    finalize_store(path, final, {})
    return final


def cog_from_store(location, lab, out, dask, opened, monkeypatch):
    """``segment``'s COG stage: the blocks where ``dask`` says, and where they ran."""
    real_open = vectorize_blocks.open_labels

    def recording_open(where):
        opened.append(str(where))
        return real_open(where)

    monkeypatch.setattr(vectorize_blocks, "open_labels", recording_open)
    with vectorize_blocks.block_source(dask, location, *lab.shape, name="cog-block") as source:
        write_cog(source.labels, out, crs_wkt="EPSG:25833", tile=128, resampling="mode",
                  map_fn=source.map_fn, **STYLE)
        return source.report()


def test_blocks_on_workers_give_the_client_s_bytes(tmp_path, monkeypatch, worker_processes):
    """The same file (and sidecar) from blocks run in the client and on two worker processes
    that read the store themselves (the client never opens it), and from stores written with
    other inference blocks."""
    from dask.distributed import Client

    small_blocks(monkeypatch)
    lab = scene(1300, 1100, seed=6)
    store = labels_store(tmp_path / "a" / "labels.zarr", lab, block=256, chunk=128)
    other = labels_store(tmp_path / "b" / "labels.zarr", lab, block=192, chunk=64)
    opened: list[str] = []
    here = cog_from_store(store, lab, tmp_path / "client.tif", DaskConfig(), opened,
                          monkeypatch)
    assert here == {"blocks_on": "client"} and opened == [str(store)]
    opened.clear()
    workers = DaskConfig(scheduler_address=worker_processes.scheduler_address)
    report = cog_from_store(store, lab, tmp_path / "workers.tif", workers, opened, monkeypatch)
    with Client(worker_processes) as client:
        addresses = set(client.scheduler_info()["workers"])
    assert opened == []  # every block was read by the worker that ran it
    assert report["blocks_on"] == "workers" and set(report["block_workers"]) <= addresses
    assert sum(report["block_workers"].values()) == len(cog_plan(*lab.shape, 128).blocks) == 9
    cog_from_store(other, lab, tmp_path / "other.tif", workers, opened, monkeypatch)
    expected = (tmp_path / "client.tif").read_bytes()
    assert (tmp_path / "workers.tif").read_bytes() == expected
    assert (tmp_path / "other.tif").read_bytes() == expected
    assert gdal_cog(lab, tmp_path / "gdal.tif", crs_wkt="EPSG:25833", tile=128,
                    resampling="mode").read_bytes() == expected
    assert (tmp_path / "workers.tif.aux.xml").read_text() == \
        (tmp_path / "client.tif.aux.xml").read_text()


def test_a_block_failing_on_a_worker_leaves_no_file(tmp_path, worker_processes):
    from dask.distributed import Client

    labels = vectorize_blocks.stored_labels(tmp_path / "missing.zarr", 1300, 900)
    with Client(worker_processes) as client:
        source = vectorize_blocks.WorkerMap(client, "cog-block")
        with pytest.raises(FileNotFoundError, match="missing.zarr does not exist"):
            write_cog(labels, tmp_path / "labels.tif", crs_wkt=None, tile=128,
                      map_fn=source, **STYLE)
        assert source.blocks_by_worker == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_workers_read_their_blocks_from_a_bucket(s3_server, tmp_path, monkeypatch):
    """The labels store in a bucket: workers started with its credentials read their blocks
    from there; the file is the one made in the client from a local copy."""
    from dask.distributed import LocalCluster

    small_blocks(monkeypatch)
    lab = scene(900, 1000, seed=7)
    local = labels_store(tmp_path / "labels.zarr", lab, block=256, chunk=128)
    url = labels_store("s3://results/cog-blocks/labels.zarr", lab, block=256, chunk=128)
    opened: list[str] = []
    cog_from_store(local, lab, tmp_path / "client.tif", DaskConfig(), opened, monkeypatch)
    opened.clear()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        report = cog_from_store(url, lab, tmp_path / "bucket.tif",
                                DaskConfig(scheduler_address=cluster.scheduler_address),
                                opened, monkeypatch)
    assert opened == [] and report["blocks_on"] == "workers"
    assert sum(report["block_workers"].values()) == 4
    assert (tmp_path / "bucket.tif").read_bytes() == (tmp_path / "client.tif").read_bytes()
