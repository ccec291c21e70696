"""Naming clusters from an evaluation's matching or a hand-written file, and writing the names
(and colours) into a model's model.json."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.io.files import write_atomic


def cluster_names_from_metrics(metrics_path: str | Path, n_clusters: int) -> list[str]:
    """Matched clusters take their class's name; the others keep ``cluster N``."""
    path = Path(metrics_path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc.msg})") from None
    matching = doc.get("matching") if isinstance(doc, dict) else None
    if not isinstance(matching, dict):
        raise InputError(path, "no 'matching' (is this a metrics.json from `stego evaluate`?)")
    names = [f"cluster {i}" for i in range(n_clusters)]
    for key, name in matching.items():
        try:
            i = int(key)
        except ValueError:
            raise InputError(path, f"bad cluster id {key!r} in the matching") from None
        if not 0 <= i < n_clusters:
            raise InputError(path, f"cluster {i} is not in the model ({n_clusters} clusters)")
        names[i] = str(name)
    return names


def parse_color(value: Any, where: str | Path) -> tuple[int, int, int]:
    """``#rrggbb``, ``r g b``, ``r,g,b`` or ``[r, g, b]``."""
    try:
        if isinstance(value, str):
            s = value.strip()
            if s.startswith("#") and len(s) == 7:
                return tuple(int(s[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
            parts = s.replace(",", " ").replace(";", " ").split()
        else:
            parts = list(value)
        rgb = tuple(int(p) for p in parts)
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ValueError
        return rgb  # type: ignore[return-value]
    except (TypeError, ValueError):
        raise InputError(where, f"bad colour {value!r} (use #rrggbb or r g b)") from None


def cluster_names_from_file(
    path: str | Path, n_clusters: int,
) -> tuple[list[str], list[tuple[int, int, int] | None] | None]:
    """Names (and colours) from YAML ``{id: name}`` / ``{id: {name:, color:}}`` / ``{id: [name,
    color]}``, or CSV ``cluster,name[,color]``; a metrics.json gives its matching.

    Clusters the file omits keep ``cluster N``. Colours: None when the file gives none,
    else one entry per cluster, None where the model's colour should stay.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "not found")
    if path.suffix.lower() == ".json":
        return cluster_names_from_metrics(path, n_clusters), None
    entries: list[tuple[Any, Any, Any]] = []
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
        header = [h.strip().lower() for h in rows[0]] if rows else []
        id_col = next((c for c in ("cluster", "cluster_id", "id", "value") if c in header), None)
        name_col = next((c for c in ("name", "class", "class_name") if c in header), None)
        if id_col is None or name_col is None:
            raise InputError(path, "a CSV needs a 'cluster,name[,color]' header")
        col_col = next((c for c in ("color", "colour") if c in header), None)
        for row in rows[1:]:
            cells = dict(zip(header, row, strict=False))
            color = cells.get(col_col) if col_col else None
            entries.append((cells.get(id_col), cells.get(name_col), color or None))
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(path, f"not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise InputError(path, "expected {cluster_id: name} or {cluster_id: {name, color}}")
        for key, value in data.items():
            if isinstance(value, dict):
                entries.append((key, value.get("name"), value.get("color", value.get("colour"))))
            elif isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                entries.append((key, value[0], value[1]))
            else:
                entries.append((key, value, None))
    names = [f"cluster {i}" for i in range(n_clusters)]
    colors: list[tuple[int, int, int] | None] = [None] * n_clusters
    for key, name, color in entries:
        try:
            i = int(str(key).strip().removeprefix("cluster").strip())
        except ValueError:
            raise InputError(path, f"bad cluster id {key!r}") from None
        if not 0 <= i < n_clusters:
            raise InputError(path, f"cluster {i} is not in the model ({n_clusters} clusters)")
        if name is None or not str(name).strip():
            raise InputError(path, f"cluster {i} has no name")
        names[i] = str(name).strip()
        if color is not None:
            colors[i] = parse_color(color, path)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(path, f"duplicate class names: {', '.join(dup)}")
    return names, (colors if any(c is not None for c in colors) else None)


def rename_model_classes(
    model_dir: str | Path, names: Sequence[str],
    colors: Sequence[tuple[int, int, int] | None] | None = None,
) -> Path:
    """Rewrite ``model.json``'s ``class_names`` (and ``colors``) atomically; nothing else changes.

    The model hash changes with it, which is intended: outputs record the names they used.
    """
    from pipeline.models.store import read_model_json

    path = Path(model_dir) / "model.json"
    meta = read_model_json(Path(model_dir))
    old = meta.get("class_names") or []
    if len(names) != len(old):
        raise InputError(path, f"the model has {len(old)} clusters, {len(names)} names given")
    meta["class_names"] = [str(n) for n in names]
    if colors is not None:
        if len(colors) != len(old):
            raise InputError(path, f"the model has {len(old)} clusters, {len(colors)} colours")
        current = meta.get("colors") or [[128, 128, 128]] * len(old)
        meta["colors"] = [list(c) if c is not None else list(current[i])
                          for i, c in enumerate(colors)]
    text = json.dumps(meta, indent=2, default=str)
    return write_atomic(path, lambda p: p.write_text(text))


def names_from_votes(
    votes: np.ndarray, class_names: Sequence[str], min_share: float = 0.5,
) -> tuple[list[str], list[str]]:
    """Cluster names by majority vote of labelled samples: ``votes[k, c]`` = sample pixels of
    class ``c`` that cluster ``k`` holds. A cluster no sample falls in keeps ``cluster k``;
    one whose majority holds less than ``min_share`` of its samples still takes the majority
    but is reported as contested; a class winning several clusters names them ``tree``,
    ``tree 2``, ... Returns (names, report lines)."""
    names: list[str] = []
    notes: list[str] = []
    used: dict[str, int] = {}
    for k, row in enumerate(np.asarray(votes)):
        total = int(row.sum())
        if total == 0:
            names.append(f"cluster {k}")
            notes.append(f"cluster {k}: no sample falls in it; it keeps its name")
            continue
        c = int(np.argmax(row))
        share = row[c] / total
        base = str(class_names[c])
        used[base] = used.get(base, 0) + 1
        names.append(base if used[base] == 1 else f"{base} {used[base]}")
        if share < min_share:
            split = ", ".join(f"{class_names[j]} {int(v)}" for j, v in enumerate(row) if v)
            notes.append(f"cluster {k}: several classes claim it ({split}); named "
                         f"{names[-1]!r} by majority ({100 * share:.0f} %)")
    for c, name in enumerate(class_names):
        if name not in used:
            notes.append(f"class {name!r}: no cluster has it as majority "
                         f"({int(np.asarray(votes)[:, c].sum())} sample pixels)")
        elif used[name] > 1:
            notes.append(f"class {name!r} names {used[name]} clusters")
    return names, notes
