"""The structure rules of the installed package, checked on its source.

`protocol ← buffer ← {learner, generators} ← launch`: a layer imports only itself and the
layers to its left; learner and generators never import each other; nothing imports launch but
launch. Besides: no module-level import cycle, no torch in protocol/ or buffer/, every import
of the project spelled `asyncrl.*` (the bare names are unrelated distributions on the index),
and no source file over 400 lines. Every import is read with `ast`, including those inside
functions (a deferred import is still a dependency); each failure lists every offending
file:line, so one run gives the whole to-do list.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

LAYERS = ("protocol", "buffer", "learner", "generators", "launch")
# What each layer may import (itself included).
ALLOWED = {
    "protocol": {"protocol"},
    "buffer": {"protocol", "buffer"},
    "learner": {"protocol", "buffer", "learner"},
    "generators": {"protocol", "buffer", "generators"},
    "launch": set(LAYERS),
}
TORCH_FREE = ("protocol", "buffer")
MAX_LINES = 400


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name, e.g. asyncrl.learner.hub
    target: str  # dotted name as written, resolved if relative
    where: str  # layer/relative/path.py:line
    module_level: bool  # runs when the importer is imported (not in a function, not typing-only)


@dataclass(frozen=True)
class Source:
    module: str
    path: Path
    shown: str  # layer/relative/path.py, the same for an editable and a wheel install


def layer_dirs() -> dict[str, Path]:
    """Where the installed `asyncrl.<layer>` packages live (the checkout for an editable
    install, site-packages for a wheel)."""
    out = {}
    for layer in LAYERS:
        spec = importlib.util.find_spec(f"asyncrl.{layer}")
        assert spec and spec.submodule_search_locations, f"asyncrl.{layer} is not installed"
        out[layer] = Path(next(iter(spec.submodule_search_locations)))
    return out


@functools.cache
def sources() -> tuple[Source, ...]:
    out = []
    for layer, root in layer_dirs().items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            parts = [p for p in (*rel.parent.parts, rel.stem) if p != "__init__"]
            out.append(Source(".".join(("asyncrl", layer, *parts)), path, f"{layer}/{rel}"))
    return tuple(out)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.AST, package: str, modules: set[str]) -> list[str]:
    """Dotted names an import statement (or a constant `importlib.import_module` call) loads:
    a relative import resolved against `package`, and `from pkg import sub` naming the
    submodule when `sub` is one."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        subs = [f"{origin}.{a.name}" for a in node.names if f"{origin}.{a.name}" in modules]
        return [origin, *subs]
    if (
        isinstance(node, ast.Call)
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
        )
    ):
        return [node.args[0].value]
    return []


def _walk(node: ast.AST, module_level: bool):
    """(node, runs at import time) for every node below `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            # Only the `else:` branch of `if TYPE_CHECKING:` runs.
            yield child, module_level
            for part, runs in ((child.body, False), (child.orelse, module_level)):
                for stmt in part:
                    yield stmt, runs
                    yield from _walk(stmt, runs)
            continue
        deferred = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        here = module_level and not deferred
        yield child, here
        yield from _walk(child, here)


@functools.cache
def imports() -> tuple[Import, ...]:
    modules = {s.module for s in sources()}
    out = []
    for src in sources():
        tree = ast.parse(src.path.read_text(), str(src.path))
        package = src.module if src.path.name == "__init__.py" else src.module.rpartition(".")[0]
        for node, module_level in _walk(tree, True):
            for target in _targets(node, package, modules):
                where = f"{src.shown}:{node.lineno}"
                out.append(Import(src.module, target, where, module_level))
    return tuple(out)


def _layer(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "asyncrl" and parts[1] in LAYERS else None


def _report(title: str, lines: list[str]) -> str:
    return f"{title} ({len(lines)}):\n  " + "\n  ".join(lines)


def test_the_package_is_found_and_parsed():
    # Guards the other tests against passing on nothing: every layer has modules, and the
    # walk sees imports both at module level and deferred inside functions.
    found = {_layer(s.module) for s in sources()}
    assert found == set(LAYERS)
    assert any(i.module_level for i in imports()) and any(not i.module_level for i in imports())


def test_imports_follow_the_layer_rule():
    bad = []
    for imp in imports():
        src, dst = _layer(imp.importer), _layer(imp.target)
        if dst is not None and dst not in ALLOWED[src]:
            bad.append(f"{imp.where}: {src} imports {imp.target} ({dst} is not below {src})")
    assert not bad, _report(
        "imports against protocol <- buffer <- {learner, generators} <- launch", bad
    )


def test_project_imports_use_the_asyncrl_namespace():
    bare = [
        f"{imp.where}: imports {imp.target}; write asyncrl.{imp.target}"
        for imp in imports()
        if imp.target.split(".")[0] in LAYERS
    ]
    assert not bare, _report("bare project names (unrelated distributions on the index)", bare)


def test_no_torch_in_protocol_or_buffer():
    bad = [
        f"{imp.where}: imports {imp.target}"
        for imp in imports()
        if _layer(imp.importer) in TORCH_FREE and imp.target.split(".")[0] == "torch"
    ]
    assert not bad, _report("torch imported by protocol/ or buffer/", bad)


def test_protocol_and_buffer_load_without_torch():
    # What the source check cannot see: a third-party import that pulls torch in. Imports
    # every protocol/buffer module in a fresh interpreter and names those that bring torch.
    names = [s.module for s in sources() if _layer(s.module) in TORCH_FREE]
    code = (
        "import importlib, json, sys\n"
        "heavy = []\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules and not heavy:\n"
        "        heavy.append(name)\n"
        "print(json.dumps(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not heavy, f"importing {heavy[0]} loads torch (protocol/ and buffer/ must not)"


def _cycles(edges: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle (as a closed list of modules) per strongly connected component of more than
    one module or with a self-import (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, {}))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, {}):
                    components.append(set(component))
    out = []
    for component in components:
        # Walk inside the component from its smallest member back to it (breadth first, so
        # the reported cycle is a shortest one through that module).
        start = min(component)
        paths = {start: [start]}
        queue = [start]
        cycle = None
        while queue and cycle is None:
            node = queue.pop(0)
            for child in sorted(edges.get(node, {})):
                if child == start:
                    cycle = [*paths[node], start]
                    break
                if child in component and child not in paths:
                    paths[child] = [*paths[node], child]
                    queue.append(child)
        out.append(cycle)
    return out


def test_no_module_level_import_cycles():
    modules = {s.module for s in sources()}
    edges: dict[str, dict[str, str]] = {}
    for imp in imports():
        if not imp.module_level:
            continue
        # Importing a.b.c runs the package a.b first, except a package the importer is (or is
        # inside): that one is already being imported when the importer runs.
        parts = imp.target.split(".")
        for k in range(2, len(parts) + 1):
            target = ".".join(parts[:k])
            inside = imp.importer == target or imp.importer.startswith(target + ".")
            if target in modules and not inside:
                edges.setdefault(imp.importer, {}).setdefault(target, imp.where)
    bad = []
    for cycle in _cycles(edges):
        steps = [f"{a} -> {b} ({edges[a][b]})" for a, b in zip(cycle, cycle[1:])]
        bad.append("; ".join(steps))
    assert not bad, _report("module-level import cycles", bad)


def test_source_files_stay_short():
    long = []
    for src in sources():
        n = len(src.path.read_text().splitlines())
        if n > MAX_LINES:
            long.append(f"{src.shown}:{MAX_LINES + 1}: {n} lines")
    assert not long, _report(f"source files over {MAX_LINES} lines", long)


def test_the_checker_itself_on_known_input():
    # a -> b -> c -> a is one cycle, d imports itself, e only leads into the cycle.
    edges = {"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"d": ""}, "e": {"a": ""}}
    assert sorted(_cycles(edges)) == [["a", "b", "c", "a"], ["d", "d"]]
    assert _cycles({"a": {"b": ""}, "b": {}}) == []
    # In package asyncrl.learner.rewards (an __init__ or a module inside it):
    # `from . import math` -> the package and its submodule; `from ..hub import Hub` -> one up.
    modules = {"asyncrl.learner.rewards.math", "asyncrl.learner.hub"}
    tree = ast.parse("from . import math, other\nfrom ..hub import Hub\nimport torch.nn\n")
    got = [_targets(n, "asyncrl.learner.rewards", modules) for n in tree.body]
    assert got == [
        ["asyncrl.learner.rewards", "asyncrl.learner.rewards.math"],
        ["asyncrl.learner.hub"],
        ["torch.nn"],
    ]
    call = ast.parse("importlib.import_module('asyncrl.launch.cli')").body[0].value
    assert _targets(call, "asyncrl.learner", modules) == ["asyncrl.launch.cli"]
    # Deferred (in a function) and typing-only imports do not run at import time.
    source = (
        "import a\nif TYPE_CHECKING:\n    import b\nelse:\n    import e\ndef f():\n    import c\n"
    )
    runs = {
        n.names[0].name: here
        for n, here in _walk(ast.parse(source), True)
        if isinstance(n, ast.Import)
    }
    assert runs == {"a": True, "b": False, "e": True, "c": False}
