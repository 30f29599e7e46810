"""Issue 14, the simulator package you can find your way in: no import circle among simulator/'s modules
(imports inside functions count: they hid the old audit ↔ report ↔ runner circle), and modules small enough to
hold in your head."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "simulator"
# Waiting for their split (simulator/run/, simulator/bench/, the scenario model apart from its loader): every
# other module stays under 600 lines.
TOO_BIG_FOR_NOW = {"runner.py", "bench.py", "scenario.py"}


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """simulator modules imported by this file, at module level or inside functions; not under TYPE_CHECKING."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 1:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.module and node.module.split(".")[0] == "simulator":
                parts = node.module.split(".")
                names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            else:
                names = []
            found.update(n for n in names if n in modules)

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "simulator" and len(parts) > 1 and parts[1] in modules:
                    found.add(parts[1])

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return found - {path.stem}


def graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PKG.glob("*.py")}
    return {p.stem: imports_of(p, modules) for p in PKG.glob("*.py")}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)
    return found


def test_cycle_finder_finds_a_hidden_circle() -> None:
    """Guards the test below: the old layout (report imported runner inside a function) is a circle."""
    assert cycles({"runner": {"report"}, "report": {"audit", "runner"}, "audit": set()}) == [
        ["report", "runner", "report"]]


def test_no_import_circle_in_simulator() -> None:
    g = graph()
    assert {"runner", "report", "audit", "compare", "cli", "figures"} <= set(g)
    assert "runner" not in g["report"] and "runner" not in g["audit"]
    assert cycles(g) == []


def test_modules_stay_small() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in PKG.glob("*.py")}
    big = {name: n for name, n in sizes.items() if n > 600 and name not in TOO_BIG_FOR_NOW}
    assert big == {}, big
