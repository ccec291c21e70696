"""The output lock around a flow run: the lock names the Prefect flow run holding it, and a
run that takes over a dead run's lock marks that run's flow run ``Crashed`` (a SIGKILLed
client otherwise leaves it ``Running`` forever).

The old flow run is looked up in the API this run uses. Prefect's temporary server (the
default without ``PREFECT_API_URL`` or ``stego server``) keeps its SQLite database in
``PREFECT_HOME``, so a rerun on the same machine finds it; a run on another host with its own
database does not, and says so in the log (nothing else records that run anyway).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.io.lock import RunLock, describe_owner, output_lock


def _current_flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def mark_crashed(flow_run_id: str, owner: dict[str, Any], reason: str,
                 logger: logging.Logger | logging.LoggerAdapter) -> bool:
    """Set the flow run ``flow_run_id`` to Crashed if it is still Running or Pending.

    Returns whether it was marked; a run this API does not know, or an API error, is a log
    line, never a failure of the run that took over."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    try:
        run_id = uuid.UUID(str(flow_run_id))
    except ValueError:
        logger.warning("the old lock names no valid flow run id (%r)", flow_run_id)
        return False
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
            state = run.state
            if state is None or not (state.is_running() or state.is_pending()):
                return False
            message = (f"the run's client ({describe_owner(owner)}) stopped without ending it; "
                       f"found by flow run {_current_flow_run_id()} taking over its output "
                       f"lock ({reason})")
            result = client.set_flow_run_state(run_id, Crashed(message=message), force=True)
            if result.status.value != "ACCEPT":
                logger.warning("flow run %s: the API did not accept Crashed (%s)", flow_run_id,
                               result.status.value)
                return False
    except ObjectNotFound:
        logger.info("flow run %s of the old lock is not in this Prefect API (another server "
                    "or database); not marked", flow_run_id)
        return False
    except Exception as exc:  # noqa: BLE001 - the API is down, refused it, ...: say so, go on
        logger.warning("could not mark flow run %s Crashed (%s: %s)", flow_run_id,
                       type(exc).__name__, exc)
        return False
    logger.warning("flow run %s (%s) was %s: marked Crashed", flow_run_id, run.name,
                   state.name)
    return True


@contextmanager
def flow_output_lock(out_dir: Path, lease: float, force: bool = False) -> Iterator[RunLock]:
    """:func:`output_lock` inside a flow: the flow run id in the lock file, log lines in the
    run's log, and the flow run of a lock taken over marked Crashed."""
    from prefect import get_run_logger

    logger = get_run_logger()
    me = _current_flow_run_id()

    def on_takeover(owner: dict[str, Any], reason: str) -> None:
        old = owner.get("flow_run_id")
        if old and str(old) != me:
            mark_crashed(str(old), owner, reason, logger)

    with output_lock(out_dir, lease=lease, force=force, extra={"flow_run_id": me},
                     on_takeover=on_takeover, log=logger) as lock:
        yield lock
