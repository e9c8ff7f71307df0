"""The house rules of harness/ (README "Where things are"): small modules, imports flowing one way."""

import ast
import collections
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[1] / "harness"
MAX_LINES = 350
# Who may not import whom (package level): the bottom layers never reach up.
FORBIDDEN = {"harness.lora": {"harness.data", "harness.config", "harness.train", "harness.telemetry", "harness.analysis"},
             "harness.data": {"harness.lora", "harness.config", "harness.train", "harness.telemetry", "harness.analysis"},
             "harness.metrics": {"harness.data", "harness.lora", "harness.config", "harness.train", "harness.scoring"},
             "harness.analysis": {"harness.train", "harness.telemetry", "harness.lora", "harness.data", "harness.scoring"}}


def modules() -> dict[str, Path]:
    out = {}
    for path in HARNESS.rglob("*.py"):
        parts = path.relative_to(HARNESS.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def unit(module: str) -> str:
    """The package a module belongs to (harness.lora.layer -> harness.lora), or the module itself."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    mods, graph = modules(), collections.defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("harness"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[unit(name)] |= {unit(t) for t in targets if t in mods and t != "harness" and unit(t) != unit(name)}
    return graph


def test_no_module_is_over_350_lines():
    long = {str(p.relative_to(HARNESS)): n for p in HARNESS.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_packages_import_without_a_circle_and_the_bottom_layers_never_reach_up():
    graph = package_graph()

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert [p for p in graph if p in reach(p)] == []
    for package, banned in FORBIDDEN.items():
        assert graph.get(package, set()) & banned == set(), package
    assert graph["harness.train"] >= {"harness.lora", "harness.data", "harness.config"}  # the graph is real
