"""The shape of the code base (ARCHITECTURE.md): every import points down the layers, packages
of one layer do not import each other, there are no import cycles, the library never imports
Prefect, and no module grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Top to bottom. A module may import its own unit (a sub-package or a top-level module of
# `pipeline`) and any unit of a lower layer; nothing of its own layer or above.
LAYERS: list[tuple[str, ...]] = [
    ("flows",),
    ("pipeline.segment",),
    ("pipeline.fit", "pipeline.pretrain", "pipeline.evaluation", "pipeline.vectorize",
     "pipeline.publish", "pipeline.demo"),
    ("pipeline.models",),
    ("pipeline.io",),
    ("pipeline.config", "pipeline.labels"),
    ("pipeline.tiling", "pipeline.accuracy", "pipeline.errors", "pipeline"),
]
MAX_LINES = 420  # "no module over ~400 lines"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    files = sorted((ROOT / "pipeline").rglob("*.py")) + sorted((ROOT / "flows").rglob("*.py"))
    return {_module_name(p): p for p in files}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules `name` imports anywhere in its body (lazy imports count too)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import mod` imports the sub-module when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _unit(module: str) -> tuple[int, str]:
    """(layer index, unit) of a project module: the most specific unit that contains it."""
    best: tuple[int, str] | None = None
    for rank, units in enumerate(LAYERS):
        for unit in units:
            if module == unit or module.startswith(unit + "."):
                if best is None or len(unit) > len(best[1]):
                    best = (rank, unit)
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best


def test_every_module_belongs_to_a_layer() -> None:
    for name in MODULES:
        _unit(name)


def test_imports_only_point_down_the_layers() -> None:
    bad = []
    for src, targets in GRAPH.items():
        rank, unit = _unit(src)
        for dst in sorted(targets):
            d_rank, d_unit = _unit(dst)
            if d_unit != unit and d_rank <= rank:
                kind = "sideways" if d_rank == rank else "upward"
                bad.append(f"{src} -> {dst} ({kind})")
    assert not bad, "imports that do not point down:\n" + "\n".join(bad)


def test_there_are_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_library_never_imports_prefect() -> None:
    users = []
    for name, path in MODULES.items():
        if name.startswith("pipeline"):
            for node in ast.walk(ast.parse(path.read_text())):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                        [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(m == "prefect" or m.startswith("prefect.") for m in mods):
                    users.append(name)
    assert not users, f"pipeline modules importing prefect: {users}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small_and_say_what_they_are_for(name: str) -> None:
    path = MODULES[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by role"
    assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has no module docstring"


def _documented_methods() -> dict[str, tuple[list[str], set[str]]]:
    """Class name -> (base names, names of its methods that have a docstring)."""
    out: dict[str, tuple[list[str], set[str]]] = {}
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                         for b in node.bases]
                docs = {n.name for n in node.body
                        if isinstance(n, ast.FunctionDef) and ast.get_docstring(n)}
                out[node.name] = (bases, docs)
    return out


def _inherits_doc(cls: str, method: str, classes: dict[str, tuple[list[str], set[str]]]) -> bool:
    """Whether a base class of `cls` documents `method` (an implementation of an interface)."""
    for base in classes.get(cls, ([], set()))[0]:
        if base in classes and (method in classes[base][1] or
                                _inherits_doc(base, method, classes)):
            return True
    return False


def test_public_functions_are_typed_and_documented() -> None:
    classes = _documented_methods()
    missing = []
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                funcs = [n for n in node.body if isinstance(n, ast.FunctionDef)
                         and not n.name.startswith("_")]
                where = f"{name}.{node.name}"
            elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                funcs, where = [node], name
            else:
                continue
            owner = node.name if isinstance(node, ast.ClassDef) else ""
            for f in funcs:
                args = [a for a in f.args.args + f.args.kwonlyargs if a.arg not in ("self", "cls")]
                untyped = [a.arg for a in args if a.annotation is None]
                if not ast.get_docstring(f) and not _inherits_doc(owner, f.name, classes):
                    missing.append(f"{where}.{f.name}: no docstring")
                if untyped or f.returns is None:
                    missing.append(f"{where}.{f.name}: untyped {untyped or 'return'}")
    assert not missing, "\n".join(missing)


def test_no_catch_all_helper_modules() -> None:
    vague = [n for n in MODULES if n.rpartition(".")[2] in ("utils", "helpers", "misc", "common")]
    assert not vague, f"name modules for what they do: {vague}"
