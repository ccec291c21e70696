"""The CLI's ends: the one `error:` line (last on stderr, also in --json), and SIGTERM/SIGINT
turned into an interruption that unwinds cleanly and says how the run resumes."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived: unwinds like Ctrl-C so every ``finally`` and lock runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


RESUME_HINT = {
    "segment": "run.json says 'interrupted'; run the same command again to resume (finished "
               "blocks are kept)",
    "pretrain": "run the same command again to resume from its last checkpoint",
    "fit": "run the same command again to resume (STEGO's feature cache is kept; the "
           "clustering or head training starts over)",
}


def was_interrupted(exc: BaseException) -> BaseException | None:
    """The SIGTERM/SIGINT behind ``exc``, if any: KeyboardInterrupt or Prefect's
    TerminationSignal, itself or in its cause/context chain (Prefect's crash handling can
    raise its own error while a signal unwinds a task)."""
    from prefect.exceptions import TerminationSignal

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt | TerminationSignal):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _signal_name(exc: BaseException) -> str:
    signum = getattr(exc, "signum", None) or getattr(exc, "signal", None) or signal.SIGINT
    return signal.Signals(signum).name


def install_signal_handlers() -> dict[int, Any]:
    """SIGTERM and SIGINT raise Interrupted (main thread only); returns the previous ones."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT)}


def _release_prefect_server() -> None:
    """Stop this process's temporary Prefect server now (the one `stego` started early, or
    Prefect's own), flushing logs to it first, so that its "Stopping temporary server" line
    comes before the error line instead of after it."""
    from flows import prefect_api

    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None and prefect_api.RUN_API.temporary is None:
        return
    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import APILogHandler

        prefect_api.drain_prefect_workers()  # send what is queued while the API is up
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in list(getattr(logger, "handlers", [])):
                if isinstance(handler, APILogHandler):  # later lines would only fail to send
                    logger.removeHandler(handler)
    if server_module is not None:
        for server in list(server_module.SubprocessASGIServer._instances.values()):
            if getattr(server, "server_process", None) is not None:
                server.stop()
    prefect_api.close()
    logging.shutdown()


def report(args: argparse.Namespace | None, line: str, status: str, code: int,
            release: bool) -> int:
    """The one ``error:`` line, last on stderr; with ``--json`` the same as JSON on stdout."""
    if release:
        _release_prefect_server()
    if getattr(args, "json", False):
        print(json.dumps({"status": status, "error": line, "exit_code": code}))
    sys.stdout.flush()
    sys.stderr.flush()
    print(f"error: {line}", file=sys.stderr, flush=True)
    return code


def report_exception(exc: BaseException, args: argparse.Namespace | None, debug: bool,
                     release: bool) -> int:
    """Any other exception: an interruption (exit 128 + signal), else exit 1 (or re-raised)."""
    signalled = was_interrupted(exc)
    if signalled is not None:
        name = _signal_name(signalled)
        hint = RESUME_HINT.get(getattr(args, "command", ""), "nothing was left half-written")
        code = 128 + signal.Signals[name].value
        return report(args, f"interrupted by {name}; {hint}", "interrupted", code, release)
    if isinstance(exc, SystemExit | GeneratorExit):
        raise exc
    if debug:
        raise exc
    if isinstance(exc, OSError):  # disk full, permissions: the file, else the output directory
        path = exc.filename or getattr(args, "out", None)
        where = f"{path}: " if path else ""
        return report(args, f"{where}{exc.strerror or exc}", "failed", 1, release)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return report(args, f"{type(exc).__name__}: {first}", "failed", 1, release)
