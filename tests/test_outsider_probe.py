"""Defects an outside probe found (2026-12-08), each tried as the outsider tried it, with the expected figures
worked out by hand from the policy files; each test failed on the code before its fix."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from contracts import wire
from contracts.envelope import Request, make_msgid
from simulator.client import Client
from tests.harness import (HK, HOSPITAL3, HZ, PHARMACY, Stack, account, admin_call, balance, bind, direct, face, line,
                           ok, person, register_facility, settle_input, sign_no, uid, visit)

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal
PROBE_PHARMACY = "PHZ000000088"  # facility B of these tests, a Hangzhou pharmacy


async def test_the_catalog_is_the_facilitys_region_not_the_one_its_request_names(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    # A Hangzhou 三级 hospital bills an employed Hangzhou person (first visit of the year): XA01 600.00 (甲类),
    # XB02 1000.00 declared 甲类 (Hangzhou's catalog: 乙类, 先行自付 5 %), XC03 1000.00 declared medical 甲类
    # (the catalog: wellness, 全自费). By the Hangzhou catalog: 全自费 1000.00, 先行自付 50.00, in scope
    # 600 + 950 = 1550.00; deductible 600.00; (1550 - 600) x 76 % = 722.00 from the fund.
    # Naming Beijing (whose catalog takes declared classes) as mdtrtarea_admvs must not change any of it.
    lines = [line("XA01", "600.00"), line("XB02", "1000.00"), dict(line("XC03", "1000.00"), item_scope="medical")]
    when = "2026-05-06 10:00:00"
    for area in (HZ, "110000"):
        p = await person(c, uid("cat"), balance="0.00")
        sn = await sign_no(c, HOSPITAL3, when)
        req = c.envelope("2207", settle_input(p, "11", lines), insuplc_admdvs=HZ, mdtrtarea_admvs=area, when=when,
                         fixmedins_code=HOSPITAL3, sign_no=sn)
        rep = await c.bureau(req)
        assert rep.infcode == 0, (rep.err_code, rep.err_msg)
        s = (rep.output or {}).get("setlinfo", rep.output)
        assert s is not None
        assert (s["fulamt_ownpay_amt"], s["preselfpay_amt"], s["inscp_scp_amt"], s["act_pay_dedc"], s["hifp_pay"]) \
            == ("1000.00", "50.00", "1550.00", "600.00", "722.00"), area
        assert s["psn_cash_pay"] == "1878.00"


async def test_a_facility_may_not_send_under_another_facilitys_msgid(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    await register_facility(c, PROBE_PHARMACY)
    p = await person(c, uid("pfx"), balance="100.00")
    when = "2026-05-07 10:00:00"
    theirs = make_msgid(PHARMACY, "20260507100000", 8765)  # A's next msgid, predictable
    _, rep = await direct(c, "2102", settle_input(p, "41", [line("XA01", "25.00")]), when=when,
                          facility=PROBE_PHARMACY, msgid=theirs)
    assert (rep.infcode, rep.err_code) == (-1, "E_NOT_YOUR_MSGID")
    assert await balance(c, p) == D("100.00")
    # A's own message under it is not blocked, and is A's to 冲正.
    _, mine = await direct(c, "2102", settle_input(p, "41", [line("XA01", "25.00")]), when=when, msgid=theirs)
    assert mine.infcode == 0, (mine.err_code, mine.err_msg)
    assert mine.output and mine.output.get("setlinfo", mine.output)["setl_id"] == f"S{theirs}"
    assert await balance(c, p) == D("75.00")


async def test_another_facilitys_clock_does_not_send_a_wallet_transfer_back(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    son = await person(c, uid("son"), balance="1000.00")  # Hangzhou
    mother = await person(c, uid("mom"), region=HK, balance="0.00")  # Haikou: another province, a wallet
    at = "2026-05-10 10:00:00"
    sent = await ok(admin_call(c, "G131", {"from_psn_no": son, "to_psn_no": mother, "relation": "parent",
                                           "amount": "300.00", "verify": await face(c, son, when=at)}, when=at))
    assert sent["returns_at"] == "2026-05-11 06:00:00"
    # An unrelated person settles at a pharmacy whose business time is ten days on.
    stranger = await person(c, uid("str"), balance="50.00")
    _, rep = await direct(c, "2102", settle_input(stranger, "41", [line("XA01", "20.00")]), when="2026-05-20 10:00:00")
    assert rep.infcode == 0, (rep.err_code, rep.err_msg)
    # Her claim at 10:05 on the day it was sent: the transfer is still hers to claim.
    await ok(admin_call(c, "G132", {"to_psn_no": mother, "transfer_id": sent["transfer_id"]}, region=HK,
                        when="2026-05-10 10:05:00"))
    assert (await account(c, mother, HK))["wallet_balc"] == "300.00"
    assert await balance(c, son) == D("700.00")


async def test_a_back_dated_bill_does_not_reach_a_binding_made_later(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    mother = await person(c, uid("mom"), balance="1000.00")
    child = await person(c, uid("kid"), insutype="390", balance=None)
    await bind(c, mother, child, when="2026-06-01 09:00:00")
    # A pharmacy bill of 30.00 dated a month before the binding existed: nobody's account pays it.
    early = await c.visit(visit(child, PHARMACY, "41", "2026-05-01 09:00:00", [line("XA01", "30.00")], insutype="390"))
    assert early.setlinfo is not None and early.status == "settled"
    assert (early.setlinfo.acct_mulaid_pay, early.setlinfo.psn_cash_pay) == (D("0.00"), D("30.00"))
    # The same bill once the binding exists: the mother pays it.
    later = await c.visit(visit(child, PHARMACY, "41", "2026-06-02 09:00:00", [line("XA01", "30.00")], insutype="390"))
    assert later.setlinfo is not None
    assert (later.setlinfo.acct_mulaid_pay, later.setlinfo.psn_cash_pay) == (D("30.00"), D("0.00"))
    assert await balance(c, mother) == D("970.00")


@pytest.mark.filterwarnings("ignore::pytest.PytestWarning")  # the module's asyncio mark; this one is plain
def test_json_nested_too_deep_is_a_bad_message_not_a_crash() -> None:
    for depth in (65, 900, 200_000):
        with pytest.raises(json.JSONDecodeError):
            wire.loads(("[" * depth + "]" * depth).encode())
    envelope = {"input": {"feedetail": [{"a": {"b": [1, 2]}}]}}
    assert wire.loads(json.dumps(envelope).encode()) == envelope


async def _paid_40_of_100(stack: Stack, when: str) -> tuple[Client, str, Request]:
    """A person with 100.00 who bought 40.00 at the pharmacy (2102): the client, her psn_no, the request."""
    c = stack.client
    assert c is not None
    p = await person(c, uid("p40"), balance="100.00")
    req, rep = await direct(c, "2102", settle_input(p, "41", [line("XA01", "40.00")]), when=when)
    assert rep.infcode == 0 and await balance(c, p) == D("60.00")
    return c, p, req


async def test_a_2601_must_name_the_original_transaction_code(stack: Stack) -> None:
    when = "2026-05-12 10:00:00"
    c, p, req = await _paid_40_of_100(stack, when)
    # 冲正 of a 2102 that says it is cancelling a 2207: refused, nothing moves.
    _, wrong = await direct(c, "2601", {"psn_no": p, "omsgid": req.msgid, "oinfno": "2207"}, when=when)
    assert (wrong.infcode, wrong.err_code) == (-1, "E_BAD_INPUT") and "was a 2102" in (wrong.err_msg or "")
    assert await balance(c, p) == D("60.00")
    _, right = await direct(c, "2601", {"psn_no": p, "omsgid": req.msgid, "oinfno": "2102"}, when=when)
    assert right.infcode == 0, (right.err_code, right.err_msg)
    assert await balance(c, p) == D("100.00")


async def test_3201_is_a_facilitys_own_and_for_a_day_begun(stack: Stack) -> None:
    when = "2026-05-14 10:00:00"
    c, _, _ = await _paid_40_of_100(stack, when)
    totals = {"fixmedins_setl_cnt": 0, "medfee_sumamt": "0.00", "fund_pay_sumamt": "0.00", "acct_pay": "0.00",
              "psn_cash_pay": "0.00"}
    # The hospital asks for the pharmacy's day: its totals, and a sweep of its visits, are not the hospital's.
    _, other = await direct(c, "3201", {"fixmedins_code": PHARMACY, "stmt_date": "2026-05-14", **totals}, when=when,
                            facility=HOSPITAL3)
    assert (other.infcode, other.err_code) == (-1, "E_NOT_YOUR_SETTLEMENT") and other.output is None
    # A day not begun yet (its sweep would close visits opened minutes ago).
    _, future = await direct(c, "3201", {"fixmedins_code": PHARMACY, "stmt_date": "2099-12-31", **totals}, when=when)
    assert (future.infcode, future.err_code) == (-1, "E_BAD_INPUT")
    # Its own day: the bureau's totals include the 40.00 (the day's other settlements of this shared stack too).
    _, own = await direct(c, "3201", {"fixmedins_code": PHARMACY, "stmt_date": "2026-05-14", **totals}, when=when)
    assert own.infcode == 0 and own.output is not None
    assert D(own.output["bureau"]["medfee_sumamt"]) >= D("40.00") and own.output["bureau"]["fixmedins_setl_cnt"] >= 1
