"""A cluster whose workers run another stego-pipeline than the client is refused in one line
before any block runs (a real `dask worker` process importing another copy of the package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import __version__

ROOT = Path(__file__).resolve().parents[2]


def _worker(address: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1",
         "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
         "--local-directory", str(cwd)],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


@pytest.mark.parametrize("other", [False, True], ids=["same version", "another version"])
def test_workers_must_run_the_clients_version(other, tmp_path):
    from dask.distributed import Client, LocalCluster

    from pipeline.config import DaskConfig
    from pipeline.errors import InputError
    from pipeline.segment.executor import dask_client

    env = dict(os.environ)
    if other:  # another installed copy of the package, first on the worker's path
        copy = tmp_path / "other"
        shutil.copytree(ROOT / "pipeline", copy / "pipeline",
                        ignore=shutil.ignore_patterns("__pycache__"))
        init = copy / "pipeline" / "__init__.py"
        init.write_text(init.read_text().replace(f'"{__version__}"', '"0.0.1-other"'))
        env["PYTHONPATH"] = str(copy)
    with LocalCluster(n_workers=0, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        (tmp_path / "w").mkdir()
        proc = _worker(cluster.scheduler_address, tmp_path / "w", env)
        try:
            with Client(cluster) as c:
                c.wait_for_workers(1, timeout=60)
            cfg = DaskConfig(scheduler_address=cluster.scheduler_address)
            if other:
                with pytest.raises(InputError, match=r"runs stego-pipeline 0\.0\.1-other "
                                   rf"\(here {__version__}\): install the same versions"):
                    with dask_client(cfg):
                        pass
            else:
                with dask_client(cfg) as client:
                    assert len(client.scheduler_info()["workers"]) == 1
        finally:
            proc.terminate()
            proc.wait(30)
