"""Operators: serve `segment-folder` on a cron schedule and trigger its deployments.

``serve_folder`` registers a deployment and keeps polling for its runs (blocks, like
``prefect ... serve``); ``trigger`` starts a run of an existing deployment from anywhere that
reaches the same Prefect API. For work pools, see ``prefect.yaml`` (``prefect deploy``).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.config import build_config
from pipeline.errors import InputError
from pipeline.io.files import ensure_output_dir
from pipeline.io.remote import check_writable, is_remote, vsi_url
from pipeline.models.store import local_model_dir, read_model_json

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

FLOW_NAME = "segment-folder"


def check_cron(cron: str, timezone: str | None = None) -> None:
    """Raise InputError unless Prefect accepts the cron string (and timezone)."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as err:
        msg = err.errors()[0]["msg"].removeprefix("Value error, ")
        flag = "--timezone" if "timezone" in str(err.errors()[0]["loc"]) else "--cron"
        raise InputError(flag, f"{msg} (expected 5 fields, e.g. \"0 2 * * *\")") from None


def check_name(name: str) -> None:
    """Deployment names must be non-empty and free of / % & > < characters."""
    if not name or any(c in name for c in "/%&><"):
        raise InputError("--name", f"invalid deployment name {name!r} "
                         "(must be non-empty, without / % & > <)")


def _glob_base(pattern: str) -> Path:
    """The longest leading part of a glob pattern without wildcards."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def folder_parameters(input_glob: str, model_dir: str, out_root: str,
                      config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Checked flow parameters with absolute paths (runs may start in another directory);
    object-store URLs stay as they are, their buckets checked (scenes may arrive later)."""
    remote_glob = vsi_url(input_glob) or (input_glob if is_remote(input_glob) else None)
    if remote_glob:
        check_writable(remote_glob)  # the bucket is there and can be listed
        pattern = input_glob
    else:
        pattern = os.path.abspath(os.path.expanduser(input_glob))
        base = _glob_base(pattern)
        if not base.is_dir():
            raise InputError(input_glob, f"folder {base} does not exist")
    read_model_json(local_model_dir(model_dir))  # InputError: missing, no model.json, corrupt
    if is_remote(model_dir):
        model = str(model_dir).rstrip("/")
    else:
        model = str(Path(model_dir).expanduser().absolute())
    if is_remote(out_root):
        check_writable(str(out_root))
        out = str(out_root).rstrip("/")
    else:
        out = str(ensure_output_dir(out_root))
    if config:
        build_config(config)  # InputError naming the bad key
    return {"input_glob": pattern, "model_dir": model, "out_root": out,
            "config": config or None}


def build_deployment(name: str, cron: str | None, input_glob: str, model_dir: str,
                     out_root: str, config: dict[str, Any] | None = None,
                     timezone: str | None = None) -> RunnerDeployment:
    """The checked deployment of `segment-folder` (not yet registered: call ``.apply()``)."""
    check_name(name)
    if cron is not None:
        check_cron(cron, timezone)
    params = folder_parameters(input_glob, model_dir, out_root, config)
    from flows.batch_flow import segment_folder  # Prefect, torch: only once the inputs are good

    schedule: dict[str, Any] = {}
    if cron is not None:
        from prefect.schedules import Cron

        schedule["schedule"] = Cron(cron, timezone=timezone)
    return segment_folder.to_deployment(
        name=name, parameters=params, tags=["stego"],
        description=f"stego segment-folder {params['input_glob']} -> {params['out_root']}",
        **schedule,
    )


def serve_folder(name: str, cron: str | None, input_glob: str, model_dir: str, out_root: str,
                 config: dict[str, Any] | None = None, timezone: str | None = None) -> None:
    """Register the deployment and run its scheduled and triggered runs (blocks until ^C).

    Runs execute in subprocesses of this one. A cron schedule needs a Prefect server
    (PREFECT_API_URL); it is paused when serving stops and resumed when served again.
    """
    check_name(name)
    if cron is not None:
        from prefect.settings import PREFECT_API_URL

        check_cron(cron, timezone)
        if not PREFECT_API_URL.value():
            raise InputError("--cron", "schedules need a Prefect server, and none is running: "
                             "run `stego server start` (or set PREFECT_API_URL to a server's "
                             "API; omit --cron to serve on demand only)")
    params = folder_parameters(input_glob, model_dir, out_root, config)
    from prefect.settings import PREFECT_API_URL

    from flows.batch_flow import segment_folder  # Prefect, torch: only once the inputs are good

    kwargs: dict[str, Any] = {}
    if cron is not None:
        from prefect.schedules import Cron

        kwargs["schedule"] = Cron(cron, timezone=timezone)
    when = f"on '{cron}'" + (f" ({timezone})" if timezone else " (UTC)") if cron else "on demand"
    print(f"serving deployment {FLOW_NAME}/{name} {when}: {params['input_glob']} -> "
          f"{params['out_root']}\n"
          f"trigger a run now with:  stego run-deployment {name} [--param k=v] [--watch]\n"
          f"                    or:  prefect deployment run '{FLOW_NAME}/{name}'")
    if not PREFECT_API_URL.value():
        print("note: PREFECT_API_URL is not set: this uses a temporary local API (runs can be "
              "triggered from this machine only); for the UI and schedules run `stego server "
              "start` (or set PREFECT_API_URL to a server's API)")
    segment_folder.serve(
        name=name, parameters=params, tags=["stego"], print_starting_message=False,
        description=f"stego segment-folder {params['input_glob']} -> {params['out_root']}",
        **kwargs,
    )


def deployment_name(name: str) -> str:
    """``NAME`` -> ``segment-folder/NAME``; a ``flow/deployment`` name is kept."""
    return name if "/" in name else f"{FLOW_NAME}/{name}"


def trigger(name: str, params: dict[str, Any] | None = None,
            timeout: float | None = 0) -> dict[str, Any]:
    """Start a run of a deployment; wait up to ``timeout`` s (0: return at once, None: ever).

    Returns ``{id, state, name, deployment}`` (``state``: Scheduled, Running, Completed, ...).
    Parameters not given keep the deployment's defaults.
    """
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    full = deployment_name(name)
    params = params or {}
    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(full)
    except ObjectNotFound:
        raise InputError(full, "no such deployment (list them with `prefect deployment ls`; "
                         "create one with `stego deploy`)") from None
    known = (deployment.parameter_openapi_schema or {}).get("properties")
    unknown = sorted(set(params) - set(known)) if known else []
    if unknown:
        raise InputError("--param", f"unknown parameter '{unknown[0]}' of {full} "
                         f"(valid: {', '.join(sorted(known))})")
    if full.startswith(f"{FLOW_NAME}/") and params.get("config"):
        build_config(params["config"], "--param config")
    try:
        run = run_deployment(name=deployment.id, parameters=params, timeout=timeout,
                             as_subflow=False, poll_interval=2)
    except PrefectHTTPStatusError as exc:
        raise InputError(full, f"run rejected: {_http_detail(exc)}") from None
    state = run.state
    return {"id": str(run.id), "state": state.name if state else "unknown", "name": run.name,
            "deployment": full}


def _http_detail(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    try:
        detail = response.json().get("detail") if response is not None else None
    except ValueError:
        detail = None
    return str(detail or exc).splitlines()[0][:300]


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: yaml.safe_load(v)}`` (``--param`` values are YAML-typed)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError("--param", f"expected key=value, got '{item}'")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise InputError("--param", f"'{item}': value is not valid YAML ({problem})") from None
    return params
