"""Admission control at the POS: at most GONGJI_POS_MAX_OPEN visits open at once, across POS replicas.

Without it an overload starts every visit at once, their deadlines run out while the bureau works through the
backlog, and the 冲正 that follow add work exactly when there is none to spare (BENCHMARKS.md, finding 7).
With it the extra commands wait, unacked, in the broker's queue, and every visit still settles.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter
from decimal import Decimal
from typing import Any, AsyncIterator

import pytest
import pytest_asyncio

from simulator.stack import die_with_parent
from tests.backends import database_env_for
from tests.harness import PHARMACY, REPO, Stack, audit, balance, line, person, uid, visit

pytestmark = pytest.mark.asyncio(loop_scope="session")
MAX_OPEN = 3


class AdmissionStack(Stack):
    extra: subprocess.Popen[bytes] | None = None


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def limited(amqp_url: str, run_id: str, tmp_path_factory: pytest.TempPathFactory, backend: str,
                  request: pytest.FixtureRequest) -> AsyncIterator[AdmissionStack]:
    # Both backends: on SQLite the two POS processes share one file, on PostgreSQL one database.
    s = AdmissionStack(amqp_url, f"a{run_id}{backend[:2]}", tmp_path_factory.mktemp("admission"),
                       env=database_env_for(backend, request))
    s.env["GONGJI_POS_MAX_OPEN"] = str(MAX_OPEN)
    # The outbox relay is held off: every request must go out through the flush of the handler that wrote it.
    # The 40 commands arrive as one batch; an item waiting for a slot must not hold back the requests of the
    # items admitted before it (they would go out only via the relay, and the visits would crawl or stall).
    s.env["GONGJI_RELAY_GRACE_S"] = "600"
    await s.start()
    # A second POS on the same store: the bound is counted in the store, so it holds for both together.
    log = open(s.logs / "pos-2.log", "ab")
    s.extra = subprocess.Popen(s.command("pos"), stdout=subprocess.PIPE, stderr=log, env=s.env, cwd=REPO,
                               preexec_fn=die_with_parent)
    assert s.extra.stdout is not None
    assert b"ready" in await asyncio.wait_for(asyncio.to_thread(s.extra.stdout.readline), 60)
    try:
        yield s
    finally:
        if s.extra.poll() is None:
            s.extra.terminate()
            s.extra.wait(timeout=20)
        await s.stop()
        await s.cleanup()


async def sample_open(s: AdmissionStack, peak: list[int]) -> None:
    """The most visits open at once in the POS store (SQLite file or PostgreSQL schema), sampled until cancelled."""
    url = s.env.get("GONGJI_DATABASE_URL")
    if url:
        import psycopg
        conn: Any = psycopg.connect(url, autocommit=True)
        query = "SELECT COUNT(*) FROM pos.visits WHERE state='open'"
    else:
        import sqlite3
        conn = sqlite3.connect(s.data_dir / "pos.db", timeout=5)
        query = "SELECT COUNT(*) FROM visits WHERE state='open'"
    try:
        while True:
            try:
                peak[0] = max(peak[0], int(conn.execute(query).fetchone()[0]))
            except Exception:  # the table not there yet, or SQLite busy for a moment
                pass
            await asyncio.sleep(0.005)
    finally:
        conn.close()


async def test_open_visits_never_exceed_the_bound_and_all_settle(limited: AdmissionStack) -> None:
    c = limited.client
    assert c is not None
    people = [await person(c, uid("adm"), balance="100.00") for _ in range(12)]
    cmds = [visit(people[i % len(people)], PHARMACY, "41", f"2026-12-01 10:{i:02d}:00",
                  [line("XA01", f"{5 + i % 7}.00")]) for i in range(40)]
    peak = [0]
    sampler = asyncio.ensure_future(sample_open(limited, peak))
    try:
        await asyncio.gather(*(c.submit(cmd) for cmd in cmds[:20]))  # one pass: one batch, to one POS
        assert c.commands.batches >= 1  # they did travel batched (the case above)
        for cmd in cmds[20:]:  # one message each: the two POS processes share them
            await c.submit(cmd)
        outcomes = [await c.outcome(cmd.visit_id, timeout=120) for cmd in cmds]
    finally:
        sampler.cancel()
    # Sampled in the store itself, every 5 ms: both POS processes together never had more open at once.
    assert 0 < peak[0] <= MAX_OPEN

    assert Counter(o.status for o in outcomes) == Counter({"settled": len(cmds)})
    spent: Counter[str] = Counter()
    for cmd, o in zip(cmds, outcomes):
        assert o.setlinfo is not None
        spent[cmd.psn_no] += int(o.setlinfo.acct_pay * 100)
    for p in people:  # each visit paid once: balances equal 100.00 minus what the outcomes say
        assert await balance(c, p) == Decimal("100.00") - Decimal(spent[p]) / 100
    accounts_audit, bureau_audit = await audit(c)
    assert accounts_audit["ledger_sum_fen"] == 0 and accounts_audit["balance_mismatches"] == []
    assert bureau_audit["accumulator_mismatches"] == []

    await asyncio.sleep(1.5)  # the workers write their counters every second
    stats = [json.loads(p.read_text()) for p in (limited.data_dir / "stats").glob("pos-*.json")]
    assert len(stats) == 2
    assert max(s["open_high_water"] for s in stats) == MAX_OPEN  # the bound was reached ...
    assert all(s["open_high_water"] <= MAX_OPEN for s in stats)  # ... and never passed, by both together
    assert sum(s["admission_waits"] for s in stats) > 0  # commands did wait for a slot
