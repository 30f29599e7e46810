"""SQLite, one file per service: WAL, synchronous=FULL, every write in BEGIN IMMEDIATE.

BEGIN IMMEDIATE takes the database's write lock up front, so two transactions (from this process or a
replica sharing the file) touching the same account are serialised by SQLite itself, never by Python
locks. All calls run on one dedicated thread so the event loop never blocks on disk.

Group commit: handler transactions that queue up while the disk syncs are run together, each inside its
own savepoint, and committed with one fsync. A handler that fails rolls back only its own savepoint; every
caller gets its result only after the COMMIT, so nothing is published or acked before its effect is durable.

Every store has an inbox (msgid → content hash and the reply we gave) and an outbox (messages to publish
once the transaction that caused them has committed).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from .health import StoreFault
from .sql import SqliteTx, Tx

T = TypeVar("T")

BASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    msgid TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    reply TEXT,               -- JSON reply given (NULL while the effect is still pending elsewhere)
    reply_to TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    body BLOB NOT NULL,
    message_id TEXT,
    correlation_id TEXT,
    reply_to TEXT,
    headers TEXT,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class OutMessage:
    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    headers: dict[str, Any] | None = None


@dataclass(frozen=True)
class InboxEntry:
    msgid: str
    kind: str
    content_hash: str
    reply: str | None
    reply_to: str | None


MAX_GROUP = 64


class StoreThread:
    """One thread runs a store's transactions in order, so the event loop never waits on the disk or the
    database; the calls that queue up while one runs are handed to `_run_batch` together (a group commit)."""

    def __init__(self, name: str, group_commit: bool) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._group_commit = group_commit
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _run_batch(self, batch: list[tuple[Callable[[Any], Any], Future[Any]]]) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while self._group_commit and len(batch) < MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            # Callers that gave up (their task was cancelled, e.g. on a lost connection) are skipped: their
            # message was not acked and comes back. The thread itself must never die.
            batch = [(fn, fut) for fn, fut in batch if fut.set_running_or_notify_cancel()]
            if batch:
                try:
                    self._run_batch(batch)
                except BaseException as exc:  # pragma: no cover - last line of defence
                    for _, fut in batch:
                        _settle(fut, exc, failed=True)

    async def run(self, fn: Callable[[Any], T]) -> T:
        fut: Future[T] = Future()
        self._queue.put((fn, fut))
        return await asyncio.wrap_future(fut)

    def run_sync(self, fn: Callable[[Any], T]) -> T:
        """For tools and tests outside an event loop."""
        fut: Future[T] = Future()
        self._queue.put((fn, fut))
        return fut.result()


class Store(StoreThread):
    def __init__(self, path: Path, schema: str, group_commit: bool = True):
        self.path = Path(path)
        self._schema = schema
        self._conn: sqlite3.Connection | None = None
        super().__init__(f"store-{self.path.stem}", group_commit)
        self.commits = 0  # transactions committed (a group counts once)
        self.retries = 0  # transactions re-run (never on SQLite: BEGIN IMMEDIATE waits instead)
        self.fault = StoreFault.from_env(self.path.name)  # injected failures (tests), None normally

    async def open(self) -> None:
        """Open and check the file: a damaged database is refused before the worker serves anything."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            problems = await self.run(quick_check)
        except sqlite3.DatabaseError as exc:
            raise DamagedStore(f"database {self.path} cannot be used: {exc}") from None
        if problems:
            raise DamagedStore(f"database {self.path} is damaged (PRAGMA quick_check): " + "; ".join(problems[:5]))

    def _run_batch(self, batch: list[tuple[Callable[[sqlite3.Connection], Any], Future[Any]]]) -> None:
        try:
            if self.fault is not None:
                self.fault.check()
            conn = self._connection()
        except BaseException as exc:
            for _, fut in batch:
                _settle(fut, exc, failed=True)
            return
        if len(batch) == 1:
            fn, fut = batch[0]
            try:
                result = fn(conn)
            except BaseException as exc:
                _settle(fut, exc, failed=True)
            else:
                _settle(fut, result)
            return
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, _ in batch:
                try:
                    results.append((True, fn(conn)))  # fn's own transaction() is a savepoint here
                except BaseException as exc:
                    results.append((False, exc))
            conn.execute("COMMIT")
            self.commits += 1
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, fut in batch:
                _settle(fut, exc, failed=True)
            return
        for (ok, value), (_, fut) in zip(results, batch):
            _settle(fut, value, failed=not ok)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60,
                                   factory=SqliteTx)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.executescript(BASE_SCHEMA + self._schema)
            self._conn = conn
        return self._conn

    def backlog(self, conn: sqlite3.Connection, older_than: float | None) -> list[tuple[int, OutMessage]]:
        """The relay's next rows: those left unpublished (older_than: written before that time)."""
        return outbox_load(conn, older_than=older_than)

    async def close(self) -> None:
        def _close(conn: sqlite3.Connection) -> None:
            conn.close()
            self._conn = None
        if self._conn is not None:
            await self.run(_close)
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)


class DamagedStore(SystemExit):
    """The database file fails its integrity check: the worker must not start on it."""


def quick_check(conn: sqlite3.Connection) -> list[str]:
    """PRAGMA quick_check: [] when the file is sound, else what is wrong."""
    rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    return [] if rows == ["ok"] else rows


def _settle(fut: Future[Any], value: Any, failed: bool = False) -> None:
    """Hand a result over; a future cancelled meanwhile just drops it (its caller is gone)."""
    try:
        fut.set_exception(value) if failed else fut.set_result(value)
    except InvalidStateError:
        pass


_savepoints = itertools.count()


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT; inside a group commit (or any open transaction), a savepoint."""
    if conn.in_transaction:
        name = f"tx{next(_savepoints)}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        conn.execute(f"RELEASE {name}")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


@contextmanager
def rolled_back(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Work whose writes must not stay (a preview): always undone, also inside a group commit."""
    if conn.in_transaction:
        name = f"ro{next(_savepoints)}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        finally:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")


def inbox_get(conn: Tx, msgid: str) -> InboxEntry | None:
    row = conn.execute("SELECT msgid, kind, content_hash, reply, reply_to FROM inbox WHERE msgid=?",
                       (msgid,)).fetchone()
    return InboxEntry(*row) if row else None


def inbox_put(conn: Tx, msgid: str, kind: str, content_hash: str, reply: str | None,
              reply_to: str | None) -> None:
    conn.execute("INSERT INTO inbox (msgid, kind, content_hash, reply, reply_to, created_at) VALUES (?,?,?,?,?,?)",
                 (msgid, kind, content_hash, reply, reply_to, time.time()))


def inbox_set_reply(conn: Tx, msgid: str, reply: str) -> None:
    conn.execute("UPDATE inbox SET reply=? WHERE msgid=?", (reply, msgid))


# The messages handlers just wrote to their outbox, by (connection, row id): the flush after the commit takes
# them from here instead of reading the rows back (one store round trip less per handled message). A row whose
# transaction rolled back may leave a stale entry; its id can only be reused by a later insert, which
# overwrites the entry, and a committed id is never reused (AUTOINCREMENT), so an entry for a committed id is
# always that row. Missing entries (a restart, an overflow) are read from the table.
_written: dict[tuple[int, int], OutMessage] = {}
WRITTEN_MAX = 50_000


def outbox_add(conn: Tx, msg: OutMessage) -> int:
    cur = conn.execute(
        "INSERT INTO outbox (exchange, routing_key, body, message_id, correlation_id, reply_to, headers, created_at)"
        " VALUES (?,?,?,?,?,?,?,?) RETURNING id",
        (msg.exchange, msg.routing_key, msg.body, msg.message_id, msg.correlation_id, msg.reply_to,
         json.dumps(msg.headers) if msg.headers else None, time.time()))
    row_id = int(cur.fetchone()[0])
    if len(_written) >= WRITTEN_MAX:
        _written.clear()  # stale entries of rolled-back rows must not pile up; the table is the truth
    _written[(id(conn), row_id)] = msg
    return row_id


def outbox_written(conn: sqlite3.Connection | None, ids: list[int]) -> tuple[list[tuple[int, OutMessage]], list[int]]:
    """The messages of committed outbox rows this process wrote (taken out of the cache), and the ids it does
    not hold (to be read from the table)."""
    found: list[tuple[int, OutMessage]] = []
    missing: list[int] = []
    key = id(conn)
    for row_id in ids:
        msg = _written.pop((key, row_id), None) if conn is not None else None
        if msg is None:
            missing.append(row_id)
        else:
            found.append((row_id, msg))
    return found, missing


def outbox_forget(conn: sqlite3.Connection | None, ids: list[int]) -> None:
    key = id(conn)
    for row_id in ids:
        _written.pop((key, row_id), None)


CHUNK = 500  # rows per statement: far below SQLite's limit on bound variables


def outbox_load(conn: Tx, ids: list[int] | None = None,
                older_than: float | None = None, limit: int = CHUNK) -> list[tuple[int, OutMessage]]:
    if ids is not None:
        rows = []
        for i in range(0, len(ids), CHUNK):
            part = ids[i:i + CHUNK]
            rows += conn.execute(f"SELECT * FROM outbox WHERE id IN ({','.join('?' * len(part))}) ORDER BY id",
                                 part).fetchall()
    else:
        rows = conn.execute("SELECT * FROM outbox WHERE created_at < ? ORDER BY id LIMIT ?",
                            (older_than if older_than is not None else time.time() + 1, limit)).fetchall()
    return [(r["id"], OutMessage(r["exchange"], r["routing_key"], r["body"], r["message_id"], r["correlation_id"],
                                 r["reply_to"], json.loads(r["headers"]) if r["headers"] else None)) for r in rows]


def outbox_delete(conn: Tx, ids: list[int]) -> None:
    for i in range(0, len(ids), CHUNK):
        part = ids[i:i + CHUNK]
        conn.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(part))})", part)
