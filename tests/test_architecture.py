"""The floors of the house (docs/DESIGN.md): every import of an edge_somad module runs to the same
floor or below, and no modules import each other in a circle, function-level imports included.
Floors are given by folder: every module of a package (runtime/scorers/, cli/, ...) sits on its
folder's floor, so a folder never imports from a folder on a higher floor. A folder taken as one
node never sits in a cycle with another folder or a top-level module either, so no folder points
back at one that points at it. Only typer's command modules (cli/) may import typer.

Parsed with `ast` from the source files (nothing is imported), so a lazy import cannot hide an
upward arrow or a cycle. A new folder (or top-level module) must be given a floor in FLOORS before
this test passes, and a new folder must be listed in pyproject.toml's packages.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> installed package (pyproject.toml [tool.setuptools.package-dir]).
PACKAGES = {"edge_somad": "edge_somad", "export": "edge_somad.export", "runtime": "edge_somad.runtime",
            "calibration": "edge_somad.calibration"}

# A name ending in "/" is a folder (a package, everything in it and below unless a deeper folder has a
# floor of its own); any other name is one top-level module of edge_somad.
# 0 contracts, 1 building blocks (maths, data, scorers, messaging, health), 2 steps and the parts of the
# runtime built on the blocks, 3 entry points, 4 the package itself: edge_somad/__init__.py, the
# public API's lazy front door.
FLOORS: dict[int, tuple[str, ...]] = {
    0: ("_version", "errors", "config", "progress", "contracts/", "sample_data/", "runtime/"),
    1: ("scoring", "stats", "lowrank", "som", "backbones", "features", "model", "artifacts", "metrics", "viz",
        "data", "selection_rule", "graph_cost", "runtime/scorers/", "runtime/messaging/", "runtime/health/",
        "runtime/trigger/"),
    2: ("fit", "select", "evaluate", "export/", "calibration/", "runtime/pipeline/", "runtime/view/",
        "runtime/bridges/"),
    3: ("cli/", "bench/", "workflows", "demo", "api"),
    4: ("edge_somad",),
}
TYPER_HOME = "edge_somad.cli"  # the only package whose modules may import typer


def modules() -> dict[str, Path]:
    """Installed module name -> source file, for every .py of the four packages."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def floor_of(module: str) -> int | None:
    """The floor of `module`: its own entry, or that of the deepest folder holding it."""
    short = "edge_somad" if module == "edge_somad" else module.removeprefix("edge_somad.")
    best: tuple[int, int] | None = None  # (depth of the matching entry, floor)
    for floor, names in FLOORS.items():
        for name in names:
            if name.endswith("/"):
                folder = name[:-1].replace("/", ".")
                if short == folder or short.startswith(folder + "."):
                    depth = folder.count(".") + 1
                    if best is None or depth > best[0]:
                        best = (depth, floor)
            elif short == name:
                return floor
    return None if best is None else best[1]


def imported(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """The edge_somad modules `module` imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            members = {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
            names.update(members)
            if not members <= known.keys():  # a name defined in pkg/__init__.py itself
                names.add(base)
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imported(p, m, known) for m, p in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def packages() -> set[str]:
    """The subpackages of edge_somad: every folder holding an __init__.py (edge_somad itself excluded)."""
    return {m for m, p in modules().items() if p.name == "__init__.py" and m != "edge_somad"}


def folder_of(module: str, folders: set[str] | None = None) -> str:
    """edge_somad.runtime.pipeline.camera -> edge_somad.runtime.pipeline/ (its deepest folder);
    a top-level module of edge_somad is its own node."""
    folders = packages() if folders is None else folders
    holding = [f for f in folders if module == f or module.startswith(f + ".")]
    return max(holding, key=len) + "/" if holding else module


def folder_graph(graph: dict[str, set[str]], folders: set[str] | None = None) -> dict[str, set[str]]:
    folders = packages() if folders is None else folders
    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        node = folder_of(module, folders)
        out.setdefault(node, set()).update(folder_of(d, folders) for d in deps if folder_of(d, folders) != node)
    for deps in list(out.values()):
        for d in deps:
            out.setdefault(d, set())
    return out


def test_every_module_has_a_floor() -> None:
    lost = sorted(m for m in modules() if floor_of(m) is None)
    assert not lost, f"modules without a floor: {lost}; give the folder (or module) a floor in FLOORS here and in " \
        "docs/DESIGN.md"


def test_every_folder_is_installed() -> None:
    """A folder missing from pyproject.toml's explicit packages list would be left out of a wheel."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    missing = sorted(packages() - listed)
    assert not missing, f"folders not in pyproject.toml [tool.setuptools] packages: {missing}; add them there"


def test_only_cli_imports_typer() -> None:
    """Commands and their options live in cli/; every other module is a library a script can call."""
    outside = []
    for module, path in sorted(modules().items()):
        if module == TYPER_HOME or module.startswith(TYPER_HOME + "."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            outside += [f"{module} imports {n}" for n in names if n == "typer" or n.startswith("typer.")]
    assert not outside, "typer outside cli/: " + "; ".join(outside)


def test_imports_run_downward() -> None:
    upward = [f"{m} (floor {floor_of(m)}) imports {d} (floor {floor_of(d)})"
              for m, deps in sorted(import_graph().items()) for d in sorted(deps)
              if floor_of(m) is not None and floor_of(d) is not None and floor_of(d) > floor_of(m)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_folder_points_back() -> None:
    cycle = find_cycle(folder_graph(import_graph()))
    assert cycle is None, "folders import each other: " + " -> ".join(cycle)


def test_the_folder_check_catches_a_folder_pointing_back() -> None:
    """The contracts <-> config loop the folders once had: files acyclic, folders not."""
    files = {"edge_somad.contracts.manifest": {"edge_somad.config"},
             "edge_somad.config": {"edge_somad.contracts.names"}, "edge_somad.contracts.names": set()}
    assert find_cycle(files) is None
    folders = {"edge_somad.contracts"}
    assert find_cycle(folder_graph(files, folders)) == ["edge_somad.config", "edge_somad.contracts/",
                                                        "edge_somad.config"]


def test_floors_are_given_by_folder() -> None:
    """Every module of a folder shares its floor; a deeper folder's own floor wins over its parent's."""
    assert floor_of("edge_somad.runtime.messaging.messages") == floor_of("edge_somad.runtime.messaging") == 1
    assert floor_of("edge_somad.runtime.pipeline.camera") == 2
    assert floor_of("edge_somad.runtime") == 0
    assert floor_of("edge_somad.cli.bridge") == 3
    assert floor_of("edge_somad.runtime.nowhere.x") == 0  # under runtime/: its floor until given one
    assert floor_of("edge_somad.new_module") is None


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detectors themselves, on two folders written here (so the tests above can fail)."""
    for folder in ("runtime", "runtime/messaging", "runtime/pipeline"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "runtime" / "messaging" / "messages.py").write_text(
        "def f():\n    from edge_somad.runtime.pipeline import pipeline\n")
    (tmp_path / "runtime" / "pipeline" / "pipeline.py").write_text("from ..messaging import messages\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "ROOT", tmp_path)
    monkeypatch.setattr(this, "PACKAGES", {"runtime": "edge_somad.runtime"})
    graph = import_graph()
    messages, pipeline = "edge_somad.runtime.messaging.messages", "edge_somad.runtime.pipeline.pipeline"
    assert pipeline in graph[messages]  # lazy import seen
    assert messages in graph[pipeline]  # relative import seen
    assert floor_of(messages) < floor_of(pipeline)  # so the lazy import is an upward one
    assert find_cycle(graph) is not None
    assert find_cycle(folder_graph(graph)) is not None  # the two folders point at each other
