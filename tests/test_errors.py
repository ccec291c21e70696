"""InputError, the one-line bad-input error, keeps its type and message across processes: a
bad input found on a Dask worker is the same exit-2 `error:` line as on the client."""

from __future__ import annotations

import pickle

import pytest

from pipeline.errors import InputError


def _raise_inside_another_error(path: str) -> None:
    """As the raster reader does: an InputError raised while handling a library error."""
    try:
        raise OSError("an unpicklable library error")
    except OSError:
        raise InputError(path, "read failed (AWS_SECRET_ACCESS_KEY not defined)")  # noqa: B904


def test_input_error_pickles_with_its_path_and_problem():
    try:
        _raise_inside_another_error("/vsis3/b/x.tif")
    except InputError as exc:
        back = pickle.loads(pickle.dumps(exc))
    assert type(back) is InputError
    assert (back.path, back.problem) == ("/vsis3/b/x.tif",
                                         "read failed (AWS_SECRET_ACCESS_KEY not defined)")
    assert str(back) == "/vsis3/b/x.tif: read failed (AWS_SECRET_ACCESS_KEY not defined)"


def test_input_error_raised_on_a_worker_process_reaches_the_client_as_itself():
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        future = client.submit(_raise_inside_another_error, "/vsis3/b/x.tif", pure=False)
        with pytest.raises(InputError) as info:
            future.result()
    assert info.value.path == "/vsis3/b/x.tif"
    assert info.value.problem.startswith("read failed")
