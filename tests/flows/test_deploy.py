"""Operators: the `segment-folder` flow, its served deployment, triggers and prefect.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from flows.batch_flow import BatchFailed, is_done, segment_folder
from flows.deploy import build_deployment, check_cron, parse_params, serve_folder, trigger
from pipeline.config import build_config
from pipeline.errors import InputError
from tests.conftest import scene_folder

ROOT = Path(__file__).resolve().parents[2]
CFG = {"tiling": {"tile_size": 64, "overlap": 16, "block_size": 96, "chunk_size": 32},
       "dask": {"processes": False}}
OUTPUTS = ("labels.tif", "labels.zarr", "polygons.gpkg", "run.json")


def _complete(out_dir: Path) -> dict:
    for name in OUTPUTS:
        assert (out_dir / name).exists(), out_dir / name
    doc = json.loads((out_dir / "run.json").read_text())
    assert doc["status"] == "complete"
    return doc


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """A folder with two small generated scenes a.tif and b.tif (label rasters removed)."""
    return scene_folder(tmp_path_factory.mktemp("scenes"), 256)


@pytest.fixture(scope="module")
def first_run(prefect_harness, scenes, pixel_model, tmp_path_factory) -> tuple[Path, dict]:
    out_root = tmp_path_factory.mktemp("batch") / "out"
    summary = segment_folder(str(scenes / "*.tif"), str(pixel_model), str(out_root), CFG)
    return out_root, summary


def test_every_scene_is_processed_into_its_own_folder(first_run, scenes):
    out_root, summary = first_run
    assert summary["processed"] == [str(scenes / "a.tif"), str(scenes / "b.tif")]
    assert summary["skipped"] == [] and summary["failed"] == {}
    for stem in "ab":
        assert _complete(out_root / stem)["input"]["path"] == str(scenes / f"{stem}.tif")


def test_a_second_run_skips_finished_scenes(first_run, scenes, pixel_model):
    out_root, _ = first_run
    before = {s: (out_root / s / "run.json").stat().st_mtime_ns for s in "ab"}
    summary = segment_folder(str(scenes / "*.tif"), str(pixel_model), str(out_root), CFG)
    assert summary["processed"] == [] and summary["failed"] == {}
    assert summary["skipped"] == [str(scenes / "a.tif"), str(scenes / "b.tif")]
    assert {s: (out_root / s / "run.json").stat().st_mtime_ns for s in "ab"} == before


def test_another_config_reprocesses(first_run, scenes, pixel_model):
    out_root, _ = first_run
    cfg = {**CFG, "tiling": {**CFG["tiling"], "overlap": 8}}
    summary = segment_folder(str(scenes / "a.tif"), str(pixel_model), str(out_root), cfg)
    assert summary["processed"] == [str(scenes / "a.tif")] and summary["skipped"] == []
    assert _complete(out_root / "a")["config"]["tiling"]["overlap"] == 8
    # a is done for the new config only; b still for the original one
    assert is_done(str(scenes / "a.tif"), str(pixel_model), out_root / "a", build_config(cfg))
    assert not is_done(str(scenes / "a.tif"), str(pixel_model), out_root / "a",
                       build_config(CFG))
    summary = segment_folder(str(scenes / "b.tif"), str(pixel_model), str(out_root), CFG)
    assert summary["skipped"] == [str(scenes / "b.tif")]


def test_a_changed_input_file_is_reprocessed_and_a_touched_one_is_not(first_run, scenes,
                                                                      pixel_model):
    """Identity is the file's content (SHA-256), not its name, size or mtime."""
    import numpy as np
    import rasterio

    out_root, _ = first_run
    cfg = build_config(CFG)
    scene = str(scenes / "b.tif")
    assert is_done(scene, str(pixel_model), out_root / "b", cfg)
    original = Path(scene).read_bytes()
    st = os.stat(scene)
    try:
        os.utime(scene, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes
        assert is_done(scene, str(pixel_model), out_root / "b", cfg)
        with rasterio.open(scene, "r+") as ds:  # one pixel changed, mtime kept
            px = ds.read(1, window=((5, 6), (5, 6)))
            ds.write(np.where(px == 0, 1, 0).astype(px.dtype), 1, window=((5, 6), (5, 6)))
        os.utime(scene, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert not is_done(scene, str(pixel_model), out_root / "b", cfg)
    finally:
        Path(scene).write_bytes(original)
        os.utime(scene, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert is_done(scene, str(pixel_model), out_root / "b", cfg)


def test_a_broken_scene_fails_and_the_others_still_run(prefect_harness, scenes, pixel_model,
                                                       tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    broken = folder / "0-broken.tif"  # sorts first: the scenes after it must still run
    broken.write_text("this is not a raster\n")
    shutil.copy(scenes / "a.tif", folder / "a.tif")
    shutil.copy(scenes / "a.tif", folder / "sub" / "a.tif")  # same stem: same output folder
    state = segment_folder(str(folder / "**" / "*.tif"), str(pixel_model), str(tmp_path / "out"),
                           CFG, return_state=True)
    assert state.is_failed()  # operators see the run as Failed
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, BatchFailed)
    summary = exc.summary
    assert summary["processed"] == [str(folder / "a.tif")]
    assert set(summary["failed"]) == {str(broken), str(folder / "sub" / "a.tif")}
    assert "not a raster GDAL can read" in summary["failed"][str(broken)]
    assert "already used by" in summary["failed"][str(folder / "sub" / "a.tif")]
    _complete(tmp_path / "out" / "a")
    assert not (tmp_path / "out" / "0-broken" / "run.json").exists()
    assert str(exc).startswith("2 of 3 scene(s) failed")


def test_a_glob_matching_nothing_is_an_error(prefect_harness, pixel_model, tmp_path):
    with pytest.raises(InputError, match="no files match"):
        segment_folder(str(tmp_path / "*.tif"), str(pixel_model), str(tmp_path / "o"), CFG)


def test_a_deployed_schedule_runs(prefect_harness, first_run, scenes, pixel_model, tmp_path):
    """Deployment with a cron schedule -> a Scheduled run -> executed as a worker would."""
    from prefect import get_client
    from prefect.flow_engine import load_flow_and_flow_run, run_flow

    out_root, _ = first_run
    deployment = build_deployment("test-nightly", "0 2 * * *", str(scenes / "*.tif"),
                                  str(pixel_model), str(out_root), CFG)
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment_by_name("segment-folder/test-nightly")
    assert stored.id == deployment_id
    assert [s.schedule.cron for s in stored.schedules] == ["0 2 * * *"]
    assert stored.parameters == {"input_glob": str(scenes / "*.tif"),
                                 "model_dir": str(pixel_model), "out_root": str(out_root),
                                 "config": CFG}

    with pytest.raises(InputError, match="unknown parameter 'out_dir'"):
        trigger("test-nightly", {"out_dir": str(tmp_path)})
    with pytest.raises(InputError, match="run rejected: .*out_root"):
        trigger("segment-folder/test-nightly", {"out_root": 5})
    with pytest.raises(InputError, match="unknown config key 'tiling.overlapp'"):
        trigger("test-nightly", {"config": {"tiling": {"overlapp": 8}}})

    new_root = tmp_path / "triggered"
    run = trigger("test-nightly", {"out_root": str(new_root),
                                   "input_glob": str(scenes / "b.tif")}, timeout=0)
    assert run["state"] == "Scheduled" and run["deployment"] == "segment-folder/test-nightly"

    # what `python -m prefect.engine` does in the runner's or worker's subprocess
    flow_run, flow = load_flow_and_flow_run(UUID(run["id"]))
    assert flow.name == "segment-folder"
    assert flow_run.parameters["model_dir"] == str(pixel_model)  # deployment default
    assert flow_run.parameters["out_root"] == str(new_root)  # the trigger's override
    result = run_flow(flow, flow_run=flow_run)
    assert result["processed"] == [str(scenes / "b.tif")]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run.id).state.is_completed()
    _complete(new_root / "b")
    assert not (new_root / "a").exists()


def test_triggering_a_missing_deployment_is_an_input_error(prefect_harness):
    with pytest.raises(InputError, match="no such deployment") as err:
        trigger("no-such-deployment", {})
    assert err.value.path == "segment-folder/no-such-deployment"


@pytest.mark.parametrize("cron", ["0 2 * *", "61 2 * * *", "every night", "H 2 * * *"])
def test_an_invalid_cron_is_an_input_error(cron, pixel_model, tmp_path):
    with pytest.raises(InputError) as err:
        build_deployment("x", cron, str(tmp_path / "*.tif"), str(pixel_model), str(tmp_path))
    assert err.value.path == "--cron"
    check_cron("0 2 * * *")
    check_cron("*/15 * * * 1-5", "Europe/Berlin")


def test_bad_deployment_inputs_are_input_errors(pixel_model, tmp_path):
    def build(**kw):
        args = {"name": "x", "cron": "0 2 * * *", "input_glob": str(tmp_path / "*.tif"),
                "model_dir": str(pixel_model), "out_root": str(tmp_path / "o")} | kw
        return build_deployment(**args)

    with pytest.raises(InputError, match="model directory not found"):
        build(model_dir=str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        build(out_root=str(tmp_path / "file"))
    with pytest.raises(InputError, match="does not exist"):
        build(input_glob=str(tmp_path / "missing" / "*.tif"))
    with pytest.raises(InputError, match="unknown config key 'tiling.tile_sise'"):
        build(config={"tiling": {"tile_sise": 64}})
    with pytest.raises(InputError, match="invalid deployment name"):
        build(name="a/b")
    with pytest.raises(InputError) as err:
        build(timezone="Mars/Olympus")
    assert err.value.path == "--timezone"
    params = build(input_glob="rel/../*.tif", out_root=str(tmp_path / "o")).parameters
    assert params["input_glob"] == os.path.join(os.getcwd(), "*.tif")  # absolute for runners


def test_serve_folder_serves_the_checked_deployment(prefect_harness, monkeypatch, pixel_model,
                                                    scenes, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(segment_folder, "serve", lambda **kw: calls.append(kw))
    with pytest.raises(InputError, match="Invalid cron"):
        serve_folder("n", "0 2 * *", str(scenes / "*.tif"), str(pixel_model), str(tmp_path))
    assert calls == []
    serve_folder("n", "0 2 * * *", str(scenes / "*.tif"), str(pixel_model),
                 str(tmp_path / "out"), CFG, timezone="Europe/Berlin")
    (kw,) = calls
    assert kw["name"] == "n"
    assert kw["schedule"].cron == "0 2 * * *" and kw["schedule"].timezone == "Europe/Berlin"
    assert kw["parameters"] == {"input_glob": str(scenes / "*.tif"),
                                "model_dir": str(pixel_model),
                                "out_root": str(tmp_path / "out"), "config": CFG}
    assert (tmp_path / "out").is_dir()
    assert "stego run-deployment n" in capsys.readouterr().out
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(InputError, match="schedules need a Prefect server"):
            serve_folder("n", "0 2 * * *", str(scenes / "*.tif"), str(pixel_model),
                         str(tmp_path / "out"))
        serve_folder("n", None, str(scenes / "*.tif"), str(pixel_model), str(tmp_path / "out"))
    assert len(calls) == 2 and "schedule" not in calls[1]


def test_params_are_yaml_typed():
    params = parse_params(["n=3", "x=0.5", "flag=true", "name=scenes/*.tif", "empty=",
                           "config={tiling: {overlap: 8}}", "list=[1, 2]", "s='3'", "e=a=b"])
    assert params == {"n": 3, "x": 0.5, "flag": True, "name": "scenes/*.tif", "empty": None,
                      "config": {"tiling": {"overlap": 8}}, "list": [1, 2], "s": "3",
                      "e": "a=b"}
    for bad in ["novalue", "=3", "k=[1, 2"]:
        with pytest.raises(InputError) as err:
            parse_params([bad])
        assert err.value.path == "--param"


def test_prefect_yaml_is_valid_and_its_entrypoint_loads():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.importtools import import_object

    raw = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(raw)
    (dep,) = [d for d in model.deployments if d.name == "nightly-folder"]
    assert dep.work_pool.name == "stego-pool"
    assert [CronSchedule(cron=s.cron, timezone=s.timezone).cron
            for s in dep.schedules] == ["0 2 * * *"]
    (step,) = model.pull
    assert callable(import_object(next(iter(step))))
    path, func = dep.entrypoint.split(":")
    assert (ROOT / path).is_file()
    flow = load_flow_from_entrypoint(str(ROOT / dep.entrypoint))
    assert flow.name == "segment-folder" and flow.fn.__name__ == func
    assert set(dep.parameters) <= set(flow.parameters.properties)


def test_prefect_deploy_registers_the_yaml_deployment(prefect_harness, monkeypatch, tmp_path):
    """`prefect deploy` reads prefect.yaml; a worker's pull step finds the entrypoint."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.flows import load_flow_from_flow_run
    from prefect.settings import PREFECT_API_URL
    from prefect.utilities.asyncutils import run_coro_as_sync

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name="stego-pool", type="process"))
        except ObjectAlreadyExists:
            pass
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "nightly-folder"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("segment-folder/nightly-folder")
        assert dep.work_pool_name == "stego-pool"
        assert [s.schedule.cron for s in dep.schedules] == ["0 2 * * *"]
        flow_run = client.create_flow_run_from_deployment(dep.id)
    # a worker started elsewhere: the pull step changes into STEGO_HOME, then loads the flow
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STEGO_HOME", str(ROOT))

    flow = run_coro_as_sync(load_flow_from_flow_run(flow_run, use_placeholder_flow=False))
    assert Path.cwd() == ROOT
    assert flow.name == "segment-folder"


def test_scenes_run_at_the_same_time_on_a_cluster(prefect_harness, scenes, pixel_model,
                                                  first_run, tmp_path):
    """With a scheduler, segment-folder runs several scenes at once (dask.scenes_at_once): the
    flow runs overlap in time, and each scene's labels are those of the one-at-a-time run."""
    import asyncio

    from dask.distributed import LocalCluster
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    out_root, _ = first_run
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        shutil.copy(scenes / ("a.tif" if i % 2 else "b.tif"), folder / f"s{i}.tif")
    (folder / "s9-broken.tif").write_text("not a raster\n")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        cfg = {**CFG, "dask": {"scheduler_address": cluster.scheduler_address,
                               "scenes_at_once": 3}}
        with pytest.raises(BatchFailed) as failed:
            segment_folder(str(folder / "*.tif"), str(pixel_model), str(tmp_path / "out"), cfg)
    summary = failed.value.summary
    import dask

    assert dask.config.get("scheduler", None) is None  # no client left as the default
    assert summary["processed"] == [str(folder / f"s{i}.tif") for i in range(4)]  # in order
    assert list(summary["failed"]) == [str(folder / "s9-broken.tif")]
    for i in range(4):
        same = out_root / ("a" if i % 2 else "b") / "labels.tif"
        assert (tmp_path / "out" / f"s{i}" / "labels.tif").read_bytes() == same.read_bytes()

    async def spans() -> list[tuple]:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[f"segment-s{i}" for i in range(4)])))
        return [(r.start_time, r.end_time) for r in runs]

    times = sorted(asyncio.run(spans()))
    assert len(times) == 4
    assert any(b[0] < a[1] for a, b in zip(times, times[1:], strict=False))  # overlapped


def test_scenes_at_once_is_one_locally_and_four_on_a_cluster():
    from flows.batch_flow import scenes_at_once

    assert scenes_at_once(build_config({})) == 1
    assert scenes_at_once(build_config({"dask": {"scheduler_address": "tcp://h:8786"}})) == 4
    assert scenes_at_once(build_config({"dask": {"scenes_at_once": 2}})) == 2
    with pytest.raises(InputError, match="scenes_at_once"):
        build_config({"dask": {"scenes_at_once": 0}})
