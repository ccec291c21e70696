"""With ``--scheduler-address`` the vectorize blocks run on the cluster's worker processes (each
opening the labels store itself from its location; the client only merges seams and writes the
layer), and the polygons are those of a run without a cluster, in the same order. The COG's
blocks run there too (the client only writes the file from their tiles): the same bytes."""

from __future__ import annotations

import json

import pyogrio
import pytest

import flows.segment_flow
import pipeline.segment.vectorize_blocks as vectorize_blocks
from flows.cli import main

SMALL = "tiling: {tile_size: 64, overlap: 16, block_size: 192, chunk_size: 32, batch_size: 2}\n"
BLOCK = 128  # vectorize blocks of the 384² demo scene: 9 blocks, 12 seams


def _layer(path):
    """(geometries as WKB, attribute columns) in file order."""
    _, _, geometries, fields = pyogrio.raw.read(path)
    return list(geometries), [list(column) for column in fields]


def _segment(scene, model, out, config, *extra) -> dict:
    assert main(["segment", str(scene), "--model", str(model), "--out", str(out),
                 "--config", str(config), "-q", *extra]) == 0
    return json.loads((out / "run.json").read_text())


def test_vectorize_blocks_run_on_the_workers_and_give_the_same_polygons(
        prefect_harness, demo_scene, pixel_model, worker_processes, tmp_path, monkeypatch):
    from dask.distributed import Client

    monkeypatch.setattr(flows.segment_flow, "VECTORIZE_BLOCK", BLOCK)
    opened = []  # stores opened in this (the client's) process for the COG and vectorize blocks

    def recording_open(location):
        opened.append(str(location))
        return vectorize_blocks_open(location)

    vectorize_blocks_open = vectorize_blocks.open_labels
    monkeypatch.setattr(vectorize_blocks, "open_labels", recording_open)
    (tmp_path / "local.yaml").write_text(SMALL + "dask: {workers: 1, processes: false}\n")
    (tmp_path / "cluster.yaml").write_text(SMALL)

    local = _segment(demo_scene[0], pixel_model, tmp_path / "local", tmp_path / "local.yaml")
    assert local["polygons"]["blocks_on"] == "client" and "block_workers" not in local["polygons"]
    assert local["cog"] == {"blocks": 1, "blocks_on": "client"}
    assert opened == [str(tmp_path / "local" / "labels.zarr")] * 2  # the COG's, the polygons'
    opened.clear()

    run = _segment(demo_scene[0], pixel_model, tmp_path / "out", tmp_path / "cluster.yaml",
                   "--scheduler-address", worker_processes.scheduler_address)
    with Client(worker_processes) as client:
        workers = set(client.scheduler_info()["workers"])
    polygons = run["polygons"]
    assert polygons["blocks_on"] == "workers"
    assert set(polygons["block_workers"]) <= workers
    assert sum(polygons["block_workers"].values()) == 9
    assert opened == []  # every block was read by the worker that ran it
    assert run["cog"]["blocks_on"] == "workers" and set(run["cog"]["block_workers"]) <= workers
    assert sum(run["cog"]["block_workers"].values()) == run["cog"]["blocks"] == 1
    cog = (tmp_path / "local" / "labels.tif").read_bytes()
    assert (tmp_path / "out" / "labels.tif").read_bytes() == cog
    assert polygons["seam_groups_merged"] > 0
    assert polygons["polygons"] == local["polygons"]["polygons"]
    # the same polygons, attributes and order (sorted WKB would hide a different order)
    expected = _layer(tmp_path / "local" / "polygons.gpkg")
    assert _layer(tmp_path / "out" / "polygons.gpkg") == expected
    assert sorted(expected[0]) == sorted(_layer(tmp_path / "out" / "polygons.gpkg")[0])

    # resume: a deleted layer is made again on the workers, the rest is taken as it is
    (tmp_path / "out" / "polygons.gpkg").unlink()
    again = _segment(demo_scene[0], pixel_model, tmp_path / "out", tmp_path / "cluster.yaml",
                     "--scheduler-address", worker_processes.scheduler_address)
    assert "vectorize" not in again["cached_stages"] and "infer-blocks" in again["cached_stages"]
    assert again["polygons"]["blocks_on"] == "workers"
    assert _layer(tmp_path / "out" / "polygons.gpkg") == expected
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")) == []


def test_a_block_failing_on_a_worker_leaves_no_layer(worker_processes, tmp_path):
    """A worker that cannot read its blocks fails the layer: nothing at the output path, no
    temporary file, and the blocks not yet collected are cancelled."""
    from affine import Affine
    from dask.distributed import Client

    from pipeline.vectorize import vectorize_labels

    labels = vectorize_blocks.stored_labels(tmp_path / "missing.zarr", 300, 300)
    out = tmp_path / "polygons.gpkg"
    with Client(worker_processes) as client:
        source = vectorize_blocks.WorkerMap(client)
        with pytest.raises(FileNotFoundError, match="missing.zarr does not exist"):
            vectorize_labels(labels, transform=Affine.identity(), crs=None, class_names=["a"],
                             out_path=out, block_size=100, map_fn=source)
        assert source.blocks_by_worker == {}
    assert list(tmp_path.iterdir()) == []


def test_workers_read_the_blocks_from_a_bucket(s3_server, prefect_harness, demo_scene,
                                               pixel_model, tmp_path, monkeypatch):
    """`segment --out s3://…`: the labels store is in the bucket, and the workers (started with
    the bucket's credentials in their environment) read their vectorize blocks from there."""
    from dask.distributed import LocalCluster

    from pipeline.io.remote import filesystem

    monkeypatch.setenv("STEGO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(flows.segment_flow, "VECTORIZE_BLOCK", BLOCK)
    (tmp_path / "local.yaml").write_text(SMALL + "dask: {workers: 1, processes: false}\n")
    _segment(demo_scene[0], pixel_model, tmp_path / "local", tmp_path / "local.yaml")
    opened = []
    monkeypatch.setattr(vectorize_blocks, "open_labels", opened.append)
    url = "s3://results/vectorize-on-workers"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        (tmp_path / "cluster.yaml").write_text(SMALL)
        assert main(["segment", str(demo_scene[0]), "--model", str(pixel_model), "--out", url,
                     "--config", str(tmp_path / "cluster.yaml"), "-q",
                     "--scheduler-address", cluster.scheduler_address]) == 0
    assert opened == []
    fs, root = filesystem(url)
    run = json.loads(fs.cat_file(f"{root}/run.json"))
    assert run["polygons"]["blocks_on"] == "workers"
    assert sum(run["polygons"]["block_workers"].values()) == 9
    assert run["cog"]["blocks_on"] == "workers"
    assert fs.cat_file(f"{root}/labels.tif") == (tmp_path / "local" / "labels.tif").read_bytes()
    fs.get_file(f"{root}/polygons.gpkg", str(tmp_path / "polygons.gpkg"))
    assert _layer(tmp_path / "polygons.gpkg") == _layer(tmp_path / "local" / "polygons.gpkg")
