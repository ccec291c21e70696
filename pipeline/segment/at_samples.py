"""A fitted model's classes at an analyst's sample pixels, computed on segment's own tiles:
the votes that name an unsupervised model's clusters (`stego name-clusters --from SAMPLES`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import RunConfig
from pipeline.errors import InputError
from pipeline.io.raster import compute_scaling, open_raster_info
from pipeline.io.samples import SampleSet, parse_sample_spec, read_samples
from pipeline.models.device import resolve_device, resolved_precision
from pipeline.models.store import load_model, read_model_json


def cluster_votes(
    model_dir: Path, samples: list[str], class_field: str | None = None,
    class_table: str | None = None, images: list[str] | None = None,
    cfg: RunConfig | None = None,
) -> tuple[np.ndarray, SampleSet]:
    """``votes[k, c]``: sample pixels of class ``c`` where the model predicts cluster ``k``,
    over ``images`` (default: the rasters the model was fitted on, from model.json)."""
    import torch

    from pipeline.models.at_pixels import values_at_pixels

    cfg = cfg or RunConfig()
    meta = read_model_json(model_dir)
    fit: dict[str, Any] = meta.get("fit") or {}
    images = list(images or fit.get("inputs") or [])
    if not images:
        raise InputError(model_dir, "model.json names no input rasters; give them with --image")
    bands = fit.get("bands") or cfg.input.bands
    rasters = []
    for path in images:
        info = open_raster_info(path, bands)
        rasters.append((info, compute_scaling(info, cfg.input.percentiles)))
    sset = read_samples([parse_sample_spec(s) for s in samples], [i for i, _ in rasters],
                        class_field, class_table=class_table, min_pixels_per_class=1)
    device = resolve_device(cfg.model.device)
    model = load_model(model_dir).to(device)
    k = model.n_classes

    def predict(x: torch.Tensor) -> torch.Tensor:
        if model.uses_torch:
            return model.predict(x)
        return torch.from_numpy(np.asarray(model.predict(x.cpu().numpy())))

    t = cfg.tiling
    probs, _ = values_at_pixels(
        predict, k, int(meta.get("patch_size", 1)), rasters,
        [(rs.rows, rs.cols) for rs in sset.per_raster], t.tile_size, t.overlap,
        t.grid_block_size(),
        t.batch_size if isinstance(t.batch_size, int) else 4, device,
        resolved_precision(cfg.model.precision, device))
    clusters = probs.argmax(1)
    classes = np.concatenate([rs.classes for rs in sset.per_raster])
    votes = np.zeros((k, len(sset.classes.names)), dtype=np.int64)
    np.add.at(votes, (clusters, classes), 1)
    return votes, sset
