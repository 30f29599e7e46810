"""Local faults that are not the message's: a store that fails for 30 s must not sink valid work.

RabbitMQ 3.10's quorum queues count a redelivery after a nack-requeue and after a channel close, so a worker
that nacked on "disk I/O error" would dead-letter valid payments after 20 tries. The workers keep such
deliveries unacked and retry in-process until the store works again (services/shared/runtime.py)."""
from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from simulator.stack import read_dead_letters
from tests.harness import (HOSPITAL3, PHARMACY, Stack, audit, balance, bind, cumulative, item_differences, line,
                           person, uid, visit)

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal
FAIL_S = 30
# The 30 s once (SQLite); on PostgreSQL the same held-not-nacked path for 12 s, which is still longer than a
# nack loop needs to use up the delivery limit (20 deliveries × 0.5 s): CI time, not weaker evidence.
FAIL_S_BY_BACKEND = {"sqlite": FAIL_S, "postgres": 12}


def pos_visits(data: Path, database_env: dict[str, str]) -> tuple[int, int]:
    """(visits still open, all visits) in the POS's store, SQLite file or PostgreSQL schema."""
    query = "SELECT COUNT(*) FILTER (WHERE state='open'), COUNT(*) FROM visits"
    if database_env.get("GONGJI_DATABASE_URL"):
        import psycopg
        with psycopg.connect(database_env["GONGJI_DATABASE_URL"]) as pg:
            row = pg.execute(query.replace("visits", "pos.visits")).fetchone()
    else:
        with sqlite3.connect(data / "pos.db") as lite:
            row = lite.execute(query).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_store_failing_for_30s_sinks_nothing(amqp_url: str, run_id: str,
                                                   tmp_path_factory: pytest.TempPathFactory, backend: str,
                                                   database_env: dict[str, str]) -> None:
    data = Path(tmp_path_factory.mktemp("transient"))
    fail_s = FAIL_S_BY_BACKEND[backend]
    trigger = data / "store-fail"
    s = Stack(amqp_url, f"tr{run_id}{backend[:2]}", data, env=database_env)
    # Once `trigger` exists, every transaction of the accounts service's store raises
    # sqlite3.OperationalError("disk I/O error") for fail_s seconds: the payments of every visit wait there,
    # with the bureau's settlements pending, the accumulators reserved and the POS's admission slots taken.
    s.env["GONGJI_CHAOS"] = json.dumps({"store_fail_s": fail_s, "store_fail_file": str(trigger),
                                        "store_fail_stores": ["accounts"]})
    await s.start()
    try:
        c = s.client
        assert c is not None
        opening = {"mother": D("300.00"), "kid": D("5.00")}
        families = []
        for _ in range(4):
            mother = await person(c, uid("mo"), balance=f"{opening['mother']}")
            kid = await person(c, uid("kid"), balance=f"{opening['kid']}")
            await bind(c, mother, kid, day_cap="60.00")
            families.append((mother, kid))
        trigger.touch()  # the stores fail from the next transaction on, for fail_s seconds
        cmds = []
        for i in range(24):
            mother, kid = families[i % 4]
            who = kid if i % 2 else mother
            # A third (settled without pre-settlement) time out after 3 s while the store fails: the POS sends
            # 2601 冲正 of a settlement still pending, which must end cleanly too.
            pharmacy = i % 3 == 0
            cmds.append(visit(who, PHARMACY if pharmacy else HOSPITAL3, "41" if pharmacy else "11",
                              f"2026-08-0{1 + i % 3} 10:{i:02d}:00", [line("XA01" if pharmacy else "EXAM",
                                                                          f"{10 + i % 5}.00")],
                              timeout_ms=3000 if i % 3 == 1 else 180000, presettle=i % 3 != 1))
        await asyncio.gather(*(c.submit(cmd) for cmd in cmds))
        outcomes = await asyncio.gather(*(c.outcome(cmd.visit_id, timeout=fail_s + 120) for cmd in cmds))

        # The fault really happened, and it was held, not nacked: nothing was dead-lettered by anyone.
        await asyncio.sleep(1.5)  # stats files are rewritten every second
        stats = [json.loads(p.read_text()) for p in (data / "stats").glob("*.json")]
        by_service = {x["service"]: x for x in stats}
        assert by_service["accounts"]["transient_failures"] > 0 and by_service["accounts"]["transient_retries"] > 0
        assert by_service["accounts"]["unhealthy_spells"] >= 1 and all(x["healthy"] for x in stats)
        assert sum(x["dead_lettered"] for x in stats) == 0
        assert await read_dead_letters(amqp_url, s.ns) == []

        # Every visit has exactly one outcome (repeated events, if any, say the same), and it is final.
        seen: dict[str, set[str]] = defaultdict(set)
        for o in c.outcome_events:
            seen[o.visit_id].add(o.status)
        assert {cmd.visit_id: len(seen[cmd.visit_id]) for cmd in cmds} == {cmd.visit_id: 1 for cmd in cmds}
        statuses = [o.status for o in outcomes]
        assert set(statuses) <= {"settled", "compensated"}, [(o.status, o.err_code, o.err_msg) for o in outcomes]
        assert statuses.count("settled") > 0
        # The 3 s visits: their payment waited fail_s (≥ 12 s) in the failing store, so the POS gave up and 冲正'd them.
        assert [o.status for i, o in enumerate(outcomes) if i % 3 == 1] == ["compensated"] * 8

        # No money moved without a settlement: every balance is its opening minus what the settled visits took.
        taken: dict[str, Decimal] = defaultdict(lambda: D("0.00"))
        settled_count: dict[str, int] = defaultdict(int)
        for o in outcomes:
            if o.status != "settled":
                continue
            info = o.setlinfo
            assert info is not None
            assert info.fund_pay_sumamt + info.acct_pay + info.psn_cash_pay == info.medfee_sumamt
            taken[o.psn_no] += info.acct_pay - info.acct_mulaid_pay
            for part in info.mulaid_detail:
                taken[part.authorizer_psn_no] += part.amount
            settled_count[o.psn_no] += 1
        for mother, kid in families:
            assert await balance(c, mother) == opening["mother"] - taken[mother]
            assert await balance(c, kid) == opening["kid"] - taken[kid]

        # Accumulators: each person's yearly count is the number of its settled visits; the audit is clean.
        accounts, bureau = await audit(c)
        assert accounts["balance_mismatches"] == [] and accounts["ledger_sum_fen"] == 0
        assert accounts["double_debits"] == 0 and accounts["cap_overruns"] == []
        assert bureau["accumulator_mismatches"] == []
        assert set(bureau["states"]) <= {"settled", "compensated", "failed"}, bureau["states"]
        for mother, kid in families:
            for who in (mother, kid):
                assert (await cumulative(c, who, "2026-08-05 10:00:00"))["settlements"] == settled_count[who]

        # Admission slots: no visit is left open in the POS's store.
        assert pos_visits(data, database_env) == (0, len(cmds))
    finally:
        await s.stop()
        await s.cleanup()


async def test_a_lost_payment_request_is_asked_again(amqp_url: str, run_id: str,
                                                     tmp_path_factory: pytest.TempPathFactory, backend: str,
                                                     database_env: dict[str, str]) -> None:
    """Reconciliation sweep: a payment request that never reaches the accounts service (purged from its queue)
    leaves the settlement pending; the bureau asks again (GONGJI_PENDING_SWEEP_S) and the visit settles, once."""
    import signal

    import aio_pika
    data = Path(tmp_path_factory.mktemp("sweep"))
    s = Stack(amqp_url, f"sw{run_id}{backend[:2]}", data, env=database_env)
    s.env["GONGJI_PENDING_SWEEP_S"] = "2"
    await s.start()
    try:
        c = s.client
        assert c is not None
        p = await person(c, uid("p"), balance="100.00")
        s.kill("accounts", signal.SIGTERM)
        cmd = visit(p, PHARMACY, "41", "2026-07-01 10:00:00", [line("XA01", "35.00")], presettle=False,
                    timeout_ms=180000)
        await c.submit(cmd)
        conn = await aio_pika.connect(amqp_url)
        try:
            ch = await conn.channel()
            for _ in range(100):
                q = await ch.declare_queue(s.names.accounts_pay_queue, passive=True)
                if q.declaration_result.message_count >= 1:
                    break
                await asyncio.sleep(0.1)
            assert q.declaration_result.message_count >= 1
            await q.purge()  # the request is lost
        finally:
            await conn.close()
        await s.start_worker("accounts")
        out = await c.outcome(cmd.visit_id, timeout=60)
        assert out.status == "settled", (out.err_code, out.err_msg)
        assert await balance(c, p) == D("65.00")  # 100.00 - 35.00, once
        await asyncio.sleep(1.5)
        stats = {x["service"]: x for x in (json.loads(f.read_text()) for f in (data / "stats").glob("*.json"))}
        assert stats["bureau"].get("pending_resent", 0) >= 1
        accounts, bureau = await audit(c)
        assert bureau["states"] == {"settled": 1} and accounts["double_debits"] == 0
        assert await item_differences(c) == []
    finally:
        await s.stop()
        await s.cleanup()


async def test_a_full_data_directory_sinks_nothing(amqp_url: str, run_id: str,
                                                   tmp_path_factory: pytest.TempPathFactory, backend: str) -> None:
    """The real thing: the accounts service's data directory is a small tmpfs, filled to the last byte while
    visits are in flight ("database or disk is full"), then freed. Needs root (mount); skipped otherwise."""
    import os
    import subprocess as sp
    if backend == "postgres":
        pytest.skip("SQLite's file in the data directory; on PostgreSQL the store's failures are the lost "
                    "connection (test_connections_to_postgres_lost_sink_nothing) and the injected fault")

    from tests.harness import WORKERS  # noqa: F401
    data = Path(tmp_path_factory.mktemp("fulldisk"))
    small = data / "small"
    small.mkdir()
    if os.geteuid() != 0 or sp.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)],
                                   capture_output=True).returncode != 0:
        pytest.skip("needs to mount a tmpfs (root)")

    class SmallDiskStack(Stack):
        def command(self, service: str) -> list[str]:
            cmd = super().command(service)
            if service == "accounts":
                cmd[cmd.index("--data-dir") + 1] = str(small)
            return cmd

    s = SmallDiskStack(amqp_url, f"fd{run_id}", data)
    try:
        await s.start()
        c = s.client
        assert c is not None
        people = [await person(c, uid("p"), balance="100.00") for _ in range(20)]
        filler = small / "filler"
        try:
            with open(filler, "wb") as f:  # every last byte
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        cmds = [visit(p, PHARMACY, "41", "2026-07-02 10:00:00", [line("XA01", f"{5 + i % 7}.00")],
                      presettle=False, timeout_ms=180000) for i, p in enumerate(people)]
        await asyncio.gather(*(c.submit(cmd) for cmd in cmds))
        await asyncio.sleep(12)  # > 20 deliveries at the old half-second nack pace
        filler.unlink()  # the operator frees the disk
        outcomes = await asyncio.gather(*(c.outcome(cmd.visit_id, timeout=120) for cmd in cmds))
        assert [o.status for o in outcomes] == ["settled"] * len(cmds)
        assert await read_dead_letters(amqp_url, s.ns, consume=False) == []
        for p, cmd in zip(people, cmds):
            assert await balance(c, p) == D("100.00") - cmd.details[0].det_item_fee_sumamt
        assert await item_differences(c) == []
        stats = [json.loads(f.read_text()) for f in (small / "stats").glob("accounts-*.json")]
        assert stats and stats[0]["transient_failures"] > 0  # the disk really was full for the store
    finally:
        await s.stop()
        await s.cleanup()
        sp.run(["umount", "-l", str(small)], capture_output=True)


async def test_connections_to_postgres_lost_sink_nothing(amqp_url: str, run_id: str,
                                                          tmp_path_factory: pytest.TempPathFactory, backend: str,
                                                          database_env: dict[str, str]) -> None:
    """PostgreSQL only: the server ends every worker's connection (pg_terminate_backend, as a failover or a
    restart would), three times while visits are in flight. A lost connection is the database's fault, not the
    message's: the store reconnects, the handler runs again, nothing is dead-lettered and nothing is paid twice."""
    if backend != "postgres":
        pytest.skip("the store's connection to PostgreSQL; SQLite has none")
    import psycopg
    data = Path(tmp_path_factory.mktemp("pglost"))
    s = Stack(amqp_url, f"pl{run_id}", data, env=database_env)
    await s.start()
    try:
        c = s.client
        assert c is not None
        people = [await person(c, uid("p"), balance="100.00") for _ in range(12)]
        cmds = [visit(p, PHARMACY, "41", f"2026-07-03 10:{i:02d}:00", [line("XA01", f"{5 + i % 7}.00")],
                      presettle=i % 2 == 0, timeout_ms=180000) for i, p in enumerate(people * 3)]
        await asyncio.gather(*(c.submit(cmd) for cmd in cmds))
        ended = 0
        with psycopg.connect(database_env["GONGJI_DATABASE_URL"], autocommit=True) as admin:
            for _ in range(3):
                ended += sum(r[0] for r in admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'gongji-%'").fetchall())
                await asyncio.sleep(0.4)
        assert ended >= 3  # three stores' connections, at least once
        outcomes = await asyncio.gather(*(c.outcome(cmd.visit_id, timeout=120) for cmd in cmds))
        assert [o.status for o in outcomes] == ["settled"] * len(cmds)
        assert await read_dead_letters(amqp_url, s.ns, consume=False) == []
        spent: dict[str, Decimal] = defaultdict(lambda: D("0.00"))
        for cmd in cmds:
            spent[cmd.psn_no] += cmd.details[0].det_item_fee_sumamt
        for p in people:
            assert await balance(c, p) == D("100.00") - spent[p]  # each visit paid once
        accounts, bureau = await audit(c)
        assert accounts["double_debits"] == 0 and accounts["balance_mismatches"] == []
        assert bureau["accumulator_mismatches"] == [] and bureau["states"] == {"settled": len(cmds)}
        await asyncio.sleep(1.5)
        stats = [json.loads(f.read_text()) for f in (data / "stats").glob("*.json")]
        assert sum(x["transient_failures"] for x in stats) > 0 and all(x["healthy"] for x in stats)
    finally:
        await s.stop()
        await s.cleanup()
