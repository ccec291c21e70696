"""`stego segment` and the `segment-folder` flow on a real Dask cluster of 1 and 2 worker
processes on this machine; prints two tables (issue 31, item 8).

    .venv/bin/python benchmarks/cluster.py            # the full run (10-20 min on 2 cores)
    .venv/bin/python benchmarks/cluster.py --quick    # the same at small sizes (~3 min)
    .venv/bin/python benchmarks/cluster.py --size 8192 --scenes 8 --scene-size 2048 \\
        --workers 1 2 --block-sizes 10240 auto --scenes-at-once 1 2 [--work DIR]

The cluster is what `dask` itself starts, as on separate machines, but on 127.0.0.1:

    dask scheduler --host 127.0.0.1 --port 0 --no-dashboard --scheduler-file S.json
    dask worker --scheduler-file S.json --nworkers 1 --nthreads 1 --no-dashboard \\
        --host 127.0.0.1                              # once per worker, each in its own dir

(a) One generated demo scene (`pipeline.demo.write_demo_scene`, 8192² by default), a
pixel-kmeans model fitted on it with the CLI (`stego fit SCENE --method pixel-kmeans
--clusters 5 --out MODEL -q`), then per worker count and block size

    stego segment SCENE --model MODEL --out OUT --scheduler-address tcp://127.0.0.1:PORT \\
        --set tiling.block_size=B --fresh --json -q

(b) A campaign: ``--scenes`` copies of one demo scene (2048²) through the `segment-folder`
flow (`flows.batch_flow.segment_folder`, run in a child process: `_campaign` below) with
``dask.scheduler_address`` set and ``dask.scenes_at_once`` 1 and 2, on 1 and 2 workers,
every scene done afresh.

Every command talks to one Prefect server the benchmark starts first (PREFECT_API_URL, its
database in the work directory), so no row pays for starting one.

Columns: wall time of the whole command (CLI start-up and Prefect included), the infer and
COG stages and where the COG's blocks ran (run.json), blocks = Dask tasks and compute
amplification (run.json's ``parallelism``), the CPU seconds of the worker processes (nanny +
worker, psutil) and of the client (the command's process tree), and worker CPU / wall: 100 %
per fully busy worker.

The machine the numbers came from is printed above the tables (CPU cores, load average).
Do not add this to the tests: it takes minutes and wants a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED":
       "false", "OMP_WAIT_POLICY": "PASSIVE", "GDAL_CACHEMAX": "256", "HF_HUB_OFFLINE": "1"}


class Cluster:
    """A `dask scheduler` and ``n`` `dask worker` processes (1 process, 1 thread each)."""

    def __init__(self, n: int, work: Path) -> None:
        self.n, self.work = n, work
        self.procs: list[subprocess.Popen] = []
        self.address = ""

    def __enter__(self) -> Cluster:
        d = self.work / f"cluster-{self.n}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        sched_file = d / "scheduler.json"
        log = open(d / "scheduler.log", "w")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)],
            cwd=d, env=ENV, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        for i in range(self.n):
            wd = d / f"worker-{i}"
            wd.mkdir()
            wlog = open(wd / "worker.log", "w")  # noqa: SIM115
            self.procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", "--scheduler-file", str(sched_file),
                 "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                 "--local-directory", str(wd)],
                cwd=wd, env=ENV, stdout=wlog, stderr=subprocess.STDOUT))
        from distributed import Client

        self.address = json.loads(sched_file.read_text())["address"]
        with Client(self.address, timeout="60s", set_as_default=False) as client:
            client.wait_for_workers(self.n, timeout=180)
        return self

    def worker_cpu(self) -> float:
        """CPU seconds (user + system) of every worker process tree so far."""
        total = 0.0
        for proc in self.procs[1:]:
            try:
                p = psutil.Process(proc.pid)
                for q in (p, *p.children(recursive=True)):
                    t = q.cpu_times()
                    total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):  # workers first, the scheduler last
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def measured(cluster: Cluster, into: dict[str, float]):
    """Wall time, the workers' CPU seconds and the children's (client) CPU seconds."""
    w0, c0 = cluster.worker_cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    yield
    into["wall"] = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    into["worker_cpu"] = cluster.worker_cpu() - w0
    into["client_cpu"] = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)


def run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return done.stdout


def _cpu_cols(m: dict[str, float], workers: int) -> list[str]:
    return [f"{m['worker_cpu']:.1f}", f"{100 * m['worker_cpu'] / m['wall']:.0f} %",
            f"{100 * m['worker_cpu'] / (m['wall'] * workers):.0f} %", f"{m['client_cpu']:.1f}"]


def pixel_model(scene: Path, model: Path, work: Path) -> Path:
    """A pixel-kmeans model of ``scene`` fitted with the CLI (once: kept in ``work``)."""
    if not (model / "model.json").exists():
        run([str(BIN / "stego"), "fit", str(scene), "--method", "pixel-kmeans", "--clusters",
             "5", "--out", str(model), "-q"], work)
    return model


def one_raster(args: argparse.Namespace, work: Path) -> list[list[str]]:
    from pipeline.demo import write_demo_scene

    scene = write_demo_scene(work / f"scene{args.size}.tif", size=args.size)[0]
    model = pixel_model(scene, work / "model", work)
    rows = []
    for n in args.workers:
        with Cluster(n, work) as cluster:
            for block in args.block_sizes:
                out = work / f"out-{n}-{block}"
                m: dict[str, float] = {}
                with measured(cluster, m):
                    doc = json.loads(run(
                        [str(BIN / "stego"), "segment", str(scene), "--model", str(model),
                         "--out", str(out), "--scheduler-address", cluster.address, "--set",
                         f"tiling.block_size={block}", "--fresh", "--json", "-q"], work))
                par = doc["parallelism"]
                rows.append([str(n), str(block), str(par["block_size"]), str(par["blocks"]),
                             f"{par['blocks_per_thread']:g}",
                             f"{par['compute_amplification']:.2f}", f"{m['wall']:.1f}",
                             f"{doc['timings_s']['infer']:.1f}",
                             f"{doc['timings_s']['cog']:.1f}", doc["cog"].get("blocks_on", "-"),
                             *_cpu_cols(m, n)])
    return rows


def campaign(args: argparse.Namespace, work: Path) -> list[list[str]]:
    from pipeline.demo import write_demo_scene

    src = write_demo_scene(work / "campaign-src" / "scene.tif", size=args.scene_size)[0]
    folder = work / "campaign"
    folder.mkdir(exist_ok=True)
    for i in range(args.scenes):
        shutil.copy(src, folder / f"scene{i:02d}.tif")
    model = pixel_model(src, work / "model-campaign", work)
    rows = []
    for n in args.workers:
        with Cluster(n, work) as cluster:
            for at_once in args.scenes_at_once:
                out = work / f"campaign-out-{n}-{at_once}"
                shutil.rmtree(out, ignore_errors=True)  # every scene afresh
                cfg = {"dask": {"scheduler_address": cluster.address,
                                "scenes_at_once": at_once}}
                m: dict[str, float] = {}
                with measured(cluster, m):
                    run([sys.executable, __file__, "_campaign", str(folder / "*.tif"),
                         str(model), str(out), json.dumps(cfg)], work)
                docs = [json.loads(p.read_text()) for p in sorted(out.glob("*/run.json"))]
                assert len(docs) == args.scenes and all(d["status"] == "complete" for d in docs)
                blocks = sum(d["parallelism"]["blocks"] for d in docs)
                amp = docs[0]["parallelism"]["compute_amplification"]
                rows.append([str(n), str(at_once), str(blocks), f"{amp:.2f}", f"{m['wall']:.1f}",
                             f"{60 * args.scenes / m['wall']:.1f}", *_cpu_cols(m, n)])
    return rows


def _campaign(argv: list[str]) -> None:
    """Child process: the segment-folder flow against the benchmark's Prefect server."""
    input_glob, model, out_root, cfg = argv
    from flows.batch_flow import segment_folder

    summary: Any = segment_folder(input_glob, model, out_root, json.loads(cfg))
    print(json.dumps({k: len(v) if isinstance(v, list | dict) else v
                      for k, v in summary.items()}))


@contextmanager
def prefect_server(work: Path):
    """One Prefect API server for every command (PREFECT_API_URL, a database under ``work``):
    no command pays for starting its own, and the flows' scene threads all see it."""
    os.environ["PREFECT_HOME"] = ENV["PREFECT_HOME"] = str(work / "prefect-home")
    from flows.prefect_api import TemporaryServer

    server = TemporaryServer()
    try:
        ENV["PREFECT_API_URL"] = server.wait(180)
        yield
    finally:
        server.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_campaign":
        _campaign(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes: a 2048² raster, 4 scenes of 1024²")
    ap.add_argument("--size", type=int, default=8192, help="(a) raster edge")
    ap.add_argument("--scenes", type=int, default=8,
                    help="(b) scenes in the campaign (0: only (a))")
    ap.add_argument("--scene-size", type=int, default=2048, help="(b) edge of each scene")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--block-sizes", nargs="+", default=["10240", "auto"],
                    help="(a) tiling.block_size values")
    ap.add_argument("--scenes-at-once", type=int, nargs="+", default=[1, 2],
                    help="(b) dask.scenes_at_once values")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (kept)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.scenes, args.scene_size = 2048, 4, 1024
    work = args.work or Path(tempfile.mkdtemp(prefix="stego-cluster-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} "
          f"GiB, load average {load[0]:.1f} at the start; workers: dask worker --nworkers 1 "
          f"--nthreads 1 each, on 127.0.0.1; pixel-kmeans; work dir {work}")
    with prefect_server(work):
        raster = one_raster(args, work)
        print(f"\n(a) one {args.size}² raster, `stego segment --scheduler-address`\n")
        print_table(["workers", "block_size", "resolved", "blocks (tasks)", "per thread",
                     "amplif.", "wall s", "infer s", "cog s", "cog blocks on", "worker CPU s",
                     "worker CPU / wall",
                     "per worker", "client CPU s"], raster)
        if args.scenes <= 0:
            print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
            return
        folder = campaign(args, work)
        print(f"\n(b) campaign: {args.scenes} scenes of {args.scene_size}², segment-folder, "
              "block_size 10240 (one block per scene)\n")
        print_table(["workers", "scenes_at_once", "blocks (tasks)", "amplif.", "wall s",
                     "scenes/min", "worker CPU s", "worker CPU / wall", "per worker",
                     "client CPU s"], folder)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
