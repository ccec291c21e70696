"""Writing the polygon layer: one streaming pyogrio (GDAL Arrow) write fed while the blocks are
processed, and the hidden temporary file that is committed into place atomically, or discarded
on failure."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyogrio

from pipeline.vectorize.measure import Features

if TYPE_CHECKING:
    import pyarrow as pa

# An Arrow batch goes to GDAL at this many features or WKB bytes, whichever comes first: each
# buffered feature costs about 3 KB on real imagery (WKB, its Arrow copy, GDAL's), and batches
# larger than this do not write faster (50 000 features cost 140 MB more at the same speed)
FLUSH_FEATURES = 10_000
FLUSH_BYTES = 16 * 2**20
FIELDS = ["class_id", "class_name", "area_m2", "perimeter_m"]


class _LayerWriter:
    """Writes one polygon layer from a stream of :class:`Features` in a single pass.

    ``pyogrio.write_arrow`` pulls Arrow record batches from the stream while it is being
    produced: the dataset is opened once, features go in batch by batch, and drivers with a
    spatial index (GeoPackage's R-tree, FlatGeobuf's packed tree) build it once at the end.
    """

    def __init__(
        self, path: Path, *, layer: str, driver: str, crs_wkt: str | None,
        class_names: Sequence[str],
    ) -> None:
        self.path = path
        self.layer = layer
        self.driver = driver
        self.crs_wkt = crs_wkt
        import pyarrow as pa  # here, not at import: `stego` starts without it

        known = list(class_names)
        self.names = pa.array([known[i] if i < len(known) else f"class_{i}" for i in range(256)],
                              type=pa.string())
        self.schema = pa.schema([("class_id", pa.int32()), ("class_name", pa.string()),
                                 ("area_m2", pa.float64()), ("perimeter_m", pa.float64()),
                                 ("geometry", pa.binary())])
        self.written = 0

    def write(self, stream: Iterable[Features]) -> None:
        """Write every feature of ``stream`` (consumed while writing) as the layer.

        An exception raised by the stream is re-raised as it is (not as GDAL's error about
        the failed batch), so callers see the worker error or the interruption itself.
        """
        import pyarrow as pa

        failure: list[BaseException] = []

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                buffer: list[Features] = []
                buffered = size = 0
                for features in stream:
                    if len(features):
                        buffer.append(features)
                        buffered += len(features)
                        size += sum(map(len, features.wkb))
                    if buffered >= FLUSH_FEATURES or size >= FLUSH_BYTES:
                        yield self._batch(buffer)
                        buffer, buffered, size = [], 0, 0
                if buffer:
                    yield self._batch(buffer)
            except BaseException as exc:
                failure.append(exc)
                raise

        reader = pa.RecordBatchReader.from_batches(self.schema, batches())
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
                pyogrio.write_arrow(
                    reader, str(self.path), layer=self.layer, driver=self.driver,
                    geometry_name="geometry", geometry_type="Polygon", crs=self.crs_wkt,
                )
        except BaseException:
            if failure:
                raise failure[0] from None
            raise
        if failure:  # pragma: no cover - GDAL reports a failed stream; kept as a safeguard
            raise failure[0]
        self.layer = self._created_layer()

    def _batch(self, parts: list[Features]) -> pa.RecordBatch:
        import pyarrow as pa

        class_id = np.concatenate([part.class_id for part in parts]).astype(np.int32)
        wkb = [b for part in parts for b in part.wkb]
        self.written += len(wkb)
        return pa.record_batch([
            pa.array(class_id), self.names.take(pa.array(class_id)),
            pa.array(np.concatenate([part.area_m2 for part in parts])),
            pa.array(np.concatenate([part.perimeter_m for part in parts])),
            pa.array(wkb, type=pa.binary()),
        ], schema=self.schema)

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
