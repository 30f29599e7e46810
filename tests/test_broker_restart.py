"""A broker restart in the middle of a run loses nothing: every visit gets exactly one outcome and the books
balance. Needs rabbitmqctl on this machine (the local broker is restarted); runs last (see conftest)."""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
from collections import Counter
from decimal import Decimal

import pytest

from tests.harness import HOSPITAL3, PHARMACY, Stack, audit, balance, bind, line, person, uid, visit

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.broker_restart]
D = Decimal


def _ctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr


async def test_broker_restart_mid_run_loses_nothing(stack: Stack) -> None:
    if shutil.which("rabbitmqctl") is None or os.environ.get("AMQP_URL"):
        pytest.skip("restarting the broker needs rabbitmqctl for the local RabbitMQ")
    c = stack.client
    assert c is not None
    rng = random.Random(7)
    parents = [await person(c, uid("par"), balance="500.00") for _ in range(5)]
    kids = [await person(c, uid("kid"), insutype="390", balance=None) for _ in range(5)]
    for p, k in zip(parents, kids):
        await bind(c, p, k, day_cap="60.00")
    cmds = []
    for i in range(200):
        who = rng.randrange(5)
        if i % 3:
            cmds.append(visit(kids[who], PHARMACY, "41", f"2026-12-0{1 + i % 4} 10:{i % 60:02d}:00",
                              [line("XA01", f"{rng.randrange(5, 40)}.00")], insutype="390", timeout_ms=180000))
        else:
            cmds.append(visit(parents[who], HOSPITAL3, "11", f"2026-12-0{1 + i % 4} 11:{i % 60:02d}:00",
                              [line("EXAM", f"{rng.randrange(20, 200)}.00")], timeout_ms=180000))
    for cmd in cmds:
        await c.submit(cmd)
    await asyncio.sleep(0.5)
    unfinished = sum(cmd.visit_id not in c.outcomes for cmd in cmds)
    await asyncio.to_thread(_ctl, "stop_app")
    try:
        await asyncio.sleep(2)
    finally:
        await asyncio.to_thread(_ctl, "start_app")
        await asyncio.to_thread(_ctl, "await_startup")
    assert unfinished > 0, "everything finished before the restart: nothing was in flight"
    outcomes = [await c.outcome(cmd.visit_id, timeout=240) for cmd in cmds]
    assert Counter(o.status for o in outcomes) == Counter({"settled": len(cmds)})
    taken: Counter[str] = Counter()
    for o in outcomes:
        assert o.setlinfo is not None
        taken[o.psn_no] += int((o.setlinfo.acct_pay - o.setlinfo.acct_mulaid_pay) * 100)
        for part in o.setlinfo.mulaid_detail:
            taken[part.authorizer_psn_no] += int(part.amount * 100)
    for p in parents:
        assert await balance(c, p) == D("500.00") - D(taken[p]) / 100
    accounts, bureau = await audit(c)
    assert accounts["balance_mismatches"] == [] and accounts["ledger_sum_fen"] == 0
    assert accounts["unbalanced_txns"] == 0 and accounts["cap_overruns"] == []
    assert bureau["accumulator_mismatches"] == []
    assert bureau["states"].get("pending", 0) == 0
