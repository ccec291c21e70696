"""Start-up cost of `stego`: a 256² `stego segment` end to end, phase by phase, cold (a temporary
Prefect server per run) and with `stego server` running; and how fast bad input is answered by
each subcommand. Every run is the real console script in a fresh process; prints tables.

    python benchmarks/startup.py [--repeat 5] [--size 256] [--modes cold server]
        [--bad-inputs] [--work DIR]

Phases come from the CLI's own timestamps (STEGO_TRACE_PHASES=1, flows/startup_trace.py),
measured from the moment this script starts the process; medians over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEGO = [sys.executable, "-m", "flows.cli"]


def _env(work: Path, server_home: Path, trace: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(STEGO_SERVER_HOME=str(server_home), OMP_WAIT_POLICY="PASSIVE",
               HF_HUB_OFFLINE="1", PREFECT_HOME=str(work / "prefect-home"))
    if trace:
        env["STEGO_TRACE_PHASES"] = "1"
    return env


def run_cli(argv: list[str], env: dict[str, str]) -> tuple[float, float, Any]:
    """(spawn time, wall seconds from spawn to exit, the finished process)."""
    t0 = time.time()
    done = subprocess.run([*STEGO, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    return t0, time.time() - t0, done


def phases(stderr: str, t0: float) -> list[tuple[str, float]]:
    """(phase, seconds it took) from the CLI's ``stego-phases:`` line."""
    line = next(x for x in stderr.splitlines() if x.startswith("stego-phases: "))
    out, prev = [], t0
    for name, t in json.loads(line.removeprefix("stego-phases: ")):
        out.append((name, t - prev))
        prev = t
    return out


def segment_runs(work: Path, scene: Path, model: Path, mode: str, repeat: int) -> dict:
    """Median phase times and walls of ``repeat`` segment runs in one mode."""
    home = work / ("server" if mode == "server" else "no-server")
    env = _env(work, home, trace=True)
    walls, per_phase, order = [], {}, []
    if mode == "server":
        subprocess.run([*STEGO, "server", "start", "--no-ui", "--home", str(home)], cwd=ROOT,
                       env=_env(work, home, False), check=True, capture_output=True)
    try:
        for i in range(repeat):
            out = work / f"out-{mode}-{i}"
            t0, wall, done = run_cli(["segment", str(scene), "--model", str(model), "--out",
                                  str(out), "-q", "--fresh"], env)
            if done.returncode != 0:
                raise SystemExit(f"segment failed ({mode}): {done.stderr[-2000:]}")
            walls.append(wall)
            for name, seconds in phases(done.stderr, t0):
                name = name.split(" (")[0] if name.startswith("api chosen") else name
                if name not in per_phase:
                    order.append(name)
                per_phase.setdefault(name, []).append(seconds)
            doc = json.loads((out / "run.json").read_text())
            per_phase.setdefault("(work inside the flow, run.json total)", []).append(
                doc["timings_s"]["total"])
    finally:
        if mode == "server":
            subprocess.run([*STEGO, "server", "stop", "--home", str(home)], cwd=ROOT,
                           env=_env(work, home, False), capture_output=True)
    return {"walls": walls, "phases": {k: statistics.median(per_phase[k]) for k in order},
            "work": statistics.median(per_phase["(work inside the flow, run.json total)"])}


PHASE_NAMES = {
    "cli imported": "Python start, `import flows.cli`",
    "api chosen": "parse flags; find `stego server` or spawn the temporary server",
    "raster checked": "config, open the raster (rasterio)",
    "segment plan imported": "import Dask (the segment plan; torch only for torch models)",
    "model and output checked": "load the model, check the output directory",
    "segment flow imported (Prefect, Dask)": "import Prefect, the flow, writers, vectorizer",
    "API ready": "wait for the API (temporary server still starting)",
    "flow finished": "the flow: Prefect runs, tasks, Dask, the work",
    "main returned": "drain Prefect's log/event queues, SIGTERM the temporary server",
    "exit": "print the phases",
}


def bad_input_cases(work: Path, model: Path) -> list[tuple[str, list[str]]]:
    """(subcommand, argv) with one bad path or value each."""
    missing = str(work / "missing.tif")
    return [
        ("segment", ["segment", missing, "--model", str(model), "--out", str(work / "o")]),
        ("segment (bad model)", ["segment", str(work / "scene.tif"), "--model",
                                 str(work / "no-model"), "--out", str(work / "o")]),
        ("fit", ["fit", missing, "--method", "pixel-kmeans", "--out", str(work / "m")]),
        ("pretrain", ["pretrain", missing, "--steps", "5", "--out", str(work / "b")]),
        ("evaluate", ["evaluate", missing, missing, "--out", str(work / "e")]),
        ("demo", ["demo", str(work / "d"), "--weights", str(work / "no-weights.pth")]),
        ("name-clusters", ["name-clusters", str(work / "no-model"), "--from",
                           str(work / "m.json")]),
        ("import-checkpoint", ["import-checkpoint", str(work / "missing.ckpt"), "--out",
                               str(work / "i")]),
        ("deploy", ["deploy", "--name", "n", "--input-glob", str(work / "nowhere" / "*.tif"),
                    "--model", str(model), "--out-root", str(work / "r")]),
        ("run-deployment", ["run-deployment", "n", "--param", "no-equals-sign"]),
        ("demo-scene", ["demo-scene", str(work / "x.tif"), "--size", "8"]),
        ("server", ["server", "start", "--port", "99999999"]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--modes", nargs="+", default=["cold", "server"],
                    choices=["cold", "server"])
    ap.add_argument("--bad-inputs", action="store_true", help="also time bad input per "
                    "subcommand (--repeat runs each)")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="stego-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    scene, model = work / "scene.tif", work / "model"
    env = _env(work, work / "no-server", trace=False)
    if not scene.exists():
        subprocess.run([*STEGO, "demo-scene", str(scene), "--size", str(args.size)], cwd=ROOT,
                       env=env, check=True, capture_output=True)
    if not (model / "model.json").exists():
        subprocess.run([*STEGO, "fit", str(scene), "--method", "pixel-kmeans", "--clusters",
                        "5", "--out", str(model), "-q"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
    load = os.getloadavg()
    results = {mode: segment_runs(work, scene, model, mode, args.repeat) for mode in args.modes}
    names = list(dict.fromkeys(n for r in results.values() for n in r["phases"]))
    rows = [[PHASE_NAMES.get(n, n), *(f"{r['phases'].get(n, 0):.2f}" for r in results.values())]
            for n in names]
    rows.append(["**wall, spawn to exit (median)**",
                 *(f"**{statistics.median(r['walls']):.2f}**" for r in results.values())])
    rows.append(["wall, all runs", *(" ".join(f"{w:.1f}" for w in r["walls"])
                                     for r in results.values())])
    rows.append(["work inside the flow (run.json total)",
                 *(f"{r['work']:.2f}" for r in results.values())])
    print(f"\n{args.size}² pixel-kmeans `stego segment`, default config, {args.repeat} runs per "
          f"column, {os.cpu_count()} CPU cores, load average before "
          f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)")
    head = ["phase (s, median)",
            *("cold (temporary server)" if m == "cold" else "`stego server` running"
              for m in results)]
    print_table(head, rows)
    if args.bad_inputs:
        rows = []
        for name, argv in bad_input_cases(work, model):
            walls, last = [], ""
            for _ in range(args.repeat):
                _, wall, done = run_cli(argv, _env(work, work / "no-server", False))
                walls.append(wall)
                last = (done.stderr.strip().splitlines() or [""])[-1]
                if done.returncode != 2:
                    raise SystemExit(f"{name}: exit {done.returncode}, expected 2: {last}")
            rows.append([name, f"{statistics.median(walls):.2f}", f"`{last[:90]}`"])
        print(f"\nbad input, {args.repeat} runs each (median wall s, spawn to exit)")
        print_table(["subcommand", "s", "last stderr line"], rows)


if __name__ == "__main__":
    main()
