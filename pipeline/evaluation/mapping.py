"""Ground-truth classes: built-in and file class mappings (GT value -> class), parsing and
ordering of GT keys, and resolving the keys seen in the ground truth into evaluated classes."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError

IGNORE = -1
BACKGROUND = None  # the key of the area no polygon covers (vector ground truth)

POTSDAM6 = ["impervious surfaces", "building", "low vegetation", "tree", "car", "clutter"]
POTSDAM3 = ["roads and cars", "buildings and clutter", "vegetation and trees"]


@dataclass
class Mapping:
    """GT value -> class index (``-1`` = ignore) and the class names, in order."""

    name: str
    classes: list[str]
    lookup: dict[Any, int]

    def index(self, value: Any) -> int | None:
        """Class index of a GT value, ``-1`` for ignored, None when the mapping lacks it."""
        for key in _key_variants(value):
            if key in self.lookup:
                return self.lookup[key]
        return None


def _key_variants(value: Any) -> list[Any]:
    out = [value]
    if isinstance(value, str):
        try:
            out.append(int(value))
        except ValueError:
            pass
    elif value is not None:
        out.append(str(value))
    return out


def _builtin(name: str) -> Mapping:
    if name == "potsdam6":
        lookup = {0: IGNORE, **{v: v - 1 for v in range(1, 7)}}
        return Mapping("potsdam6", list(POTSDAM6), lookup)
    lookup = {0: IGNORE, 1: 0, 5: 0, 2: 1, 6: 1, 3: 2, 4: 2}
    return Mapping("potsdam3", list(POTSDAM3), lookup)


def _parse_key(text: Any) -> Any:
    if isinstance(text, bool):
        raise ValueError("a boolean is not a class value; quote YAML keys such as 'yes'")
    if isinstance(text, int):
        return text
    if isinstance(text, float) and text.is_integer():
        return int(text)
    s = str(text).strip()
    try:
        return int(s)
    except ValueError:
        return s


def _is_ignore(name: Any) -> bool:
    return name is None or str(name).strip().lower() in ("", "ignore", "-")


def _mapping_from_pairs(name: str, pairs: list[tuple[Any, Any]], path: Path) -> Mapping:
    classes: list[str] = []
    lookup: dict[Any, int] = {}
    for raw_value, raw_class in pairs:
        try:
            value = _parse_key(raw_value)
        except ValueError as exc:
            raise InputError(path, f"bad value {raw_value!r} ({exc})") from None
        if value in lookup:
            raise InputError(path, f"value {value!r} is mapped twice")
        if _is_ignore(raw_class):
            lookup[value] = IGNORE
            continue
        cls = str(raw_class).strip()
        if cls not in classes:
            classes.append(cls)
        lookup[value] = classes.index(cls)
    if not classes:
        raise InputError(path, "the mapping names no class")
    return Mapping(name, classes, lookup)


def load_mapping(spec: str | None) -> Mapping | None:
    """``potsdam3``, ``potsdam6``, a CSV (``value,class``) or YAML (``{value: class}``) file.

    Several values may map to one class; a class written ``ignore`` (or empty / null) means the
    value is ignored. None gives None (each GT value is its own class).
    """
    if spec is None:
        return None
    if str(spec).lower() in ("potsdam3", "potsdam6"):
        return _builtin(str(spec).lower())
    path = Path(spec)
    if not path.is_file():
        raise InputError(spec, "mapping not found (use potsdam3, potsdam6 or a CSV/YAML file)")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            raise InputError(path, "empty mapping file")
        header = [h.strip().lower() for h in rows[0]]
        name_col = next((c for c in ("class", "class_name", "name") if c in header), None)
        if "value" not in header or name_col is None:
            raise InputError(path, "a CSV mapping needs a 'value,class' header")
        vi, ci = header.index("value"), header.index(name_col)
        pairs = []
        for n, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= vi or not row[vi].strip():
                raise InputError(path, f"line {n}: expected value,class")
            pairs.append((row[vi], row[ci] if ci < len(row) else ""))
        return _mapping_from_pairs(str(path), pairs, path)
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(path, "a YAML mapping must be {value: class_name, ...}")
    return _mapping_from_pairs(str(path), list(data.items()), path)


def _sort_key(k: Any) -> tuple:
    if k is None:
        return (0, 0, "")
    if isinstance(k, (int, np.integer)):
        return (1, int(k), "")
    return (2, 0, str(k))


def _json_key(k: Any) -> Any:
    return k if k is None or isinstance(k, (int, str)) else str(k)


def _resolve_classes(
    keys: list[Any], mapping: Mapping | None, ignore: Sequence[Any], background: str | None,
) -> tuple[list[str], dict[Any, int], list[Any]]:
    """Class names and GT key -> class index (-1 ignored); also the keys the mapping lacks."""
    ignored = {str(v) for v in ignore}
    lookup: dict[Any, int] = {}
    unmapped: list[Any] = []
    classes: list[str] = list(mapping.classes) if mapping is not None else []
    has_background = BACKGROUND in keys and background is not None
    if mapping is None and has_background:
        classes.append(background)  # first, like value 0 of a raster
    for k in sorted(keys, key=_sort_key):
        if k is BACKGROUND:
            continue
        if str(k) in ignored:
            lookup[k] = IGNORE
        elif mapping is not None:
            idx = mapping.index(k)
            if idx is None:
                unmapped.append(k)
            else:
                lookup[k] = idx
        else:
            name = f"class {k}" if isinstance(k, int) else str(k)
            if name not in classes:
                classes.append(name)
            lookup[k] = classes.index(name)
    if BACKGROUND in keys:
        if background is None:
            lookup[BACKGROUND] = IGNORE
        else:
            if background not in classes:
                classes.append(background)
            lookup[BACKGROUND] = classes.index(background)
    return classes, lookup, unmapped
