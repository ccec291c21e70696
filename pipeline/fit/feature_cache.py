"""Backbone features of training crops, computed once and kept on disk (fp16 Zarr).

Head training, kNN and re-runs read this cache; the backbone never runs twice for the same
crops. The cache is keyed by the crops (sources, windows, size, scale) and the backbone's
weights hash; a cache with another key is rebuilt, a partial one is completed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr


def cache_key(crop_ids: list[tuple[str, int, int]], size: int, scale: float,
              backbone_sha: str, precision: str = "fp32") -> str:
    """Identity of a feature cache (crops, size, scale, backbone weights, backbone precision)."""
    doc = {"crops": crop_ids, "size": size, "scale": scale, "backbone": backbone_sha,
           "precision": precision}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def build_feature_cache(
    path: Path,
    key: str,
    n: int,
    shape: tuple[int, int, int],
    compute: Callable[[int, int], torch.Tensor],
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> zarr.Group:
    """Fill ``features`` (n, C, h, w) fp16 and ``pooled`` (n, C) by calling ``compute(i0, i1)``.

    Resumes a partial cache with the same key (``done`` counts finished crops).
    """
    path = Path(path)
    if path.exists():
        try:
            g = zarr.open_group(str(path), mode="r+")
            if g.attrs.get("key") == key and tuple(g["features"].shape) == (n, *shape):
                if g.attrs.get("done", 0) >= n:
                    return g
            else:
                raise ValueError("stale cache")
        except Exception:  # noqa: BLE001 - unreadable or stale caches are rebuilt
            shutil.rmtree(path)
    if not path.exists():
        g = zarr.open_group(str(path), mode="w")
        g.create_array("features", shape=(n, *shape), chunks=(1, *shape), dtype="float16")
        g.create_array("pooled", shape=(n, shape[0]), chunks=(max(1, min(n, 4096)), shape[0]),
                       dtype="float32")
        g.attrs.update({"key": key, "done": 0})
    g = zarr.open_group(str(path), mode="r+")
    done = int(g.attrs.get("done", 0))
    for i0 in range(done - done % batch_size, n, batch_size):
        i1 = min(n, i0 + batch_size)
        f = compute(i0, i1).float().cpu()
        g["features"][i0:i1] = f.numpy().astype(np.float16)
        g["pooled"][i0:i1] = f.mean(dim=(2, 3)).numpy()
        g.attrs["done"] = i1
        if progress:
            progress(i1, n)
    return g


def load_cache(g: zarr.Group, max_bytes: int = 4 << 30) -> dict[str, Any]:
    """Features in memory when they fit in ``max_bytes``, else the lazily read Zarr array."""
    feats = g["features"]
    nbytes = int(np.prod(feats.shape)) * 2
    return {
        "features": torch.from_numpy(feats[:]) if nbytes <= max_bytes else feats,
        "pooled": torch.from_numpy(g["pooled"][:]),
    }


def feature_rows(features: Any, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of cached features (an in-memory tensor or the Zarr array) as float32."""
    if isinstance(features, torch.Tensor):
        return features[idx].float()
    return torch.from_numpy(features.get_orthogonal_selection((idx.tolist(),))).float()
