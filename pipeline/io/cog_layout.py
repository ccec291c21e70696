"""The bytes of a Cloud-Optimized GeoTIFF as GDAL's COG driver lays them out (GDAL 3.10, through
``GTiffDataset::CreateCopy`` with ``COPY_SRC_OVERVIEWS=YES``), written from tiles compressed
elsewhere: :func:`pipeline.io.cog.write_cog` compresses them block by block, this module only
places them.

The file, in order:

* the header: ``II*\\0`` and the first IFD's offset (classic TIFF), or ``II+\\0``, 8, 0 and a
  64-bit offset (BigTIFF);
* GDAL's "ghost area" right after it, which tells readers how the rest is laid out::

      GDAL_STRUCTURAL_METADATA_SIZE=000140 bytes
      LAYOUT=IFDS_BEFORE_DATA
      BLOCK_ORDER=ROW_MAJOR
      BLOCK_LEADER=SIZE_AS_UINT4
      BLOCK_TRAILER=LAST_4_BYTES_REPEATED
      KNOWN_INCOMPATIBLE_EDITION=NO\\n  (and one space)

* every IFD, full resolution first and then the overviews from the largest down, each one
  followed by the values of its tags that do not fit in an entry (libtiff's order: the
  standard tags', i.e. the ColorMap, then GDAL's own and the GeoTIFF tags in the order GDAL
  sets them), at even offsets; entries sorted by tag; each IFD points to the next, the last
  to 0;
* the TileOffsets and TileByteCounts arrays that do not fit in their entries, IFD after IFD
  (GDAL writes them last: ``TIFFDeferStrileArrayWriting``);
* the tiles: the smallest overview first and full resolution last, row-major within each
  level, every tile preceded by its size (uint32) and followed by a copy of its last 4 bytes.
  TileOffsets point at the tile's first byte (after the size) and TileByteCounts count the
  tile alone.

Tag types follow libtiff: TileOffsets are LONG (LONG8 in a BigTIFF); TileByteCounts are LONG8
in a BigTIFF with one tile, else LONG when a tile's uncompressed size is at least 6553 bytes
(0xFFFF / 10), SHORT below that; ImageWidth, ImageLength, TileWidth and TileLength are SHORT
up to 65535. Everything is little-endian.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import tifffile

GHOST = (
    "LAYOUT=IFDS_BEFORE_DATA\n"
    "BLOCK_ORDER=ROW_MAJOR\n"
    "BLOCK_LEADER=SIZE_AS_UINT4\n"
    "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\n"
    "KNOWN_INCOMPATIBLE_EDITION=NO\n "  # GDAL's final space (may become YES)
)
GHOST_AREA = (f"GDAL_STRUCTURAL_METADATA_SIZE={len(GHOST):06d} bytes\n" + GHOST).encode()

SHORT, LONG, LONG8 = 3, 4, 16
TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
             13: 4, 16: 8, 17: 8, 18: 8}
NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH = 254, 256, 257
TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 322, 323, 324, 325
COLORMAP = 320
# the tags an overview IFD takes from the full-resolution one (besides its own size, tiling and
# tiles): what GDAL's COG driver writes there; no georeferencing and no GDAL_METADATA
OVERVIEW_TAGS = (258, 259, 262, 277, 284, 317, 320, 339, 42113)
# the order in which GDAL sets its tags on a new file, i.e. the order of their values after an
# IFD (libtiff writes custom tags' values in the order they were set): GDAL_METADATA, nodata,
# then the georeferencing (pixel scale + tie point, or the transformation) and the GeoKeys
CUSTOM_ORDER = (42112, 42113, 33550, 33922, 34264, 34735, 34736, 34737)


@dataclass(frozen=True)
class Tag:
    """One IFD entry: tag, TIFF type, value count and the value's bytes (little-endian)."""

    code: int
    type: int
    count: int
    data: bytes


def read_tags(tiff: bytes) -> list[Tag]:
    """The first IFD's tags of a (little-endian) TIFF file, values as raw bytes."""
    with tifffile.TiffFile(io.BytesIO(tiff)) as tif:
        if tif.byteorder != "<":
            raise ValueError("only little-endian TIFF headers are supported")
        tags = []
        for tag in tif.pages.first.tags:
            size = TYPE_SIZE[int(tag.dtype)] * tag.count
            offset = tag.valueoffset
            tags.append(Tag(tag.code, int(tag.dtype), tag.count, tiff[offset:offset + size]))
    return tags


def number_tag(code: int, value: int, *, type_: int | None = None) -> Tag:
    """A one-value integer tag: SHORT up to 65535, else LONG (libtiff's ShortLong), or
    ``type_``."""
    t = type_ or (SHORT if value <= 0xFFFF else LONG)
    fmt = {SHORT: "<H", LONG: "<I", LONG8: "<Q"}[t]
    return Tag(code, t, 1, struct.pack(fmt, value))


@dataclass(frozen=True)
class Image:
    """One IFD of the file: its tags (without TileOffsets/TileByteCounts), its tiles' byte
    counts in row-major order and a tile's uncompressed size."""

    tags: tuple[Tag, ...]
    tile_sizes: tuple[int, ...]
    tile_bytes: int


def overview_tags(main: Sequence[Tag], height: int, width: int, tile: int) -> tuple[Tag, ...]:
    """The tags of an overview IFD (``NewSubfileType`` 1), from the full-resolution IFD's."""
    copied = [t for t in main if t.code in OVERVIEW_TAGS]
    own = [number_tag(NEW_SUBFILE_TYPE, 1, type_=LONG), number_tag(IMAGE_WIDTH, width),
           number_tag(IMAGE_LENGTH, height), number_tag(TILE_WIDTH, tile),
           number_tag(TILE_LENGTH, tile)]
    return tuple(sorted(copied + own, key=lambda t: t.code))


class Layout:
    """Where every IFD, tag value and tile of a COG goes, given its images (full resolution
    first) and whether it is a BigTIFF."""

    def __init__(self, images: Sequence[Image], bigtiff: bool) -> None:
        self.images = list(images)
        self.bigtiff = bigtiff
        self._entry = 20 if bigtiff else 12
        self._inline = 8 if bigtiff else 4
        header = 16 if bigtiff else 8
        pos = _even(header + len(GHOST_AREA))
        self.ifd_offsets: list[int] = []
        self._values: list[dict[int, int]] = []  # per IFD: tag -> offset of its value
        for image in self.images:
            self.ifd_offsets.append(pos)
            n = len(image.tags) + 2
            pos += (8 + n * 20 + 8) if bigtiff else (2 + n * 12 + 4)
            where = {}
            for tag in _value_order(image.tags):
                if len(tag.data) > self._inline:
                    where[tag.code] = pos
                    pos = _even(pos + len(tag.data))
            self._values.append(where)
        self._striles: list[tuple[Tag, Tag]] = []  # (offsets, byte counts) placeholders
        self._strile_at: list[tuple[int | None, int | None]] = []
        for image in self.images:
            offsets_type = LONG8 if bigtiff else LONG
            counts_type = self._counts_type(image)
            n = len(image.tile_sizes)
            at = []
            for t in (offsets_type, counts_type):
                size = TYPE_SIZE[t] * n
                if size > self._inline:
                    at.append(pos)
                    pos = _even(pos + size)
                else:
                    at.append(None)
            self._strile_at.append((at[0], at[1]))
        self.data_start = pos
        # tiles: smallest overview first, row-major; each with its 4-byte leader and trailer
        self.tile_offsets: list[list[int]] = [[] for _ in self.images]
        for i in reversed(range(len(self.images))):
            for size in self.images[i].tile_sizes:
                self.tile_offsets[i].append(pos + 4)
                pos += 4 + size + 4
        self.size = pos  # of the whole file

    def _counts_type(self, image: Image) -> int:
        n = len(image.tile_sizes)
        if self.bigtiff and (n == 1 or image.tile_bytes >= 0xFFFFFFFF // 10):
            return LONG8
        if n > 1 and image.tile_bytes < 0xFFFF // 10:
            return SHORT
        return LONG

    def order(self) -> Iterator[tuple[int, int]]:
        """(image, tile index) in the order the tiles are written."""
        for i in reversed(range(len(self.images))):
            for k in range(len(self.images[i].tile_sizes)):
                yield i, k

    def prefix(self) -> bytes:
        """Header, ghost area, IFDs with their values and the tile arrays: the file up to
        the first tile's leader."""
        if not self.bigtiff and self.size > 0xFFFFFFFF:
            raise ValueError("a classic TIFF cannot hold this file; use a BigTIFF")
        out = bytearray(self.data_start)
        if self.bigtiff:
            out[0:16] = b"II+\x00" + struct.pack("<HHQ", 8, 0, self.ifd_offsets[0])
            start = 16
        else:
            out[0:8] = b"II*\x00" + struct.pack("<I", self.ifd_offsets[0])
            start = 8
        out[start:start + len(GHOST_AREA)] = GHOST_AREA
        for i, image in enumerate(self.images):
            offsets_at, counts_at = self._strile_at[i]
            counts_type = self._counts_type(image)
            offsets = Tag(TILE_OFFSETS, LONG8 if self.bigtiff else LONG,
                          len(image.tile_sizes),
                          _pack(LONG8 if self.bigtiff else LONG, self.tile_offsets[i]))
            counts = Tag(TILE_BYTE_COUNTS, counts_type, len(image.tile_sizes),
                         _pack(counts_type, image.tile_sizes))
            entries = sorted([*image.tags, offsets, counts], key=lambda t: t.code)
            where = dict(self._values[i])
            for tag, at in ((offsets, offsets_at), (counts, counts_at)):
                if at is not None:
                    where[tag.code] = at
                    out[at:at + len(tag.data)] = tag.data
            for code, at in self._values[i].items():
                tag = next(t for t in image.tags if t.code == code)
                out[at:at + len(tag.data)] = tag.data
            nxt = self.ifd_offsets[i + 1] if i + 1 < len(self.images) else 0
            out[self.ifd_offsets[i]:self.ifd_offsets[i] + self._ifd_size(len(entries))] = \
                self._ifd(entries, where, nxt)
        return bytes(out)

    def _ifd_size(self, n: int) -> int:
        return (8 + n * 20 + 8) if self.bigtiff else (2 + n * 12 + 4)

    def _ifd(self, entries: list[Tag], where: dict[int, int], nxt: int) -> bytes:
        parts = [struct.pack("<Q" if self.bigtiff else "<H", len(entries))]
        for tag in entries:
            if tag.code in where:
                value = struct.pack("<Q" if self.bigtiff else "<I", where[tag.code])
            else:
                value = tag.data.ljust(self._inline, b"\x00")
            head = struct.pack("<HHQ" if self.bigtiff else "<HHI", tag.code, tag.type,
                               tag.count)
            parts.append(head + value)
        parts.append(struct.pack("<Q" if self.bigtiff else "<I", nxt))
        return b"".join(parts)

    def write(self, fh: BinaryIO, tile: Callable[[int, int], bytes]) -> None:
        """The whole file into ``fh``; ``tile(image, index)`` gives each tile's bytes."""
        fh.write(self.prefix())
        for i, k in self.order():
            data = tile(i, k)
            if len(data) != self.images[i].tile_sizes[k] or len(data) < 4:
                raise ValueError(f"tile {k} of image {i} is not the size it was laid out with")
            fh.write(struct.pack("<I", len(data)))
            fh.write(data)
            fh.write(data[-4:])


def _value_order(tags: Sequence[Tag]) -> list[Tag]:
    """libtiff's order of the values written after an IFD: standard tags by tag number, then
    GDAL's and the GeoTIFF tags as GDAL sets them (others after, by tag number)."""
    custom = {code: i for i, code in enumerate(CUSTOM_ORDER)}
    standard = sorted((t for t in tags if t.code < 32768), key=lambda t: t.code)
    rest = sorted((t for t in tags if t.code >= 32768),
                  key=lambda t: (custom.get(t.code, len(custom)), t.code))
    return standard + rest


def _pack(type_: int, values: Sequence[int]) -> bytes:
    fmt = {SHORT: "H", LONG: "I", LONG8: "Q"}[type_]
    return struct.pack(f"<{len(values)}{fmt}", *values)


def _even(pos: int) -> int:
    return pos + (pos & 1)
