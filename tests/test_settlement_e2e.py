"""Issue "Settle a visit end to end over RabbitMQ": every 'Done when' line, against a real RabbitMQ with the
three workers running as separate processes."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.harness import (cumulative, BJ, BJ_HOSPITAL3, HOSPITAL3, HZ, PHARMACY, Stack, account, audit, balance, bind, direct,
                           line, ok, person, settle_input, uid, visit)

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal


async def test_child_with_zero_balance_paid_by_mother(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    mother = await person(c, uid("mother"), balance="50.00")
    child = await person(c, uid("child"), insutype="390", balance=None)  # 居民医保: no account of her own
    await bind(c, mother, child)
    # 2102 at a Hangzhou pharmacy: XB02 is 乙类 with selfpay_prop 0.05 in the Hangzhou catalog.
    outcome = await c.visit(visit(child, PHARMACY, "41", "2026-03-02 10:00:00",
                                  [line("XB02", "40.00"), line("XA01", "20.00")], insutype="390"))
    assert outcome.status == "settled", outcome.err_msg
    s = outcome.setlinfo
    assert s is not None
    # Hangzhou pharmacy purchases are not pooled (policies/330100.yaml: pharmacy.pooled false).
    assert s.hifp_pay == D("0.00") and s.fund_pay_sumamt == D("0.00")
    assert s.medfee_sumamt == D("60.00") and s.psn_part_amt == D("60.00")
    assert s.preselfpay_amt == D("2.00")  # 40.00 x 0.05
    # The mother's 50.00 is all she has: she pays 50.00, the rest (10.00) is cash.
    assert s.acct_mulaid_pay == D("50.00")
    assert s.acct_pay == D("50.00")  # includes the mutual-aid part
    assert s.psn_cash_pay == D("10.00")
    assert s.balc == D("0.00")
    assert [(p.authorizer_psn_no, p.amount) for p in s.mulaid_detail] == [(mother, D("50.00"))]
    assert s.fund_pay_sumamt + s.acct_pay + s.psn_cash_pay == s.medfee_sumamt
    assert await balance(c, mother) == D("50.00") - s.acct_mulaid_pay
    assert outcome.presettle is not None and outcome.presettle.acct_mulaid_pay == D("50.00")  # 2101 came first


async def test_retiree_outpatient_level3_crosses_deductible(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    grandpa = await person(c, uid("retiree"), psn_type="retired", balance="1000.00")
    # Hangzhou outpatient, retired: deductible 200.00 a year; 三级 ratio 0.76 + 0.06 = 0.82.
    first = await c.visit(visit(grandpa, HOSPITAL3, "11", "2026-04-01 09:00:00", [line("EXAM", "150.00")]))
    assert first.setlinfo is not None
    assert first.setlinfo.act_pay_dedc == D("150.00")  # 150 of the 200 deductible consumed
    assert first.setlinfo.hifp_pay == D("0.00")
    second = await c.visit(visit(grandpa, HOSPITAL3, "11", "2026-04-02 09:00:00", [line("EXAM", "300.00")]))
    s = second.setlinfo
    assert s is not None and second.status == "settled"
    # in scope 300.00; deductible left 200 - 150 = 50.00  → act_pay_dedc 50.00
    # (300.00 - 50.00) x 0.82 = 205.00                  → hifp_pay 205.00
    # patient share 300.00 - 205.00 = 95.00, paid from his own account (balance 1000 - 150 - 95 = 755)
    assert s.act_pay_dedc == D("50.00")
    assert s.hifp_pay == D("205.00")
    assert s.psn_part_amt == D("95.00") and s.acct_pay == D("95.00") and s.psn_cash_pay == D("0.00")
    assert s.balc == D("755.00")
    cum = await cumulative(c, grandpa, "2026-04-03 09:00:00")
    assert cum["outpatient_dedc"] == "200.00" and cum["hifp_pay"] == "205.00" and cum["settlements"] == 2


async def test_reversal_restores_balances_accumulators_and_limits(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    mother = await person(c, uid("mother"), balance="500.00")
    kid = await person(c, uid("kid"), balance="10.00")
    auth_id = await bind(c, mother, kid, day_cap="100.00", month_cap="300.00")
    before_kid, before_mother = await account(c, kid), await account(c, mother)
    cum_before = await cumulative(c, kid, "2026-05-01 12:00:00")
    settled = await c.visit(visit(kid, HOSPITAL3, "11", "2026-05-01 10:00:00", [line("EXAM", "120.00")]))
    s = settled.setlinfo
    assert s is not None and s.acct_pay == D("110.00") and s.acct_mulaid_pay == D("100.00")  # day cap binds
    after = await account(c, kid)
    assert after["usage_fen"][f"auth:{auth_id}:day:2026-05-01"] == 10000
    # 2208 reverses it (through the POS).
    from contracts.pos import ReverseVisit
    reversed_ = await c.visit(ReverseVisit(visit_id=uid("rev"), fixmedins_code=HOSPITAL3, insuplc_admdvs=HZ,
                                           mdtrtarea_admvs=HZ, psn_no=kid, med_type="11", setl_id=s.setl_id,
                                           biz_time="2026-05-03 10:00:00"))  # type: ignore[arg-type]
    assert reversed_.status == "reversed", reversed_.err_msg
    r = reversed_.setlinfo
    assert r is not None and r.orig_setl_id == s.setl_id
    assert r.acct_pay == -s.acct_pay and r.hifp_pay == -s.hifp_pay and r.medfee_sumamt == -s.medfee_sumamt
    assert r.balc == D("10.00")  # restored own balance
    after_kid, after_mother = await account(c, kid), await account(c, mother)
    assert after_kid["balc"] == before_kid["balc"] and after_mother["balc"] == before_mother["balc"]
    assert all(v == 0 for v in after_kid["usage_fen"].values())  # limit usage released exactly
    cum_after = await cumulative(c, kid, "2026-05-03 12:00:00")
    assert cum_after == cum_before
    # Reversing twice is refused and changes nothing.
    _, twice = await direct(c, "2208", {"psn_no": kid, "setl_id": s.setl_id}, when="2026-05-03 11:00:00",
                            facility=HOSPITAL3)
    assert twice.infcode == -1 and twice.err_code == "E_ALREADY_REVERSED"
    assert (await account(c, kid))["balc"] == before_kid["balc"]


async def test_pharmacy_reversal_2103(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    p = await person(c, uid("p"), balance="100.00")
    _, rep = await direct(c, "2102", settle_input(p, "41", [line("XA01", "30.00")]), when="2026-06-01 10:00:00")
    assert rep.infcode == 0 and rep.output is not None
    assert await balance(c, p) == D("70.00")
    _, rev = await direct(c, "2103", {"psn_no": p, "setl_id": rep.output["setl_id"]}, when="2026-06-01 10:05:00")
    assert rev.infcode == 0 and rev.output is not None and rev.output["acct_pay"] == "-30.00"
    assert await balance(c, p) == D("100.00")


async def test_compensation_of_a_message_that_never_arrived_is_harmless(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    p = await person(c, uid("p"), balance="100.00")
    data = settle_input(p, "41", [line("XA01", "30.00")])
    ghost = c.msgid(__import__("datetime").datetime(2026, 6, 2, 10, 0), PHARMACY)
    _, comp = await direct(c, "2601", {"psn_no": p, "omsgid": ghost, "oinfno": "2102"}, when="2026-06-02 10:00:05")
    assert comp.infcode == 0
    assert await balance(c, p) == D("100.00")
    # The original arrives late: refused, and it changes nothing.
    _, late = await direct(c, "2102", data, when="2026-06-02 10:00:00", msgid=ghost)
    assert late.infcode == -1 and late.err_code == "E_COMPENSATED"
    assert await balance(c, p) == D("100.00")
    cum = await cumulative(c, p, "2026-06-02 11:00:00")
    assert cum["settlements"] == 0


async def test_same_msgid_twice_settles_once_with_the_same_reply(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    p = await person(c, uid("p"), balance="100.00")
    data = settle_input(p, "41", [line("XA01", "25.00")])
    req, first = await direct(c, "2102", data, when="2026-06-03 10:00:00")
    _, second = await direct(c, "2102", data, when="2026-06-03 10:00:00", msgid=req.msgid)
    assert first.infcode == 0
    assert second == first
    assert await balance(c, p) == D("75.00")  # debited once
    # Same msgid, different content: a conflict, nothing changes.
    other = settle_input(p, "41", [line("XA01", "26.00")])
    _, conflict = await direct(c, "2102", other, when="2026-06-03 10:00:00", msgid=req.msgid)
    assert conflict.infcode == -1 and conflict.err_code == "E_MSGID_CONFLICT"
    assert await balance(c, p) == D("75.00")


async def test_authorizer_daily_cap_holds_and_is_fresh_next_day(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    mother = await person(c, uid("mother"), balance="1000.00")
    child = await person(c, uid("child"), insutype="390", balance=None)
    await bind(c, mother, child, day_cap="100.00")
    day1a = await c.visit(visit(child, PHARMACY, "41", "2026-07-01 09:00:00", [line("XA01", "60.00")],
                                insutype="390"))
    day1b = await c.visit(visit(child, PHARMACY, "41", "2026-07-01 23:59:59", [line("XA01", "70.00")],
                                insutype="390"))
    assert day1a.setlinfo is not None and day1b.setlinfo is not None
    assert day1a.setlinfo.acct_mulaid_pay == D("60.00")
    assert day1b.setlinfo.acct_mulaid_pay == D("40.00")  # 100.00 cap - 60.00 already used
    assert day1b.setlinfo.psn_cash_pay == D("30.00")
    # Business time, Asia/Shanghai: one second later is the next day, with a fresh cap.
    day2 = await c.visit(visit(child, PHARMACY, "41", "2026-07-02 00:00:00", [line("XA01", "70.00")],
                               insutype="390"))
    assert day2.setlinfo is not None and day2.setlinfo.acct_mulaid_pay == D("70.00")
    assert await balance(c, mother) == D("1000.00") - D("170.00")


async def test_cross_region_patient_uses_insured_region_policy(stack: Stack) -> None:
    """A Beijing-insured retiree treated at a Beijing 三级 hospital, routed to the bureau by 参保地."""
    c = stack.client
    assert c is not None
    p = await person(c, uid("bj"), region=BJ, psn_type="retired", balance="0.00")
    out = await c.visit(visit(p, BJ_HOSPITAL3, "21", "2026-03-05 09:00:00", [line("SURG", "10000.00")], region=BJ))
    s = out.setlinfo
    assert s is not None
    # Beijing inpatient: first stay deductible 1300.00; retired 三级 0.90 → (10000 - 1300) x 0.90 = 7830.00
    assert s.act_pay_dedc == D("1300.00") and s.hifp_pay == D("7830.00") and s.psn_cash_pay == D("2170.00")


async def test_ledger_balances_after_everything(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    accounts, bureau = await audit(c)
    assert accounts["ledger_sum_fen"] == 0
    assert accounts["unbalanced_txns"] == 0
    assert accounts["balance_mismatches"] == []
    assert accounts["negative_balances"] == 0
    assert bureau["accumulator_mismatches"] == []
