"""The package's import graph: no cycles, and no upward imports from the core into the plugin folders.

Every module of the installed ``dllm_bench`` package (the core in ``harness/`` and the plugin
subpackages ``samplers``, ``trainers``, ``tasks``, ``sandboxes``) is parsed with :mod:`ast`; an
edge A -> B is an import in A that names module B of the package. What counts:

- module-level imports AND function-local (lazy) ones: a lazy import still runs, and a cycle
  closed by one is a cycle all the same (lazy imports that keep startup fast are fine as long
  as they close no cycle);
- not imports under ``if TYPE_CHECKING:``: they never run, so annotations may name any module;
- the edge goes to the most specific module named (``from .a import b`` -> ``a.b`` when ``b`` is
  a submodule, else ``a``); the parent packages a submodule import also initialises are not
  edges (the plugin packages' ``__init__`` files import nothing).

Upward imports: the core (``dllm_bench`` outside the plugin folders) may import a plugin kind's
contract module ``<kind>.base`` and nothing else of a plugin folder (the CLI also mounts
``<kind>.cli`` sub-commands); :data:`KNOWN_UPWARD` lists the exceptions still to remove.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

import dllm_bench

PACKAGE = "dllm_bench"
PLUGIN_PACKAGES = ("samplers", "trainers", "tasks", "sandboxes")

# Upward imports from the core into a plugin folder that are known and scheduled to go:
# (importer, imported), where the importer also stands for its submodules. None at present.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    """Every module of the package: name -> source file."""
    out: dict[str, Path] = {}
    roots = [PACKAGE] + [f"{PACKAGE}.{p}" for p in PLUGIN_PACKAGES]
    for root in roots:
        pkg = importlib.import_module(root)
        out[root] = Path(pkg.__file__)
        for info in pkgutil.walk_packages(pkg.__path__, root + "."):
            if info.name in out:
                continue
            spec = importlib.util.find_spec(info.name)
            if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
                continue
            out[info.name] = Path(spec.origin)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes of a module, module-level and function-local, skipping ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                while t and t not in modules:  # `import dllm_bench.a.b as x` names a.b; keep the deepest module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one
    cycle through it (a path A -> ... -> A) so the failure names the imports to cut."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    sccs: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return [_one_cycle(graph, comp) for comp in sorted(sccs)]


def _one_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start, members = comp[0], set(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp  # pragma: no cover - a component always holds a cycle


def _is_core(name: str) -> bool:
    return name.count(".") >= 1 and name.split(".")[1] not in PLUGIN_PACKAGES


def _is_plugin(name: str) -> bool:
    return name.count(".") >= 2 and name.split(".")[1] in PLUGIN_PACKAGES


def test_walk_sees_every_plugin_kind_and_the_core():
    from dllm_bench import registry

    assert set(PLUGIN_PACKAGES) == set(registry.KINDS)
    mods = _modules()
    assert f"{PACKAGE}.cli" in mods and f"{PACKAGE}.gate" in mods
    for p in PLUGIN_PACKAGES:
        assert any(m.startswith(f"{PACKAGE}.{p}.") for m in mods), p
    assert Path(dllm_bench.__file__).parent == mods[PACKAGE].parent


def test_no_import_cycles():
    cycles = _cycles(_graph(_modules()))
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def _allowed_upward(importer: str, imported: str) -> bool:
    """The core may use a plugin kind's contract (``<kind>.base``: what a plugin implements and
    the harness calls); the CLI also mounts a plugin folder's own sub-commands (``<kind>.cli``)."""
    leaf = imported.split(".")[2] if imported.count(".") >= 2 else ""
    return leaf == "base" or (importer == f"{PACKAGE}.cli" and leaf == "cli")


def test_no_upward_imports_from_the_core_into_plugin_folders():
    """The core (dllm_bench outside the plugin folders) imports no plugin implementation: only
    the contracts (:func:`_allowed_upward`), plus the exceptions in :data:`KNOWN_UPWARD`."""
    graph = _graph(_modules())
    upward = {(a, b) for a, targets in graph.items() if _is_core(a)
              for b in targets if _is_plugin(b) and not _allowed_upward(a, b)}
    def known(pair: tuple[str, str], allowed: tuple[str, str]) -> bool:
        return pair[1] == allowed[1] and (pair[0] == allowed[0] or pair[0].startswith(allowed[0] + "."))

    new = sorted(p for p in upward if not any(known(p, k) for k in KNOWN_UPWARD))
    assert not new, "core modules importing plugin folders:\n" + "\n".join(f"  {a} -> {b}" for a, b in new)
    stale = sorted(k for k in KNOWN_UPWARD if not any(known(p, k) for p in upward))
    assert not stale, f"KNOWN_UPWARD lists imports that are gone (remove them): {stale}"


def test_the_walk_finds_a_planted_cycle(tmp_path):
    """The detector itself: function-local imports count, TYPE_CHECKING ones do not."""
    mods = {"p": tmp_path / "p" / "__init__.py", "p.a": tmp_path / "p" / "a.py", "p.b": tmp_path / "p" / "b.py",
            "p.c": tmp_path / "p" / "c.py"}
    mods["p"].parent.mkdir()
    mods["p"].write_text("")
    mods["p.a"].write_text("from . import b\n")
    mods["p.b"].write_text("def f():\n    from .a import x\n")
    checking = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
    mods["p.c"].write_text(checking + "    from .a import y\nfrom . import a\n")
    mods["p.a"].write_text("from . import b\n" + checking + "    from . import c\n")
    assert _cycles(_graph(mods)) == [["p.a", "p.b", "p.a"]]
