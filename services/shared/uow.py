"""The unit of work: what a handler gets instead of a connection.

A handler asks its service's unit of work (a subclass with that service's repositories) for rows and
aggregates, and brackets its writes with `uow.transaction()`; it never sees SQL or a driver. The inbox and
the outbox are repositories of the same unit of work, so they share the effect's transaction.

Transaction control belongs to the backend: `transaction()` is BEGIN … COMMIT, or a savepoint when one is
already open (a group commit, or a handler's effect inside the inbox's transaction); `rolled_back()` is work
that never stays (a preview). SQLite's live in services/shared/store.py; another backend registers its own
with `register_backend(dialect, transaction, rolled_back)` (savepoints behave the same on PostgreSQL).
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

from . import store as sqlite_store
from .sql import Tx
from .store import InboxEntry, OutMessage

Control = Callable[[Tx], AbstractContextManager[Tx]]


@dataclass(frozen=True)
class Backend:
    transaction: Control
    rolled_back: Control


_BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(sqlite_store.transaction, sqlite_store.rolled_back),  # type: ignore[arg-type]
}


def register_backend(dialect: str, transaction: Control, rolled_back: Control) -> None:
    """Transaction control for `Tx.dialect` (the PostgreSQL store calls this once, on import)."""
    _BACKENDS[dialect] = Backend(transaction, rolled_back)


class Repository:
    """A repository reads and writes its tables through the unit of work's one Tx."""

    def __init__(self, tx: Tx):
        self._tx = tx


class InboxRepository(Repository):
    """msgid → the reply given (idempotency), in the effect's transaction."""

    def get(self, msgid: str) -> InboxEntry | None:
        return sqlite_store.inbox_get(self._tx, msgid)

    def put(self, msgid: str, kind: str, content_hash: str, reply: str | None, reply_to: str | None) -> None:
        sqlite_store.inbox_put(self._tx, msgid, kind, content_hash, reply, reply_to)

    def set_reply(self, msgid: str, reply: str) -> None:
        sqlite_store.inbox_set_reply(self._tx, msgid, reply)


class OutboxRepository(Repository):
    """Messages to publish once the transaction that wrote them has committed."""

    def add(self, msg: OutMessage) -> int:
        return sqlite_store.outbox_add(self._tx, msg)


class UnitOfWork:
    """One handler's transaction over one `Tx`, with the repositories every service shares."""

    def __init__(self, tx: Tx):
        self._tx = tx
        self._backend = _BACKENDS[tx.dialect]
        self.inbox = InboxRepository(tx)
        self.outbox = OutboxRepository(tx)

    def transaction(self) -> AbstractContextManager[Tx]:
        """Commit on leaving, roll back on an exception; nested: a savepoint (only its own work undone)."""
        return self._backend.transaction(self._tx)

    def rolled_back(self) -> AbstractContextManager[Tx]:
        """Work whose writes never stay (a preview), also inside a group commit."""
        return self._backend.rolled_back(self._tx)


