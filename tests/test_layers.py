"""The library's layers (regattn_lib/layers.toml): every import, function-level and
TYPE_CHECKING ones included, goes down the map or stays in its layer, and no modules import each
other in a circle."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "regattn_lib"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the library modules it imports, read from every import statement of the package
    at ``root`` (relative imports resolved; ``from pkg import name`` counts as an import of
    ``pkg.name`` when that is a module, else of ``pkg``)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                bases = [a.name for a in node.names]
                targets.update(b for b in bases if b == top or b.startswith(top + "."))
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not (mod == top or mod.startswith(top + ".")):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                targets.add(sub if sub in modules else mod)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def layer_of(module: str, order: list[str], top: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != top or parts[1] not in order:
        return None
    return order.index(parts[1])


def violations(graph: dict[str, set[str]], order: list[str], entry_points: list[str]) -> list[str]:
    """Imports against the map: up a layer, or from a layered module to an unlayered one."""
    top = next(iter(graph)).split(".")[0]
    bad = []
    for src, targets in sorted(graph.items()):
        ls = layer_of(src, order, top)
        if ls is None:
            if src not in entry_points:
                bad.append(f"{src} is in no layer of the map")
            continue
        for dst in sorted(targets):
            ld = layer_of(dst, order, top)
            if dst in (top,) or (dst.count(".") == 1 and dst.split(".")[1] in order):
                continue  # a package's __init__ (a docstring) is its own layer's
            if ld is None or ld > ls:
                bad.append(
                    f"{src} ({order[ls]}) imports {dst} ({'-' if ld is None else order[ld]})"
                )
    return bad


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def load_map() -> dict:
    return tomllib.loads((LIB / "layers.toml").read_text())


def test_every_import_follows_the_layer_map_and_no_circle():
    m = load_map()
    graph = import_graph(LIB)
    assert sum(len(t) for t in graph.values()) > 100  # the graph was read, not empty
    assert violations(graph, m["order"], m["entry_points"]) == []
    assert circles(graph) == []


def test_every_layer_is_a_package_and_every_package_a_layer():
    m = load_map()
    packages = sorted(p.name for p in LIB.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(m["order"])
    top_modules = sorted(p.stem for p in LIB.glob("*.py"))
    assert top_modules == ["__init__", "__main__"]


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = root / "pkg" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return root / "pkg"


def test_the_checker_finds_an_upward_import_a_type_only_one_and_a_circle(tmp_path):
    pkg = _write_tree(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "def f():\n    from pkg.high import b\n",  # function-level, upward
            "low/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..high.b import X\n",
            "high/__init__.py": "",
            "high/b.py": "from pkg.low import a\nfrom . import d\n",
            "high/d.py": "from .b import y\n",  # b <-> d: a circle inside one layer
        },
    )
    graph = import_graph(pkg)
    assert graph["pkg.low.a"] == {"pkg.high.b"}
    assert graph["pkg.low.c"] == {"pkg.high.b"}
    assert graph["pkg.high.b"] == {"pkg.low.a", "pkg.high.d"}
    found = violations(graph, ["low", "high"], ["pkg"])
    assert found == [
        "pkg.low.a (low) imports pkg.high.b (high)",
        "pkg.low.c (low) imports pkg.high.b (high)",
    ]
    assert circles(graph) == [["pkg.high.b", "pkg.high.d", "pkg.low.a"]]


def test_the_checker_accepts_the_same_tree_read_the_other_way(tmp_path):
    pkg = _write_tree(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "from pkg.high import b\n",
            "high/__init__.py": "",
            "high/b.py": "X = 1\n",
        },
    )
    assert violations(import_graph(pkg), ["high", "low"], ["pkg"]) == []
