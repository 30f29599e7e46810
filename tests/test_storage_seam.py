"""Issue 12, the storage seam: no handler imports sqlite3, holds a connection or builds SQL.

Every module under services/ is walked (ast): its imports, its string constants, its calls. Only the modules
that are the storage side of the seam may name the driver or write SQL: the repositories and stores (portable
SQL against services/shared/sql.py's Tx) and the classifier of storage failures (health.py).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "services"
STORAGE_SIDE = {
    "services/shared/sql.py", "services/shared/store.py", "services/shared/health.py",
    "services/bureau/store.py", "services/bureau/visit_store.py", "services/bureau/repository.py",
    "services/accounts/store.py", "services/accounts/repository.py",
    "services/pos/repository.py",
    # PostgreSQL (issue 12): the store and its Tx, the schemas and their migrations, throwaway databases
    "services/shared/pg_store.py", "services/shared/pg_tx.py", "services/shared/pg_admin.py",
    "services/shared/pg_schema.py", "services/bureau/pg_schema.py", "services/accounts/pg_schema.py",
    "services/pos/pg_schema.py",
}
# The handlers the issue names; they must be among the modules walked (the test is not vacuous).
HANDLERS = {"services/bureau/service.py", "services/bureau/visits.py", "services/accounts/service.py",
            "services/accounts/lifecycle.py", "services/pos/service.py", "services/pos/national_flow.py",
            "services/bureau/worker.py", "services/accounts/worker.py", "services/pos/worker.py",
            "services/shared/inbox.py", "services/shared/runtime.py"}
DRIVERS = {"sqlite3", "psycopg", "psycopg_pool", "asyncpg"}
SQL = re.compile(r"\b(SELECT\b.+\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                 r"CREATE\s+(TABLE|INDEX|TRIGGER|UNIQUE)|DROP\s+(TABLE|TRIGGER|INDEX)|ALTER\s+TABLE|"
                 r"BEGIN\s+IMMEDIATE|SAVEPOINT\s|ROLLBACK\b|COMMIT\b|PRAGMA\s)", re.DOTALL)  # SQL is written in capitals
RAW_CALLS = {"execute", "executemany", "executescript", "cursor", "commit", "rollback"}


def modules() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in SERVICES.rglob("*.py"))


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants (prose may say "select … from" or "commit")."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def strings(rel: str | Path) -> list[tuple[int, str]]:
    """The string constants of a module that are not docstrings, f-strings' literal parts joined."""
    tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
    skip = docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
            out.append((node.lineno, "".join(v.value for v in node.values
                                             if isinstance(v, ast.Constant) and isinstance(v.value, str))))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            out.append((node.lineno, node.value))
    return out


def problems(rel: str | Path) -> list[str]:
    tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
    found = [f"line {line}: SQL {text[:60]!r}" for line, text in strings(rel) if SQL.search(text)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"imports {a.name}" for a in node.names if a.name.split(".")[0] in DRIVERS]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in DRIVERS:
            found.append(f"imports from {node.module}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RAW_CALLS:
            found.append(f"line {node.lineno}: calls .{node.func.attr}() on a connection")
    return found


def test_the_walk_covers_every_handler_and_the_allowed_list_exists() -> None:
    walked = set(modules())
    assert HANDLERS <= walked - STORAGE_SIDE
    assert STORAGE_SIDE <= walked, STORAGE_SIDE - walked


@pytest.mark.parametrize("rel", [m for m in modules() if m not in STORAGE_SIDE])
def test_no_handler_module_names_the_driver_or_writes_sql(rel: str) -> None:
    assert problems(rel) == []


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The walk would see a handler that slid back into SQL (else the test above proves nothing)."""
    bad = tmp_path / "probe.py"
    bad.write_text('import sqlite3\n\ndef f(conn, x):\n    conn.execute(f"UPDATE settlements SET state=? WHERE '
                   'setl_id={x}")\n    return "INSERT OR REPLACE INTO facilities (code) VALUES (?)"\n',
                   encoding="utf-8")
    found = problems(bad)  # an absolute path: REPO / it is itself
    assert any("imports sqlite3" in p for p in found)
    assert any("calls .execute()" in p for p in found)
    assert sum("SQL" in p for p in found) >= 2


def test_repositories_write_portable_sql() -> None:
    """services/shared/sql.py's rules: no INSERT OR REPLACE/IGNORE, no lastrowid, in any storage module."""
    for rel in sorted(STORAGE_SIDE):
        for line, text in strings(rel):
            assert not re.search(r"INSERT\s+OR\s+(REPLACE|IGNORE)", text, re.IGNORECASE), (rel, line)
        tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "lastrowid"], rel
