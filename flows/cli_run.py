"""Around a command's flow call: the garbage collector paused while the heavy imports load,
and the Prefect API chosen before the flow runs."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

from flows import prefect_api

_GC_PAUSED = False


@contextlib.contextmanager
def flow_run() -> Iterator[None]:
    """Around a command's flow call, once its imports are done: the garbage collector, paused
    while torch, Prefect and Dask import (the console script; 0.6-0.9 s of a 3 s import
    here), resumes with everything imported so far frozen; Prefect's API is ready."""
    if _GC_PAUSED and not gc.isenabled():
        gc.freeze()
        gc.enable()
    # Prefect imports this (0.2-0.3 s here) to serialize the first flow run's parameters: now,
    # while a temporary server may still be starting, not on the run's clock
    import fastapi.encoders  # noqa: F401
    with prefect_api.use_api():
        yield


def pause_gc() -> None:
    """Pause the garbage collector until :func:`flow_run` (the console script only)."""
    global _GC_PAUSED
    _GC_PAUSED = True
    gc.disable()  # until flow_run: imports make few cycles, and scanning them costs 25 %
