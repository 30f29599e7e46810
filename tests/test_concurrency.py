"""Hundreds of concurrent settlements by the family members of one authorizer, against his shared account,
his caps per member and day, and Zhejiang's 5000-a-year mutual-aid cap: no cap exceeded, no balance below
zero, and what was debited equals the ledger."""
from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from decimal import Decimal

import pytest

from tests.harness import HZ, PHARMACY, Stack, account, audit, balance, bind, line, person, uid, visit

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal


async def test_concurrent_family_settlements_against_one_authorizer(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    rng = random.Random(20261123)
    opening = D("4000.00")
    father = await person(c, uid("fa"), balance=f"{opening}")
    members = [await person(c, uid("m"), insutype="390", balance=None) for _ in range(5)]  # Hangzhou: at most 5
    day_cap = D("150.00")
    auth = {m: await bind(c, father, m, day_cap=f"{day_cap}") for m in members}
    days = ["2026-11-02", "2026-11-03", "2026-11-04"]
    cmds = [visit(rng.choice(members), PHARMACY, "41", f"{rng.choice(days)} {rng.randrange(8, 20):02d}:"
                  f"{rng.randrange(60):02d}:{rng.randrange(60):02d}", [line("XA01", f"{rng.randrange(5, 90)}.00")],
                  insutype="390", timeout_ms=120000) for _ in range(300)]
    await asyncio.gather(*(c.submit(cmd) for cmd in cmds))  # all in flight at once
    outcomes = await asyncio.gather(*(c.outcome(cmd.visit_id, timeout=180) for cmd in cmds))
    assert [o.status for o in outcomes] == ["settled"] * len(cmds)
    paid_by_father: dict[tuple[str, str], Decimal] = defaultdict(lambda: D("0.00"))
    total = D("0.00")
    for cmd, o in zip(cmds, outcomes):
        s = o.setlinfo
        assert s is not None
        assert s.fund_pay_sumamt + s.acct_pay + s.psn_cash_pay == s.medfee_sumamt
        assert s.acct_mulaid_pay <= s.acct_pay
        for part in s.mulaid_detail:
            assert part.authorizer_psn_no == father and part.auth_id == auth[cmd.psn_no]
            assert part.balc >= 0
            paid_by_father[(cmd.psn_no, cmd.biz_time.strftime("%Y-%m-%d"))] += part.amount
            total += part.amount
    # Each member's day cap held, whatever the interleaving.
    assert max(paid_by_father.values()) <= day_cap
    assert sum(1 for v in paid_by_father.values() if v == day_cap) > 0, "the caps never bound: test too weak"
    # The authorizer's money: never negative, and exactly what the settlements say.
    assert await balance(c, father) == opening - total >= 0
    info = await account(c, father)
    assert info["ledger_balc"] == info["balc"]
    assert total <= D("5000.00")  # Zhejiang's annual mutual-aid cap per authorizer
    accounts, bureau = await audit(c, HZ)
    assert accounts["cap_overruns"] == [] and accounts["negative_balances"] == 0
    assert accounts["balance_mismatches"] == [] and accounts["ledger_sum_fen"] == 0
    assert bureau["accumulator_mismatches"] == []
