"""PostgreSQL, one schema per service: the same contract as services/shared/store.Store (open, run(fn), run_sync,
close, `commits`, `fault`), handing fn a `PgTx` that satisfies services/shared/sql.Tx.

Driver: psycopg 3's *sync* API on the store's own thread, one connection per store. Handlers and repositories
are synchronous functions of a transaction handle (sql.Tx), so the store thread keeps the event loop free
exactly as with SQLite, and the group commit carries over unchanged: the handler transactions queued while
the previous COMMIT was being made durable run together, each in its own savepoint, under one COMMIT. (The
async API would make every repository async for no gain: one store issues one statement at a time anyway;
more throughput comes from more replicas, each with its own connection.)

Isolation: READ COMMITTED (GONGJI_PG_ISOLATION to change it), where `SELECT … FOR UPDATE` (sql.for_update)
waits for the row and then reads its latest version, so transactions on one account queue up instead of
failing; the repositories take those locks in a fixed order.

Every batch runs in a transaction this store opens and closes itself, so a deadlock (40P01), a serialisation
failure (40001) or a race on a new key (23505) anywhere in it, even one a handler caught, rolls the whole
batch back and re-runs it: the transaction then either happens once or not at all. A group that keeps failing
is split and its handlers re-run one by one; past MAX_ATTEMPTS the error goes to the caller, where it is transient (services/shared/
health.py: the database's fault, never the message's). A lost connection is transient too; the next batch
reconnects.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
from concurrent.futures import Future
from typing import Any, Callable, Sequence, TypeVar

import psycopg
import psycopg.conninfo
from psycopg import sql as pg_sql

from .health import StoreFault
from .pg_tx import RETRYABLE, IntegralNumericLoader, PgRow, PgTx, rolled_back, row_factory, transaction, translate
from .store import CHUNK, OutMessage, StoreThread, _settle
from .uow import register_backend

__all__ = ["PgStore", "PgTx", "PgRow", "transaction", "rolled_back", "translate", "apply_migrations",
           "outbox_claim", "DatabaseUnavailable", "RETRYABLE"]

T = TypeVar("T")

GROUP_ATTEMPTS = 3   # a group re-run whole this often, then its handlers one by one
MAX_ATTEMPTS = 10    # per transaction; then the caller gets the error (transient)
# A group commit holds the row locks of every handler in it until it commits, taken in handler order, so two
# replicas' groups can wait for each other; PostgreSQL finds such a deadlock only after deadlock_timeout (1 s by
# default) per occurrence. A group waits this long for a lock instead, then runs again (and, after
# GROUP_ATTEMPTS, handler by handler, each waiting as long as it needs).
GROUP_LOCK_TIMEOUT_MS = 100
LEASE_S = 30.0       # an outbox row claimed by a relay is left to it this long


# ---- schema versions -----------------------------------------------------------------------------------
def apply_migrations(tx: PgTx, schema: str, migrations: Sequence[str]) -> list[int]:
    """Create the schema and apply the versions it lacks, in order, in the caller's transaction. An advisory
    lock held to the COMMIT makes replicas that start together take turns: the first applies, the others
    find the versions there. Returns the versions applied here."""
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (f"gongji.schema.{schema}",))
    ident = pg_sql.Identifier(schema).as_string(tx.conn)
    tx.execute(f"CREATE SCHEMA IF NOT EXISTS {ident}")
    tx.execute(f"CREATE TABLE IF NOT EXISTS {ident}.schema_version (version INTEGER PRIMARY KEY, "
               "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
    have = tx.execute(f"SELECT COALESCE(MAX(version), 0) FROM {ident}.schema_version").fetchone()[0]
    if have > len(migrations):
        raise SystemExit(f"PostgreSQL schema {schema} is at version {have}, newer than this gongji "
                         f"({len(migrations)}): upgrade gongji")
    applied = []
    for version, ddl in enumerate(migrations, start=1):
        if version <= have:
            continue
        tx.execute(ddl)  # search_path is the schema: the DDL names its tables bare
        tx.execute(f"INSERT INTO {ident}.schema_version (version) VALUES (?)", (version,))
        applied.append(version)
    return applied


# ---- the outbox relay ----------------------------------------------------------------------------------
def outbox_claim(tx: PgTx, older_than: float, limit: int, lease_s: float = LEASE_S,
                 now: float | None = None) -> list[tuple[int, OutMessage]]:
    """The relay's batch: rows older than a time that no other relay holds. FOR UPDATE SKIP LOCKED passes
    over rows another relay is claiming at this moment, and the lease marks the claimed ones for LEASE_S, so
    relays on several hosts share the backlog instead of all publishing all of it; a relay that dies leaves
    its rows to the others once the lease runs out."""
    now = time.time() if now is None else now
    rows = tx.execute(
        "UPDATE outbox SET claimed_until = ? WHERE id IN ("
        " SELECT id FROM outbox WHERE created_at < ? AND (claimed_until IS NULL OR claimed_until < ?)"
        " ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED)"
        " RETURNING id, exchange, routing_key, body, message_id, correlation_id, reply_to, headers",
        (now + lease_s, older_than, now, limit)).fetchall()
    rows.sort(key=lambda r: r[0])
    return [(r["id"], OutMessage(r["exchange"], r["routing_key"], bytes(r["body"]), r["message_id"],
                                 r["correlation_id"], r["reply_to"],
                                 json.loads(r["headers"]) if r["headers"] else None)) for r in rows]


class DatabaseUnavailable(SystemExit):
    """The database cannot be reached or used at start: the worker must not start on it."""


# ---- the store -----------------------------------------------------------------------------------------
class PgStore(StoreThread):
    """One service's schema in a PostgreSQL database, run from one thread (see the module's docstring)."""

    dialect = "postgres"

    def __init__(self, url: str, schema: str, migrations: Sequence[str], group_commit: bool = True,
                 isolation: str | None = None):
        self.url = url
        self.schema = schema
        self.path = None  # no file (the SQLite Store's attribute)
        self._migrations = list(migrations)
        self._isolation = isolation or os.environ.get("GONGJI_PG_ISOLATION") or None
        self._begin = f"BEGIN ISOLATION LEVEL {self._isolation.upper()}" if self._isolation else "BEGIN"
        self._conn: PgTx | None = None
        super().__init__(f"pgstore-{schema}", group_commit)
        self.commits = 0   # transactions committed (a group counts once)
        self.retries = 0   # transactions re-run after a deadlock or serialisation failure
        self.fault = StoreFault.from_env(schema)  # injected failures (tests), None normally

    async def open(self) -> None:
        """Connect and bring the schema to the current version; a database that cannot be reached or used
        stops the worker before it serves anything, saying why (the way a damaged SQLite file does)."""
        try:
            await self.run(lambda tx: apply_migrations(tx, self.schema, self._migrations))
        except psycopg.OperationalError as exc:
            where = psycopg.conninfo.conninfo_to_dict(self.url)
            where.pop("password", None)
            raise DatabaseUnavailable(f"PostgreSQL {where} (schema {self.schema}) cannot be used: "
                                      + " ".join(str(exc).split())) from None

    # -- the store thread (StoreThread runs the loop) --
    def _run_batch(self, batch: list[tuple[Callable[[PgTx], Any], Future[Any]]]) -> None:
        fns = [fn for fn, _ in batch]
        results = self._attempt(fns, GROUP_ATTEMPTS) if len(fns) > 1 else None
        if results is None:  # alone, or a group that kept colliding: each handler on its own
            results = []
            for fn in fns:
                one = self._attempt([fn], MAX_ATTEMPTS)
                results += one if one is not None else [(False, self._last_retry_error)]
        for (ok, value), (_, fut) in zip(results, batch):
            _settle(fut, value, failed=not ok)

    _last_retry_error: BaseException | None = None

    def _attempt(self, fns: list[Callable[[PgTx], Any]], attempts: int) -> list[tuple[bool, Any]] | None:
        """Run these handlers in one transaction; re-run all of them after a 40001/40P01/23505/55P03. None when the
        attempts ran out."""
        for attempt in range(attempts):
            if attempt:
                self.retries += 1
                time.sleep(random.uniform(0, 0.005 * 2 ** min(attempt, 6)))  # apart, so they do not meet again
            try:
                if self.fault is not None:
                    self.fault.check()
                tx = self._connection()
            except BaseException as exc:
                return [(False, exc)] * len(fns)
            tx.retry_error = None
            tx.reset()
            results: list[tuple[bool, Any]] = []
            try:
                tx.execute(self._begin)
                if len(fns) > 1:
                    tx.defer(f"SET LOCAL lock_timeout = '{GROUP_LOCK_TIMEOUT_MS}ms'")
                if len(fns) == 1:
                    try:
                        results.append((True, fns[0](tx)))
                    except BaseException as exc:
                        results.append((False, exc))
                else:
                    for i, fn in enumerate(fns):
                        tx.execute(f"SAVEPOINT h{i}")
                        try:
                            results.append((True, fn(tx)))
                        except BaseException as exc:
                            results.append((False, exc))
                            tx.execute(f"ROLLBACK TO SAVEPOINT h{i}")
                        tx.execute(f"RELEASE SAVEPOINT h{i}")
                if tx.retry_error is not None:
                    raise tx.retry_error
                if len(fns) == 1 and not results[0][0]:
                    tx.execute("ROLLBACK")  # a lone handler that failed leaves nothing behind
                else:
                    tx.execute("COMMIT")
                    self.commits += 1
            except RETRYABLE as exc:
                self._last_retry_error = exc
                self._rollback(tx)
                continue
            except BaseException as exc:
                self._rollback(tx)
                return [(False, exc)] * len(fns)
            return results
        return None

    def _rollback(self, tx: PgTx) -> None:
        tx.reset()
        try:
            if not tx.conn.closed and tx.in_transaction:
                tx.conn.execute("ROLLBACK")
        except psycopg.Error:
            pass
        if tx.conn.closed or tx.conn.broken:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def _connection(self) -> PgTx:
        if self._conn is not None and (self._conn.conn.closed or self._conn.conn.broken):
            self._drop()
        if self._conn is None:
            conn = psycopg.connect(self.url, autocommit=True, row_factory=row_factory,  # type: ignore[arg-type]
                                   application_name=f"gongji-{self.schema}", connect_timeout=10)
            conn.adapters.register_loader("numeric", IntegralNumericLoader)
            conn.execute(pg_sql.SQL("SET search_path TO {}").format(pg_sql.Identifier(self.schema)))
            self._conn = PgTx(conn)
        return self._conn

    # -- the public API (services/shared/store.Store's) --
    def backlog(self, tx: PgTx, older_than: float | None) -> list[tuple[int, OutMessage]]:
        """The relay's next rows, claimed (SKIP LOCKED and a lease) so relays on several hosts share them."""
        return outbox_claim(tx, time.time() + 1 if older_than is None else older_than, CHUNK)

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._drop()


# Transaction control for Tx.dialect "postgres" in the unit of work (services/shared/uow.py).
register_backend("postgres", transaction, rolled_back)  # type: ignore[arg-type]
