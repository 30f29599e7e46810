"""Issue 10, defects found by black-box cases: line totals half-up everywhere, the shared part of a
cross-region binding under the AUTHORIZER's region rules, and G141 from a suspended authorizer account."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest

from contracts.base import SHANGHAI
from contracts.money import line_total, line_total_problem
from contracts.settlement import FeeDetail
from contracts.pos import ReverseVisit
from simulator import cli, demo
from simulator.run.identities import Mapper
from simulator.run.runner import Runner
from simulator.scenario.model import Item
from tests.harness import (BJ, BJ_HOSPITAL3, HK, HK_HOSPITAL2, HOSPITAL3, HZ, PHARMACY, SH, SH_HOSPITAL3, WH,
                           WH_PHARMACY, Stack, admin_call, balance, bind, line, ok, person, uid, visit)

D = Decimal
NO_FULAMT = "989902"  # tests/policies: accounts never pay 全自费, cross-province allowed


# ---- defect 1: price x cnt rounds half-up (12.25 x 0.5 = 6.125 -> 6.13; half-even would give 6.12) -------------
def test_line_total_rounds_half_up() -> None:
    assert line_total(D("12.25"), "0.5") == D("6.13")
    assert line_total(D("0.05"), "0.5") == D("0.03")  # 0.025 -> 0.03 (half-even: 0.02)
    assert line_total(D("3.33"), "3") == D("9.99")


def test_a_line_total_is_the_product_rounded_to_the_fen_and_nothing_else() -> None:
    # An outside probe billed pric 10.00 x 1 as 10.01 and was accepted: a fen per line, 5.00 on 500 lines.
    assert line_total_problem(D("10.00"), D("10.00"), D("1")) is None
    assert line_total_problem(D("10.01"), D("10.00"), D("1")) is not None
    assert line_total_problem(D("9.99"), D("10.00"), D("1")) is not None
    # 12.25 x 0.5 = 6.125: a HIS may round half-up (6.13), half-even or down (6.12); 6.14 is nobody's rounding.
    assert [line_total_problem(D(t), D("12.25"), D("0.5")) is None for t in ("6.12", "6.13", "6.14")] == \
        [True, True, False]
    assert line_total_problem(D("10.00"), D("3.333333"), D("3")) is None  # 9.999999 → 10.00 or 9.99
    with pytest.raises(ValueError, match="pric x cnt"):
        FeeDetail.model_validate({"feedetl_sn": "1", "med_list_codg": "XA01", "cnt": "1", "pric": "10.00",
                                  "det_item_fee_sumamt": "10.01"})


def test_every_line_builder_rounds_half_up() -> None:
    assert cli._parse_item("X1:12.25:0.5", 1)["det_item_fee_sumamt"] == "6.13"
    assert demo.line("X1", "12.25", "0.5").det_item_fee_sumamt == D("6.13")
    assert line("X1", "12.25", "0.5")["det_item_fee_sumamt"] == "6.13"
    # The scenario runner builds the visits of every scenario: a bare object stands in for its state.
    fake = SimpleNamespace(data=SimpleNamespace(people={}, facilities={}), mapper=Mapper(), regions=[HZ])
    cmd = Runner.settle_command(fake, "v1", "p1", PHARMACY, "41", "offline",  # type: ignore[arg-type]
                                datetime(2026, 3, 1, 10, tzinfo=SHANGHAI),
                                [Item(code="X1", price=D("12.25"), cnt=D("0.5"))])
    assert cmd.details[0].det_item_fee_sumamt == D("6.13")


# ---- defect 2: the shared part follows the authorizer's region ---------------------------------------------
pytestmark_e2e = pytest.mark.asyncio(loop_scope="session")


@pytestmark_e2e
async def test_cross_region_scope_is_the_authorizers(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    # A Wuhan son (420100: mutual_aid_scope pharmacy + outpatient) shares with his Haikou mother (460100:
    # scope includes inpatient). Her inpatient stay: the son's region says no inpatient -> he pays nothing.
    son = await person(c, uid("son"), region=WH, balance="5000.00")
    mother = await person(c, uid("mom"), region=HK, insutype="390", balance=None)
    await bind(c, son, mother, relation="parent", region=WH)
    stay = await c.visit(visit(mother, HK_HOSPITAL2, "21", "2026-03-02 09:00:00", [line("BED", "2000.00")],
                               region=HK, insutype="390"))
    s = stay.setlinfo
    assert s is not None and stay.status == "settled"
    assert s.psn_part_amt > 0
    assert s.acct_mulaid_pay == D("0.00") and s.psn_cash_pay == s.psn_part_amt
    assert any("authorizer's region 420100" in n for n in s.notes)
    assert await balance(c, son) == D("5000.00")
    # A Haikou daughter (scope includes inpatient) shares with her Wuhan father (whose own region excludes
    # it): the daughter's rule applies, she pays his whole share of the stay.
    daughter = await person(c, uid("dau"), region=HK, balance="5000.00")
    father = await person(c, uid("fa"), region=WH, insutype="390", balance=None)
    await bind(c, daughter, father, relation="parent", region=HK)
    stay2 = await c.visit(visit(father, HOSPITAL3, "21", "2026-03-03 09:00:00", [line("BED", "2000.00")],
                                region=WH, insutype="390"))
    s2 = stay2.setlinfo
    assert s2 is not None and stay2.status == "settled"
    assert s2.psn_part_amt > 0 and s2.acct_mulaid_pay == s2.psn_part_amt and s2.psn_cash_pay == D("0.00")
    assert await balance(c, daughter) == D("5000.00") - s2.psn_part_amt


@pytestmark_e2e
async def test_cross_region_fulamt_ownpay_is_the_authorizers(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    # Pharmacy purchase (not pooled without a prescription): 甲类 50.00 + a declared 丙类 30.00 (全自费).
    # psn_part = 80.00, of it 全自费 30.00.
    lines = [line("XA01", "50.00"), line("ZZ03", "30.00", lv="03")]
    # An authorizer of the test region 989902 (pay_fulamt_ownpay: false, like Beijing) for a Hangzhou member
    # (true): the authorizer's rule binds the shared part -> 80.00 - 30.00 = 50.00 shared, 30.00 cash.
    bj_mum = await person(c, uid("bjm"), region=NO_FULAMT, balance="1000.00")
    hz_kid = await person(c, uid("hzk"), region=HZ, insutype="390", balance=None)
    await bind(c, bj_mum, hz_kid, region=NO_FULAMT)
    a = await c.visit(visit(hz_kid, PHARMACY, "41", "2026-03-04 09:00:00", lines, region=HZ, insutype="390"))
    assert a.status == "settled", (a.err_code, a.err_msg)
    assert a.setlinfo is not None and a.setlinfo.psn_part_amt == D("80.00")
    assert a.setlinfo.fulamt_ownpay_amt == D("30.00")
    assert a.setlinfo.acct_mulaid_pay == D("50.00") and a.setlinfo.psn_cash_pay == D("30.00")
    # Hangzhou authorizer (true) for a 989902 member (false): Hangzhou's rule -> the whole 80.00 shared.
    hz_mum = await person(c, uid("hzm"), region=HZ, balance="1000.00")
    bj_kid = await person(c, uid("bjk"), region=NO_FULAMT, insutype="390", balance=None)
    await bind(c, hz_mum, bj_kid, region=HZ)
    b = await c.visit(visit(bj_kid, PHARMACY, "41", "2026-03-04 10:00:00", lines, region=NO_FULAMT,
                            insutype="390"))
    assert b.setlinfo is not None and b.setlinfo.psn_part_amt == D("80.00")
    assert b.setlinfo.acct_mulaid_pay == D("80.00") and b.setlinfo.psn_cash_pay == D("0.00")
    assert await balance(c, hz_mum) == D("920.00")


# ---- defect 3: G141 from a suspended authorizer account -------------------------------------------------------
@pytestmark_e2e
async def test_resident_contribution_refused_from_a_suspended_account(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    parent = await person(c, uid("par"), balance="1000.00")
    kid = await person(c, uid("kid"), insutype="390", balance=None)
    await bind(c, parent, kid)
    await ok(admin_call(c, "G105", {"psn_no": parent, "status": "suspended"}))
    reply = await admin_call(c, "G141", {"authorizer_psn_no": parent, "member_psn_no": kid, "amount": "100.00",
                                         "year": 2026})
    assert reply.infcode == -1 and reply.err_code == "E_ACCOUNT_NOT_NORMAL", (reply.err_code, reply.err_msg)
    await ok(admin_call(c, "G105", {"psn_no": parent, "status": "normal"}))
    assert await balance(c, parent) == D("1000.00")  # nothing moved
    out = await ok(admin_call(c, "G141", {"authorizer_psn_no": parent, "member_psn_no": kid, "amount": "100.00",
                                          "year": 2026}))
    assert out["authorizer_balc"] == "900.00"


# ---- decisions of issue 10, point 4 ------------------------------------------------------------------------------
@pytestmark_e2e
async def test_contribution_counts_toward_caps_where_the_region_says_so(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    # Hangzhou (contribution_counts_toward_caps: true): a 4000.00 G141 uses 4000 of Zhejiang's 5000.00
    # annual mutual-aid cap, so a later 2000.00 pharmacy purchase of the child gets only 1000.00 shared.
    mother = await person(c, uid("mo"), balance="9000.00")
    kid = await person(c, uid("kid"), insutype="390", balance=None)
    await bind(c, mother, kid)
    await ok(admin_call(c, "G141", {"authorizer_psn_no": mother, "member_psn_no": kid, "amount": "4000.00",
                                    "year": 2026}, when="2026-02-01 10:00:00"))
    over = await admin_call(c, "G141", {"authorizer_psn_no": mother, "member_psn_no": kid, "amount": "1000.01",
                                        "year": 2026}, when="2026-02-01 10:05:00")
    assert over.infcode == -1 and over.err_code == "E_CAP_EXCEEDED", (over.err_code, over.err_msg)
    buy = await c.visit(visit(kid, PHARMACY, "41", "2026-02-02 09:00:00", [line("XA01", "2000.00")],
                              insutype="390"))
    assert buy.setlinfo is not None
    assert buy.setlinfo.acct_mulaid_pay == D("1000.00") and buy.setlinfo.psn_cash_pay == D("1000.00")
    assert await balance(c, mother) == D("9000.00") - D("4000.00") - D("1000.00")
    # Wuhan (false): a contribution leaves the binding's year cap alone: 380.00 paid, then the child's
    # 100.00 purchase is shared in full under a 100.00 year cap.
    wmother = await person(c, uid("wmo"), region=WH, balance="1000.00")
    wkid = await person(c, uid("wkid"), region=WH, insutype="390", balance=None)
    await bind(c, wmother, wkid, region=WH, year_cap="100.00")
    await ok(admin_call(c, "G141", {"authorizer_psn_no": wmother, "member_psn_no": wkid, "amount": "380.00",
                                    "year": 2026}, region=WH, when="2026-02-01 10:00:00"))
    wbuy = await c.visit(visit(wkid, WH_PHARMACY, "41", "2026-02-02 09:00:00", [line("XA01", "100.00")],
                               region=WH, insutype="390"))
    assert wbuy.setlinfo is not None and wbuy.setlinfo.acct_mulaid_pay == D("100.00")


@pytestmark_e2e
async def test_shanghai_current_year_first_only_in_outpatient(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    # 当年账户 100.00, 历年账户 100.00. Outpatient 50.00 (under the 500.00 deductible: all his): current first
    # -> current 50.00, prior 100.00. Inpatient 100.00 (under the 1500.00 deductible): prior first -> prior 0.00.
    p = await person(c, uid("sh"), region=SH, balance="100.00", prior_balc="100.00")
    o = await c.visit(visit(p, SH_HOSPITAL3, "11", "2026-03-01 09:00:00", [line("EXAM", "50.00")], region=SH))
    assert o.setlinfo is not None and o.setlinfo.acct_pay == D("50.00")
    acct = await ok(admin_call(c, "G121", {"psn_no": p}, region=SH, when="2026-03-01 12:00:00"))
    assert (acct["current_balc"], acct["prior_balc"]) == ("50.00", "100.00")
    i = await c.visit(visit(p, SH_HOSPITAL3, "21", "2026-03-02 09:00:00", [line("BED", "100.00")], region=SH))
    assert i.setlinfo is not None and i.setlinfo.acct_pay == D("100.00")
    acct = await ok(admin_call(c, "G121", {"psn_no": p}, region=SH, when="2026-03-02 12:00:00"))
    assert (acct["current_balc"], acct["prior_balc"]) == ("50.00", "0.00")


@pytestmark_e2e
async def test_inpatient_stay_order_is_settlement_order(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    # Beijing employee: stay A (first: deductible 1300.00), stay B (later: 650.00); A reversed and settled
    # again after B counts as a later stay (settlement order, the decision documented in the README):
    # deductible 650.00, fund (2000 - 650) * 0.85 = 1147.50.
    p = await person(c, uid("bj"), region=BJ, balance="0.00")
    a = await c.visit(visit(p, BJ_HOSPITAL3, "21", "2026-03-01 09:00:00", [line("BED", "2000.00")], region=BJ))
    b = await c.visit(visit(p, BJ_HOSPITAL3, "21", "2026-03-10 09:00:00", [line("BED", "2000.00")], region=BJ))
    assert a.setlinfo is not None and b.setlinfo is not None
    assert a.setlinfo.act_pay_dedc == D("1300.00") and b.setlinfo.act_pay_dedc == D("650.00")
    rev = await c.visit(ReverseVisit(visit_id=uid("rev"), fixmedins_code=BJ_HOSPITAL3, insuplc_admdvs=BJ,
                                     mdtrtarea_admvs=BJ, psn_no=p, med_type="21", setl_id=a.setlinfo.setl_id,
                                     biz_time="2026-03-11 09:00:00"))  # type: ignore[arg-type]
    assert rev.status == "reversed"
    again = await c.visit(visit(p, BJ_HOSPITAL3, "21", "2026-03-11 10:00:00", [line("BED", "2000.00")], region=BJ))
    assert again.setlinfo is not None
    assert again.setlinfo.act_pay_dedc == D("650.00") and again.setlinfo.hifp_pay == D("1147.50")


@pytestmark_e2e
async def test_cross_region_pilots_are_the_authorizers(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    # A Wuhan mother (420100: no pilots) shares with her Hangzhou daughter (330100 runs the vaccination pilot).
    # The daughter's HPV vaccine XV01 (100.00, 全自费, scope vaccination in the Hangzhou catalog): her own
    # region's pilot does not let the Wuhan account pay it -> 0.00 shared, 100.00 cash.
    mother = await person(c, uid("whm"), region=WH, balance="1000.00")
    daughter = await person(c, uid("hzd"), region=HZ, insutype="390", balance=None)
    await bind(c, mother, daughter, region=WH)
    out = await c.visit(visit(daughter, PHARMACY, "41", "2026-03-05 09:00:00", [line("XV01", "100.00", lv="03")],
                              region=HZ, insutype="390"))
    s = out.setlinfo
    assert s is not None and out.status == "settled"
    assert s.acct_mulaid_pay == D("0.00") and s.psn_cash_pay == D("100.00")
    assert await balance(c, mother) == D("1000.00")


@pytestmark_e2e
async def test_the_own_account_pays_first_what_only_it_may_pay(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    # A Hangzhou daughter with her own account (80.00) and a Wuhan mother (1000.00, no vaccination pilot) buy
    # the HPV vaccine XV01 (100.00, vaccination: only Hangzhou's accounts may pay it) and XA01 amoxicillin
    # (甲类 60.00; a pharmacy purchase without a prescription is not pooled). Share 160.00. By hand: the
    # daughter's account may pay both, her mother's only the 60.00 of medicine, so the daughter's 80.00 goes
    # to the vaccine (100.00 → 20.00 left), the mother pays the 60.00 of medicine, cash 20.00.
    # (Counting the daughter's 80.00 against the medicine first would leave the mother nothing: cash 80.00.)
    mother = await person(c, uid("whm"), region=WH, balance="1000.00")
    daughter = await person(c, uid("hzd"), region=HZ, balance="80.00")
    await bind(c, mother, daughter, region=WH)
    out = await c.visit(visit(daughter, PHARMACY, "41", "2026-03-05 09:00:00",
                              [line("XV01", "100.00", lv="03"), line("XA01", "60.00")], region=HZ))
    s = out.setlinfo
    assert s is not None and out.status == "settled"
    assert s.psn_part_amt == D("160.00") and s.fund_pay_sumamt == D("0.00")
    assert (s.acct_pay, s.acct_mulaid_pay, s.psn_cash_pay, s.balc) == (D("140.00"), D("60.00"), D("20.00"),
                                                                       D("0.00"))
    assert await balance(c, mother) == D("940.00")


@pytest.mark.parametrize("field,value", [("cnt", "1_0"), ("cnt", "１"), ("cnt", " 1"), ("pric", "1_0.00"),
                                         ("pric", "10.00\n"), ("det_item_fee_sumamt", "１0.00"),
                                         ("det_item_fee_sumamt", "10.00\n"), ("selfpay_prop", "0_05")])
def test_numbers_are_ascii_decimals_nothing_python_also_reads(field: str, value: str) -> None:
    # Python's Decimal() reads "1_0" as 10 and fullwidth digits as digits; `$` in a regex allows a newline.
    # An outside probe's cnt "1_0" was billed as 10: such text is refused, as any malformed number.
    good = {"feedetl_sn": "1", "med_list_codg": "XA01", "cnt": "1", "pric": "10.00", "det_item_fee_sumamt": "10.00",
            "chrgitm_lv": "02", "selfpay_prop": "0.05"}
    assert FeeDetail.model_validate(good).cnt == D("1")
    with pytest.raises(ValueError):
        FeeDetail.model_validate({**good, field: value})
