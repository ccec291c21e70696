"""Timestamps of a `stego` run's start-up phases, printed to stderr at the end when
``STEGO_TRACE_PHASES=1`` (benchmarks/startup.py reads them); free when unset."""

from __future__ import annotations

import json
import os
import sys
import time

ENABLED = os.environ.get("STEGO_TRACE_PHASES") == "1"
_MARKS: list[tuple[str, float]] = []


def mark(phase: str) -> None:
    """Record that ``phase`` ended now (wall-clock time, comparable across processes)."""
    if ENABLED:
        _MARKS.append((phase, time.time()))


def report() -> None:
    """Print the recorded phases as one ``stego-phases: {...}`` JSON line on stderr."""
    if ENABLED and _MARKS:
        mark("exit")
        print("stego-phases: " + json.dumps(_MARKS), file=sys.stderr, flush=True)
        _MARKS.clear()
