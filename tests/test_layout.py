"""Issue 14, the simulator package you can find your way in: no import circle among simulator/'s modules
(imports inside functions count: they hid the old audit ↔ report ↔ runner circle), and modules small enough to
hold in your head."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "simulator"


def module_name(path: Path) -> str:
    """simulator/run/runner.py → run.runner; simulator/bench/__init__.py → bench."""
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """simulator modules imported by this file, at module level or inside functions; not under TYPE_CHECKING."""
    found: set[str] = set()
    here = module_name(path)
    package = here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
    if here == "":
        package = []

    def add(dotted: list[str], names: list[str]) -> None:
        base = ".".join(p for p in dotted if p)
        for n in names:  # `from .run import runner`: the submodule; `from .scenario import X`: the module
            sub = f"{base}.{n}" if base else n
            if sub in modules:
                found.add(sub)
            elif base in modules:
                found.add(base)

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            names = [a.name for a in node.names]
            mod = (node.module or "").split(".") if node.module else []
            if node.level:
                up = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                add([*up, *mod], names)
            elif mod and mod[0] == "simulator":
                add(mod[1:], names)

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "simulator" and ".".join(parts[1:]) in modules:
                    found.add(".".join(parts[1:]))

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return found - {here, ""}


def graph() -> dict[str, set[str]]:
    files = list(PKG.rglob("*.py"))
    modules = {module_name(p) for p in files} - {""}
    return {module_name(p): imports_of(p, modules) for p in files if module_name(p)}


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


def test_graph_sees_subpackages_and_relative_imports() -> None:
    """Guards the test below: imports in and out of the packages (from .., from . import x) are edges."""
    g = graph()
    assert "run.runner" in g["run.orchestration"] and "audit" in g["run.orchestration"]
    assert {"scenario.model", "scenario.loader"} <= g["generate"]
    assert "bench.measure" in g["cli"]  # an import inside a function counts


def test_no_import_circle_in_simulator() -> None:
    g = graph()
    assert {"run.runner", "run.orchestration", "run.faults", "report", "audit", "compare", "cli", "figures"} <= set(g)
    for name in ("report", "audit", "figures", "visit_audit"):
        assert not {m for m in g[name] if m.startswith("run.")}, (name, g[name])
    assert cycles(g) == []


def test_modules_stay_small() -> None:
    sizes = {str(p.relative_to(PKG)): len(p.read_text(encoding="utf-8").splitlines()) for p in PKG.rglob("*.py")}
    assert len(sizes) > 30  # every module, in the packages too
    big = {name: n for name, n in sizes.items() if n > 600}
    assert big == {}, big
