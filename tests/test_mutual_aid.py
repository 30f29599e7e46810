"""Issue "Family mutual aid lifecycle, and every rule and limit the domain names": each rule driven through
RabbitMQ against the three workers, checking the error code or the outcome."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from contracts.pos import SettleVisit
from tests.harness import (BJ, CLOSED, HK, HK_HOSPITAL2, HOSPITAL3, HZ, NO_CROSS, PHARMACY, SH, SH_PHARMACY, WH,
                           Stack, account, admin_call, balance, bind, bind_request, face, line, ok, person, uid,
                           visit)

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal


def client(stack: Stack):  # type: ignore[no-untyped-def]
    assert stack.client is not None
    return stack.client


async def refused(stack: Stack, infno: str, data: dict[str, Any], code: str, *, region: str = HZ,
                  when: str = "2026-02-01 10:00:00") -> str:
    reply = await admin_call(client(stack), infno, data, region=region, when=when)
    assert reply.infcode == -1, f"expected {code}, got success {reply.output}"
    assert reply.err_code == code, (reply.err_code, reply.err_msg)
    assert reply.err_msg
    return reply.err_msg


async def family(stack: Stack, region: str = HZ, parent_balance: str = "1000.00", child_insutype: str = "390",
                 **parent_extra: Any) -> tuple[str, str]:
    c = client(stack)
    parent = await person(c, uid("par"), region=region, balance=parent_balance, **parent_extra)
    kid = await person(c, uid("kid"), region=region, insutype=child_insutype, balance=None)
    return parent, kid


def kid_visit(kid: str, amount: str, when: str, facility: str = PHARMACY, region: str = HZ, **extra: Any) -> SettleVisit:
    return visit(kid, facility, "41", when, [line("XA01", amount)], region=region, insutype="390", **extra)


# ---- 2. binding rules ------------------------------------------------------------------------------------
async def test_relation_allowed_by_region(stack: Stack) -> None:
    c = client(stack)
    bj_parent, bj_kid = await family(stack, region=BJ)
    # Beijing: 直系 only; a sibling is refused.
    await refused(stack, "G111", bind_request(c, bj_parent, bj_kid, relation="sibling", region=BJ).input,
                  "E_RELATION_NOT_ALLOWED", region=BJ)
    # Hangzhou (Zhejiang): 近亲属 includes siblings and grandchildren.
    hz_parent, hz_kid = await family(stack)
    assert await bind(c, hz_parent, hz_kid, relation="sibling")
    other = await person(c, uid("gc"), insutype="390", balance=None)
    assert await bind(c, hz_parent, other, relation="grandchild")


async def test_max_members_per_authorizer(stack: Stack) -> None:
    c = client(stack)
    parent = await person(c, uid("par"), balance="1000.00")
    for _ in range(5):  # Hangzhou: at most 5
        await bind(c, parent, await person(c, uid("m"), insutype="390", balance=None))
    sixth = await person(c, uid("m"), insutype="390", balance=None)
    await refused(stack, "G111", bind_request(c, parent, sixth).input, "E_TOO_MANY_MEMBERS")
    # Haikou allows 6.
    hk_parent = await person(c, uid("par"), region=HK, balance="1000.00")
    for _ in range(6):
        await bind(c, hk_parent, await person(c, uid("m"), region=HK, insutype="390", balance=None), region=HK)
    seventh = await person(c, uid("m"), region=HK, insutype="390", balance=None)
    await refused(stack, "G111", bind_request(c, hk_parent, seventh, region=HK).input, "E_TOO_MANY_MEMBERS",
                  region=HK)


async def test_member_under_one_authorizer_where_the_region_says_so(stack: Stack) -> None:
    c = client(stack)
    mother = await person(c, uid("mo"), region=WH, balance="1000.00")
    father = await person(c, uid("fa"), region=WH, balance="1000.00")
    kid = await person(c, uid("kid"), region=WH, insutype="390", balance=None)
    await bind(c, mother, kid, region=WH)
    await refused(stack, "G111", bind_request(c, father, kid, region=WH).input, "E_MEMBER_ALREADY_BOUND", region=WH)
    # Hangzhou has no such rule: both parents may share with the child.
    hz_mother, hz_kid = await family(stack)
    hz_father = await person(c, uid("fa"), balance="1000.00")
    await bind(c, hz_mother, hz_kid)
    await bind(c, hz_father, hz_kid, rank=2)
    # The same pair twice is refused everywhere.
    await refused(stack, "G111", bind_request(c, hz_mother, hz_kid).input, "E_ALREADY_BOUND")


async def test_binding_changes_per_year(stack: Stack) -> None:
    c = client(stack)
    parent = await person(c, uid("par"), region=WH, balance="1000.00")
    kid = await person(c, uid("kid"), region=WH, insutype="390", balance=None)
    auth_id = await bind(c, parent, kid, region=WH, when="2026-02-01 10:00:00")  # change 1
    await ok(admin_call(c, "G112", {"auth_id": auth_id, "requester_psn_no": parent}, region=WH,
                        when="2026-03-01 10:00:00"))  # change 2
    msg = await refused(stack, "G111", bind_request(c, parent, kid, region=WH, when="2026-04-01 10:00:00").input,
                        "E_TOO_MANY_CHANGES", region=WH, when="2026-04-01 10:00:00")
    assert "2026" in msg
    # A new insurance year, a fresh count.
    assert await bind(c, parent, kid, region=WH, when="2027-01-02 10:00:00")


async def test_both_evouchers_activated(stack: Stack) -> None:
    c = client(stack)
    parent = await person(c, uid("par"), balance="1000.00")
    kid = await person(c, uid("kid"), insutype="390", balance=None, evoucher_active=False)
    await refused(stack, "G111", bind_request(c, parent, kid).input, "E_EVOUCHER_INACTIVE")


async def test_authorizer_must_be_employee_with_a_normal_account(stack: Stack) -> None:
    c = client(stack)
    resident = await person(c, uid("res"), insutype="390", balance="100.00")  # a 居民 with some account
    kid = await person(c, uid("kid"), insutype="390", balance=None)
    await refused(stack, "G111", bind_request(c, resident, kid).input, "E_AUTHORIZER_NOT_EMPLOYEE")
    parent = await person(c, uid("par"), balance="100.00")
    await ok(admin_call(c, "G105", {"psn_no": parent, "status": "suspended"}))
    await refused(stack, "G111", bind_request(c, parent, kid).input, "E_ACCOUNT_NOT_NORMAL")


async def test_minimum_authorizer_balance(stack: Stack) -> None:
    c = client(stack)
    poor = await person(c, uid("par"), region=WH, balance="99.99")  # Wuhan: at least 100.00
    kid = await person(c, uid("kid"), region=WH, insutype="390", balance=None)
    await refused(stack, "G111", bind_request(c, poor, kid, region=WH).input, "E_BALANCE_TOO_LOW", region=WH)


async def test_both_regions_have_the_service_open(stack: Stack) -> None:
    c = client(stack)
    parent = await person(c, uid("par"), balance="1000.00")
    kid = await person(c, uid("kid"), region=CLOSED, insutype="390", balance=None)
    await refused(stack, "G111", bind_request(c, parent, kid).input, "E_SERVICE_NOT_OPEN")


async def test_cross_province_sharing_allowed_or_not(stack: Stack) -> None:
    c = client(stack)
    parent = await person(c, uid("par"), balance="1000.00")
    far = await person(c, uid("far"), region=NO_CROSS, insutype="390", balance=None)
    await refused(stack, "G111", bind_request(c, parent, far, relation="parent").input,
                  "E_CROSS_PROVINCE_NOT_ALLOWED")
    hainan = await person(c, uid("hn"), region=HK, insutype="390", balance=None)
    assert await bind(c, parent, hainan, relation="parent")  # both Zhejiang and Hainan allow it


async def test_identity_check_sms_and_face(stack: Stack) -> None:
    c = client(stack)
    parent, kid = await family(stack)
    sent = await ok(admin_call(c, "G110", {"psn_no": parent}, when="2026-02-01 10:00:00"))
    code = sent["code"]
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for verify, msg in (({"method": "sms", "code": wrong}, "wrong"), ({"method": "face", "passed": False}, "face"),
                        (None, "required")):
        req = bind_request(c, parent, kid, when="2026-02-01 10:01:00")
        data = dict(req.input)
        data.pop("verify")
        if verify is not None:
            data["verify"] = verify
        assert msg in await refused(stack, "G111", data, "E_VERIFY_FAILED", when="2026-02-01 10:01:00")
    # Expired: the code is valid for 5 minutes of business time.
    late = bind_request(c, parent, kid, when="2026-02-01 10:05:01", verify={"method": "sms", "code": code})
    assert "expired" in await refused(stack, "G111", late.input, "E_VERIFY_FAILED", when="2026-02-01 10:05:01")
    good = bind_request(c, parent, kid, when="2026-02-01 10:04:00", verify={"method": "sms", "code": code})
    assert (await c.accounts_admin(good)).infcode == 0
    # A code is used once.
    other = await person(c, uid("kid"), insutype="390", balance=None)
    again = bind_request(c, parent, other, when="2026-02-01 10:04:30", verify={"method": "sms", "code": code})
    assert "already used" in await refused(stack, "G111", again.input, "E_VERIFY_FAILED", when="2026-02-01 10:04:30")


async def test_unbind_and_freeze_take_effect_at_once(stack: Stack) -> None:
    c = client(stack)
    parent, kid = await family(stack)
    auth_id = await bind(c, parent, kid)
    first = await c.visit(kid_visit(kid, "10.00", "2026-02-02 09:00:00"))
    assert first.setlinfo is not None and first.setlinfo.acct_mulaid_pay == D("10.00")
    # Freeze all sharing: the very next settlement gets nothing from the parent.
    await ok(admin_call(c, "G113", {"authorizer_psn_no": parent}, when="2026-02-02 09:01:00"))
    frozen = await c.visit(kid_visit(kid, "10.00", "2026-02-02 09:02:00"))
    assert frozen.setlinfo is not None and frozen.setlinfo.acct_mulaid_pay == D("0.00")
    assert frozen.setlinfo.psn_cash_pay == D("10.00")
    assert any("froze sharing" in n for n in frozen.setlinfo.notes)
    await ok(admin_call(c, "G114", {"authorizer_psn_no": parent}, when="2026-02-02 09:03:00"))
    # Freeze one binding only.
    await ok(admin_call(c, "G113", {"authorizer_psn_no": parent, "auth_id": auth_id}, when="2026-02-02 09:04:00"))
    one = await c.visit(kid_visit(kid, "10.00", "2026-02-02 09:05:00"))
    assert one.setlinfo is not None and one.setlinfo.acct_mulaid_pay == D("0.00")
    await ok(admin_call(c, "G114", {"authorizer_psn_no": parent, "auth_id": auth_id}, when="2026-02-02 09:06:00"))
    back = await c.visit(kid_visit(kid, "10.00", "2026-02-02 09:07:00"))
    assert back.setlinfo is not None and back.setlinfo.acct_mulaid_pay == D("10.00")
    # Only a party may unbind.
    stranger = await person(c, uid("x"), balance="1.00")
    await refused(stack, "G112", {"auth_id": auth_id, "requester_psn_no": stranger}, "E_NOT_PARTY")
    await ok(admin_call(c, "G112", {"auth_id": auth_id, "requester_psn_no": kid}, when="2026-02-02 09:08:00"))
    gone = await c.visit(kid_visit(kid, "10.00", "2026-02-02 09:09:00"))
    assert gone.setlinfo is not None and gone.setlinfo.acct_mulaid_pay == D("0.00")
    assert await balance(c, parent) == D("1000.00") - D("20.00")


async def test_reorder_and_change_caps(stack: Stack) -> None:
    c = client(stack)
    mother = await person(c, uid("mo"), region=BJ, balance="500.00")
    father = await person(c, uid("fa"), region=BJ, balance="500.00")
    kid = await person(c, uid("kid"), region=BJ, insutype="390", balance=None)
    a_mother = await bind(c, mother, kid, region=BJ, rank=1)
    a_father = await bind(c, father, kid, region=BJ, rank=2)
    first = await c.visit(kid_visit(kid, "30.00", "2026-02-03 09:00:00", facility=PHARMACY, region=BJ))
    assert first.setlinfo is not None
    assert [p.authorizer_psn_no for p in first.setlinfo.mulaid_detail] == [mother]
    # Beijing lets the member reorder: father first now.
    await ok(admin_call(c, "G115", {"member_psn_no": kid, "auth_ids": [a_father, a_mother]}, region=BJ))
    second = await c.visit(kid_visit(kid, "30.00", "2026-02-03 09:10:00", facility=PHARMACY, region=BJ))
    assert second.setlinfo is not None
    assert [p.authorizer_psn_no for p in second.setlinfo.mulaid_detail] == [father]
    # The father caps his help at 10.00 a day: the mother pays the rest.
    await ok(admin_call(c, "G116", {"authorizer_psn_no": father, "auth_id": a_father, "day_cap": "10.00"},
                        region=BJ))
    third = await c.visit(kid_visit(kid, "30.00", "2026-02-04 09:00:00", facility=PHARMACY, region=BJ))
    assert third.setlinfo is not None
    assert [(p.authorizer_psn_no, p.amount) for p in third.setlinfo.mulaid_detail] == [
        (father, D("10.00")), (mother, D("20.00"))]
    # Only the authorizer may change caps; the order must name every active binding.
    await refused(stack, "G116", {"authorizer_psn_no": mother, "auth_id": a_father, "day_cap": "99.00"},
                  "E_NOT_PARTY", region=BJ)
    await refused(stack, "G115", {"member_psn_no": kid, "auth_ids": [a_father]}, "E_BAD_INPUT", region=BJ)


async def test_reorder_refused_where_the_region_does_not_allow_it(stack: Stack) -> None:
    c = client(stack)
    kid = await person(c, uid("kid"), region=CLOSED, insutype="390", balance=None)  # test region: reorder off
    await refused(stack, "G115", {"member_psn_no": kid, "auth_ids": ["Bnone"]}, "E_REORDER_NOT_ALLOWED",
                  region=CLOSED)


async def test_queries_bindings_costs_and_records(stack: Stack) -> None:
    c = client(stack)
    parent, kid = await family(stack)
    auth_id = await bind(c, parent, kid)
    await c.visit(kid_visit(kid, "40.00", "2026-02-05 09:00:00"))
    listing = await ok(admin_call(c, "G117", {"psn_no": parent}))
    assert [b["auth_id"] for b in listing["as_authorizer"]] == [auth_id]
    # The authorizer may query the member's costs; a stranger may not.
    costs = await ok(admin_call(c, "G118", {"requester_psn_no": parent, "member_psn_no": kid}, when="2026-03-01 10:00:00"))
    assert costs["settlements"] == 1 and costs["mulaid_amt"] == "40.00"
    assert costs["mulaid_by_authorizer"] == {parent: "40.00"}
    stranger = await person(c, uid("x"), balance="1.00")
    await refused(stack, "G118", {"requester_psn_no": stranger, "member_psn_no": kid}, "E_NOT_FAMILY")
    records = await ok(admin_call(c, "G119", {"psn_no": parent}))
    assert [r["amount"] for r in records["records"]] == ["1000.00", "-40.00"]


async def test_balance_change_event_on_every_movement(stack: Stack) -> None:
    import asyncio
    import aio_pika
    c = client(stack)
    conn = await aio_pika.connect(stack.amqp_url)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(f"{stack.ns}.observe.balance-{uid('q')}", arguments={"x-expires": 60000})
        parent, kid = await family(stack, parent_balance="100.00")
        await q.bind(stack.names.events_exchange, f"balance.{parent}")
        await ok(admin_call(c, "G102", {"psn_no": parent, "amount": "5.00"}))
        await bind(c, parent, kid)
        await c.visit(kid_visit(kid, "7.00", "2026-02-06 09:00:00"))
        seen = []
        for _ in range(50):
            msg = await q.get(no_ack=True, fail=False)
            if msg is None:
                if len(seen) >= 2:
                    break
                await asyncio.sleep(0.1)
                continue
            seen.append(__import__("json").loads(msg.body))
        assert [(e["reason"], e["delta"], e["balc"]) for e in seen] == [("deposit", "5.00", "105.00"),
                                                                         ("mutual_aid", "-7.00", "98.00")]
    finally:
        await conn.close()


# ---- 3. scope --------------------------------------------------------------------------------------------
async def test_mutual_aid_scope_by_settlement_type(stack: Stack) -> None:
    c = client(stack)
    parent = await person(c, uid("par"), region=WH, balance="5000.00")
    kid = await person(c, uid("kid"), region=WH, insutype="390", balance=None)
    await bind(c, parent, kid, region=WH)
    # Wuhan: mutual aid pays pharmacy and outpatient, not inpatient.
    stay = await c.visit(visit(kid, HOSPITAL3, "21", "2026-02-07 09:00:00", [line("BED", "2000.00")], region=WH,
                               insutype="390"))
    assert stay.setlinfo is not None and stay.setlinfo.acct_mulaid_pay == D("0.00")
    assert any("mutual aid not allowed" in n for n in stay.setlinfo.notes)
    clinic = await c.visit(visit(kid, HOSPITAL3, "11", "2026-02-07 10:00:00", [line("EXAM", "100.00")], region=WH,
                                 insutype="390"))
    assert clinic.setlinfo is not None and clinic.setlinfo.acct_mulaid_pay == clinic.setlinfo.psn_part_amt


async def test_never_pays_cosmetic_fitness_wellness_and_pilots_only_where_run(stack: Stack) -> None:
    c = client(stack)
    parent, kid = await family(stack)
    await bind(c, parent, kid)
    # Hangzhou catalog: XM01 cosmetic, XF01 fitness, XC03 wellness; XV01 vaccination (Hangzhou runs the pilot).
    out = await c.visit(visit(kid, PHARMACY, "41", "2026-02-08 09:00:00",
                              [line("XM01", "100.00"), line("XF01", "50.00"), line("XC03", "30.00"),
                               line("XV01", "200.00"), line("XA01", "20.00")], insutype="390"))
    s = out.setlinfo
    assert s is not None
    assert s.psn_cash_pay == D("180.00")  # cosmetic + fitness + wellness: never from any account
    assert s.acct_mulaid_pay == D("220.00")  # vaccination pilot + the medicine
    # Shanghai runs no vaccination pilot: a vaccine declared as such is cash, even from one's own account.
    sh = await person(c, uid("sh"), region=SH, balance="1000.00")
    vac = await c.visit(visit(sh, SH_PHARMACY, "41", "2026-02-08 09:00:00",
                              [dict(line("VAC", "200.00", lv="03"), item_scope="vaccination")], region=SH))
    assert vac.setlinfo is not None and vac.setlinfo.acct_pay == D("0.00") and vac.setlinfo.psn_cash_pay == D("200.00")


async def test_resident_contribution_paid_from_the_shared_account(stack: Stack) -> None:
    c = client(stack)
    parent, kid = await family(stack)
    await bind(c, parent, kid)
    out = await ok(admin_call(c, "G141", {"authorizer_psn_no": parent, "member_psn_no": kid, "amount": "380.00",
                                          "year": 2026}))
    assert out["authorizer_balc"] == "620.00"
    employee_kid = await person(c, uid("kid"), balance="0.00")
    await bind(c, parent, employee_kid)
    await refused(stack, "G141", {"authorizer_psn_no": parent, "member_psn_no": employee_kid, "amount": "380.00",
                                  "year": 2026}, "E_NOT_RESIDENT_INSURED")
    unbound = await person(c, uid("kid"), insutype="390", balance=None)
    await refused(stack, "G141", {"authorizer_psn_no": parent, "member_psn_no": unbound, "amount": "380.00",
                                  "year": 2026}, "E_BINDING_NOT_FOUND")
    closed_parent = await person(c, uid("par"), region=CLOSED, balance="1000.00")
    await refused(stack, "G141", {"authorizer_psn_no": closed_parent, "member_psn_no": kid, "amount": "1.00",
                                  "year": 2026}, "E_CONTRIBUTION_NOT_ALLOWED", region=CLOSED)
    assert await balance(c, parent) == D("620.00")


# ---- 4. limits -------------------------------------------------------------------------------------------
async def test_month_cap_and_fresh_next_month(stack: Stack) -> None:
    c = client(stack)
    parent, kid = await family(stack)
    await bind(c, parent, kid, month_cap="100.00")
    a = await c.visit(kid_visit(kid, "60.00", "2026-03-10 09:00:00"))
    b = await c.visit(kid_visit(kid, "60.00", "2026-03-31 23:59:59"))
    nxt = await c.visit(kid_visit(kid, "60.00", "2026-04-01 00:00:00"))
    assert [o.setlinfo.acct_mulaid_pay for o in (a, b, nxt) if o.setlinfo] == [D("60.00"), D("40.00"), D("60.00")]


async def test_zhejiang_annual_mutual_aid_cap(stack: Stack) -> None:
    c = client(stack)
    parent, kid = await family(stack, parent_balance="9000.00")
    await bind(c, parent, kid)
    big = await c.visit(kid_visit(kid, "4900.00", "2026-05-01 09:00:00"))
    capped = await c.visit(kid_visit(kid, "300.00", "2026-06-01 09:00:00"))
    assert big.setlinfo is not None and capped.setlinfo is not None
    assert big.setlinfo.acct_mulaid_pay == D("4900.00")
    assert capped.setlinfo.acct_mulaid_pay == D("100.00")  # 5000.00 a year per authorizer in Zhejiang
    assert any("annual mutual-aid cap 5000.00" in n for n in capped.setlinfo.notes)
    fresh = await c.visit(kid_visit(kid, "300.00", "2027-01-02 09:00:00"))
    assert fresh.setlinfo is not None and fresh.setlinfo.acct_mulaid_pay == D("300.00")


async def test_online_drug_purchase_daily_limit(stack: Stack) -> None:
    c = client(stack)
    parent, kid = await family(stack, parent_balance="9000.00")
    await bind(c, parent, kid)
    # Hangzhou: personal accounts pay at most 2000.00 a day for online drug purchases.
    first = await c.visit(kid_visit(kid, "1500.00", "2026-07-01 09:00:00", setl_chnl="online"))
    second = await c.visit(kid_visit(kid, "800.00", "2026-07-01 20:00:00", setl_chnl="online"))
    offline = await c.visit(kid_visit(kid, "800.00", "2026-07-01 21:00:00"))
    assert [o.setlinfo.acct_pay for o in (first, second, offline) if o.setlinfo] == [
        D("1500.00"), D("500.00"), D("800.00")]
    assert second.setlinfo is not None and second.setlinfo.psn_cash_pay == D("300.00")


# ---- 5. 医保钱包 ------------------------------------------------------------------------------------------
async def test_wallet_transfer_claim_and_settlement_order(stack: Stack) -> None:
    c = client(stack)
    son = await person(c, uid("son"), balance="5000.00")  # Hangzhou employee
    mother = await person(c, uid("mom"), region=HK, psn_type="retired", balance="100.00")  # in Hainan
    sent = await ok(admin_call(c, "G131", {"from_psn_no": son, "to_psn_no": mother, "relation": "parent",
                                           "amount": "2000.00",
                                           "verify": await face(c, son, when="2026-03-01 10:00:00")},
                               when="2026-03-01 10:00:00"))
    assert sent["returns_at"] == "2026-03-02 06:00:00"
    await ok(admin_call(c, "G132", {"to_psn_no": mother, "transfer_id": sent["transfer_id"]}, region=HK,
                        when="2026-03-01 12:00:00"))
    assert (await account(c, mother))["wallet_balc"] == "2000.00"
    # Dialysis in Haikou: her own account first, then the wallet, then cash.
    out = await c.visit(visit(mother, HK_HOSPITAL2, "14", "2026-03-02 09:00:00", [line("DIALYSIS", "3000.00")],
                              region=HK))
    s = out.setlinfo
    assert s is not None and out.status == "settled"
    assert s.balc == D("0.00")
    assert s.wallet_pay == min(D("2000.00"), s.psn_part_amt - D("100.00"))
    assert s.acct_pay == D("100.00") + s.wallet_pay and s.acct_mulaid_pay == D("0.00")
    assert s.psn_cash_pay == s.psn_part_amt - s.acct_pay
    assert await balance(c, son) == D("3000.00")


async def test_wallet_rules(stack: Stack) -> None:
    c = client(stack)
    son = await person(c, uid("son"), balance="9000.00")
    mother = await person(c, uid("mom"), region=HK, balance=None)
    local = await person(c, uid("bro"), insutype="390", balance=None)
    async def t(amount: str, at: str, to: str = mother) -> dict[str, Any]:
        """A transfer with the sender's face check (G109) recorded at that time: a refusal uses no token up."""
        return {"from_psn_no": son, "to_psn_no": to, "relation": "parent", "amount": amount,
                "verify": await face(c, son, when=at)}

    async def refused_at(data_amount: str, code: str, at: str, to: str = mother) -> None:
        await refused(stack, "G131", await t(data_amount, at, to), code, when=at)

    await refused_at("2000.01", "E_WALLET_AMOUNT", "2026-03-05 10:00:00")
    await refused_at("10.00", "E_WALLET_QUIET_HOURS", "2026-03-05 22:00:00")
    await refused_at("10.00", "E_WALLET_QUIET_HOURS", "2026-03-06 05:59:59")
    await refused_at("10.00", "E_WALLET_SAME_PROVINCE", "2026-03-05 10:00:00", to=local)
    for minute in range(3):
        at = f"2026-03-05 10:0{minute}:00"
        await ok(admin_call(c, "G131", await t("10.00", at), when=at))
    await refused_at("10.00", "E_WALLET_DAILY_COUNT", "2026-03-05 10:05:00")
    at = "2026-03-06 06:00:00"
    assert await ok(admin_call(c, "G131", await t("10.00", at), when=at))  # a new day
    at = "2026-03-06 10:00:00"
    for verify in ({"method": "face", "passed": False}, {"method": "face", "passed": True}):  # a claim is not enough
        await refused(stack, "G131", dict(await t("10.00", at), verify=verify), "E_VERIFY_FAILED", when=at)


async def test_unclaimed_transfer_returns_at_six_next_day(stack: Stack) -> None:
    c = client(stack)
    son = await person(c, uid("son"), balance="1000.00")
    mother = await person(c, uid("mom"), region=HK, balance=None)
    sent = await ok(admin_call(c, "G131", {"from_psn_no": son, "to_psn_no": mother, "relation": "parent",
                                           "amount": "300.00",
                                           "verify": await face(c, son, when="2026-03-10 21:00:00")},
                               when="2026-03-10 21:00:00"))
    before = await ok(admin_call(c, "G121", {"psn_no": son}, when="2026-03-11 05:59:59"))
    assert before["balc"] == "700.00"  # still in transit
    after = await ok(admin_call(c, "G121", {"psn_no": son}, when="2026-03-11 06:00:00"))
    assert after["balc"] == "1000.00"  # back at 06:00
    await refused(stack, "G132", {"to_psn_no": mother, "transfer_id": sent["transfer_id"]}, "E_TRANSFER_EXPIRED",
                  region=HK, when="2026-03-11 07:00:00")


# ---- 6. 亲情账户 ------------------------------------------------------------------------------------------
async def test_proxy_settles_with_the_members_own_account(stack: Stack) -> None:
    c = client(stack)
    daughter = await person(c, uid("dau"), balance="3000.00")
    father = await person(c, uid("fa"), psn_type="retired", balance="50.00")
    helper = await person(c, uid("helper"), balance="3000.00")
    await bind(c, helper, father, relation="parent")  # 共济 exists too, but a proxy settlement ignores it
    checked = await face(c, daughter)
    await refused(stack, "G151", {"proxy_psn_no": daughter, "member_psn_no": father, "relation": "parent"},
                  "E_VERIFY_FAILED")
    await ok(admin_call(c, "G151", {"proxy_psn_no": daughter, "member_psn_no": father, "relation": "parent",
                                    "verify": checked}))
    proxy_visit = await c.visit(proxied(father, daughter, "80.00", "2026-03-13 09:00:00"))
    s = proxy_visit.setlinfo
    assert s is not None
    # The father's own 50.00 pays; the helper's 共济 is not used in a proxy settlement; the rest is cash.
    assert s.acct_pay == D("50.00") and s.acct_mulaid_pay == D("0.00") and s.psn_cash_pay == D("30.00")
    assert any("亲情账户" in n for n in s.notes)
    assert await balance(c, daughter) == D("3000.00")  # no money moved between people
    assert await balance(c, helper) == D("3000.00")
    # The same bill without the proxy: 共济 from the helper pays (the father's account is empty now).
    direct_visit = await c.visit(visit(father, PHARMACY, "41", "2026-03-13 11:00:00", [line("XA01", "80.00")]))
    assert direct_visit.setlinfo is not None and direct_visit.setlinfo.acct_mulaid_pay == D("80.00")
    # Someone without the link is refused, and nothing changes.
    stranger = await person(c, uid("x"), balance="10.00")
    refused_visit = await c.visit(proxied(father, stranger, "10.00", "2026-03-13 10:00:00"))
    assert refused_visit.status == "refused" and refused_visit.err_code == "E_PROXY_NOT_AUTHORIZED"
    # At most 5 members per proxy.
    for _ in range(4):
        m = await person(c, uid("m"), balance=None)
        await ok(admin_call(c, "G151", {"proxy_psn_no": daughter, "member_psn_no": m, "relation": "parent",
                                        "verify": await face(c, daughter)}))
    sixth = await person(c, uid("m"), balance=None)
    await refused(stack, "G151", {"proxy_psn_no": daughter, "member_psn_no": sixth, "relation": "parent",
                                  "verify": await face(c, daughter, when="2026-02-01 10:00:00")},
                  "E_TOO_MANY_PROXY_MEMBERS")


def proxied(member: str, proxy: str, amount: str, when: str) -> SettleVisit:
    base = visit(member, PHARMACY, "41", when, [line("XA01", amount)]).model_dump(mode="json")
    return SettleVisit.model_validate({**base, "proxy_psn_no": proxy})


# ---- Shanghai and Zhejiang: the same family and bills, different outcomes ---------------------------------
async def test_shanghai_and_zhejiang_settle_the_same_family_differently(stack: Stack) -> None:
    c = client(stack)
    results: dict[str, list[Any]] = {}
    for region, pharmacy in ((SH, SH_PHARMACY), (HZ, PHARMACY)):
        # The same family: the mother's account holds 5000.00 this year's money and 1000.00 carried over.
        mother = await person(c, uid("mo"), region=region, balance="5000.00", prior_balc="1000.00",
                              opened_at="2026-03-01 08:00:00")
        kid = await person(c, uid("kid"), region=region, insutype="390", balance=None)
        await bind(c, mother, kid, region=region, when="2026-03-01 09:00:00")
        bills = [("800.00", "2026-03-10 10:00:00"), ("4500.00", "2026-04-10 10:00:00")]
        outcomes = [await c.visit(kid_visit(kid, amount, when, facility=pharmacy, region=region))
                    for amount, when in bills]
        results[region] = [o.setlinfo for o in outcomes]
        results[region + "-mother"] = [mother]
    sh, hz = results[SH], results[HZ]
    # Shanghai shares only the prior-year account (历年账户): 800.00, then the 200.00 left of it.
    assert [s.acct_mulaid_pay for s in sh] == [D("800.00"), D("200.00")]
    assert sh[1].psn_cash_pay == D("4300.00")
    # Zhejiang shares the whole account but at most 5000.00 a year per authorizer: 800.00, then 4200.00.
    assert [s.acct_mulaid_pay for s in hz] == [D("800.00"), D("4200.00")]
    assert hz[1].psn_cash_pay == D("300.00")
    assert any("annual mutual-aid cap 5000.00" in n for n in hz[1].notes)
    assert not any("annual mutual-aid cap" in n for n in sh[1].notes)
    # Shanghai: the mother's current-year account is untouched by her child's bills ...
    sh_mother = results[SH + "-mother"][0]
    acct = await ok(admin_call(c, "G121", {"psn_no": sh_mother}, region=SH, when="2026-06-30 23:00:00"))
    assert (acct["current_balc"], acct["prior_balc"]) == ("5000.00", "0.00")
    # ... until the insurance year turns on 1 July: it becomes prior-year money and may be shared.
    kid_sh = (await ok(admin_call(c, "G117", {"psn_no": sh_mother}, region=SH)))["as_authorizer"][0]["member_psn_no"]
    july = await c.visit(kid_visit(kid_sh, "100.00", "2026-07-02 10:00:00", facility=SH_PHARMACY, region=SH))
    assert july.setlinfo is not None and july.setlinfo.acct_mulaid_pay == D("100.00")
    acct = await ok(admin_call(c, "G121", {"psn_no": sh_mother}, region=SH, when="2026-07-02 11:00:00"))
    assert (acct["current_balc"], acct["prior_balc"]) == ("0.00", "4900.00")


async def test_shanghai_patient_uses_current_year_account_first(stack: Stack) -> None:
    c = client(stack)
    p = await person(c, uid("sh"), region=SH, balance="100.00", prior_balc="500.00", opened_at="2026-03-01 08:00:00")
    out = await c.visit(visit(p, SH_PHARMACY, "41", "2026-03-05 10:00:00", [line("XA01", "150.00")], region=SH))
    assert out.setlinfo is not None and out.setlinfo.acct_pay == D("150.00")
    acct = await ok(admin_call(c, "G121", {"psn_no": p}, region=SH, when="2026-03-05 11:00:00"))
    assert (acct["current_balc"], acct["prior_balc"]) == ("0.00", "450.00")
