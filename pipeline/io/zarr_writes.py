"""Writing blocks into a partial labels store (:mod:`pipeline.io.zarr_store`): whole blocks or
their rows as they stream in, each write fenced by the store's run token (a block of an earlier
run never lands in a later run's store), and the per-block resume bookkeeping (rows written,
blocks done) that lets a killed run restart a block where it stopped."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import zarr

from pipeline.labels import NODATA, BlockOutput
from pipeline.tiling import Block

RESUME = "_resume"  # sub-group of the partial store with the per-block bookkeeping
RUN_TOKEN = "run_token"  # the partial store's current run; writers of another run are fenced

Location = Path | str  # a local path, or an object-store URL (s3://, gs://, az://)


class StaleRunError(RuntimeError):
    """A block of an earlier run (its client gone) tried to write into a later run's store."""


def new_token(path: Location) -> None:
    """Give the store a new run token: every writer holding an older one is fenced off."""
    zarr.open_group(str(path), mode="r+").attrs[RUN_TOKEN] = uuid.uuid4().hex


def store_token(path: Location) -> str | None:
    """The run token writers of this run must hold (None: the store is gone or unfenced)."""
    try:
        return zarr.open_group(str(path), mode="r").attrs.get(RUN_TOKEN)
    except Exception:  # noqa: BLE001 - a missing or half-deleted store has no token
        return None


def check_token(path: Location, token: str | None) -> None:
    """Raise :class:`StaleRunError` unless the store still belongs to ``token``'s run (read
    from disk right before each write: a rerun renews the token when it takes the store)."""
    if token is not None and store_token(path) != token:
        raise StaleRunError(f"{path}: another run has taken this store; this block's "
                            "writes are dropped")


def done_blocks(path: Location) -> set[tuple[int, int]]:
    """(row, col) of blocks whose labels are completely written."""
    done = zarr.open_array(str(path), path=f"{RESUME}/block_done", mode="r")[:]
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(done), strict=True)}


def write_block(path: Location, out: BlockOutput, confidence: bool = True,
                token: str | None = None) -> None:
    """Write a block's region (chunk-aligned, so no locks), then mark it done; with a run
    ``token``, only while the store still belongs to that run."""
    check_token(path, token)
    b = out.block
    region = (slice(b.row_off, b.row_off + b.height), slice(b.col_off, b.col_off + b.width))
    group = zarr.open_group(str(path), mode="r+")
    group["labels"][region] = out.labels
    if confidence:
        group["confidence"][region] = out.confidence
        if out.margin is not None:
            group["margin"][region] = out.margin
    group[f"{RESUME}/block_rows_done"][b.row, b.col] = b.height
    group[f"{RESUME}/block_done"][b.row, b.col] = 1


def block_rows_done(path: Location, block: Block) -> int:
    """Rows of ``block``'s core already written by an earlier, interrupted attempt."""
    group = zarr.open_group(str(path), mode="r")
    return int(group[f"{RESUME}/block_rows_done"][block.row, block.col])


class BlockWriter:
    """Writes a block's finished rows in whole chunk rows as they stream in.

    After each write the block's resume point (``block_rows_done``) moves on, so a killed run
    restarts the block from its first unwritten chunk row. Blocks are chunk-aligned, so blocks
    never share a chunk and writers need no locks.
    """

    def __init__(self, path: Location, block: Block, start_row: int, chunk: int,
                 confidence: bool = True, token: str | None = None) -> None:
        self.path, self.token = path, token
        check_token(path, token)
        self.group = zarr.open_group(str(path), mode="r+")
        self.block, self.chunk, self.confidence = block, chunk, confidence
        self.next_row = start_row  # first core row not yet written
        self._labels: list[np.ndarray] = []
        self._conf: list[np.ndarray] = []
        self._margin: list[np.ndarray] = []
        self._rows = 0

    def add(self, labels: np.ndarray, confidence: np.ndarray,
            margin: np.ndarray | None = None) -> None:
        """Append the next finished rows (in order); write every complete chunk row."""
        self._labels.append(labels)
        self._conf.append(confidence)
        self._margin.append(np.full_like(labels, NODATA) if margin is None else margin)
        self._rows += labels.shape[0]
        n = (self._rows // self.chunk) * self.chunk
        if n:
            self._write(n)

    def finish(self) -> None:
        """Write the remaining rows and mark the block done."""
        if self._rows:
            self._write(self._rows)
        b = self.block
        if self.next_row != b.height:
            raise RuntimeError(f"block {b.key}: {self.next_row} of {b.height} rows written")
        check_token(self.path, self.token)
        self.group[f"{RESUME}/block_done"][b.row, b.col] = 1

    def _write(self, n: int) -> None:
        labels = np.concatenate(self._labels)
        conf = np.concatenate(self._conf)
        margin = np.concatenate(self._margin)
        b = self.block
        y0 = b.row_off + self.next_row
        region = (slice(y0, y0 + n), slice(b.col_off, b.col_off + b.width))
        check_token(self.path, self.token)
        self.group["labels"][region] = labels[:n]
        if self.confidence:
            self.group["confidence"][region] = conf[:n]
            self.group["margin"][region] = margin[:n]
        self.next_row += n
        self.group[f"{RESUME}/block_rows_done"][b.row, b.col] = self.next_row
        self._labels, self._conf, self._margin = [labels[n:]], [conf[n:]], [margin[n:]]
        self._rows -= n
