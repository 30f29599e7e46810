"""The data itself: a damaged database file stops the worker at start, saying why; the bureau's settlements
and the accounts service's payments are reconciled item by item (3202 对明细账), so a payment that vanished
from one side is named by its setl_id."""
from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from services.accounts.store import SCHEMA as ACCOUNTS_SCHEMA
from services.shared.store import Store
from tests.harness import (HOSPITAL3, PHARMACY, REPO, Stack, direct, item_differences, line, person, settle_input,
                           uid)
from simulator.stack import WorkerStack, cleanup_namespace

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _damaged_accounts_db(directory: Path) -> Path:
    """An accounts.db with a few hundred people, then one page (the fourth) overwritten with junk."""
    path = directory / "accounts.db"
    store = Store(path, ACCOUNTS_SCHEMA)

    def fill(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO people (psn_no, insuplc_admdvs, insutype) VALUES (?, '330100', '310')",
                         [(f"P{i:08d}-{'x' * 40}",) for i in range(800)])
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.run_sync(fill)
    asyncio.run(store.close())
    page = 4096
    assert path.stat().st_size > 6 * page
    with open(path, "r+b") as f:
        f.seek(3 * page)
        f.write(b"\xa5" * page)
    return path


async def test_damaged_database_refuses_to_start(amqp_url: str, run_id: str, tmp_path: Path) -> None:
    path = await asyncio.to_thread(_damaged_accounts_db, tmp_path)
    ns = f"dmg{run_id}"
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "simulator.cli", "worker", "accounts", "--namespace", ns,
                         "--data-dir", str(tmp_path), "--amqp-url", amqp_url],
        cwd=REPO, capture_output=True, timeout=120)
    try:
        assert proc.returncode != 0
        assert b"ready" not in proc.stdout
        err = proc.stderr.decode(errors="replace")
        assert str(path) in err and ("damaged" in err or "cannot be used" in err), err[-2000:]
    finally:
        await cleanup_namespace(amqp_url, ns, WorkerStack(amqp_url, ns).queues_used())


async def test_sound_database_passes_the_check(amqp_url: str, run_id: str, tmp_path: Path) -> None:
    """The same file, not damaged, is served (so the refusal above is about the damage)."""
    store = Store(tmp_path / "accounts.db", ACCOUNTS_SCHEMA)
    await store.open()  # quick_check passes: no exception
    await store.close()


async def test_a_payment_missing_on_one_side_is_named_by_setl_id(amqp_url: str, run_id: str,
                                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    data = Path(tmp_path_factory.mktemp("recon"))
    s = Stack(amqp_url, f"rc{run_id}", data)
    await s.start()
    try:
        c = s.client
        assert c is not None
        p = await person(c, uid("p"), balance="500.00")
        setl_ids = []
        for i in range(4):
            _, rep = await direct(c, "2102", settle_input(p, "41", [line("XA01", f"{20 + i}.00")]),
                                  when=f"2026-03-0{i + 1} 10:00:00", facility=PHARMACY)
            assert rep.infcode == 0 and rep.output is not None, (rep.err_code, rep.err_msg)
            setl_ids.append(rep.output["setl_id"])
        _, rep = await direct(c, "2207", settle_input(p, "11", [line("EXAM", "30.00")]),
                              when="2026-03-05 10:00:00", facility=HOSPITAL3)
        assert rep.infcode == 0 and rep.output is not None
        _, rev = await direct(c, "2208", {"psn_no": p, "setl_id": rep.output["setl_id"]},
                              when="2026-03-05 11:00:00", facility=HOSPITAL3)
        assert rev.infcode == 0  # reversed at the bureau, refunded at the accounts service: they agree
        assert await item_differences(c) == []  # both sides agree on all five

        # One payment vanishes from the accounts service, one settlement from the bureau.
        gone_from_accounts, gone_from_bureau = setl_ids[1], setl_ids[2]
        for db, sql, key in ((data / "accounts.db", "DELETE FROM payments WHERE setl_id=?", gone_from_accounts),
                             (data / "bureau-all.db", "DELETE FROM settlements WHERE setl_id=?", gone_from_bureau)):
            conn = sqlite3.connect(db, timeout=30)
            try:
                assert conn.execute(sql, (key,)).rowcount == 1
                conn.commit()
            finally:
                conn.close()
        diffs = await item_differences(c)
        assert [d["setl_id"] for d in diffs] == sorted([gone_from_accounts, gone_from_bureau])
        why = {d["setl_id"]: d["problem"] for d in diffs}
        assert why[gone_from_accounts] == "the bureau says settled, the accounts service has no payment"
        assert why[gone_from_bureau].startswith("the accounts service has a payment (paid)")
    finally:
        await s.stop()
        await s.cleanup()
