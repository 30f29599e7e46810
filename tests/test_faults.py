"""Crashes and timeouts: SIGKILL of the accounts worker mid-flight; a POS timeout that sends 2601 冲正 while
the original is still in flight; 冲正 of a settled message."""
from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from decimal import Decimal

import pytest

from contracts import wire
from services.pos.national_flow import stage_input
from tests.harness import (sign_no, cumulative, HOSPITAL3, HZ, PHARMACY, Stack, audit, balance, bind, direct, line, ok, person,
                           settle_input, uid, visit)

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal


async def test_sigkill_accounts_worker_mid_flight(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    opening = D("100.00")
    families = []
    for _ in range(10):
        parent = await person(c, uid("par"), balance=f"{opening}")
        kid = await person(c, uid("kid"), balance="5.00")
        await bind(c, parent, kid, day_cap="50.00")
        families.append((parent, kid))
    cmds = []
    for i in range(120):
        parent, kid = families[i % len(families)]
        who = kid if i % 2 else parent
        cmds.append(visit(who, HOSPITAL3, "11", f"2026-08-0{1 + i % 5} 10:00:{i % 60:02d}",
                          [line("EXAM", f"{10 + i % 7}.00")], timeout_ms=60000))
    for cmd in cmds:
        await c.submit(cmd)
    await asyncio.sleep(0.3)
    stack.kill("accounts", signal.SIGSTOP)  # freeze it mid-stream, then kill it for good
    unfinished = [cmd for cmd in cmds if cmd.visit_id not in c.outcomes]
    assert unfinished, "every visit finished before the kill: nothing was in flight"
    stack.kill("accounts", signal.SIGKILL)
    await asyncio.sleep(1.0)
    await stack.start_worker("accounts")
    outcomes = [await c.outcome(cmd.visit_id, timeout=90) for cmd in cmds]
    # Exactly one final outcome per visit, and every one of them settled.
    assert len({o.visit_id for o in outcomes}) == len(cmds)
    assert [(o.status, o.err_code, o.err_msg) for o in outcomes if o.status != "settled"] == []
    # Every balance equals what the outcomes say was taken from it.
    taken: dict[str, Decimal] = defaultdict(lambda: D("0.00"))
    for o in outcomes:
        s = o.setlinfo
        assert s is not None
        assert s.fund_pay_sumamt + s.acct_pay + s.psn_cash_pay == s.medfee_sumamt
        taken[o.psn_no] += s.acct_pay - s.acct_mulaid_pay
        for part in s.mulaid_detail:
            taken[part.authorizer_psn_no] += part.amount
    for parent, kid in families:
        assert await balance(c, parent) == opening - taken[parent]
        assert await balance(c, kid) == D("5.00") - taken[kid]
    accounts, bureau = await audit(c)
    assert accounts["balance_mismatches"] == [] and accounts["ledger_sum_fen"] == 0
    assert accounts["unbalanced_txns"] == 0 and accounts["negative_balances"] == 0
    assert bureau["accumulator_mismatches"] == []


async def test_pos_timeout_sends_compensation_while_original_in_flight(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    p = await person(c, uid("p"), balance="200.00")
    stack.kill("accounts", signal.SIGSTOP)  # the payment cannot be answered in time
    try:
        cmd = visit(p, PHARMACY, "41", "2026-09-01 10:00:00", [line("XA01", "80.00")], presettle=False,
                    timeout_ms=1500)
        await c.submit(cmd)
        await asyncio.sleep(3.0)  # the POS has given up and sent 2601 冲正 for the original msgid
    finally:
        stack.kill("accounts", signal.SIGCONT)
    outcome = await c.outcome(cmd.visit_id, timeout=60)
    assert outcome.status == "compensated", (outcome.err_code, outcome.err_msg)
    assert await balance(c, p) == D("200.00")  # paid once the worker woke up, then refunded
    cum = await cumulative(c, p, "2026-09-01 11:00:00")
    assert cum["settlements"] == 0
    # The original msgid now answers that it was compensated; a repeat changes nothing.
    # (the very request the POS sent: the national druginfo + drugdetail nodes, money as JSON numbers)
    req = c.envelope("2102", stage_input(cmd, "settle", None), insuplc_admdvs=HZ, when="2026-09-01 10:00:00",
                     fixmedins_code=PHARMACY, msgid=outcome.msgid, sign_no=await sign_no(c, PHARMACY, "2026-09-01"))
    again = await c.call_raw(c.names.bureau_exchange, HZ, wire.dumps(req.model_dump()).encode(), req.msgid)
    assert again.infcode == -1 and again.err_code == "E_COMPENSATED"
    assert await balance(c, p) == D("200.00")


async def test_compensation_of_a_settled_message_undoes_it(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    mother = await person(c, uid("m"), balance="100.00")
    kid = await person(c, uid("k"), balance="0.00")
    await bind(c, mother, kid)
    req, rep = await direct(c, "2102", settle_input(kid, "41", [line("XA01", "40.00")]), when="2026-09-02 10:00:00")
    assert rep.infcode == 0 and rep.output is not None and rep.output["acct_mulaid_pay"] == "40.00"
    assert await balance(c, mother) == D("60.00")
    _, comp = await direct(c, "2601", {"psn_no": kid, "omsgid": req.msgid, "oinfno": "2102"},
                           when="2026-09-02 10:01:00")
    assert comp.infcode == 0
    assert await balance(c, mother) == D("100.00")
    _, rev = await direct(c, "2103", {"psn_no": kid, "setl_id": rep.output["setl_id"]}, when="2026-09-02 10:02:00")
    assert rev.infcode == -1 and rev.err_code == "E_COMPENSATED"
    assert await balance(c, mother) == D("100.00")


async def test_duplicate_and_delayed_delivery_is_absorbed(amqp_url: str, run_id: str,
                                                          tmp_path_factory: pytest.TempPathFactory, backend: str,
                                                          database_env: dict[str, str]) -> None:
    """GONGJI_CHAOS: every worker publishes 30% of its messages twice and delays 30% (reordering replies)."""
    import json
    import random
    from pathlib import Path

    data = Path(tmp_path_factory.mktemp("chaos"))
    s = Stack(amqp_url, f"c{run_id}{backend[:2]}", data, env=database_env)
    s.env["GONGJI_CHAOS"] = json.dumps({"seed": 5, "duplicate": 0.3, "delay": 0.3, "delay_ms": 300})
    await s.start()
    try:
        c = s.client
        assert c is not None
        rng = random.Random(3)
        mother = await person(c, uid("mo"), balance="300.00")
        kids = [await person(c, uid("kid"), insutype="390", balance=None) for _ in range(3)]
        for k in kids:
            await bind(c, mother, k, day_cap="40.00")
        cmds = [visit(rng.choice(kids), PHARMACY, "41", f"2026-10-0{1 + i % 3} 10:00:{i:02d}",
                      [line("XA01", f"{rng.randrange(5, 30)}.00")], insutype="390", timeout_ms=60000)
                for i in range(60)]
        await asyncio.gather(*(c.submit(cmd) for cmd in cmds))
        outcomes = await asyncio.gather(*(c.outcome(cmd.visit_id, timeout=120) for cmd in cmds))
        assert [o.status for o in outcomes] == ["settled"] * len(cmds)
        paid = sum((o.setlinfo.acct_mulaid_pay for o in outcomes if o.setlinfo), D("0.00"))
        assert await balance(c, mother) == D("300.00") - paid
        accounts, bureau = await audit(c)
        assert accounts["double_debits"] == 0 and accounts["balance_mismatches"] == []
        assert accounts["cap_overruns"] == [] and bureau["accumulator_mismatches"] == []
        await asyncio.sleep(1.5)  # the stats files are rewritten every second
        stats = [json.loads(p.read_text()) for p in (data / "stats").glob("*.json")]
        assert sum(x["chaos_duplicates"] for x in stats) > 0 and sum(x["chaos_delays"] for x in stats) > 0
        assert sum(x["duplicates_absorbed"] for x in stats) > 0
    finally:
        await s.stop()
        await s.cleanup()
