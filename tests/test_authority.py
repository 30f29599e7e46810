"""Who may do what, checked where the money is (issue 13, attacks 4, 7 and 9): each attack is tried as the
party who would try it, is refused, and changes nothing."""
from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from contracts.envelope import Reply, make_msgid
from contracts.pos import SettleVisit
from simulator.stack import read_dead_letters
from tests.harness import (HOSPITAL3, HZ, PHARMACY, Stack, balance, cumulative, direct, line, person,
                           register_facility, settle_input, uid, visit)

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal
OTHER_PHARMACY = "PHZ000000077"  # facility B, a pharmacy of the same region as A (PHARMACY)


async def _register_b(stack: Stack) -> None:
    assert stack.client is not None
    await register_facility(stack.client, OTHER_PHARMACY)


async def test_only_the_facility_that_settled_may_reverse_or_compensate(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    await _register_b(stack)
    p = await person(c, uid("p"), balance="100.00")
    day = "2026-04-01"
    _, s1 = await direct(c, "2102", settle_input(p, "41", [line("XA01", "40.00")]), when=f"{day} 10:00:00")
    req2, s2 = await direct(c, "2102", settle_input(p, "41", [line("XA01", "30.00")]), when=f"{day} 10:01:00")
    assert s1.infcode == 0 and s2.infcode == 0 and s1.output and s2.output
    assert await balance(c, p) == D("30.00")  # 100.00 - 40.00 - 30.00

    # B reverses A's 40.00 (2103) and 冲正s A's 30.00 (2601): both refused, nothing moves.
    _, rev = await direct(c, "2103", {"psn_no": p, "setl_id": s1.output["setl_id"]}, when=f"{day} 10:02:00",
                          facility=OTHER_PHARMACY)
    assert (rev.infcode, rev.err_code) == (-1, "E_NOT_YOUR_SETTLEMENT")
    _, comp = await direct(c, "2601", {"psn_no": p, "omsgid": req2.msgid, "oinfno": "2102"},
                           when=f"{day} 10:03:00", facility=OTHER_PHARMACY)
    assert (comp.infcode, comp.err_code) == (-1, "E_NOT_YOUR_MSGID")
    assert await balance(c, p) == D("30.00")
    assert (await cumulative(c, p, f"{day} 11:00:00"))["settlements"] == 2

    # A may: its reversal gives the 40.00 back.
    _, mine = await direct(c, "2103", {"psn_no": p, "setl_id": s1.output["setl_id"]}, when=f"{day} 10:04:00")
    assert mine.infcode == 0, (mine.err_code, mine.err_msg)
    assert await balance(c, p) == D("70.00")


async def test_no_tombstone_for_another_facilitys_future_msgid(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    await _register_b(stack)
    p = await person(c, uid("p"), balance="100.00")
    when = "2026-04-02 10:00:00"
    # A's next msgid is predictable (code + business time + sequence): B tries to block it.
    future = make_msgid(PHARMACY, "20260402100000", 4321)
    _, comp = await direct(c, "2601", {"psn_no": p, "omsgid": future, "oinfno": "2102"}, when=when,
                           facility=OTHER_PHARMACY)
    assert (comp.infcode, comp.err_code) == (-1, "E_NOT_YOUR_MSGID")
    _, rep = await direct(c, "2102", settle_input(p, "41", [line("XA01", "25.00")]), when=when, msgid=future)
    assert rep.infcode == 0, (rep.err_code, rep.err_msg)  # A's visit is not blocked
    assert await balance(c, p) == D("75.00")


async def test_a_sign_no_is_valid_only_on_its_own_business_day(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    p = await person(c, uid("p"), balance="100.00")
    future_sn = await c.sign_in(PHARMACY, "2099-06-01 08:00:00", HZ)  # valid until 2099-06-01 23:59:59
    for day in ("2026-04-03", "2020-04-03"):
        req = c.envelope("2102", settle_input(p, "41", [line("XA01", "10.00")]), insuplc_admdvs=HZ,
                         when=f"{day} 10:00:00", fixmedins_code=PHARMACY, sign_no=future_sn)
        rep = await c.bureau(req)
        assert (rep.infcode, rep.err_code) == (-1, "E_SIGN_NO_WRONG_DAY"), rep.err_msg
    assert await balance(c, p) == D("100.00")
    # ... and on its own day it works.
    req = c.envelope("2102", settle_input(p, "41", [line("XA01", "10.00")]), insuplc_admdvs=HZ,
                     when="2099-06-01 10:00:00", fixmedins_code=PHARMACY, sign_no=future_sn)
    assert (await c.bureau(req)).infcode == 0
    assert await balance(c, p) == D("90.00")


async def test_a_reused_visit_id_with_other_content_is_refused(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    p = await person(c, uid("p"), balance="100.00")
    first = visit(p, PHARMACY, "41", "2026-04-04 10:00:00", [line("XA01", "20.00")])
    out = await c.visit(first, timeout=60)
    assert out.status == "settled"
    # Same visit_id, other content (a bigger bill): not answered with the first outcome, but refused and parked.
    other = SettleVisit.model_validate({**first.model_dump(mode="json"),
                                        "details": [line("XA01", "90.00")]})
    await c.submit(other)
    reasons: list[dict[str, str]] = []
    for _ in range(100):
        reasons += [d for d in await read_dead_letters(stack.amqp_url, stack.ns, consume=False) if d["message_id"] == first.visit_id]
        if reasons:
            break
        await asyncio.sleep(0.2)
    assert reasons and reasons[0]["reason"].startswith("E_VISIT_ID_CONFLICT")
    # The same command again is a plain repeat: the first outcome again, and still one payment of 20.00.
    await c.submit(first)
    await asyncio.sleep(1.0)
    statuses = {o.status for o in c.outcome_events if o.visit_id == first.visit_id}
    assert statuses == {"settled"}
    assert await balance(c, p) == D("80.00")


async def test_money_at_the_upper_bound_settles_or_is_refused_cleanly(stack: Stack) -> None:
    """contracts.money.MAX_AMOUNT (999999999999.99, 12 digits of yuan) is the one limit of every hop."""
    from contracts.money import MAX_AMOUNT
    from contracts.settlement import MAX_BILL
    from tests.harness import account, admin_call
    c = stack.client
    assert c is not None
    rich = await person(c, uid("rich"), balance=f"{MAX_AMOUNT}")
    assert await balance(c, rich) == MAX_AMOUNT
    # A 13-digit balance never arises: a deposit of 0.01 more is refused before money moves ...
    rep = await admin_call(c, "G102", {"psn_no": rich, "amount": "0.01"})
    assert (rep.infcode, rep.err_code) == (-1, "E_AMOUNT_TOO_LARGE"), rep.err_msg
    assert await balance(c, rich) == MAX_AMOUNT
    # ... and so is a 13-digit opening balance (the wire format refuses it).
    rep = await admin_call(c, "G101", {"psn_no": uid("x"), "insuplc_admdvs": HZ, "opening_balc": "1000000000000.00"})
    assert (rep.infcode, rep.err_code) == (-1, "E_BAD_INPUT")
    # The largest bill settles through the POS, bureau and accounts: a pharmacy purchase (not pooled in the
    # shipped Hangzhou policy) paid wholly from the account: 999999999999.99 - 10000000.00 = 999989999999.99.
    out = await c.visit(visit(rich, PHARMACY, "41", "2026-04-05 10:00:00", [line("XA01", f"{MAX_BILL}")]),
                        timeout=60)
    assert out.status == "settled", (out.err_code, out.err_msg)
    assert out.setlinfo is not None and out.setlinfo.acct_pay == MAX_BILL
    assert out.setlinfo.balc == D("999989999999.99") == await balance(c, rich)
    # One fen more than the largest bill: refused at the bureau's door, nothing moves.
    _, rep = await direct(c, "2102", settle_input(rich, "41", [line("XA01", f"{MAX_BILL + D('0.01')}")]),
                          when="2026-04-05 11:00:00")
    assert (rep.infcode, rep.err_code) == (-1, "E_BAD_INPUT")
    assert (await account(c, rich))["balc"] == "999989999999.99"


async def test_a_planted_conflict_does_not_end_the_pos_visit(stack: Stack) -> None:
    """Attack 6 with one shared broker user: a request reusing the POS's in-flight msgid with other content
    makes the bureau answer E_MSGID_CONFLICT to reply_to "pos". The POS ignores it; the visit settles."""
    import signal
    import sqlite3
    c = stack.client
    assert c is not None
    p = await person(c, uid("p"), balance="100.00")
    stack.kill("accounts", signal.SIGSTOP)  # the payment waits: the settle msgid stays in flight
    try:
        cmd = visit(p, PHARMACY, "41", "2026-04-06 10:00:00", [line("XA01", "40.00")], presettle=False,
                    timeout_ms=120000)
        await c.submit(cmd)
        msgid = None
        for _ in range(100):
            db = sqlite3.connect(stack.data_dir / "pos.db", timeout=30)
            try:
                row = db.execute("SELECT msgid FROM visits WHERE visit_id=? AND stage='settle'",
                                 (cmd.visit_id,)).fetchone()
            finally:
                db.close()
            if row:
                msgid = row[0]
                break
            await asyncio.sleep(0.1)
        assert msgid is not None
        sn = await c.sign_in(PHARMACY, "2026-04-06 00:00:01", HZ)
        planted = c.envelope("2102", settle_input(p, "41", [line("XA01", "1.00")]), insuplc_admdvs=HZ,
                             when="2026-04-06 10:00:00", fixmedins_code=PHARMACY, msgid=msgid, sign_no=sn)
        from services.shared.store import OutMessage
        await c.broker.publish(OutMessage(stack.names.bureau_exchange, HZ, planted.model_dump_json().encode(),
                                          message_id=msgid, reply_to="pos"))
        await asyncio.sleep(1.0)  # the bureau answers the conflict to "pos" meanwhile
    finally:
        stack.kill("accounts", signal.SIGCONT)
    out = await c.outcome(cmd.visit_id, timeout=60)
    assert out.status == "settled", (out.err_code, out.err_msg)
    assert await balance(c, p) == D("60.00")


async def _sign_in_raw(stack: Stack, facility: str, day: str, headers: dict[str, str] | None) -> "Reply":
    """A 9001 with exactly these AMQP headers (None: no credential at all)."""
    from services.shared.store import OutMessage
    c = stack.client
    assert c is not None
    req = c.envelope("9001", {"opter_no": "x"}, insuplc_admdvs=HZ, when=f"{day} 08:00:00", fixmedins_code=facility)
    fut = asyncio.get_running_loop().create_future()
    c._replies[req.msgid] = fut
    try:
        await c.broker.publish(OutMessage(stack.names.bureau_exchange, "registry", req.model_dump_json().encode(),
                                          message_id=req.msgid, reply_to=c.key, headers=headers))
        return await asyncio.wait_for(fut, 30)
    finally:
        c._replies.pop(req.msgid, None)


async def test_sign_in_needs_the_facilitys_credential(stack: Stack) -> None:
    """Attack 7: 9001 with no credential, someone else's, a forged one, an old one, or a replayed nonce."""
    from contracts import credentials as cr
    token = cr.paas_token(PHARMACY)
    day = "2026-04-07"
    cases = {
        "E_SIGNATURE_MISSING": None,
        "E_SIGNATURE_INVALID": cr.sign(PHARMACY, "0" * 32),  # a guessed token
        "E_SIGNATURE_EXPIRED": cr.sign(PHARMACY, token, now=__import__("time").time() - 3600),
    }
    for code, headers in cases.items():
        rep = await _sign_in_raw(stack, PHARMACY, day, headers)
        assert (rep.infcode, rep.err_code) == (-1, code), rep.err_msg
    # B's valid credential does not sign A in.
    rep = await _sign_in_raw(stack, PHARMACY, day, cr.sign(OTHER_PHARMACY, cr.paas_token(OTHER_PHARMACY)))
    assert (rep.infcode, rep.err_code) == (-1, "E_SIGNATURE_INVALID")
    # The right credential works once; the same nonce again (a captured sign-in replayed) is refused.
    good = cr.sign(PHARMACY, token)
    first = await _sign_in_raw(stack, PHARMACY, day, good)
    assert first.infcode == 0 and first.output is not None
    again = await _sign_in_raw(stack, PHARMACY, day, good)
    assert (again.infcode, again.err_code) == (-1, "E_NONCE_REUSED")
    # A refused sign-in gave no sign_no that works: only the accepted one settles.
    p = await person(stack.client, uid("p"), balance="50.00")  # type: ignore[arg-type]
    req = stack.client.envelope("2102", settle_input(p, "41", [line("XA01", "5.00")]),  # type: ignore[union-attr]
                                insuplc_admdvs=HZ, when=f"{day} 10:00:00", fixmedins_code=PHARMACY,
                                sign_no=first.output["sign_no"])
    assert (await stack.client.bureau(req)).infcode == 0  # type: ignore[union-attr]


async def test_business_time_per_facility_within_tolerance(amqp_url: str, run_id: str,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """Attack 7: back-dating to spend a 50.00 day cap again on "yesterday" (tolerance 1 h back, 2 days ahead)."""
    from pathlib import Path

    from tests.harness import bind
    s = Stack(amqp_url, f"bt{run_id}", Path(tmp_path_factory.mktemp("biztime")))
    s.env.update({"GONGJI_BIZ_TIME_BACK_S": "3600", "GONGJI_BIZ_TIME_AHEAD_S": str(2 * 86400)})
    await s.start()
    try:
        c = s.client
        assert c is not None
        mother = await person(c, uid("mo"), balance="500.00")
        kid = await person(c, uid("kid"), balance="0.00")
        await bind(c, mother, kid, day_cap="50.00")
        _, rep = await direct(c, "2102", settle_input(kid, "41", [line("XA01", "80.00")]), when="2026-05-10 10:00:00")
        assert rep.infcode == 0 and rep.output is not None and rep.output["acct_mulaid_pay"] == "50.00"
        # Half an hour back is within the tolerance (messages may arrive out of order) ...
        _, rep = await direct(c, "2102", settle_input(kid, "41", [line("XA01", "10.00")]), when="2026-05-10 09:30:00")
        assert rep.infcode == 0 and rep.output is not None and rep.output["acct_mulaid_pay"] == "0.00"  # cap spent
        # ... but yesterday is not: neither a sign-in for it nor a settlement stamped with it.
        with pytest.raises(RuntimeError, match="E_BIZ_TIME_REFUSED"):
            await c.sign_in(PHARMACY, "2026-05-09 10:00:00", HZ)
        # Nor a jump ahead beyond 2 days (it would open future day windows, and push the facility's clock).
        with pytest.raises(RuntimeError, match="E_BIZ_TIME_REFUSED"):
            await c.sign_in(PHARMACY, "2026-05-20 10:00:00", HZ)
        assert await balance(c, mother) == D("450.00")  # 500.00 - the one day's 50.00
        # Each facility has its own clock: the hospital's first message (a week earlier) sets its own ...
        other = await person(c, uid("oth"), balance="0.00")
        _, rep = await direct(c, "2207", settle_input(other, "11", [line("EXAM", "20.00")]),
                              when="2026-05-03 10:00:00", facility=HOSPITAL3)
        assert rep.infcode == 0, (rep.err_code, rep.err_msg)
        # ... but it cannot date the kid's bill a week before her latest settlement (an outside probe: a facility
        # new to the bureau back-dated into a month whose binding cap was spent, and was paid it again).
        _, rep = await direct(c, "2207", settle_input(kid, "11", [line("EXAM", "20.00")]),
                              when="2026-05-03 10:05:00", facility=HOSPITAL3)
        assert (rep.infcode, rep.err_code) == (-1, "E_BIZ_TIME_REFUSED"), rep
        assert await balance(c, mother) == D("450.00")
    finally:
        await s.stop()
        await s.cleanup()


async def test_a_binding_needs_a_recorded_identity_check_not_a_claim(stack: Stack) -> None:
    """Attack 8: a stranger binds himself to a victim's account with {"method": "face", "passed": true}."""
    from tests.harness import admin_call, bind_request, face
    c = stack.client
    assert c is not None
    victim = await person(c, uid("victim"), balance="300.00")
    stranger = await person(c, uid("stranger"), balance="0.00")
    claim = bind_request(c, victim, stranger, relation="child", verify={"method": "face", "passed": True})
    rep = await c.accounts_admin(claim)
    assert (rep.infcode, rep.err_code) == (-1, "E_VERIFY_FAILED"), rep.err_msg
    # His own face check's token is not the victim's, nor is a made-up token.
    own = await face(c, stranger)
    for verify in (own, {"method": "face", "token": "0" * 24}):
        rep = await c.accounts_admin(bind_request(c, victim, stranger, relation="child", verify=verify))
        assert (rep.infcode, rep.err_code) == (-1, "E_VERIFY_FAILED"), rep.err_msg
    # A failed face check gives no token at all.
    rep = await admin_call(c, "G109", {"psn_no": victim, "passed": False})
    assert (rep.infcode, rep.err_code) == (-1, "E_VERIFY_FAILED")
    # Nothing changed: no binding, and the stranger's visit is paid in cash, not from the victim's account.
    listed = await admin_call(c, "G117", {"psn_no": victim})
    assert listed.infcode == 0 and listed.output is not None and listed.output["as_authorizer"] == []
    out = await c.visit(visit(stranger, PHARMACY, "41", "2026-04-08 10:00:00", [line("XA01", "200.00")]), timeout=60)
    assert out.status == "settled" and out.setlinfo is not None and out.setlinfo.acct_mulaid_pay == D("0.00")
    assert await balance(c, victim) == D("300.00")
    # The victim's own recorded check binds; its token works once.
    token = await face(c, victim)
    assert (await c.accounts_admin(bind_request(c, victim, stranger, relation="child", verify=token))).infcode == 0
    other = await person(c, uid("kid"), balance="0.00")
    rep = await c.accounts_admin(bind_request(c, victim, other, relation="child", verify=token))
    assert (rep.infcode, rep.err_code) == (-1, "E_VERIFY_FAILED")
