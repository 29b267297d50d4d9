"""Imports go down the layers: each folder of the package imports only the layers below it.

The package's folders are its layers (see README, "Architecture"). Read from
the source (every module's syntax tree, imports under ``TYPE_CHECKING`` and
inside functions included), each import of a ``sage_tasks`` module must go to
the importer's own layer or one it is allowed to use, and no two modules may
import each other, directly or around a loop.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import sage_tasks
from sage_tasks.core.graph import strongly_connected_components

PACKAGE = Path(sage_tasks.__file__).parent

#: what each layer may import besides itself; ``base`` is ``config``, ``errors`` and the root
ALLOWED: dict[str, frozenset[str]] = {
    "base": frozenset(),
    "core": frozenset({"base"}),
    "model": frozenset({"base", "core"}),
    "gitops": frozenset({"base", "core"}),
    "store": frozenset({"base", "core", "model"}),
    "work": frozenset({"base", "core", "model", "gitops", "store"}),
    "dispatch": frozenset({"base", "core", "model", "gitops", "store", "work"}),
    "app": frozenset({"base", "core", "model", "gitops", "store", "work", "dispatch"}),
    "views": frozenset({"base", "core", "model", "store"}),
    "cli": frozenset(
        {"base", "core", "model", "gitops", "store", "work", "dispatch", "app", "views"}
    ),
}
BASE_MODULES = frozenset({"sage_tasks", "sage_tasks.config", "sage_tasks.errors"})
#: the package root may also reach the app layer: ``celery -A sage_tasks`` asks it for the app
ROOT_MAY_USE = frozenset({"app"})


def module_name(path: Path) -> str:
    parts = ("sage_tasks", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    """The layer a module belongs to (None: a module outside every layer folder)."""
    if module in BASE_MODULES:
        return "base"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ALLOWED and parts[1] != "base":
        return parts[1]
    return None


def imports_of(module: str, source: str, known: Iterable[str]) -> set[str]:
    """The package's modules that ``source`` (the text of ``module``) imports."""
    known = set(known)
    package = module if f"{module}.__init__" in known else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("sage_tasks"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    found.discard(module)
    return {m for m in found if m in known}


def wrong_way(graph: Mapping[str, set[str]]) -> list[str]:
    """Every import that leaves its layer for one it may not use, as ``a -> b`` lines."""
    problems = []
    for module, targets in sorted(graph.items()):
        mine = layer_of(module)
        if mine is None:
            problems.append(f"{module} is in no layer folder")
            continue
        for target in sorted(targets):
            theirs = layer_of(target)
            allowed = ALLOWED[mine] | (ROOT_MAY_USE if module == "sage_tasks" else frozenset())
            if theirs is not None and theirs != mine and theirs not in allowed:
                problems.append(f"{module} ({mine}) -> {target} ({theirs})")
    return problems


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other around a loop (the core's Tarjan)."""
    names = sorted(set(graph) | {m for targets in graph.values() for m in targets})
    number = {name: i for i, name in enumerate(names)}
    deps = [sorted(number[m] for m in graph.get(name, ())) for name in names]
    groups = strongly_connected_components(deps, list(range(len(names))))
    return [sorted(names[i] for i in group) for group in groups]


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules) | {f"{m}.__init__" for m, p in modules.items() if p.name == "__init__.py"}
    return {m: imports_of(m, p.read_text(), known) for m, p in modules.items()}


def test_every_module_of_the_package_imports_only_its_own_layer_or_the_ones_below() -> None:
    graph = import_graph()
    assert {"sage_tasks.core.plan", "sage_tasks.app.celery_app", "sage_tasks.cli.submit"} <= set(
        graph
    )
    assert "sage_tasks.dispatch.names" in graph["sage_tasks.app.tasks"]
    assert wrong_way(graph) == []


def test_no_module_of_the_package_imports_itself_back_through_others() -> None:
    assert cycles(import_graph()) == []


def test_the_checks_report_an_upward_import_a_stray_module_and_a_loop() -> None:
    graph = {
        "sage_tasks.store.keys": {"sage_tasks.work.runtime"},
        "sage_tasks.work.runtime": {"sage_tasks.store.keys"},
        "sage_tasks.views.report": {"sage_tasks.app.tasks"},
        "sage_tasks.stray": set(),
    }
    assert wrong_way(graph) == [
        "sage_tasks.store.keys (store) -> sage_tasks.work.runtime (work)",
        "sage_tasks.stray is in no layer folder",
        "sage_tasks.views.report (views) -> sage_tasks.app.tasks (app)",
    ]
    assert cycles(graph) == [["sage_tasks.store.keys", "sage_tasks.work.runtime"]]


def test_the_reader_of_imports_resolves_relative_and_package_level_imports() -> None:
    known = {"sage_tasks.store", "sage_tasks.store.__init__", "sage_tasks.store.keys"}
    known |= {"sage_tasks.errors", "sage_tasks.store.runstate"}
    source = "\n".join(
        [
            "from sage_tasks.store import keys",
            "from ..errors import SageError",
            "from . import keys",
        ]
    )
    assert imports_of("sage_tasks.store.runstate", source, known) == {
        "sage_tasks.store.keys",
        "sage_tasks.errors",
    }
