"""Progress reporting: bar, plain lines, JSON lines, silence."""

from __future__ import annotations

import io
import json

from pipeline.segment.progress import Progress


def test_json_lines_carry_done_total_rate_and_eta():
    out = io.StringIO()
    p = Progress(3, "blocks", mode="json", stream=out, min_interval=0)
    for _ in range(3):
        p.update(1, 2.0)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["done"] for e in events] == [1, 2, 3] and events[-1]["total"] == 3
    assert events[-1]["eta_s"] == 0 and events[-1]["Mpx_per_s"] > 0


def test_off_is_silent_and_lines_are_plain():
    silent, plain = io.StringIO(), io.StringIO()
    Progress(2, "blocks", mode="off", stream=silent).update(2)
    p = Progress(2, "blocks", mode="lines", stream=plain, min_interval=0)
    p.update()
    p.update()
    assert silent.getvalue() == ""
    assert plain.getvalue().splitlines()[-1].startswith("blocks 2/2")


def test_auto_draws_a_bar_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    Progress(1, "blocks", stream=tty, min_interval=0).update()
    assert tty.getvalue().startswith("\r[") and "blocks 1/1" in tty.getvalue()
    assert Progress(1, "blocks", stream=io.StringIO()).mode == "lines"
