"""The package's import structure: no circle among protonet's modules (function-level imports
included), and the independent half (layers/, reference.py) never imports onnx."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import protonet

ROOT = Path(protonet.__file__).parent
#: modules that must stay free of onnx: the numpy reference and everything it runs
ONNX_FREE = ("protonet.layers", "protonet.reference")


def module_name(path: Path) -> str:
    parts = ("protonet",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def resolve(mod: str, package: bool, node: ast.ImportFrom) -> str:
    """The absolute name an ``ImportFrom`` names (``from ..x import y`` -> ``protonet.x``)."""
    if not node.level:
        return node.module or ""
    base = mod.split(".") if package else mod.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every module (protonet or not) that ``path`` imports anywhere in its body, functions
    included; ``from pkg import sub`` counts as importing ``pkg.sub`` (not ``pkg``'s own names)
    when ``sub`` is a module.
    ``if TYPE_CHECKING:`` blocks are skipped (they never run)."""
    mod = module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(mod, is_package(path), node)
            subs = {f"{target}.{a.name}" for a in node.names} & modules
            found.update(subs)
            if len(subs) < len(node.names):  # a name defined in the module itself
                found.add(target)
    return found


def package_graph() -> dict[str, set[str]]:
    """protonet module -> the protonet modules it imports (a package's ``__init__`` runs
    whenever one of its submodules is imported, so a submodule depends on its parents)."""
    paths = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for mod, path in paths.items():
        deps = {d for d in imports_of(path, modules) if d in modules and d != mod}
        graph[mod] = deps
    # the package's lazy exports (PEP 562 __getattr__ imports them by name on first use)
    graph["protonet"] |= {f"protonet.{m}" for m in protonet._EXPORTS.values()}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None when it is acyclic."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                cyc = visit(m)
                if cyc:
                    return cyc
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            cyc = visit(n)
            if cyc:
                return cyc
    return None


def test_find_cycle_sees_a_cycle_and_its_absence():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_of_resolves_relative_and_function_level_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "protonet"
    (pkg / "layers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "layers" / "__init__.py").write_text("")
    src = pkg / "layers" / "x.py"
    src.write_text("from . import y\nfrom ..ir import Graph\nfrom .. import fillers\n"
                   "def f():\n    from ..export import export\n    import onnx\n"
                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..cli import main\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", pkg)
    mods = {"protonet.layers.y", "protonet.ir", "protonet.export", "protonet.cli", "protonet.fillers"}
    got = imports_of(src, mods)
    assert {"protonet.layers.y", "protonet.ir", "protonet.export", "protonet.fillers", "onnx"} <= got
    assert "protonet.cli" not in got and "protonet.layers" not in got and "protonet" not in got


def test_no_import_circle_in_protonet():
    graph = package_graph()
    assert "protonet.layers.base" in graph and "protonet.frontend.load" in graph
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph) or [])}"


def test_layers_and_reference_never_import_onnx():
    paths = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    graph = package_graph()
    # everything the onnx-free modules reach inside protonet must be onnx-free as well
    reach: set[str] = set()
    todo = [m for m in paths if m.startswith(ONNX_FREE)]
    while todo:
        m = todo.pop()
        if m not in reach:
            reach.add(m)
            todo.extend(graph[m])
    offenders = {m: sorted(d for d in imports_of(paths[m], set(paths))
                           if d == "onnx" or d.startswith(("onnx.", "onnxruntime")))
                 for m in sorted(reach)}
    offenders = {m: d for m, d in offenders.items() if d}
    assert not offenders, f"modules the reference depends on import onnx: {offenders}"
