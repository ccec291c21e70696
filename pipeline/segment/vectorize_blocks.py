"""Where the blocks of a segment run's vectorize and COG stages are done: in the client process,
or on the Dask workers of a ``dask.scheduler_address``, each worker opening the labels store
itself from its location (a local path made absolute, or an object-store URL): the array is
never sent, and the client only merges the seam pieces and writes the layer
(:func:`pipeline.vectorize.vectorize_labels`), or receives compressed tiles and writes the
file (:func:`pipeline.io.cog.write_cog`)."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from pipeline.config import DaskConfig
from pipeline.io.remote import absolute
from pipeline.io.zarr_store import open_labels
from pipeline.io.zarr_writes import Location
from pipeline.segment.executor import dask_client

VECTORIZE_BLOCK = 2048  # vectorize's own blocks (not the inference blocks): memory stays flat


def blocks_on_workers(cfg: DaskConfig) -> bool:
    """Vectorize blocks go to the workers of a scheduler the run was given. Without one they
    stay in the client: the embedded LocalCluster is on the same machine, and on 2 cores a 4096²
    scene took 1.0 s in the client, 1.1 s on one in-process worker and 6 s on two worker
    processes started for it (imports and compiled kernels loaded in each)."""
    return bool(cfg.scheduler_address)


@dataclass(frozen=True)
class StoredLabels:
    """The labels array of a Zarr store, named by its location and shape: small to send to a
    worker, and every block read opens the store in the process that reads it."""

    location: str
    shape: tuple[int, int]

    def __getitem__(self, key: Any) -> Any:
        return open_labels(self.location)[key]


def stored_labels(location: Location, height: int, width: int) -> StoredLabels:
    """The labels of the store at ``location`` as workers elsewhere name it."""
    return StoredLabels(absolute(location), (int(height), int(width)))


def _where(fn: Callable[[Any], Any], task: Any) -> tuple[str, Any]:
    """Worker side: ``fn(task)`` and the address of the worker that ran it."""
    result = fn(task)
    try:
        from distributed import get_worker

        return get_worker().address, result
    except ValueError:  # not in a worker (a synchronous scheduler)
        return f"pid {os.getpid()}", result


class WorkerMap:
    """A ``map_fn`` for :func:`pipeline.vectorize.vectorize_labels` (or
    :func:`pipeline.io.cog.write_cog`) that runs the blocks on a Dask client's workers. All
    blocks are submitted at once; their results are collected in block order (each one
    released as soon as it is taken), so the layer is written in the same order as in the
    client, whichever worker finished first. ``blocks_by_worker`` counts the blocks each worker
    ran; the tasks' keys start with ``name``."""

    def __init__(self, client: Any, name: str = "vectorize-block") -> None:
        self.client = client
        self.name = name
        self.blocks_by_worker: Counter[str] = Counter()

    def __call__(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        tasks = list(tasks)
        run = uuid.uuid4().hex[:8]
        futures = self.client.map(partial(_where, fn), tasks, pure=False,
                                  key=[f"{self.name}-{run}-{i}" for i in range(len(tasks))])
        return self._collect(futures)

    def _collect(self, futures: list[Any]) -> Iterator[Any]:
        try:
            for i, future in enumerate(futures):
                where, result = future.result()
                future.release()
                futures[i] = None
                self.blocks_by_worker[where] += 1
                yield result
        finally:  # a failed block or write, or an interrupt: the rest is not wanted
            left = [f for f in futures if f is not None]
            if left:
                self.client.cancel(left)

    def report(self) -> dict[str, Any]:
        """What run.json records: where the blocks ran and how many each worker did."""
        return {"blocks_on": "workers",
                "block_workers": dict(sorted(self.blocks_by_worker.items()))}


@dataclass
class BlockSource:
    """What :func:`pipeline.vectorize.vectorize_labels` (or :func:`pipeline.io.cog.write_cog`)
    is given: the labels, its ``map_fn``, and where the blocks ran (for run.json)."""

    labels: Any
    map_fn: Callable[..., Iterable[Any]]

    def report(self) -> dict[str, Any]:
        """run.json's ``blocks_on`` (and ``block_workers`` on workers)."""
        if isinstance(self.map_fn, WorkerMap):
            return self.map_fn.report()
        return {"blocks_on": "client"}


@contextmanager
def block_source(cfg: DaskConfig, location: Location, height: int, width: int,
                 name: str = "vectorize-block") -> Iterator[BlockSource]:
    """The labels store at ``location`` and the ``map_fn`` that processes its blocks: on the
    workers of ``cfg``'s scheduler (connected for the duration; task keys start with
    ``name``), else in this process."""
    if not blocks_on_workers(cfg):
        yield BlockSource(open_labels(location), map)
        return
    with dask_client(cfg) as client:
        yield BlockSource(stored_labels(location, height, width), WorkerMap(client, name))
