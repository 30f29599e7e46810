"""The hostile-input catalogue: each kind of malformed or hostile input gets a clear error (or the
dead-letter queue with the reason), changes nothing, and the workers keep serving."""
from __future__ import annotations

import asyncio

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aio_pika
import pytest
import pytest_asyncio

from contracts.pos import ReverseVisit
from tests.harness import (BJ, HOSPITAL3, HZ, PHARMACY, Stack, admin_call, audit, balance, bind, direct, line,
                           person, settle_input, sign_no, uid, visit)

# asyncio_mode=auto with session loop scope (pyproject.toml) runs the async tests here.
DAY = "2026-10-01"


@dataclass
class Victims:
    """A small family with money and history, the target of every hostile input."""

    mother: str
    kid: str
    other: str  # somebody else, with a settlement of her own
    kid_setl_id: str
    kid_msgid: str
    other_setl_id: str
    auth_id: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def victims(stack: Stack) -> Victims:
    c = stack.client
    assert c is not None
    mother = await person(c, uid("mo"), balance="500.00")
    kid = await person(c, uid("kid"), insutype="390", balance=None)
    other = await person(c, uid("other"), balance="300.00")
    auth_id = await bind(c, mother, kid, day_cap="100.00")
    req, kid_rep = await direct(c, "2102", settle_input(kid, "41", [line("XA01", "20.00")], insutype="390"),
                                when=f"{DAY} 09:00:00")
    _, other_rep = await direct(c, "2102", settle_input(other, "41", [line("XA01", "30.00")]), when=f"{DAY} 09:01:00")
    assert kid_rep.output and other_rep.output
    return Victims(mother, kid, other, kid_rep.output["setl_id"], req.msgid, other_rep.output["setl_id"], auth_id)


async def fingerprint(stack: Stack, v: Victims) -> dict[str, Any]:
    c = stack.client
    assert c is not None
    accounts, bureau = await audit(c)
    keep = ("ledger_rows", "bindings", "usage_fen", "total_balance_fen", "total_wallet_fen", "payments_paid",
            "payments_refunded", "accounts")
    return {"accounts": {k: accounts[k] for k in keep}, "bureau": {k: bureau[k] for k in ("states", "persons",
                                                                                            "accumulator_totals")},
            "balances": [await balance(c, v.mother), await balance(c, v.other)]}


async def dead_letters(stack: Stack) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    conn = await aio_pika.connect(stack.amqp_url)
    try:
        q = await (await conn.channel()).get_queue(stack.names.dead_queue, ensure=True)
        while (msg := await q.get(no_ack=True, fail=False)) is not None:
            found[msg.message_id or ""] = dict(msg.headers or {})
    finally:
        await conn.close()
    return found


def raw_envelope(stack: Stack, infno: str, data: Any, msgid: str, sn: str, **over: Any) -> bytes:
    env = {"infno": infno, "msgid": msgid, "inf_time": f"{DAY} 10:00:00", "fixmedins_code": PHARMACY,
           "insuplc_admdvs": HZ, "mdtrtarea_admvs": HZ, "sign_no": sn, "input": data, **over}
    return json.dumps(env).encode()


Case = Callable[[Stack, Victims], Awaitable[tuple[str, str | None]]]  # → (err_code, msgid if dead-lettered)
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn
    return register


async def _bureau_raw(stack: Stack, body: bytes, msgid: str) -> str:
    assert stack.client is not None
    reply = await stack.client.call_raw(stack.names.bureau_exchange, HZ, body, msgid, timeout=30)
    assert reply.infcode == -1 and reply.err_msg
    return reply.err_code or ""


def _mid(stack: Stack) -> str:
    assert stack.client is not None
    return stack.client.msgid(__import__("datetime").datetime(2026, 10, 1, 10, 0), PHARMACY)


async def _settle_raw(stack: Stack, v: Victims, mutate: Callable[[dict[str, Any]], Any], **env: Any) -> str:
    assert stack.client is not None
    data = settle_input(v.kid, "41", [line("XA01", "10.00")], insutype="390")
    mutate(data)
    m = _mid(stack)
    sn = await sign_no(stack.client, PHARMACY, f"{DAY} 10:00:00")
    return await _bureau_raw(stack, raw_envelope(stack, env.pop("infno", "2102"), data, m, sn, **env), m)


@case("not JSON")
async def _c1(stack: Stack, v: Victims) -> tuple[str, str | None]:
    m = _mid(stack)
    return await _bureau_raw(stack, b"{this is not json", m), m


@case("JSON but not an object")
async def _c2(stack: Stack, v: Victims) -> tuple[str, str | None]:
    m = _mid(stack)
    return await _bureau_raw(stack, b"[1, 2, 3]", m), m


@case("not UTF-8")
async def _c3(stack: Stack, v: Victims) -> tuple[str, str | None]:
    m = _mid(stack)
    return await _bureau_raw(stack, b"\xff\xfe\x00garbage", m), m


@case("oversized message")
async def _c4(stack: Stack, v: Victims) -> tuple[str, str | None]:
    m = _mid(stack)
    return await _bureau_raw(stack, b'{"pad": "' + b"x" * 1_100_000 + b'"}', m), m


@case("envelope without a msgid")
async def _c5(stack: Stack, v: Victims) -> tuple[str, str | None]:
    m = _mid(stack)
    body = json.loads(raw_envelope(stack, "2102", {}, m, ""))
    del body["msgid"]
    return await _bureau_raw(stack, json.dumps(body).encode(), m), m


@case("malformed msgid")
async def _c6(stack: Stack, v: Victims) -> tuple[str, str | None]:
    m = _mid(stack)
    body = {**json.loads(raw_envelope(stack, "2102", {}, m, "")), "msgid": "x' OR 1=1 --"}
    return await _bureau_raw(stack, json.dumps(body).encode(), m), m


@case("garbage inf_time")
async def _c7(stack: Stack, v: Victims) -> tuple[str, str | None]:
    m = _mid(stack)
    return await _bureau_raw(stack, raw_envelope(stack, "2102", {}, m, "", inf_time="yesterday"), m), m


@case("unknown infno")
async def _c8(stack: Stack, v: Victims) -> tuple[str, str | None]:
    return await _settle_raw(stack, v, lambda d: None, infno="9999"), None


@case("missing field")
async def _c9(stack: Stack, v: Victims) -> tuple[str, str | None]:
    return await _settle_raw(stack, v, lambda d: d.pop("psn_no")), None


@case("wrong types")
async def _c10(stack: Stack, v: Victims) -> tuple[str, str | None]:
    return await _settle_raw(stack, v, lambda d: d["details"][0].update(cnt=[1, 2], feedetl_sn=7)), None


@case("money as a number with 3 places")
async def _c11(stack: Stack, v: Victims) -> tuple[str, str | None]:
    # A JSON number is money as the platform sends it (read straight to Decimal), but 数值型 16,2 allows 2 places.
    return await _settle_raw(stack, v, lambda d: d.update(medfee_sumamt=10.001)), None


@case("3-decimal money")
async def _c12(stack: Stack, v: Victims) -> tuple[str, str | None]:
    return await _settle_raw(stack, v, lambda d: d.update(medfee_sumamt="10.000")), None


@case("negative amount")
async def _c13(stack: Stack, v: Victims) -> tuple[str, str | None]:
    def neg(d: dict[str, Any]) -> None:
        d["details"][0].update(pric="-10.00", det_item_fee_sumamt="-10.00")
        d["medfee_sumamt"] = "-10.00"
    return await _settle_raw(stack, v, neg), None


@case("absurd amount")
async def _c14(stack: Stack, v: Victims) -> tuple[str, str | None]:
    def huge(d: dict[str, Any]) -> None:
        d["details"][0].update(pric="99999999999.00", det_item_fee_sumamt="99999999999.00")
        d["medfee_sumamt"] = "99999999999.00"
    return await _settle_raw(stack, v, huge), None


@case("line total not price x count")
async def _c15(stack: Stack, v: Victims) -> tuple[str, str | None]:
    return await _settle_raw(stack, v, lambda d: d["details"][0].update(cnt="3")), None


@case("bill total not the sum of lines")
async def _c16(stack: Stack, v: Victims) -> tuple[str, str | None]:
    return await _settle_raw(stack, v, lambda d: d.update(medfee_sumamt="1.00")), None


@case("unknown field")
async def _c17(stack: Stack, v: Victims) -> tuple[str, str | None]:
    return await _settle_raw(stack, v, lambda d: d.update(hifp_pay="999.00")), None


@case("unknown person")
async def _c18(stack: Stack, v: Victims) -> tuple[str, str | None]:
    return await _settle_raw(stack, v, lambda d: d.update(psn_no="NOBODY-" + uid("x"))), None


@case("unknown facility")
async def _c19(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    req = stack.client.envelope("9001", {"opter_no": "x"}, insuplc_admdvs=HZ, when=f"{DAY} 10:00:00",
                                fixmedins_code="PNOWHERE0001")
    reply = await stack.client.bureau_registry(req)
    return reply.err_code or "", None


@case("unknown region")
async def _c20(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    cmd = visit(v.kid, PHARMACY, "41", f"{DAY} 10:00:00", [line("XA01", "10.00")], insutype="390",
                region="990000")
    out = await stack.client.visit(cmd)
    assert out.status == "refused"
    return out.err_code or "", None


@case("no sign-in")
async def _c21(stack: Stack, v: Victims) -> tuple[str, str | None]:
    m = _mid(stack)
    data = settle_input(v.kid, "41", [line("XA01", "10.00")], insutype="390")
    return await _bureau_raw(stack, raw_envelope(stack, "2102", data, m, ""), m), None


@case("forged sign_no")
async def _c22(stack: Stack, v: Victims) -> tuple[str, str | None]:
    m = _mid(stack)
    data = settle_input(v.kid, "41", [line("XA01", "10.00")], insutype="390")
    return await _bureau_raw(stack, raw_envelope(stack, "2102", data, m, "SN" + "0" * 20), m), None


@case("another facility's sign_no")
async def _c23(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    m = _mid(stack)
    theirs = await sign_no(stack.client, HOSPITAL3, f"{DAY} 10:00:00")
    data = settle_input(v.kid, "41", [line("XA01", "10.00")], insutype="390")
    return await _bureau_raw(stack, raw_envelope(stack, "2102", data, m, theirs), m), None


@case("expired sign_no")
async def _c24(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    yesterday = await sign_no(stack.client, PHARMACY, "2026-09-30 10:00:00")
    m = _mid(stack)
    data = settle_input(v.kid, "41", [line("XA01", "10.00")], insutype="390")
    return await _bureau_raw(stack, raw_envelope(stack, "2102", data, m, yesterday), m), None


@case("transaction code does not fit med_type")
async def _c25(stack: Stack, v: Victims) -> tuple[str, str | None]:
    return await _settle_raw(stack, v, lambda d: d.update(med_type="11")), None


@case("pharmacy settling an inpatient stay")
async def _c26(stack: Stack, v: Victims) -> tuple[str, str | None]:
    return await _settle_raw(stack, v, lambda d: d.update(med_type="21"), infno="2304"), None


@case("wrong insurance type")
async def _c27(stack: Stack, v: Victims) -> tuple[str, str | None]:
    return await _settle_raw(stack, v, lambda d: d.update(insutype="310")), None


@case("someone else's account through a proxy link that does not exist")
async def _c28(stack: Stack, v: Victims) -> tuple[str, str | None]:
    return await _settle_raw(stack, v, lambda d: d.update(proxy_psn_no=v.other)), None


@case("forged authorizer: binding without his identity check")
async def _c29(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    reply = await admin_call(stack.client, "G111", {"authorizer_psn_no": v.other, "member_psn_no": v.kid,
                                                    "relation": "parent", "verify": {"method": "face",
                                                                                     "passed": False}})
    return reply.err_code or "", None


@case("stranger unbinds a family")
async def _c30(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    reply = await admin_call(stack.client, "G112", {"auth_id": v.auth_id, "requester_psn_no": v.other})
    return reply.err_code or "", None


@case("stranger raises another's caps")
async def _c31(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    reply = await admin_call(stack.client, "G116", {"authorizer_psn_no": v.other, "auth_id": v.auth_id,
                                                    "day_cap": "99999.00"})
    return reply.err_code or "", None


@case("wrong verification code")
async def _c32(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    reply = await admin_call(stack.client, "G131", {"from_psn_no": v.mother, "to_psn_no": v.kid, "relation": "child",
                                                    "amount": "10.00", "verify": {"method": "sms", "code": "000000"}})
    return reply.err_code or "", None


@case("replayed msgid with different content")
async def _c33(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    _, reply = await direct(stack.client, "2102", settle_input(v.kid, "41", [line("XA01", "99.00")], insutype="390"),
                            when=f"{DAY} 09:00:00", msgid=v.kid_msgid)
    return reply.err_code or "", None


@case("reversal of somebody else's settlement")
async def _c34(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    _, reply = await direct(stack.client, "2103", {"psn_no": v.kid, "setl_id": v.other_setl_id},
                            when=f"{DAY} 11:00:00")
    return reply.err_code or "", None


@case("reversal of a settlement that does not exist")
async def _c35(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    _, reply = await direct(stack.client, "2103", {"psn_no": v.kid, "setl_id": "S" + "9" * 30},
                            when=f"{DAY} 11:00:00")
    return reply.err_code or "", None


@case("2601 for somebody else's message")
async def _c36(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    _, reply = await direct(stack.client, "2601", {"psn_no": v.other, "omsgid": v.kid_msgid, "oinfno": "2102"},
                            when=f"{DAY} 11:00:00")
    return reply.err_code or "", None


@case("reversal with another region's bureau")
async def _c37(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    out = await stack.client.visit(ReverseVisit(visit_id=uid("rv"), fixmedins_code=PHARMACY, insuplc_admdvs=BJ,
                                                mdtrtarea_admvs=HZ, psn_no=v.kid, med_type="41",
                                                setl_id=v.kid_setl_id, biz_time=f"{DAY} 11:00:00"))  # type: ignore
    return out.err_code or "", None


@case("garbage to the accounts' pay queue")
async def _c38(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    junk = "junk-" + uid("j")
    await stack.client.send_raw(stack.names.pay_exchange, "pay", b'{"req_id": 5}', msgid=junk)
    return "dead-lettered", junk


def _national_purchase(psn: str, pric: Any, total: Any) -> dict[str, Any]:
    """A 2102 in the national nodes (druginfo + drugdetail), money as JSON numbers."""
    return {"druginfo": {"psn_no": psn, "mdtrt_cert_type": "02", "medfee_sumamt": total, "insutype": "390",
                         "acct_used_flag": "1"},
            "drugdetail": [{"feedetl_sn": "1", "fee_ocur_time": f"{DAY} 10:00:00", "med_list_codg": "XA01",
                            "det_item_fee_sumamt": total, "cnt": 1, "pric": pric}]}


@case("national: pric with 7 places")
async def _c40(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    m, sn = _mid(stack), await sign_no(stack.client, PHARMACY, f"{DAY} 10:00:00")
    return await _bureau_raw(stack, raw_envelope(stack, "2102", _national_purchase(v.kid, 10.0000001, 10.0), m, sn),
                             m), None


@case("national: NaN money")
async def _c41(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    m, sn = _mid(stack), await sign_no(stack.client, PHARMACY, f"{DAY} 10:00:00")
    return await _bureau_raw(stack, raw_envelope(stack, "2102", _national_purchase(v.kid, 10, float("nan")), m, sn),
                             m), None


@case("national: fee details for a visit that does not exist")
async def _c42(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    m, sn = _mid(stack), await sign_no(stack.client, PHARMACY, f"{DAY} 10:00:00")
    data = {"feedetail": [{"feedetl_sn": "1", "mdtrt_id": "MFORGED0000000000000", "psn_no": v.kid, "chrg_bchno": "1",
                           "fee_ocur_time": f"{DAY} 10:00:00", "med_list_codg": "XA01", "det_item_fee_sumamt": 5,
                           "cnt": 1, "pric": 5}]}
    return await _bureau_raw(stack, raw_envelope(stack, "2204", data, m, sn), m), None


@case("garbage visit command to the POS")
async def _c39(stack: Stack, v: Victims) -> tuple[str, str | None]:
    assert stack.client is not None
    junk = "junkcmd-" + uid("j")
    await stack.client.send_raw(stack.names.pos_exchange, "command", b'{"cmd": "settle", "visit_id": 1}', msgid=junk)
    return "dead-lettered", junk


EXPECTED = {
    "not JSON": "E_BAD_MESSAGE", "JSON but not an object": "E_BAD_MESSAGE", "not UTF-8": "E_BAD_MESSAGE",
    "oversized message": "E_BAD_MESSAGE", "envelope without a msgid": "E_BAD_MESSAGE",
    "malformed msgid": "E_BAD_MESSAGE", "garbage inf_time": "E_BAD_MESSAGE", "unknown infno": "E_UNKNOWN_INFNO",
    "missing field": "E_BAD_INPUT", "wrong types": "E_BAD_INPUT", "money as a number with 3 places": "E_BAD_INPUT",
    "3-decimal money": "E_BAD_INPUT", "negative amount": "E_BAD_INPUT", "absurd amount": "E_BAD_INPUT",
    "line total not price x count": "E_BAD_INPUT", "bill total not the sum of lines": "E_BAD_INPUT",
    "unknown field": "E_BAD_INPUT", "unknown person": "E_UNKNOWN_PERSON", "unknown facility": "E_UNKNOWN_FACILITY",
    "unknown region": "E_UNROUTABLE", "no sign-in": "E_SIGN_NO_UNKNOWN", "forged sign_no": "E_SIGN_NO_UNKNOWN",
    "another facility's sign_no": "E_SIGN_NO_UNKNOWN", "expired sign_no": "E_SIGN_NO_EXPIRED",
    "transaction code does not fit med_type": "E_MED_TYPE_MISMATCH",
    "pharmacy settling an inpatient stay": "E_FACILITY_TYPE_MISMATCH", "wrong insurance type": "E_WRONG_INSUTYPE",
    "someone else's account through a proxy link that does not exist": "E_PROXY_NOT_AUTHORIZED",
    "forged authorizer: binding without his identity check": "E_VERIFY_FAILED",
    "stranger unbinds a family": "E_NOT_PARTY", "stranger raises another's caps": "E_NOT_PARTY",
    "wrong verification code": "E_VERIFY_FAILED", "replayed msgid with different content": "E_MSGID_CONFLICT",
    "reversal of somebody else's settlement": "E_NOT_YOUR_SETTLEMENT",
    "reversal of a settlement that does not exist": "E_SETTLEMENT_NOT_FOUND",
    "2601 for somebody else's message": "E_NOT_YOUR_SETTLEMENT",
    "reversal with another region's bureau": "E_SETTLEMENT_NOT_FOUND",
    "garbage to the accounts' pay queue": "dead-lettered", "garbage visit command to the POS": "dead-lettered",
    "national: pric with 7 places": "E_BAD_INPUT", "national: NaN money": "E_BAD_INPUT",
    "national: fee details for a visit that does not exist": "E_VISIT_UNKNOWN",
}


def test_the_catalogue_is_complete() -> None:
    assert set(CASES) == set(EXPECTED)
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_hostile_input(stack: Stack, victims: Victims, name: str) -> None:
    c = stack.client
    assert c is not None
    before = await fingerprint(stack, victims)
    code, dead_msgid = await CASES[name](stack, victims)
    assert code == EXPECTED[name]
    if dead_msgid is not None:
        # Some of these are fire-and-forget (no reply to wait for): give the worker time to park it.
        dead: dict[str, dict[str, Any]] = {}
        for _ in range(100):
            dead.update(await dead_letters(stack))
            if dead_msgid in dead:
                break
            await asyncio.sleep(0.1)
        assert dead_msgid in dead, f"{name}: not dead-lettered"
        assert dead[dead_msgid]["x-gongji-reason"]
    # The workers keep serving: a good transaction still goes through ...
    probe = await person(c, uid("probe"), balance="10.00")
    _, rep = await direct(c, "2102", settle_input(probe, "41", [line("XA01", "1.00")]), when=f"{DAY} 12:00:00")
    assert rep.infcode == 0, rep.err_msg
    # ... and nothing else changed: the probe's own footprint is all that is new.
    after = await fingerprint(stack, victims)
    assert after["balances"] == before["balances"]
    assert after["bureau"]["states"].get("settled", 0) == before["bureau"]["states"].get("settled", 0) + 1
    # A refusal that only the accounts service can make (the proxy link) leaves the bureau's record of a
    # failed settlement, with its accumulators given back; nothing else may appear.
    allowed_new = {"failed": 1} if name.startswith("someone else's account") else {}
    others_after = {k: v for k, v in after["bureau"]["states"].items() if k != "settled"}
    others_before = {k: v for k, v in before["bureau"]["states"].items() if k != "settled"}
    assert others_after == {k: others_before.get(k, 0) + allowed_new.get(k, 0)
                            for k in set(others_before) | set(allowed_new)}
    acc_before, acc_after = before["bureau"]["accumulator_totals"], after["bureau"]["accumulator_totals"]
    assert acc_after == acc_before[:-1] + [acc_before[-1] + 1]  # the probe's one pharmacy settlement
    assert after["accounts"]["payments_paid"] == before["accounts"]["payments_paid"] + 1
    assert after["accounts"]["payments_refunded"] == before["accounts"]["payments_refunded"]
    assert after["accounts"]["bindings"] == before["accounts"]["bindings"]
    assert after["accounts"]["usage_fen"] == before["accounts"]["usage_fen"]
    assert after["accounts"]["total_balance_fen"] == before["accounts"]["total_balance_fen"] + 1000 - 100
    assert after["bureau"]["persons"] == before["bureau"]["persons"] + 1
