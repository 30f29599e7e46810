"""The one contract between repositories and a storage backend: a transaction handle, `Tx`.

Repositories write portable SQL against a `Tx` and nothing else, so SQLite (the embedded default) and
PostgreSQL are adapters behind the same repositories:
- `?` placeholders (the PostgreSQL adapter turns them into `%s`);
- `INSERT … ON CONFLICT (…) DO NOTHING / DO UPDATE SET c = excluded.c`, never `INSERT OR REPLACE/IGNORE`;
- `RETURNING id`, never `cursor.lastrowid`;
- rows read by column name or by index (sqlite3.Row does both; the PostgreSQL adapter gives the same);
- `for_update(tx)` after a SELECT whose rows the transaction goes on to change: row locks on PostgreSQL
  (taken in a fixed order, e.g. ORDER BY the key), nothing on SQLite where BEGIN IMMEDIATE already holds
  the file's write lock.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Iterable, Protocol, Sequence


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Any: ...


class Tx(Protocol):
    """An open connection inside a transaction (or a savepoint of a group commit)."""

    dialect: str  # "sqlite" | "postgres"

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursor: ...
    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Cursor: ...


class SqliteTx(sqlite3.Connection):
    """sqlite3's own connection, marked with its dialect (used as `sqlite3.connect(..., factory=SqliteTx)`)."""

    dialect = "sqlite"


def for_update(tx: Tx) -> str:
    """The row-lock clause for a SELECT whose rows this transaction will change."""
    return " FOR UPDATE" if tx.dialect == "postgres" else ""


def marks(n: int) -> str:
    """`?,?,…` for an IN list of n values."""
    return ",".join("?" * n)
