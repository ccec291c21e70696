"""`stego segment-folder`: every scene a glob matches (a local one or a bucket's,
``s3://bucket/scenes/*.tif``) into ``OUT_ROOT/<scene stem>/`` (a folder or a bucket URL),
skipping finished scenes; the pattern, the bucket and the model are checked before Prefect,
torch and Dask load, and before anything is written."""

from __future__ import annotations

import argparse
import json
from typing import Any

from flows.cli_run import flow_run
from flows.locations import find_scenes
from pipeline.errors import InputError
from pipeline.io.remote import check_writable, is_remote


def segment_folder_command(args: argparse.Namespace, cfg: Any) -> int:
    """Run the `segment-folder` flow with the CLI's checked config ``cfg``; exit 0 when every
    scene was processed or skipped; a failed scene ends it with the error line (exit 1) after
    the summary of all of them."""
    from pipeline.io.files import ensure_output_dir
    from pipeline.models.store import local_model_dir, read_model_json

    scenes = find_scenes(args.input_glob)  # a missing bucket, bad credentials: one line
    if not scenes:
        raise InputError(args.input_glob, "no files match this pattern")
    if is_remote(args.out_root):
        check_writable(str(args.out_root))
    else:
        ensure_output_dir(args.out_root)
    read_model_json(local_model_dir(args.model))
    from flows.batch_flow import BatchFailed, segment_folder

    failed: BatchFailed | None = None
    with flow_run():
        try:
            summary = segment_folder(args.input_glob, str(args.model), str(args.out_root),
                                     cfg.model_dump(mode="json"))
        except BatchFailed as exc:
            failed, summary = exc, exc.summary
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        _print_summary(summary)
    if failed is not None:
        raise failed  # the `error:` line, exit 1
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    for scene in summary["processed"]:
        print(f"  processed {scene}")
    for scene in summary["skipped"]:
        print(f"  skipped   {scene} (already done)")
    for scene, error in summary["failed"].items():
        print(f"  failed    {scene}: {error}")
    print(f"{len(summary['processed'])} processed, {len(summary['skipped'])} skipped, "
          f"{len(summary['failed'])} failed of {summary['total']} -> {summary['out_root']}")
