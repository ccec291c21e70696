"""Classes of training samples: the class table file (value -> name, colour), class values and
colours as analysts write them, and the registry that merges the classes of several sample files
into one ordered :class:`ClassTable`."""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError

Color = tuple[int, int, int]

_INT = re.compile(r"^[+-]?\d+$")
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")
_HEADER_WORDS = {"value", "values", "classvalue", "class_value", "code", "id", "class_id",
                 "classid", "key"}


@dataclass
class ClassTable:
    """Classes in order: their names, colours (``None`` when unknown) and source values (the
    integer or text that the sample files or the class table use for them)."""

    names: list[str]
    colors: list[Color | None]
    values: list[Any]

    def __len__(self) -> int:
        """The number of classes."""
        return len(self.names)


def class_value(v: Any) -> int | str | None:
    """A class-field value as an int (integers, integral floats, digit strings) or a stripped
    string; ``None`` when missing or blank. A non-integral number raises ValueError."""
    if v is None or (isinstance(v, float | np.floating) and math.isnan(v)):
        return None
    if isinstance(v, bool | np.bool_):
        return str(bool(v)).lower()
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        if not float(v).is_integer():
            raise ValueError(f"{v!r} is neither an integer class value nor a class name")
        return int(v)
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    s = str(v).strip()
    if not s:
        return None
    return int(s) if _INT.match(s) else s


def parse_color(v: Any) -> Color | None:
    """``#rrggbb``, ``"r g b"``, ``"r,g,b"`` or a 3-sequence of 0..255 as an RGB tuple; ``None``
    when missing. Anything else raises ValueError."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, list | tuple) and len(v) >= 3:
        parts: list[Any] = list(v[:3])
    else:
        s = str(v).strip()
        if not s:
            return None
        m = _HEX.match(s)
        if m:
            h = m.group(1)
            return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
        parts = [p for p in re.split(r"[\s,;]+", s) if p]
        if len(parts) not in (3, 4):
            raise ValueError(f"colour {v!r} is not #rrggbb or 'r g b'")
    try:
        rgb = [float(p) for p in parts[:3]]
    except (TypeError, ValueError):
        raise ValueError(f"colour {v!r} is not #rrggbb or 'r g b'") from None
    if not all(0 <= c <= 255 and float(c).is_integer() for c in rgb):
        raise ValueError(f"colour {v!r} has components outside 0..255")
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def read_class_table(path: str) -> ClassTable:
    """A class table: CSV rows ``value,name[,color]`` (an optional header row; ``,`` ``;`` or
    tab separated) or YAML (``{value: name}``, ``{value: {name:, color:}}``, or a list of
    ``{value:, name:, color:}``, optionally under a ``classes:`` key). Colours are ``#rrggbb``
    or ``"r g b"``. Values must be unique."""
    p = Path(path)
    if not p.is_file():
        raise InputError(path, "class table not found")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the class table ({exc})") from None
    rows = _yaml_rows(path, text) if p.suffix.lower() in (".yaml", ".yml", ".json") else \
        _csv_rows(text)
    table = ClassTable([], [], [])
    for n, (raw_value, raw_name, raw_color) in enumerate(rows, start=1):
        try:
            value = class_value(raw_value)
            color = parse_color(raw_color)
        except ValueError as exc:
            raise InputError(path, f"entry {n}: {exc}") from None
        name = "" if raw_name is None else str(raw_name).strip()
        if value is None or not name:
            raise InputError(path, f"entry {n} needs a value and a name (got {raw_value!r}, "
                                   f"{raw_name!r})")
        if value in table.values:
            raise InputError(path, f"value {value!r} appears twice")
        table.values.append(value)
        table.names.append(name)
        table.colors.append(color)
    if not table.values:
        raise InputError(path, "the class table is empty")
    return table


def _csv_rows(text: str) -> list[tuple[Any, Any, Any]]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    delim = max(",;\t", key=lambda d: sum(ln.count(d) for ln in lines[:20]))
    rows = [r for r in csv.reader(lines, delimiter=delim) if any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in _HEADER_WORDS:
        rows = rows[1:]
    return [(r[0], r[1] if len(r) > 1 else None, r[2] if len(r) > 2 else None) for r in rows]


def _yaml_rows(path: str, text: str) -> list[tuple[Any, Any, Any]]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("classes"), dict | list):
        data = data["classes"]
    rows: list[tuple[Any, Any, Any]] = []
    if isinstance(data, dict):
        for value, entry in data.items():
            if isinstance(entry, dict):
                rows.append((value, entry.get("name"), _color_of(entry)))
            elif isinstance(entry, list | tuple) and entry:
                rows.append((value, entry[0], entry[1] if len(entry) > 1 else None))
            else:
                rows.append((value, entry, None))
    elif isinstance(data, list) and all(isinstance(e, dict) for e in data):
        rows = [(e.get("value"), e.get("name"), _color_of(e)) for e in data]
    else:
        raise InputError(path, "expected a mapping value -> name or a list of "
                               "{value, name, color} entries")
    return rows


def _color_of(entry: dict) -> Any:
    return entry.get("color", entry.get("colour"))


class ClassRegistry:
    """Merges the classes of all sample files: one class per name, in the order they are met;
    :meth:`finish` sorts them (by integer value when every value is an integer, else by name).

    With a class table, values are looked up in it (its names win; unknown values are an
    error); a colour given by a sample file wins over the table's. Without one, an integer
    value without a name takes the name another file gives it, else ``"class <value>"``.
    """

    def __init__(self, table: ClassTable | None = None, table_path: str | None = None) -> None:
        self.table = table
        self.table_path = table_path
        self.names: list[str] = []
        self.values: list[Any] = []
        self.colors: list[Color | None] = []
        self.sources: list[str] = []
        self.names_by_value: dict[int, str] = {}
        self.warnings: list[str] = []
        self._ids: dict[str, int] = {}

    def learn_name(self, value: Any, name: str | None) -> None:
        """Remember that an integer value is called ``name`` (for files that give no names)."""
        if name and isinstance(value, int):
            self.names_by_value.setdefault(value, name)

    def class_id(self, path: str, value: Any, name: str | None = None,
                 color: Color | None = None) -> int:
        """The class of ``value`` (with an optional name and colour) from file ``path``."""
        if self.table is not None:
            value, name, table_color = self._from_table(path, value, name)
            color = color or table_color
        elif name is None:
            name = (self.names_by_value.get(value) or f"class {value}") \
                if isinstance(value, int) else str(value)
        assert name is not None
        cid = self._ids.get(name)
        if cid is None:
            cid = self._ids[name] = len(self.names)
            self.names.append(name)
            self.values.append(value)
            self.colors.append(color)
            self.sources.append(path)
            return cid
        if self.values[cid] != value:
            self.warnings.append(f"{path}: class {name!r} has value {value!r} here but "
                                 f"{self.values[cid]!r} in {self.sources[cid]}; one class")
        if self.colors[cid] is None:
            self.colors[cid] = color
        return cid

    def _from_table(self, path: str, value: Any, name: str | None
                    ) -> tuple[Any, str, Color | None]:
        t = self.table
        assert t is not None
        if value in t.values:
            i = t.values.index(value)
        elif name is not None and name in t.names:
            i = t.names.index(name)
        elif isinstance(value, str) and value in t.names:
            i = t.names.index(value)
        else:
            raise InputError(path, f"class value {value!r} is not in the class table "
                                   f"{self.table_path}")
        return t.values[i], t.names[i], t.colors[i]

    def finish(self, used: np.ndarray) -> tuple[ClassTable, np.ndarray]:
        """The table of the classes in ``used`` (bool per class id), sorted, and the lookup from
        class id to table index (-1 for classes left out)."""
        ids = [i for i in range(len(self.names)) if i < len(used) and used[i]]
        if all(isinstance(self.values[i], int) for i in ids):
            ids.sort(key=lambda i: (self.values[i], self.names[i]))
        else:
            ids.sort(key=lambda i: (self.names[i].casefold(), self.names[i]))
        lut = np.full(max(len(self.names), 1), -1, dtype=np.int64)
        lut[ids] = np.arange(len(ids))
        table = ClassTable([self.names[i] for i in ids], [self.colors[i] for i in ids],
                           [self.values[i] for i in ids])
        return table, lut
