"""Dask: a LocalCluster by default, or an existing scheduler; models cached once per worker."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dask.distributed import Client, LocalCluster, as_completed

from pipeline.config import DaskConfig

log = logging.getLogger("stego.executor")

_MODEL_CACHE: dict[tuple[str, str, str], Any] = {}


def cached_model(model_dir: str, model_hash: str, device: str, compile: bool = False) -> Any:
    """Load a model once per worker process (keyed by its hash), not once per task.

    One model per worker: with one GPU per worker (``resources={"GPU": 1}``), one per GPU.
    ``compile`` wraps the backbone's feature pass in ``torch.compile``.
    """
    from pipeline.io.remote import absolute

    key = (absolute(model_dir), model_hash, device, compile)
    if key not in _MODEL_CACHE:
        from pipeline.errors import InputError
        from pipeline.models.store import load_model, local_model_dir
        from pipeline.models.store import model_hash as hash_of

        _MODEL_CACHE.clear()
        local = local_model_dir(model_dir)  # a URL: this worker's own checked copy
        if local != Path(model_dir) and hash_of(local) != model_hash:
            raise InputError(model_dir, "the model changed since this run started")
        model = load_model(local).to(device)
        if compile:
            backbone = getattr(model, "backbone", None)
            if backbone is None:
                raise ValueError(f"model.compile: a {model.method} model has no backbone")
            from pipeline.models.backbone import compile_backbone

            compile_backbone(backbone)
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]


def task_resources(cfg: DaskConfig, device: str) -> dict[str, float] | None:
    """Resources each block task needs: ``dask.resources``, else one GPU on CUDA."""
    if cfg.resources is not None:
        return dict(cfg.resources) or None
    return {"GPU": 1} if device.startswith("cuda") else None


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a TCP-based scheduler address (8786 when none is given); None: inproc."""
    scheme, _, rest = address.rpartition("://")
    if scheme == "inproc":
        return None
    if rest.startswith("["):  # [ipv6]:port
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = rest.partition(":")
    return host, int(port) if port else 8786


def check_scheduler(cfg: DaskConfig) -> None:
    """Refuse an unreachable ``scheduler_address`` within ``connect_timeout`` (one TCP connect).

    Dask's own client keeps retrying a refused connection until its timeout and then some;
    this probe answers at once when nothing listens, and after the timeout when nothing answers.
    """
    if not cfg.scheduler_address:
        return
    target = _host_port(cfg.scheduler_address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=cfg.connect_timeout):
            pass
    except OSError as exc:
        from pipeline.errors import InputError

        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise InputError(cfg.scheduler_address, f"cannot reach Dask scheduler ({why}; "
                         f"dask.connect_timeout is {cfg.connect_timeout:g} s)") from None


def _connect(cfg: DaskConfig) -> Client:
    """A Client of ``cfg.scheduler_address`` within ``connect_timeout``, else an InputError.

    Dask's own timeout does not cover a peer that accepts the connection and never answers
    the handshake (a wrong port, a proxy): the client is made on a helper thread, waited for.
    Never the process's default client: several scenes may run at once (segment-folder), and
    a default client's dask config outlives it when clients close out of order.
    """
    from pipeline.errors import InputError

    box: dict[str, Any] = {}

    def connect() -> None:
        try:
            box["client"] = Client(cfg.scheduler_address, timeout=f"{cfg.connect_timeout}s",
                                   set_as_default=False)
        except Exception as exc:  # noqa: BLE001 - reported below, on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=connect, name="stego-dask-connect", daemon=True)
    thread.start()
    thread.join(cfg.connect_timeout + 2.0)
    address = str(cfg.scheduler_address)
    if thread.is_alive():
        raise InputError(address, "no Dask scheduler answered there within "
                         f"dask.connect_timeout ({cfg.connect_timeout:g} s)")
    if "error" in box:
        first = str(box["error"]).splitlines()[0] if str(box["error"]) else ""
        raise InputError(address, f"cannot reach Dask scheduler ({first})") from None
    return box["client"]


def cluster_threads(cfg: DaskConfig) -> int:
    """Worker threads the run's blocks will share: ``workers x threads_per_worker`` of the
    embedded LocalCluster, or the total ``nthreads`` of the scheduler's workers right now (a
    short-lived client; 0 while an adaptive cluster has no workers yet)."""
    if not cfg.scheduler_address:
        return cfg.workers * cfg.threads_per_worker
    client = _connect(cfg)
    try:
        return int(sum(client.nthreads().values()))
    finally:
        client.close()


def _versions() -> dict[str, str]:
    """This process's stego-pipeline version and the libraries that decide its results."""
    import numpy
    import zarr

    from pipeline import __version__

    return {"stego-pipeline": __version__, "numpy": numpy.__version__, "zarr": zarr.__version__}


def check_worker_versions(client: Client, address: str) -> None:
    """Refuse, in one line, a cluster whose workers run another stego-pipeline (or zarr, or
    NumPy) than the client: their blocks would not be the client's."""
    from pipeline.errors import InputError

    mine = _versions()
    theirs = client.run(_versions)
    for worker, found in sorted(theirs.items()):
        diff = [f"{k} {found.get(k)} (here {v})" for k, v in mine.items() if found.get(k) != v]
        if diff:
            raise InputError(address, f"worker {worker} runs {', '.join(diff)}: install the "
                             "same versions on the workers as on the client")


@contextmanager
def dask_client(cfg: DaskConfig, resources: dict[str, float] | None = None) -> Iterator[Client]:
    """Connect to ``cfg.scheduler_address`` or start a LocalCluster for the run.

    ``resources`` are given to each LocalCluster worker (e.g. ``{"GPU": 1}``) so tasks
    annotated with them can run; remote workers declare theirs with ``--resources``.
    """
    if cfg.scheduler_address:
        client = _connect(cfg)
        log.info("Dask scheduler %s, dashboard %s", cfg.scheduler_address, client.dashboard_link)
        try:
            check_worker_versions(client, str(cfg.scheduler_address))
            yield client
        finally:
            client.close()
        return
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core"):
        logging.getLogger(name).setLevel(logging.WARNING)
    processes = cfg.workers > 1 if cfg.processes == "auto" else cfg.processes
    cluster = LocalCluster(
        n_workers=cfg.workers,
        threads_per_worker=cfg.threads_per_worker,
        processes=processes,
        # every listener on cfg.host (loopback by default): the scheduler and workers (an
        # in-process worker uses no network), the dashboard and each worker's HTTP server
        **({"host": cfg.host} if processes else {}),
        dashboard_address=f"{cfg.host}:0",
        worker_dashboard_address=f"{cfg.host}:0",
        silence_logs=logging.ERROR,
        resources=resources or None,
    )
    client = Client(cluster, set_as_default=False)
    log.info("Dask LocalCluster: %d worker(s), dashboard %s", cfg.workers, client.dashboard_link)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def torch_threads_per_worker(cfg: DaskConfig) -> int:
    """CPU threads each worker's torch may use without oversubscribing the machine."""
    if cfg.scheduler_address:
        return 0  # leave the remote worker's own setting alone
    return max(1, (os.cpu_count() or 1) // max(1, cfg.workers * cfg.threads_per_worker))


def map_unordered(
    client: Client,
    fn: Callable[..., Any],
    items: Iterable[Any],
    on_result: Callable[[Any], None] | None = None,
    retries: int = 0,
    resources: dict[str, float] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Submit ``fn(item, **kwargs)`` per item; collect results as they complete.

    ``resources`` (e.g. ``{"GPU": 1}``) restricts each task to workers that have them.
    """
    futures = [
        client.submit(fn, item, pure=False, retries=retries, resources=resources, **kwargs)
        for item in items
    ]
    results = []
    # On this client's event loop, not the default client's (a caller's `with Client()`):
    # a result lost with a dead worker before it is collected is then waited for again.
    pending = as_completed(futures, loop=client.loop)
    # Hold each future only until its result is collected: otherwise a worker that dies
    # later makes Dask recompute (and rewrite) every finished block it still holds.
    del futures
    for fut in pending:
        res = fut.result()
        fut.release()
        results.append(res)
        if on_result is not None:
            on_result(res)
    return results
