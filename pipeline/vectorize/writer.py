"""Writing the polygon layer: a buffered pyogrio appender and the hidden temporary file that is
committed into place atomically, or discarded on failure."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyogrio.raw

from pipeline.vectorize.measure import Features, make_features

FLUSH_FEATURES = 50_000
FIELDS = ["class_id", "class_name", "area_m2", "perimeter_m"]


class _LayerWriter:
    """Buffers features and appends them to one layer with pyogrio, chunk by chunk."""

    def __init__(
        self, path: Path, *, layer: str, driver: str, crs_wkt: str | None,
        class_names: Sequence[str],
    ) -> None:
        self.path = path
        self.layer = layer
        self.driver = driver
        self.crs_wkt = crs_wkt
        known = list(class_names)
        self.names = np.array(
            [known[i] if i < len(known) else f"class_{i}" for i in range(256)], dtype=object
        )
        self.written = 0
        self.started = False
        self._buffer: list[Features] = []
        self._buffered = 0

    def add(self, features: Features) -> None:
        """Queue features; write them once the buffer is full."""
        if len(features):
            self._buffer.append(features)
            self._buffered += len(features)
        if self._buffered >= FLUSH_FEATURES:
            self.flush()

    def flush(self) -> None:
        """Write the buffered features (also when there are none and nothing was written yet)."""
        if self._buffered == 0 and self.started:
            return
        parts = self._buffer or [make_features(np.empty(0, object), np.empty(0, np.uint8), None)]
        wkb = np.array([b for part in parts for b in part.wkb], dtype=object)
        class_id = np.concatenate([part.class_id for part in parts]).astype(np.int32)
        area = np.concatenate([part.area_m2 for part in parts])
        perimeter = np.concatenate([part.perimeter_m for part in parts])
        self._write(wkb, [class_id, self.names[class_id], area, perimeter])
        self._buffer, self._buffered = [], 0

    def _write(self, wkb: np.ndarray, field_data: list[np.ndarray]) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
            pyogrio.raw.write(
                str(self.path),
                geometry=wkb,
                field_data=field_data,
                fields=FIELDS,
                layer=self.layer,
                driver=self.driver,
                geometry_type="Polygon",
                crs=self.crs_wkt,
                append=self.started,
            )
        if not self.started:
            self.layer = self._created_layer()
            self.started = True
        self.written += wkb.size

    def _created_layer(self) -> str:
        """Name of the layer just created (single-layer formats such as Shapefile rename it)."""
        names = [str(name) for name, _ in pyogrio.list_layers(self.path)]
        return self.layer if self.layer in names or len(names) != 1 else names[0]


def _temp_path(out_path: Path) -> Path:
    """Hidden sibling of out_path with the same extension (so the driver is the same)."""
    return out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}{out_path.suffix}")


def _temp_files(tmp: Path) -> list[Path]:
    """The temporary file and its sidecars (e.g. .dbf/.shx of a shapefile)."""
    stem = tmp.name[: len(tmp.name) - len(tmp.suffix)] if tmp.suffix else tmp.name
    return [p for p in tmp.parent.iterdir() if p == tmp or p.name.startswith(stem + ".")]


def _commit(tmp: Path, out_path: Path) -> None:
    """Move the finished temporary file(s) into place; the main file last."""
    for side in _temp_files(tmp):
        if side != tmp:
            os.replace(side, out_path.with_suffix(side.suffix))
    os.replace(tmp, out_path)


def _discard(tmp: Path) -> None:
    for path in _temp_files(tmp):
        path.unlink(missing_ok=True)
