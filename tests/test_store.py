"""The store: outbox batches stay bounded, however large the backlog (a 1M-account bulk load leaves one
balance event per account), and group commit keeps each caller's transaction its own."""
from __future__ import annotations

import time
from pathlib import Path

from services.shared.store import CHUNK, OutMessage, Store, outbox_add, outbox_delete, outbox_load, transaction


def test_outbox_backlog_is_read_and_deleted_in_bounded_chunks(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", "")

    def fill(conn):  # type: ignore[no-untyped-def]
        with transaction(conn):
            return [outbox_add(conn, OutMessage("x", "k", b"{}")) for _ in range(40_000)]

    ids = store.run_sync(fill)
    batch = store.run_sync(lambda c: outbox_load(c, older_than=time.time() + 1))
    assert len(batch) == CHUNK  # one bounded batch, not 40,000 rows
    # 40,000 ids exceed SQLite's limit of bound variables in one statement; the delete must still work.
    store.run_sync(lambda c: outbox_delete(c, ids))
    assert store.run_sync(lambda c: c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]) == 0


def test_a_failing_caller_rolls_back_only_its_own_work(tmp_path: Path) -> None:
    import asyncio

    store = Store(tmp_path / "g.db", "CREATE TABLE IF NOT EXISTS t (v INTEGER);")

    def good(conn):  # type: ignore[no-untyped-def]
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")

    def bad(conn):  # type: ignore[no-untyped-def]
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("boom")

    async def main() -> list[object]:
        await store.open()
        return await asyncio.gather(*(store.run(good if i % 2 else bad) for i in range(20)),
                                    return_exceptions=True)

    results = asyncio.run(main())
    assert sum(isinstance(r, RuntimeError) for r in results) == 10
    rows = store.run_sync(lambda c: c.execute("SELECT v, COUNT(*) FROM t GROUP BY v").fetchall())
    assert [tuple(r) for r in rows] == [(1, 10)]
