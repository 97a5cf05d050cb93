"""The package's shape, checked on its import graph (grimp) and its source.

Every import counts, as Python would run it or a reader would follow it: at the
top of a module, inside a function (imported lazily, but an edge all the same),
and under ``if TYPE_CHECKING`` (a module that names another's types depends on
it; data flows one way, so types live below the modules that use them).
"""

from __future__ import annotations

import ast
from collections.abc import Set as AbstractSet
from pathlib import Path

import grimp
import pytest

import specdec

PACKAGE = "specdec"
VLLM_ENGINE = "specdec.engines.vllm_offline"
VLLM_PLUGIN = "specdec.engines.vllm_fixes"
"""specdec's vLLM plugin: vLLM's plugin loader imports it, inside vLLM's own processes."""
SOURCE = Path(specdec.__file__).parent


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """specdec's import graph, with the external packages it imports as single nodes."""
    # No cache folder: it would land in the checkout, and building takes well under a second.
    return grimp.build_graph(PACKAGE, include_external_packages=True, cache_dir=None)


def _cycles(graph: grimp.ImportGraph, modules: AbstractSet[str]) -> list[list[str]]:
    """The import cycles among ``modules``: groups of two or more that all reach each other."""
    reach = {m: graph.find_upstream_modules(m) & modules for m in modules}
    groups = {frozenset({m} | {n for n in reach[m] if m in reach[n]}) for m in modules}
    return sorted(sorted(group) for group in groups if len(group) > 1)


def _explain(graph: grimp.ImportGraph, group: list[str]) -> str:
    lines = [" <-> ".join(group)]
    for importer in group:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & set(group)):
            lines.extend(f"    {importer}:{detail['line_number']}: {detail['line_contents']}"
                         for detail in graph.get_import_details(importer=importer,
                                                                imported=imported))
    return "\n".join(lines)


def test_cycle_finder_finds_a_cycle() -> None:
    """The finder itself: a -> b -> c -> a and d <-> e are cycles; f, imported by a, is not."""
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c", "p.d", "p.e", "p.f"):
        graph.add_module(module)
    for importer, imported in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.a", "p.f"),
                               ("p.d", "p.e"), ("p.e", "p.d"), ("p.c", "p.d")):
        graph.add_import(importer=importer, imported=imported)
    assert _cycles(graph, set(graph.modules)) == [["p.a", "p.b", "p.c"], ["p.d", "p.e"]]


def test_no_import_cycle(graph: grimp.ImportGraph) -> None:
    """No group of specdec modules imports itself round in a circle."""
    ours = {m for m in graph.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")}
    cycles = _cycles(graph, ours)
    assert not cycles, "import cycles:\n" + "\n".join(_explain(graph, c) for c in cycles)


def test_vllm_is_imported_only_by_the_offline_engine(graph: grimp.ImportGraph) -> None:
    """``import vllm`` (or any ``vllm.*``) appears in the offline engine and in the plugin vLLM
    loads itself; the plugin imports vLLM inside its functions only, so importing it (as the
    engines do, to set its switch) imports no vLLM."""
    importers = {m for m in graph.find_modules_that_directly_import("vllm")
                 if m.startswith(f"{PACKAGE}.")}
    assert importers == {VLLM_ENGINE, VLLM_PLUGIN}
    plugin = SOURCE / "engines" / "vllm_fixes.py"
    top_level = [node for node in ast.parse(plugin.read_text(encoding="utf-8")).body
                 if isinstance(node, ast.Import | ast.ImportFrom)]
    assert not [node.lineno for node in top_level
                if any("vllm" in (alias.name or "") for alias in node.names)
                or "vllm" in (getattr(node, "module", None) or "")]


def test_ray_is_imported_only_by_the_ray_executor_inside_its_functions(
        graph: grimp.ImportGraph) -> None:
    """Ray is an optional extra: one module imports it, when that executor connects, so that
    ``specdec plugins`` and every other command work without it."""
    importers = {m for m in graph.find_modules_that_directly_import("ray")
                 if m.startswith(f"{PACKAGE}.")}
    assert importers == {f"{PACKAGE}.executors.ray_cluster"}
    module = SOURCE / "executors" / "ray_cluster.py"
    top_level = [node for node in ast.parse(module.read_text(encoding="utf-8")).body
                 if isinstance(node, ast.Import | ast.ImportFrom)]
    assert not [node.lineno for node in top_level
                if any(alias.name.split(".")[0] == "ray" for alias in node.names)
                or (getattr(node, "module", None) or "").split(".")[0] == "ray"]


def _registers_hooks(tree: ast.AST) -> list[int]:
    # A call of converter.register_*(...) on a module-level name: a customisation
    # that happens as a side effect of importing the module.
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("register_")
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "converter"]


def test_only_serialization_customises_the_converter() -> None:
    """Hooks are registered where the converter is built, never by importing another module."""
    elsewhere = {
        f"{path.relative_to(SOURCE)}:{line}"
        for path in SOURCE.rglob("*.py") if path.name != "serialization.py"
        for line in _registers_hooks(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert elsewhere == set()


USER_FACING = ("README.md", "EXPERIMENTS.md", "QUICK_REFERENCE.md", "docs", "configs", "data",
               "studies", "scripts", "examples", "src", "plugins")
"""What a user's clone holds and reads; tests and CI may use the workplace's ../shared."""


def test_no_user_facing_file_points_at_the_shared_folder() -> None:
    root = Path(__file__).resolve().parents[1]
    hits: list[str] = []
    for name in USER_FACING:
        base = root / name
        files = [base] if base.is_file() else sorted(base.rglob("*"))
        for path in files:
            if (not path.is_file() or "tests" in path.relative_to(root).parts
                    or path.suffix not in {".md", ".yaml", ".yml", ".py", ".sh", ".json", ".txt"}):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            if "../shared" in text or "/work/shared" in text:
                hits.append(str(path.relative_to(root)))
    assert hits == [], f"user-facing files point at the workplace's shared folder: {hits}"
