"""Layering: every module imports alone in a fresh interpreter, and the package has no import cycle.

The cycle check reads the import statements of every module (module-level and function-level alike, as a
reviewer would) and looks for a strongly connected component in the module graph.
"""
import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "mim_jax")


def package_modules() -> dict[str, str]:
    """Dotted module name -> file path, for every .py file under mim_jax/."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                dotted = os.path.relpath(path[:-3], REPO).replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def imported_modules(module: str, path: str, modules: dict) -> set[str]:
    """The package modules `module` imports anywhere in its file (resolved to the longest known prefix)."""
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + [base] if base else parts)
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module and not module.startswith(name + "."):  # a package's own __init__ is no edge
            found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
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
                    if len(component) > 1:
                        out.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package():
    modules = package_modules()
    assert len(modules) > 50 and "mim_jax.objectives.registry" in modules
    graph = {m: imported_modules(m, p, modules) for m, p in modules.items()}
    assert "mim_jax.objectives.registry" in graph["mim_jax.train.program"]
    assert cycles(graph) == []


def import_alone(module: str) -> tuple[str, int, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    return module, proc.returncode, proc.stderr[-1500:]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_every_module_imports_alone_in_a_fresh_interpreter():
    modules = sorted(package_modules())
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [(m, err) for m, rc, err in pool.map(import_alone, modules) if rc != 0]
    assert failures == []
