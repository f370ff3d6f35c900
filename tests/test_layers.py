"""The package reads as the data flow, and every import points down it: a module imports only from its own layer
or the layers below, and no modules import each other in a circle (lazy imports inside functions included)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dsum"
# Lowest first. A module may import from its own layer and the ones before it.
LAYERS = (
    "dsum.constants",  # names shared across layers
    "dsum.infra",  # files, secrets, tracking, checkpoint I/O, run checks, fault report
    "dsum.data",  # CSV -> tokenized batches
    "dsum.eval",  # post-processing, ROUGE and fidelity, inference settings, score/ensemble tools
    "dsum.models",  # the LightningModules
    "dsum.callbacks",  # run records, exports, checkpoints
    "dsum.cli",  # DsumCLI: the training core
    "dsum.registry",  # exported models, compared like with like
    "dsum.sweep",  # W&B and local sweeps over the CLI, and the training command
    "dsum.tiny",  # tiny offline models (a tool)
    "dsum.entry",  # the `dsum` command
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    found = [i for i, prefix in enumerate(LAYERS) if module == prefix or module.startswith(prefix + ".")]
    return found[-1] if found else None


def dsum_imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every ``dsum`` module ``path`` imports (top-level or inside a function), with its line; ``from dsum.x import y``
    yields ``dsum.x.y`` when ``y`` is a module."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dsum":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield (sub if sub in modules else node.module), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dsum":
                    yield alias.name, node.lineno


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    assert [module_name(p) for p in SOURCES if module_name(p) != "dsum" and layer_of(module_name(p)) is None] == []


def test_no_import_runs_up_the_layers() -> None:
    upward = []
    for path in SOURCES:
        here = layer_of(module_name(path))
        for target, line in dsum_imports(path):
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert upward == []


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p) for p in SOURCES}
    return {module_name(p): {t for t, _ in dsum_imports(p) if t in modules and t != module_name(p)
                             and not t.endswith("__main__")} for p in SOURCES}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of ``graph`` with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [{"a", "b", "c"}]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_circle_finder_finds_circles(graph: dict[str, set[str]], expected: list[set[str]]) -> None:
    assert cycles(graph) == expected


def test_the_training_core_imports_nothing_from_the_sweep_layer() -> None:
    core = [p for p in SOURCES if layer_of(module_name(p)) is not None
            and layer_of(module_name(p)) <= LAYERS.index("dsum.cli")]
    assert len(core) > 30
    assert [str(p.relative_to(REPO)) for p in core if any(t.startswith("dsum.sweep") for t, _ in dsum_imports(p))] == []
