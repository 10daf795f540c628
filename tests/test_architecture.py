"""The floors of the house (docs/DESIGN.md): every import of an edge_somad module runs to the same
floor or below, and no modules import each other in a circle, function-level imports included.
Folders too: a subpackage (contracts/, runtime/, ...) taken as one node never sits in a cycle with
another folder or a top-level module, so no folder points back at one that points at it.

Parsed with `ast` from the source files (nothing is imported), so a lazy import cannot hide an
upward arrow or a cycle. A new module must be given a floor in FLOORS before this test passes.
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

# 0 contracts, 1 building blocks (maths, data, scorers, runtime parts), 2 steps, 3 entry points,
# 4 the package itself: edge_somad/__init__.py, the public API's lazy front door.
FLOORS: dict[int, tuple[str, ...]] = {
    0: ("_version", "errors", "config", "progress", "contracts", "contracts.*", "sample_data",
        "export", "runtime", "calibration"),
    1: ("scoring", "stats", "som", "backbones", "features", "model", "artifacts", "metrics", "viz", "data",
        "runtime.scorer", "runtime.ort_scorer", "runtime.ort_flavour", "calibration.distributions",
        "runtime.trt_scorer", "runtime.torch_scorer", "runtime.trt_env",
        "runtime.backends", "runtime.messages", "runtime.intake", "runtime.verdict", "runtime.defects",
        "runtime.frames", "runtime.capture", "runtime.camera", "runtime.camera_watch", "runtime.pipeline_config",
        "runtime.health_config", "runtime.health_parts", "runtime.drift", "runtime.health", "runtime.curve",
        "runtime.publisher", "runtime.subscriber", "runtime.bridge_queue", "runtime.bridge_mqtt_link",
        "runtime.journal", "runtime.replay", "runtime.bridge_recover", "runtime.bridge_opcua_model",
        "calibration.threshold", "calibration.selfcheck", "calibration.synthetic", "selection_rule", "export.fp16",
        "machine", "graph_cost"),
    2: ("fit", "select", "evaluate", "export.onnx_graph", "export.exporter", "export.trt_build",
        "calibration.commands", "calibration.quantize", "calibration.int8_stats", "calibration.int8_gate",
        "calibration.int8_step", "calibration.frames",
        "calibration.report", "runtime.pipeline", "runtime.outbox", "runtime.launch", "runtime.view_state",
        "runtime.view", "runtime.bridge_source",
        "runtime.bridge_mqtt", "runtime.bridge_opcua"),
    3: ("cli", "workflows", "bench", "demo", "api", "runtime.commands", "runtime.bridge_commands",
        "runtime.pipeline_bench"),
    4: ("edge_somad",),
}
SUBPACKAGES = ("contracts", "export", "runtime", "calibration", "sample_data")


def modules() -> dict[str, Path]:
    """Installed module name -> source file, for every .py of the four packages."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def floor_of(module: str) -> int | None:
    short = "edge_somad" if module == "edge_somad" else module.removeprefix("edge_somad.")
    for floor, names in FLOORS.items():
        for name in names:
            if short == name or (name.endswith(".*") and short.startswith(name[:-1])):
                return floor
    return None


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


def folder_of(module: str) -> str:
    """edge_somad.runtime.camera -> edge_somad.runtime/ ; a top-level module is its own node."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return ".".join(parts[:2]) + "/"
    return module


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        node = folder_of(module)
        out.setdefault(node, set()).update(folder_of(d) for d in deps if folder_of(d) != node)
    for deps in list(out.values()):
        for d in deps:
            out.setdefault(d, set())
    return out


def test_every_module_has_a_floor() -> None:
    lost = sorted(m for m in modules() if floor_of(m) is None)
    assert not lost, f"modules without a floor: {lost}; add each to FLOORS here and to docs/DESIGN.md"


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
    assert find_cycle(folder_graph(files)) == ["edge_somad.config", "edge_somad.contracts/", "edge_somad.config"]


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detectors themselves, on a two-module package written here (so the tests above can fail)."""
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "__init__.py").write_text("")
    (tmp_path / "runtime" / "messages.py").write_text("def f():\n    from edge_somad.runtime import pipeline\n")
    (tmp_path / "runtime" / "pipeline.py").write_text("from . import messages\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "ROOT", tmp_path)
    monkeypatch.setattr(this, "PACKAGES", {"runtime": "edge_somad.runtime"})
    graph = import_graph()
    assert "edge_somad.runtime.pipeline" in graph["edge_somad.runtime.messages"]  # lazy import seen
    assert "edge_somad.runtime.messages" in graph["edge_somad.runtime.pipeline"]  # relative import seen
    assert floor_of("edge_somad.runtime.messages") < floor_of("edge_somad.runtime.pipeline")
    assert find_cycle(graph) is not None
