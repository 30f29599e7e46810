"""PgStore, the PostgreSQL backend (services/shared/pg_store.py), against the real server at 127.0.0.1:5432, in a
database of its own: transactions and the group commit's savepoints, deadlocks and serialisation failures
re-run to one effect, schema versions applied once by replicas starting together, the relay's SKIP LOCKED
claim, and the CHECK constraints as the last line of defence."""
from __future__ import annotations

import re
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

import psycopg
import pytest

from services.accounts import pg_schema as accounts_pg
from services.accounts.store import SCHEMA as ACCOUNTS_SQLITE
from services.bureau import pg_schema as bureau_pg
from services.bureau.store import SCHEMA as BUREAU_SQLITE
from services.pos import pg_schema as pos_pg
from services.pos.service import SCHEMA as POS_SQLITE
from services.shared.health import is_transient
from services.shared.pg_store import MAX_ATTEMPTS, PgStore, apply_migrations, outbox_claim, transaction, translate
from services.shared.store import BASE_SCHEMA

T_SCHEMA = ["CREATE TABLE t (k TEXT PRIMARY KEY, n BIGINT NOT NULL CHECK (n >= 0));"]


@pytest.fixture
def store(pg_database: str) -> Iterator[PgStore]:
    s = PgStore(pg_database, "unit", T_SCHEMA)
    s.run_sync(lambda tx: apply_migrations(tx, "unit", T_SCHEMA))
    yield s
    s._queue.put(None)
    s._thread.join()
    s._drop()


def close(s: PgStore) -> None:
    s._queue.put(None)
    s._thread.join()
    s._drop()


def put(tx: Any, k: str, n: int) -> None:
    with transaction(tx):
        tx.execute("INSERT INTO t (k, n) VALUES (?, ?)", (k, n))


def value(s: PgStore, k: str) -> int | None:
    row = s.run_sync(lambda tx: tx.execute("SELECT n FROM t WHERE k=?", (k,)).fetchone())
    return None if row is None else row["n"]


def test_placeholders_become_psycopg_ones_outside_literals_only() -> None:
    assert translate("SELECT * FROM t WHERE a=? AND b LIKE 'x?%' AND c=?") == \
        "SELECT * FROM t WHERE a=%s AND b LIKE 'x?%%' AND c=%s"
    assert translate("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', %s"


def test_rows_by_name_and_index_and_sums_as_int(store: PgStore) -> None:
    store.run_sync(lambda tx: put(tx, "a", 7))
    store.run_sync(lambda tx: put(tx, "b%?", 5))
    row = store.run_sync(lambda tx: tx.execute("SELECT k, n FROM t WHERE k=?", ("b%?",)).fetchone())
    assert row[0] == row["k"] == "b%?" and row[1] == row["n"] == 5 and dict(row) == {"k": "b%?", "n": 5}
    total = store.run_sync(lambda tx: tx.execute("SELECT SUM(n) FROM t WHERE k LIKE 'a%' OR k=?", ("b%?",))
                           .fetchone()[0])
    assert total == 12 and type(total) is int  # NUMERIC sum of BIGINT fen, read back as an int like SQLite's


def test_a_failed_transaction_leaves_nothing(store: PgStore) -> None:
    def fails(tx: Any) -> None:
        put(tx, "x", 1)
        raise ValueError("the handler refuses")
    with pytest.raises(ValueError):
        store.run_sync(fails)
    assert value(store, "x") is None
    store.run_sync(lambda tx: put(tx, "y", 2))
    assert value(store, "y") == 2


def test_group_commit_rolls_back_only_the_failing_handler(store: PgStore) -> None:
    gate, started = threading.Event(), threading.Event()
    blocker: Future[Any] = Future()
    store._queue.put((lambda tx: (started.set(), gate.wait(10)), blocker))  # holds the store thread
    assert started.wait(10)  # … alone in its batch, while the group queues up
    before = store.commits

    def bad(tx: Any) -> None:
        put(tx, "g2", 2)
        tx.execute("UPDATE t SET n = n - 100 WHERE k=?", ("g2",))  # CHECK (n >= 0) refuses: aborts its savepoint
    futs: list[Future[Any]] = []
    for fn in (lambda tx: put(tx, "g1", 1), bad, lambda tx: put(tx, "g3", 3)):
        f: Future[Any] = Future()
        store._queue.put((fn, f))
        futs.append(f)
    gate.set()
    blocker.result(10)
    assert futs[0].result(10) is None and futs[2].result(10) is None
    with pytest.raises(psycopg.errors.CheckViolation):
        futs[1].result(10)
    assert store.commits == before + 2  # the blocker's transaction, then the group of three in one COMMIT
    assert (value(store, "g1"), value(store, "g2"), value(store, "g3")) == (1, None, 3)


def test_a_deadlock_is_rerun_to_one_effect(pg_database: str, store: PgStore) -> None:
    store.run_sync(lambda tx: (put(tx, "x", 0), put(tx, "y", 0)))
    other = PgStore(pg_database, "unit", T_SCHEMA)
    both_hold_one = threading.Barrier(2, timeout=10)
    tries = {"a": 0, "b": 0}

    def crossing(first: str, second: str, who: str):  # type: ignore[no-untyped-def]
        def fn(tx: Any) -> None:
            tries[who] += 1
            tx.execute("UPDATE t SET n = n + 1 WHERE k=?", (first,))
            if tries[who] == 1:
                both_hold_one.wait()  # the first attempt of each holds one row and wants the other's
            tx.execute("UPDATE t SET n = n + 1 WHERE k=?", (second,))
        return fn
    try:
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(store.run_sync, crossing("x", "y", "a"))
            b = pool.submit(other.run_sync, crossing("y", "x", "b"))
            a.result(60), b.result(60)
        assert store.retries + other.retries == 1  # PostgreSQL chose one victim (40P01); it ran again
        assert tries["a"] + tries["b"] == 3
        assert (value(store, "x"), value(store, "y")) == (2, 2)  # each transaction counted once
    finally:
        close(other)


def test_a_serialisation_failure_is_rerun_to_one_effect(pg_database: str) -> None:
    s = PgStore(pg_database, "unit", T_SCHEMA, isolation="repeatable read")
    try:
        s.run_sync(lambda tx: apply_migrations(tx, "unit", T_SCHEMA))
        s.run_sync(lambda tx: put(tx, "c", 10))
        attempts = []

        def add_five(tx: Any) -> None:
            n = tx.execute("SELECT n FROM t WHERE k='c'").fetchone()["n"]  # the snapshot is taken here
            if not attempts:  # meanwhile another client changes the row and commits
                with psycopg.connect(pg_database, autocommit=True) as c:
                    c.execute("UPDATE unit.t SET n = n + 100 WHERE k='c'")
            attempts.append(n)
            tx.execute("UPDATE t SET n = ? WHERE k='c'", (n + 5,))  # 40001: concurrent update
        s.run_sync(add_five)
        assert attempts == [10, 110] and s.retries == 1
        assert value(s, "c") == 115  # not 15: the other client's +100 is not lost, and +5 counted once
    finally:
        close(s)


def test_retries_used_up_are_transient_and_leave_nothing(store: PgStore) -> None:
    def always(tx: Any) -> None:
        put(tx, "never", 1)
        tx.execute("DO $$ BEGIN RAISE EXCEPTION 'provoked' USING ERRCODE = '40001'; END $$")
    with pytest.raises(psycopg.errors.SerializationFailure) as info:
        store.run_sync(always)
    assert store.retries == MAX_ATTEMPTS - 1
    assert is_transient(info.value)  # the database's fault: never poison, never a dead letter
    assert value(store, "never") is None


def test_a_lost_connection_is_transient_and_the_next_call_reconnects(pg_database: str, store: PgStore) -> None:
    pid = store.run_sync(lambda tx: tx.execute("SELECT pg_backend_pid()").fetchone()[0])
    with psycopg.connect(pg_database, autocommit=True) as c:
        c.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError) as info:
        store.run_sync(lambda tx: put(tx, "lost", 1))
    assert is_transient(info.value)
    store.run_sync(lambda tx: put(tx, "after", 1))
    assert value(store, "lost") is None and value(store, "after") == 1


def test_two_replicas_starting_together_apply_each_version_once(pg_database: str) -> None:
    stores = [PgStore(pg_database, "accounts", accounts_pg.MIGRATIONS) for _ in range(2)]
    later = [*accounts_pg.MIGRATIONS, "CREATE TABLE extra (id BIGINT PRIMARY KEY);"]
    try:
        with ThreadPoolExecutor(2) as pool:
            applied = list(pool.map(lambda s: s.run_sync(lambda tx: apply_migrations(tx, "accounts", later)),
                                    stores))
        assert sorted(applied) == [[], [1, 2]]  # one applied both versions, the other found them there
        versions = stores[0].run_sync(lambda tx: [r[0] for r in tx.execute(
            "SELECT version FROM schema_version ORDER BY version")])
        assert versions == [1, 2]
        with pytest.raises(SystemExit, match="newer than this gongji"):
            stores[0].run_sync(lambda tx: apply_migrations(tx, "accounts", accounts_pg.MIGRATIONS))
    finally:
        for s in stores:
            close(s)


def test_relays_share_the_outbox_with_skip_locked(pg_database: str) -> None:
    s = PgStore(pg_database, "pos", pos_pg.MIGRATIONS)
    try:
        s.run_sync(lambda tx: apply_migrations(tx, "pos", pos_pg.MIGRATIONS))
        s.run_sync(lambda tx: tx.executemany(
            "INSERT INTO outbox (exchange, routing_key, body, created_at) VALUES (?,?,?,?)",
            [("x", f"k{i}", b"m", 1.0) for i in range(10)]))
        # Relay 1 (another host) is in the middle of claiming 4 rows: its transaction holds their locks.
        relay1 = psycopg.connect(pg_database)
        relay1.execute("SET search_path TO pos")
        held = [r[0] for r in relay1.execute("SELECT id FROM outbox ORDER BY id LIMIT 4 FOR UPDATE").fetchall()]
        # Relay 2 does not wait for them: it takes the next rows.
        mine = s.run_sync(lambda tx: outbox_claim(tx, older_than=2.0, limit=4))
        assert not set(held) & {i for i, _ in mine} and len(mine) == 4
        relay1.rollback()
        relay1.close()
        rest = s.run_sync(lambda tx: outbox_claim(tx, older_than=2.0, limit=100))
        assert len(rest) == 6 and not {i for i, _ in rest} & {i for i, _ in mine}  # the lease keeps mine
        assert s.run_sync(lambda tx: outbox_claim(tx, older_than=2.0, limit=100)) == []
        # A relay that died leaves its rows to the others once its lease is over.
        later = s.run_sync(lambda tx: outbox_claim(tx, older_than=2.0, limit=100, now=time.time() + 60))
        assert len(later) == 10 and later[0][1].routing_key == "k0" and later[0][1].body == b"m"
    finally:
        close(s)


def test_check_constraints_refuse_a_negative_balance(pg_database: str) -> None:
    s = PgStore(pg_database, "accounts", accounts_pg.MIGRATIONS)
    try:
        s.run_sync(lambda tx: apply_migrations(tx, "accounts", accounts_pg.MIGRATIONS))

        def open_account(tx: Any) -> None:
            tx.execute("INSERT INTO people (psn_no, insuplc_admdvs, insutype) VALUES ('p1', '330100', '310')")
            tx.execute("INSERT INTO accounts (psn_no, insuplc_admdvs, insutype, balance_fen) "
                       "VALUES ('p1', '330100', '310', 1000)")
        s.run_sync(open_account)
        with pytest.raises(psycopg.errors.CheckViolation) as info:
            s.run_sync(lambda tx: tx.execute("UPDATE accounts SET balance_fen = balance_fen - 1001 WHERE psn_no='p1'"))
        assert not is_transient(info.value)  # a bug or a bad message, not the database's fault
        with pytest.raises(psycopg.errors.CheckViolation):
            s.run_sync(lambda tx: tx.execute("UPDATE people SET wallet_fen = -1 WHERE psn_no='p1'"))
        balance = s.run_sync(lambda tx: tx.execute("SELECT balance_fen FROM accounts WHERE psn_no='p1'")
                             .fetchone()[0])
        assert balance == 1000
    finally:
        close(s)


def _sqlite_shape(ddl: str) -> dict[str, tuple[list[str], int]]:
    conn = sqlite3.connect(":memory:")
    conn.executescript(BASE_SCHEMA + ddl)
    out = {}
    tables = conn.execute("SELECT name, sql FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite%'")
    for name, sql in tables.fetchall():
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({name})")]
        out[name] = (cols, len(re.findall(r"\bCHECK\s*\(", sql)))
    return out


@pytest.mark.parametrize("sqlite_ddl,pg,schema", [(BUREAU_SQLITE, bureau_pg, "bureau"),
                                                  (ACCOUNTS_SQLITE, accounts_pg, "accounts"),
                                                  (POS_SQLITE, pos_pg, "pos")], ids=["bureau", "accounts", "pos"])
def test_postgres_schema_has_the_sqlite_tables_columns_and_checks(pg_database: str, sqlite_ddl: str, pg: Any,
                                                                  schema: str) -> None:
    s = PgStore(pg_database, schema, pg.MIGRATIONS)
    try:
        s.run_sync(lambda tx: apply_migrations(tx, schema, pg.MIGRATIONS))
        cols = s.run_sync(lambda tx: tx.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema=? "
            "ORDER BY table_name, ordinal_position", (schema,)).fetchall())
        checks = s.run_sync(lambda tx: dict(tx.execute(
            "SELECT c.relname, COUNT(*) FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname=? AND k.contype='c' "
            "GROUP BY c.relname", (schema,)).fetchall()))
    finally:
        close(s)
    pg_shape: dict[str, list[str]] = {}
    for table, column in cols:
        pg_shape.setdefault(table, []).append(column)
    pg_shape.pop("schema_version")
    assert pg_shape.pop("outbox")[-1] == "claimed_until"  # the relays' lease, PostgreSQL only
    if "visit_details" in pg_shape:
        assert pg_shape["visit_details"].pop() == "rowid"  # SQLite's implicit one, made explicit
    want = _sqlite_shape(sqlite_ddl)
    assert {t: c for t, (c, _) in want.items() if t != "outbox"} == pg_shape
    assert {t: n for t, (_, n) in want.items() if n} == checks


def test_two_transactions_inserting_the_same_new_key_end_as_one(pg_database: str, store: PgStore) -> None:
    """Check-then-insert under READ COMMITTED (an inbox entry for a duplicate delivery taken by two replicas):
    the loser's unique violation re-runs it, and the re-run sees the winner's row."""
    other = PgStore(pg_database, "unit", T_SCHEMA)
    both_looked = threading.Barrier(2, timeout=10)
    outcome: dict[str, list[str]] = {"a": [], "b": []}

    def once(who: str):  # type: ignore[no-untyped-def]
        def fn(tx: Any) -> str:
            seen = tx.execute("SELECT n FROM t WHERE k='inbox'").fetchone()
            if not outcome[who]:
                both_looked.wait()  # both find no entry on their first try
            outcome[who].append("dup" if seen else "new")
            if seen:
                return "duplicate"
            tx.execute("INSERT INTO t (k, n) VALUES ('inbox', 1)")
            return "effect"
        return fn
    try:
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(store.run_sync, once("a"))
            b = pool.submit(other.run_sync, once("b"))
            results = sorted([a.result(60), b.result(60)])
        assert results == ["duplicate", "effect"]  # one effect; the other answered as a duplicate
        assert sorted(map(tuple, outcome.values())) == [("new",), ("new", "dup")]
        assert value(store, "inbox") == 1
    finally:
        close(other)


def test_savepoints_ride_along_with_the_next_statement(store: PgStore) -> None:
    """BEGIN and savepoints wait for the next real statement (one pipeline); an empty savepoint never goes out."""
    def handler(tx: Any) -> list[int]:
        start = tx.round_trips
        with transaction(tx):  # the inbox's savepoint
            with transaction(tx):  # the effect's
                pass  # nothing inside: neither savepoint is sent
            with transaction(tx):
                tx.execute("INSERT INTO t (k, n) VALUES ('rt', 1)")  # BEGIN + 2 savepoints + this: one trip
            try:
                with transaction(tx):
                    tx.execute("UPDATE t SET n = -1 WHERE k='rt'")  # refused by the CHECK: rolled back alone
            except psycopg.errors.CheckViolation:
                pass
            after_insert = tx.round_trips - start
            n = tx.execute("SELECT n FROM t WHERE k='rt'").fetchone()[0]
        return [after_insert, tx.round_trips - start, n]
    # the INSERT (with BEGIN and its savepoints), the UPDATE (with its savepoint), the SELECT (with the
    # ROLLBACK TO and RELEASE before it): three round trips, and the COMMIT (with the last RELEASE) a fourth
    assert store.run_sync(handler) == [2, 3, 1]
    assert value(store, "rt") == 1
