"""Progress of long work on stderr: a redrawn bar on a terminal, plain or JSON lines otherwise."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO


class Progress:
    """Counts units of work (blocks, steps) and reports done/total, rate and ETA.

    ``mode``: "auto" (bar on a terminal, lines otherwise), "bar", "lines", "json" (one JSON
    object per update, for cron and log collectors) or "off".
    """

    def __init__(self, total: int, label: str, mode: str = "auto", unit: str = "Mpx",
                 stream: TextIO | None = None, min_interval: float = 0.5) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self.done = 0
        self.amount = 0.0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.min_interval = min_interval

    def update(self, n: int = 1, amount: float = 0.0) -> None:
        """``n`` more units done, carrying ``amount`` of ``unit`` (e.g. megapixels)."""
        self.done += n
        self.amount += amount
        now = time.perf_counter()
        if self.mode == "off":
            return
        if self.done < self.total and now - self._last < self.min_interval:
            return
        self._last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = self.amount / elapsed
        eta = (self.total - self.done) * elapsed / max(self.done, 1)
        if self.mode == "json":
            print(json.dumps({"event": "progress", "what": self.label, "done": self.done,
                              "total": self.total, f"{self.unit}_per_s": round(rate, 3),
                              "eta_s": round(eta, 1)}), file=self.stream, flush=True)
            return
        text = (f"{self.label} {self.done}/{self.total}  {rate:.2f} {self.unit}/s  "
                f"ETA {eta:.0f}s")
        if self.mode == "bar":
            width = 30
            fill = int(width * self.done / max(self.total, 1))
            end = "\n" if self.done >= self.total else ""
            print(f"\r[{'#' * fill}{'.' * (width - fill)}] {text}", end=end, file=self.stream,
                  flush=True)
        else:
            print(text, file=self.stream, flush=True)
