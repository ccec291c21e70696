"""A larger sweep of generated odd inputs than the test suite runs (tests/flows/test_odd_inputs.py).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bad_inputs_sweep.py [--examples 200] [--seed 0]
        [--bound 60] [--json sweep.json]

Each example is a raster drawn by ``tests.flows.odd_rasters.specs`` (dtype, band count and
--bands, nodata pattern, size, transform, palette, VRT with a missing source), segmented
in-process by `stego segment` with one tiny pixel-kmeans model under a temporary Prefect
server, and checked against the contract (exit 0 with valid outputs, or exit 2 with one last
`error:` line and nothing at the final paths; never exit 1; under ``--bound`` seconds). A
violation stops the sweep with hypothesis's shrunk example. The table counts outcomes per family.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _model(folder: Path) -> Path:
    from pipeline.demo import write_demo_scene
    from pipeline.fit.methods import fit_pixel_kmeans
    from pipeline.io.crops import sample_crops
    from pipeline.io.raster import compute_scaling, open_raster_info
    from pipeline.models.store import save_model

    image, _ = write_demo_scene(folder / "scene.tif", size=256, seed=1)
    info = open_raster_info(image)
    crops = sample_crops([(info, compute_scaling(info))], 8, 64, seed=0)
    model, _ = fit_pixel_kmeans(crops, 4, 10_000, 10, seed=0)
    return save_model(model, folder / "model", {})


def main() -> int:
    """Run the sweep and print a table of outcomes per family."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from prefect.testing.utilities import prefect_test_harness

    from tests.flows.odd_rasters import run_spec, specs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bound", type=float, default=60.0, help="seconds per run at most")
    ap.add_argument("--json", type=Path, help="write every row here")
    args = ap.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        model = _model(Path(tmp))
        counter = iter(range(10**9))

        @hseed(args.seed)
        @settings(max_examples=args.examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(spec=specs())
        def sweep(spec):
            rows.append(run_spec(spec, Path(tmp) / f"case{next(counter)}", model, args.bound))

        t0 = time.perf_counter()
        sweep()
        total = time.perf_counter() - t0
    by = collections.Counter()
    for r in rows:
        outcome = "ok" if r["exit"] == 0 else r["result"].split(": ", 2)[-1][:48]
        by[(r["kind"], r["dtype"], r["nodata"], outcome)] += 1
    print(f"{len(rows)} runs (hypothesis also replays some), {total:.0f} s, "
          f"slowest {max(r['seconds'] for r in rows):.1f} s, every run kept the contract")
    print("| kind | dtype | nodata | outcome | runs |\n|---|---|---|---|---|")
    for (kind, dtype, nodata, outcome), n in sorted(by.items()):
        print(f"| {kind} | {dtype} | {nodata} | {outcome} | {n} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
