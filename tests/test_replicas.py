"""Scale-out: two replicas of every service (competing consumers on the same queues). On SQLite the replicas of
a service share its file, whose BEGIN IMMEDIATE lock keeps two of them from ever moving the same account at
once; on PostgreSQL (tests/backends.py) they share nothing but the database and the broker: each replica has a
data directory of its own, and row locks (SELECT … FOR UPDATE) serialise them per account. A concurrent family
workload, with one replica of each service SIGKILLed half-way, leaves the auditor nothing to find."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import AsyncIterator

import aio_pika
import pytest
import pytest_asyncio

from simulator.stack import die_with_parent
from tests.backends import database_env_for
from tests.harness import HOSPITAL3, PHARMACY, Stack, audit, balance, bind, line, person, uid, visit

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal
REPO = Path(__file__).resolve().parents[1]


class ReplicatedStack(Stack):
    """The usual stack plus a second process of each service, started by the very same command."""

    extra: list[subprocess.Popen[bytes]]
    backend: str
    replica_dir: Path

    async def start_replica(self, service: str, data_dir: Path) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{service}-2.log", "ab")
        cmd = self.command(service)
        cmd[cmd.index("--data-dir") + 1] = str(data_dir)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=self.env, cwd=REPO,
                                preexec_fn=die_with_parent)
        assert proc.stdout is not None
        line_ = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert b"ready" in line_, f"{service} replica did not start"
        return proc


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def replicated(amqp_url: str, run_id: str, tmp_path_factory: pytest.TempPathFactory, backend: str,
                     request: pytest.FixtureRequest) -> AsyncIterator[ReplicatedStack]:
    s = ReplicatedStack(amqp_url, f"r{run_id}{backend[:2]}", tmp_path_factory.mktemp("replicas"),
                        env=database_env_for(backend, request))
    s.backend = backend
    # SQLite: the second replica must open the same file; PostgreSQL: a data directory of its own (another host).
    s.replica_dir = s.data_dir if backend == "sqlite" else Path(tmp_path_factory.mktemp("replicas-2"))
    await s.start()
    s.extra = [await s.start_replica(svc, s.replica_dir) for svc in ("bureau", "accounts", "pos")]
    try:
        yield s
    finally:
        for proc in s.extra:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
        await s.stop()
        await s.cleanup()


async def consumers(stack: Stack, queue: str) -> int:
    conn = await aio_pika.connect(stack.amqp_url)
    try:
        q = await (await conn.channel()).declare_queue(queue, passive=True)
        return int(q.declaration_result.consumer_count)
    finally:
        await conn.close()


async def test_two_replicas_of_each_service(replicated: ReplicatedStack) -> None:
    s = replicated
    c = s.client
    assert c is not None
    n = s.names
    for queue in (n.bureau_queue(None), n.accounts_pay_queue, n.pos_command_queue, n.reply_queue("pos")):
        assert await consumers(s, queue) == 2, queue
    rng = random.Random(11)
    parents = [await person(c, uid("par"), balance="400.00") for _ in range(6)]
    kids = [await person(c, uid("kid"), insutype="390", balance=None) for _ in range(6)]
    for p, k in zip(parents, kids):
        await bind(c, p, k, day_cap="50.00")
    cmds = []
    for i in range(240):
        f = rng.randrange(6)
        if i % 2:
            cmds.append(visit(kids[f], PHARMACY, "41", f"2026-11-1{i % 3} 09:{i % 60:02d}:00",
                              [line("XA01", f"{rng.randrange(5, 45)}.00")], insutype="390", timeout_ms=120000))
        else:
            cmds.append(visit(parents[f], HOSPITAL3, "11", f"2026-11-1{i % 3} 10:{i % 60:02d}:00",
                              [line("EXAM", f"{rng.randrange(10, 90)}.00")], timeout_ms=120000))
    await asyncio.gather(*(c.submit(cmd) for cmd in cmds))
    await asyncio.sleep(0.5)
    for victim in s.extra:  # one replica of each service dies mid-run; the others carry on
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    outcomes = await asyncio.gather(*(c.outcome(cmd.visit_id, timeout=180) for cmd in cmds))
    assert [o.status for o in outcomes] == ["settled"] * len(cmds)
    taken: dict[str, Decimal] = defaultdict(lambda: D("0.00"))
    per_day: dict[tuple[str, str], Decimal] = defaultdict(lambda: D("0.00"))
    for cmd, o in zip(cmds, outcomes):
        st = o.setlinfo
        assert st is not None and st.fund_pay_sumamt + st.acct_pay + st.psn_cash_pay == st.medfee_sumamt
        taken[o.psn_no] += st.acct_pay - st.acct_mulaid_pay
        for part in st.mulaid_detail:
            taken[part.authorizer_psn_no] += part.amount
            per_day[(part.auth_id, cmd.biz_time.strftime("%Y-%m-%d"))] += part.amount
    assert max(per_day.values()) <= D("50.00")
    for p in parents:
        assert await balance(c, p) == D("400.00") - taken[p]
    accounts, bureau = await audit(c)
    assert accounts["balance_mismatches"] == [] and accounts["ledger_sum_fen"] == 0
    assert accounts["unbalanced_txns"] == 0 and accounts["cap_overruns"] == [] and accounts["negative_balances"] == 0
    assert bureau["accumulator_mismatches"] == [] and bureau["states"].get("pending", 0) == 0
    if s.backend == "sqlite":
        assert os.path.exists(s.data_dir / "accounts.db")  # one file, shared by both accounts replicas
    else:  # nothing shared on disk: no database file anywhere, each replica wrote to its own directory
        assert not list(s.data_dir.rglob("*.db")) and not list(s.replica_dir.rglob("*.db"))
        assert {f.name.split("-")[0] for f in (s.replica_dir / "stats").glob("*.json")} == {"bureau", "accounts",
                                                                                           "pos"}


async def test_first_settlements_of_the_year_on_two_replicas_and_audits_during_traffic(
        replicated: ReplicatedStack) -> None:
    """Eight new people, 30 visits each, all at once, on two replicas of each service:
    - a person's first settlement of the year has no accumulator row to lock yet; two bureau replicas settling
      for that person at once must not both start from zero (each would take the whole 600.00 deductible, and
      the later write would undo the earlier one's count): the accumulators equal the sum of the settlements;
    - an audit compares one table's sums with another's (ledger and balances, settlements and accumulators).
      Taken while the replicas settle, it must still find nothing: under PostgreSQL's READ COMMITTED each
      statement has its own snapshot, and a settlement committed by the other replica between two of the
      audit's SELECTs would show as a mismatch that is not there."""
    s = replicated
    c = s.client
    assert c is not None
    s.extra = [p if p.poll() is None else await s.start_replica(svc, s.replica_dir)
               for p, svc in zip(s.extra, ("bureau", "accounts", "pos"))]
    rng = random.Random(12)
    people = [await person(c, uid("au"), balance="900.00") for _ in range(8)]
    cmds = [visit(people[i % 8], PHARMACY if i % 2 else HOSPITAL3, "41" if i % 2 else "11",
                  f"2026-11-2{i % 3} 09:{i % 60:02d}:00", [line("XA01" if i % 2 else "EXAM", f"{rng.randrange(5, 60)}.00")],
                  timeout_ms=120000) for i in range(240)]
    await asyncio.gather(*(c.submit(cmd) for cmd in cmds))
    done = asyncio.ensure_future(asyncio.gather(*(c.outcome(cmd.visit_id, timeout=180) for cmd in cmds)))
    audits = []
    while not done.done():
        audits.append(await audit(c))
        await asyncio.sleep(0.05)
    outcomes = await done
    assert [o.status for o in outcomes] == ["settled"] * len(cmds)
    settled_seen = {sum(b["states"].values()) for _, b in audits}
    assert len(audits) >= 3 and len(settled_seen) >= 3, "the audits did not overlap the traffic: test too weak"
    final = await audit(c)
    bad = [(i, a["balance_mismatches"][:2], b["accumulator_mismatches"][:2], b["states"])
           for i, (a, b) in enumerate(audits + [final]) if a["balance_mismatches"] or b["accumulator_mismatches"]]
    assert bad == [], (len(audits), bad[:3])
