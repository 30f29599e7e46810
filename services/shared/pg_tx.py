"""The PostgreSQL side of the Tx contract (services/shared/sql.py): `PgTx` (dialect "postgres"), rows read by
name and by index like sqlite3.Row, `?` placeholders turned into psycopg's, and `transaction()` /
`rolled_back()` with savepoints. Used by PgStore (services/shared/pg_store.py), which owns the connection."""
from __future__ import annotations

import itertools
import re
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.numeric import NumericLoader

# 40001, 40P01; and 23505, two transactions inserting the same new key at once (two replicas taking the same
# duplicate delivery, say): run again, the loser finds the winner's row (its inbox entry, …) and goes that way.
# 55P03: a group transaction waited too long for a row lock (GROUP_LOCK_TIMEOUT_MS, pg_store): run again.
RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, pg_errors.UniqueViolation,
             pg_errors.LockNotAvailable)


# ---- rows ---------------------------------------------------------------------------------------------
class PgRow:
    """A result row read by column name or by index, like sqlite3.Row (also `keys()` and `dict(row)`)."""

    __slots__ = ("_values", "_index")

    def __init__(self, values: Sequence[Any], index: dict[str, int]):
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PgRow):
            return tuple(self._values) == tuple(other._values) and self._index == other._index
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._values))

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._index, self._values))!r})"


def row_factory(cursor: Any) -> Callable[[Sequence[Any]], PgRow]:
    index: dict[str, int] = {}
    for i, col in enumerate(cursor.description or ()):
        index.setdefault(col.name, i)
    return lambda values: PgRow(values, index)


class IntegralNumericLoader(NumericLoader):
    """SUM over BIGINT is NUMERIC in PostgreSQL; money is integer fen here, so a NUMERIC without a fractional
    part comes back as int (as SQLite gives it), anything else as Decimal."""

    def load(self, data: Any) -> Any:
        raw = bytes(data)
        if b"." not in raw and b"e" not in raw.lower() and raw not in (b"NaN", b"Infinity", b"-Infinity"):
            return int(raw)
        return super().load(data)


# ---- portable SQL → psycopg ----------------------------------------------------------------------------
_translated: dict[str, str] = {}


def translate(sql: str) -> str:
    """`?` placeholders → `%s` outside string literals and quoted names; a literal `%` → `%%` (psycopg reads
    `%` everywhere in a query that has parameters)."""
    done = _translated.get(sql)
    if done is not None:
        return done
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if ch == "%":
            out.append("%%")
        elif quote is not None:
            out.append(ch)
            if ch == quote:
                quote = None  # '' inside a literal closes and reopens it: the same text comes out
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        else:
            out.append(ch)
    done = "".join(out)
    if len(_translated) < 4096:
        _translated[sql] = done
    return done


class _Deferred:
    """The cursor of a statement not sent yet (a savepoint, BEGIN): no rows."""

    rowcount = -1
    description = None

    def fetchone(self) -> None:
        return None

    def fetchall(self) -> list[Any]:
        return []

    def __iter__(self) -> Iterator[Any]:
        return iter(())


_DEFERRED = _Deferred()
_CONTROL = re.compile(r"(SAVEPOINT|RELEASE(?: SAVEPOINT)?|ROLLBACK TO(?: SAVEPOINT)?) (\w+)")


class PgTx:
    """An open PostgreSQL connection inside a transaction of its store (sql.Tx, dialect "postgres").

    Round trips are the cost on PostgreSQL (each one a wait for another process), and a handler opens two or
    three nested savepoints around a few statements. So BEGIN and savepoint statements are not sent on their
    own: they wait, and go out in one pipeline with the next real statement (or with the COMMIT); a savepoint
    released or rolled back with nothing sent inside it is never sent at all."""

    dialect = "postgres"

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn
        self.retry_error: BaseException | None = None  # a 40001/40P01/23505 seen in this transaction
        self.round_trips = 0
        self.reset()

    def reset(self) -> None:
        self._pending: list[str] = []  # BEGIN and savepoint statements not sent yet, in order
        self._unsent: set[str] = set()  # savepoints that were never sent: their RELEASE / ROLLBACK TO neither
        self._begun = False  # BEGIN given (perhaps not sent yet)

    @property
    def in_transaction(self) -> bool:
        return self._begun or self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def defer(self, stmt: str) -> None:
        """A statement sent together with the next one (e.g. a SET LOCAL right after BEGIN)."""
        self._pending.append(stmt)

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        if not params:
            control = _CONTROL.fullmatch(sql)
            if control is not None:
                self._control(control[1].split()[0], control[2], sql)
                return _DEFERRED
            if sql.startswith("BEGIN") and not self.in_transaction:
                self._pending.append("BEGIN" if sql == "BEGIN IMMEDIATE" else sql)  # IMMEDIATE: SQLite's
                self._begun = True
                return _DEFERRED
            if sql in ("COMMIT", "ROLLBACK"):
                return self._end(sql)
        try:
            if self._pending:
                return self._send_with_pending(sql, params)
            self.round_trips += 1
            if not params:
                return self.conn.execute(sql)
            return self.conn.execute(translate(sql), tuple(params))
        except RETRYABLE as exc:
            self.retry_error = exc
            raise

    def _control(self, verb: str, name: str, sql: str) -> None:
        if name in self._unsent:
            return
        if verb == "SAVEPOINT":
            self._pending.append(f"SAVEPOINT {name}")
        elif self._pending and self._pending[-1] == f"SAVEPOINT {name}":
            self._pending.pop()  # nothing was sent inside it: neither it nor its end goes out
            if verb == "ROLLBACK":
                self._unsent.add(name)  # its RELEASE follows
        else:
            self._pending.append(f"{'RELEASE' if verb == 'RELEASE' else 'ROLLBACK TO'} SAVEPOINT {name}")

    def _send_with_pending(self, sql: str, params: Sequence[Any] | None) -> Any:
        pending, self._pending = self._pending, []
        self.round_trips += 1
        if not params and ";" in sql.strip().rstrip(";"):  # a script (DDL): not in a pipeline
            self.conn.execute("; ".join(pending))
            return self.conn.execute(sql)
        with self.conn.pipeline():
            for stmt in pending:
                self.conn.execute(stmt)
            cur = self.conn.execute(translate(sql), tuple(params)) if params else self.conn.execute(sql)
        return cur

    def _end(self, sql: str) -> Any:
        pending, sent = self._pending, self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        self.reset()
        if not sent:
            return _DEFERRED  # nothing was sent since BEGIN: nothing to commit or undo
        self.round_trips += 1
        try:
            if sql == "ROLLBACK":
                return self.conn.execute("ROLLBACK")
            return self.conn.execute("; ".join([*pending, "COMMIT"]))
        except RETRYABLE as exc:
            self.retry_error = exc
            raise

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Any:
        if self._pending:
            pending, self._pending = self._pending, []
            self.conn.execute("; ".join(pending))
        cur = self.conn.cursor()
        try:
            cur.executemany(translate(sql), [tuple(p) for p in seq])
        except RETRYABLE as exc:
            self.retry_error = exc
            raise
        return cur

    def close(self) -> None:
        self.conn.close()


_savepoints = itertools.count()


@contextmanager
def transaction(tx: PgTx) -> Iterator[PgTx]:
    """BEGIN … COMMIT; inside a store batch (always, under PgStore) a savepoint that a failure rolls back
    alone, which also clears PostgreSQL's aborted-transaction state for the statements that follow."""
    if tx.in_transaction:
        name = f"tx{next(_savepoints)}"
        tx.execute(f"SAVEPOINT {name}")
        try:
            yield tx
        except BaseException:
            tx.execute(f"ROLLBACK TO SAVEPOINT {name}")
            tx.execute(f"RELEASE SAVEPOINT {name}")
            raise
        tx.execute(f"RELEASE SAVEPOINT {name}")
        return
    tx.execute("BEGIN")
    try:
        yield tx
    except BaseException:
        tx.execute("ROLLBACK")
        raise
    else:
        tx.execute("COMMIT")


@contextmanager
def rolled_back(tx: PgTx) -> Iterator[PgTx]:
    """Work whose writes must not stay (a preview): always undone."""
    if tx.in_transaction:
        name = f"ro{next(_savepoints)}"
        tx.execute(f"SAVEPOINT {name}")
        try:
            yield tx
        finally:
            tx.execute(f"ROLLBACK TO SAVEPOINT {name}")
            tx.execute(f"RELEASE SAVEPOINT {name}")
        return
    tx.execute("BEGIN")
    try:
        yield tx
    finally:
        tx.execute("ROLLBACK")
