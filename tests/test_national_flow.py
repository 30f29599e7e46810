"""Issue 9: the national flow as a HIS speaks it (2201 → 2203 → 2204 → 2205 → 2206/2207; 2401 → 2301 → 2402 →
2303/2304 → 2305; 2101/2102 with druginfo + drugdetail; 5203/5204), against the real workers.

Requests are sent the way a HIS sends them: JSON with money as numbers (contracts.wire writes Decimals as
JSON numbers), answers read with numbers to Decimal. Expected splits are computed by hand from
policies/330100.yaml (Hangzhou):
  catalog XA01 甲类; XB02 乙类 selfpay_prop 0.05; XC03 丙类, scope wellness (accounts never pay it);
  unknown codes: `unknown_items: declared` (the line's declared class applies)
  outpatient deductible employed 600 / retired 200; 三级 (level3) ratio employed 0.76, retired 0.82
  inpatient deductible (first stay) level3 800; ratio employed level3 0.84
  pharmacy purchases not pooled.
"""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from contracts import wire
from contracts.envelope import Reply
from tests.harness import HOSPITAL3, HZ, PHARMACY, Stack, audit, balance, cumulative, person, sign_no, uid

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal


async def send(stack: Stack, infno: str, data: dict[str, Any], when: str, facility: str = HOSPITAL3,
               msgid: str | None = None) -> Reply:
    """One national transaction, as JSON with numbers, from a signed-in facility."""
    c = stack.client
    assert c is not None
    sn = await sign_no(c, facility, when)
    req = c.envelope(infno, data, insuplc_admdvs=HZ, when=when, fixmedins_code=facility, msgid=msgid, sign_no=sn)
    body = wire.dumps(req.model_dump()).encode()
    return await c.call_raw(c.names.bureau_exchange, HZ, body, req.msgid)


def ok(reply: Reply) -> dict[str, Any]:
    assert reply.infcode == 0, f"{reply.err_code}: {reply.err_msg}"
    return reply.output or {}


def refused(reply: Reply, code: str) -> None:
    assert reply.infcode == -1 and reply.err_code == code, f"expected {code}, got {reply.err_code}: {reply.err_msg}"


async def register(stack: Stack, psn: str, when: str, insutype: str = "310") -> str:
    out = ok(await send(stack, "2201", {"data": {
        "psn_no": psn, "insutype": insutype, "begntime": when, "mdtrt_cert_type": "02", "mdtrt_cert_no": "",
        "ipt_otp_no": uid("otp")[-20:], "atddr_no": "D001", "dr_name": "王医生", "dept_code": "A03",
        "dept_name": "内科", "caty": "A03"}}, when))
    assert out["data"]["psn_no"] == psn
    return str(out["data"]["mdtrt_id"])


async def visit_info(stack: Stack, psn: str, mdtrt_id: str, when: str, med_type: str = "11") -> None:
    ok(await send(stack, "2203", {"mdtrtinfo": {"mdtrt_id": mdtrt_id, "psn_no": psn, "med_type": med_type,
                                                "begntime": when, "main_cond_dscr": "", "dise_codg": "",
                                                "dise_name": ""},
                                  "diseinfo": [{"diag_type": "1", "diag_srt_no": 1, "diag_code": "J06.900",
                                                "diag_name": "急性上呼吸道感染", "diag_dept": "内科",
                                                "dise_dor_no": "D001", "dise_dor_name": "王医生",
                                                "diag_time": when, "vali_flag": "1"}]}, when))


def fee(sn: str, mdtrt_id: str, psn: str, code: str, pric: str, cnt: str, when: str, *,
        bchno: str | None = "B1", **extra: Any) -> dict[str, Any]:
    """A feedetail line with numbers, as a HIS writes it (pric, cnt and the total are JSON numbers)."""
    line: dict[str, Any] = {"feedetl_sn": sn, "mdtrt_id": mdtrt_id, "psn_no": psn, "rxno": "", "rx_circ_flag": "0",
                            "fee_ocur_time": when, "med_list_codg": code, "medins_list_codg": f"H-{code}",
                            "det_item_fee_sumamt": (D(pric) * D(cnt)).quantize(D("0.01")), "cnt": D(cnt),
                            "pric": D(pric), "bilg_dept_codg": "A03", "bilg_dept_name": "内科",
                            "bilg_dr_codg": "D001", "bilg_dr_name": "王医生", "hosp_appr_flag": "1", **extra}
    if bchno is not None:
        line["chrg_bchno"] = bchno
    return line


def settle_data(psn: str, mdtrt_id: str, total: str, *, med_type: str | None = "11", bchno: str | None = "B1",
                insutype: str = "310") -> dict[str, Any]:
    data: dict[str, Any] = {"psn_no": psn, "mdtrt_cert_type": "02", "mdtrt_cert_no": "", "medfee_sumamt": D(total),
                            "psn_setlway": "01", "mdtrt_id": mdtrt_id, "acct_used_flag": "1", "insutype": insutype}
    if med_type is not None:
        data["med_type"] = med_type
    if bchno is not None:
        data["chrg_bchno"] = bchno
    return {"data": data}


async def fingerprint(stack: Stack, *people: str) -> dict[str, Any]:
    accounts, bureau = await audit(stack.client)  # type: ignore[arg-type]
    v = bureau["visits"]
    return {"settlements": bureau["states"], "acc": bureau["accumulator_totals"], "visit_states": v["states"],
            "details": v["details"], "balances": [await balance(stack.client, p) for p in people],  # type: ignore
            "paid": accounts["payments_paid"]}


# ---- Done when: an outpatient visit, two uploads, one cancelled line, then 2206/2207 -----------------------------
async def test_outpatient_two_uploads_one_cancelled_line(stack: Stack) -> None:
    psn = await person(stack.client, uid("opt"), psn_type="retired", balance="1000.00")  # type: ignore[arg-type]
    t = "2026-05-06 09:00:00"
    mdtrt_id = await register(stack, psn, t)
    # The same msgid again: the same answer, no second visit (idempotent by msgid).
    await visit_info(stack, psn, mdtrt_id, "2026-05-06 09:01:00")
    first = ok(await send(stack, "2204", {"feedetail": [
        fee("1", mdtrt_id, psn, "XA01", "100", "2", "2026-05-06 09:10:00"),
        fee("2", mdtrt_id, psn, "XB02", "50.00", "2", "2026-05-06 09:10:00")]}, "2026-05-06 09:10:00"))
    second = ok(await send(stack, "2204", {"feedetail": [
        fee("3", mdtrt_id, psn, "XC03", "7.5", "4", "2026-05-06 09:20:00"),
        fee("4", mdtrt_id, psn, "EXAM9", "80.000000", "1", "2026-05-06 09:20:00", chrgitm_lv="01")]},
        "2026-05-06 09:20:00"))
    lines = {r["feedetl_sn"]: r for r in first["result"] + second["result"]}
    # Per line, by hand:
    #   1 XA01 甲类 100 x 2 = 200.00 → in scope 200.00
    #   2 XB02 乙类 50.00 x 2 = 100.00, selfpay_prop 0.05 → 先行自付 5.00, in scope 95.00
    #   3 XC03 丙类 (wellness) 7.5 x 4 = 30.00 → 全自费 30.00
    #   4 EXAM9 not in the catalog, declared 甲类 → in scope 80.00
    assert (lines["1"]["chrgitm_lv"], lines["1"]["inscp_scp_amt"], lines["1"]["preselfpay_amt"]) == ("01", D("200.00"), 0)
    assert (lines["2"]["chrgitm_lv"], lines["2"]["selfpay_prop"]) == ("02", D("0.05"))
    assert (lines["2"]["preselfpay_amt"], lines["2"]["inscp_scp_amt"]) == (D("5.00"), D("95.00"))
    assert (lines["3"]["chrgitm_lv"], lines["3"]["fulamt_ownpay_amt"], lines["3"]["inscp_scp_amt"]) == \
        ("03", D("30.00"), D("0.00"))
    assert lines["4"]["inscp_scp_amt"] == D("80.00") and lines["4"]["overlmt_amt"] == D("0.00")
    # Pre-settle with all four lines: 410.00.
    pre = ok(await send(stack, "2206", settle_data(psn, mdtrt_id, "410.00"), "2026-05-06 09:30:00"))
    assert pre["setlinfo"]["medfee_sumamt"] == D("410.00")
    # The HIS cancels line 4 after the pre-settlement (2205, one line of batch B1).
    out = ok(await send(stack, "2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": "B1", "psn_no": psn,
                                                 "feedetl_sn": "4"}}, "2026-05-06 09:31:00"))
    assert out["cancelled"] == ["4"]
    # The settle that still claims 410.00 is stale: refused, nothing changed.
    before = await fingerprint(stack, psn)
    refused(await send(stack, "2207", settle_data(psn, mdtrt_id, "410.00"), "2026-05-06 09:32:00"),
            "E_AMOUNT_MISMATCH")
    assert await fingerprint(stack, psn) == before
    pre = ok(await send(stack, "2206", settle_data(psn, mdtrt_id, "330.00"), "2026-05-06 09:33:00"))
    done = ok(await send(stack, "2207", settle_data(psn, mdtrt_id, "330.00"), "2026-05-06 09:34:00"))
    s = done["setlinfo"]
    # The same bill by hand: 200.00 + 100.00 + 30.00 = 330.00
    #   全自费 30.00 (XC03), 先行自付 5.00 (XB02), in scope 200.00 + 95.00 = 295.00
    #   retired outpatient deductible 200.00, first visit of the year → act_pay_dedc 200.00
    #   (295.00 - 200.00) x 0.82 = 77.90 → hifp_pay 77.90
    #   person 330.00 - 77.90 = 252.10; the account never pays the wellness item (30.00 cash),
    #   acct_pay 222.10, balance 1000.00 - 222.10 = 777.90
    assert s["mdtrt_id"] == mdtrt_id and s["medfee_sumamt"] == D("330.00")
    assert (s["fulamt_ownpay_amt"], s["preselfpay_amt"], s["inscp_scp_amt"]) == (D("30.00"), D("5.00"), D("295.00"))
    assert (s["act_pay_dedc"], s["hifp_pay"], s["fund_pay_sumamt"]) == (D("200.00"), D("77.90"), D("77.90"))
    assert (s["psn_part_amt"], s["acct_pay"], s["psn_cash_pay"], s["balc"]) == \
        (D("252.10"), D("222.10"), D("30.00"), D("777.90"))
    assert done["setldetail"][0]["fund_pay_type"] == "310100" and done["setldetail"][0]["fund_payamt"] == D("77.90")
    assert pre["setlinfo"]["hifp_pay"] == s["hifp_pay"]  # the second pre-settlement foretold it
    # The 2204 per-line split adds up to the settlement's split (the cancelled line left out).
    kept = [lines[k] for k in ("1", "2", "3")]
    for f_line, f_setl in (("fulamt_ownpay_amt", "fulamt_ownpay_amt"), ("preselfpay_amt", "preselfpay_amt"),
                           ("inscp_scp_amt", "inscp_scp_amt"), ("overlmt_amt", "overlmt_selfpay")):
        assert sum(D(x[f_line]) for x in kept) == s[f_setl], f_line
    assert await balance(stack.client, psn) == D("777.90")  # type: ignore[arg-type]
    # 5203 answers the settlement; 5204 the visit's details (line 4 marked invalid).
    q = ok(await send(stack, "5203", {"data": {"psn_no": psn, "setl_id": s["setl_id"], "mdtrt_id": mdtrt_id}},
                      "2026-05-06 09:40:00"))
    assert q["setlinfo"]["hifp_pay"] == D("77.90") and q["setlinfo"]["setl_stas"] == "settled"
    # Another facility may not read it.
    refused(await send(stack, "5203", {"data": {"psn_no": psn, "setl_id": s["setl_id"]}}, "2026-05-06 09:40:00",
                       facility=PHARMACY), "E_SETTLEMENT_NOT_FOUND")
    q = ok(await send(stack, "5204", {"data": {"psn_no": psn, "mdtrt_id": mdtrt_id}}, "2026-05-06 09:40:00"))
    assert {x["feedetl_sn"]: x["vali_flag"] for x in q["feedetail"]} == {"1": "1", "2": "1", "3": "1", "4": "0"}
    assert {x["setl_id"] for x in q["feedetail"] if x["vali_flag"] == "1"} == {s["setl_id"]}
    # Settled: a second 2207 and any more details are refused, nothing changed.
    before = await fingerprint(stack, psn)
    refused(await send(stack, "2207", settle_data(psn, mdtrt_id, "330.00"), "2026-05-06 09:41:00"), "E_VISIT_SETTLED")
    refused(await send(stack, "2204", {"feedetail": [fee("9", mdtrt_id, psn, "XA01", "1", "1", "2026-05-06 09:42:00")]},
                       "2026-05-06 09:42:00"), "E_VISIT_SETTLED")
    assert await fingerprint(stack, psn) == before
    # 2208 reverses it: the money back, the visit reversed.
    rev = ok(await send(stack, "2208", {"data": {"setl_id": s["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": psn}},
                        "2026-05-06 10:00:00"))
    assert rev["setlinfo"]["acct_pay"] == D("-222.10") and rev["setlinfo"]["balc"] == D("1000.00")
    assert await balance(stack.client, psn) == D("1000.00")  # type: ignore[arg-type]


# ---- Done when: an inpatient stay 2401 → 2301 ×3 → 2402 → 2304 settles; 2305 reverses it ---------------------------
async def test_inpatient_stay_settles_and_reverses(stack: Stack) -> None:
    psn = await person(stack.client, uid("ipt"), balance="2000.00")  # type: ignore[arg-type]
    t = "2026-06-01 08:00:00"
    out = ok(await send(stack, "2401", {"mdtrtinfo": {
        "psn_no": psn, "insutype": "310", "coner_name": "家属", "tel": "13800000000", "begntime": t,
        "mdtrt_cert_type": "02", "mdtrt_cert_no": "", "med_type": "21", "ipt_no": uid("ipt")[-20:],
        "medrcdno": "", "atddr_no": "D002", "chfpdr_name": "李医生", "adm_diag_dscr": "肺炎", "adm_dept_codg": "B01",
        "adm_dept_name": "呼吸科", "adm_bed": "12", "dscg_maindiag_code": "J18.900", "dscg_maindiag_name": "肺炎",
        "main_cond_dscr": "", "dise_codg": "", "dise_name": "", "oprn_oprt_code": "", "oprn_oprt_name": "",
        "fpsc_no": "", "matn_type": "", "birctrl_type": "", "latechb_flag": "", "geso_val": 0, "fetts": 0,
        "fetus_cnt": 0, "pret_flag": "", "birctrl_matn_date": "", "dise_type_code": ""},
        "diseinfo": [{"psn_no": psn, "diag_type": "1", "maindiag_flag": "1", "diag_srt_no": 1, "diag_code": "J18.900",
                      "diag_name": "肺炎", "adm_cond_type": "1", "diag_dept": "呼吸科", "dise_dor_no": "D002",
                      "dise_dor_name": "李医生", "diag_time": t}]}, t))
    mdtrt_id = out["data"]["mdtrt_id"]
    before_any = await cumulative(stack.client, psn, t)  # type: ignore[arg-type]
    days = ("2026-06-01 12:00:00", "2026-06-02 12:00:00", "2026-06-03 12:00:00")
    uploads = (("XA01", "250.00", "2"), ("XB02", "100", "10"), ("BED01", "100.00", "3"))
    for n, (day, (code, pric, cnt)) in enumerate(zip(days, uploads), 1):
        extra = {"chrgitm_lv": "01"} if code == "BED01" else {}
        ok(await send(stack, "2301", {"feedetail": [fee(f"F{n}", mdtrt_id, psn, code, pric, cnt, day, bchno=None,
                                                        drord_no=f"O{n}", med_type="21", **extra)]}, day))
    # 2304 before discharge is refused, nothing changed.
    before = await fingerprint(stack, psn)
    refused(await send(stack, "2304", settle_data(psn, mdtrt_id, "1800.00", med_type=None, bchno=None),
                       "2026-06-03 13:00:00"), "E_NOT_DISCHARGED")
    assert await fingerprint(stack, psn) == before
    ok(await send(stack, "2402", {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": psn, "insutype": "310",
                                               "endtime": "2026-06-04 09:00:00", "dise_codg": "", "dise_name": "",
                                               "dscg_dept_codg": "B01", "dscg_dept_name": "呼吸科", "dscg_way": "1",
                                               "cop_flag": "0"},
                                  "diseinfo": []}, "2026-06-04 09:00:00"))
    pre = ok(await send(stack, "2303", settle_data(psn, mdtrt_id, "1800.00", med_type=None, bchno=None),
                        "2026-06-04 09:10:00"))
    done = ok(await send(stack, "2304", settle_data(psn, mdtrt_id, "1800.00", med_type=None, bchno=None),
                         "2026-06-04 09:20:00"))
    s = done["setlinfo"]
    # By hand: XA01 250.00 x 2 = 500.00 甲类; XB02 100 x 10 = 1000.00 乙类 → 先行自付 50.00, in scope 950.00;
    #   BED01 100.00 x 3 = 300.00 declared 甲类. medfee 1800.00, in scope 500 + 950 + 300 = 1750.00
    #   first stay at level3: deductible 800.00 → act_pay_dedc 800.00
    #   (1750.00 - 800.00) x 0.84 = 798.00 → hifp_pay 798.00
    #   person 1800.00 - 798.00 = 1002.00, all from the account: balance 2000.00 - 1002.00 = 998.00
    assert (s["medfee_sumamt"], s["preselfpay_amt"], s["inscp_scp_amt"]) == (D("1800.00"), D("50.00"), D("1750.00"))
    assert (s["act_pay_dedc"], s["hifp_pay"], s["psn_part_amt"]) == (D("800.00"), D("798.00"), D("1002.00"))
    assert (s["acct_pay"], s["psn_cash_pay"], s["balc"]) == (D("1002.00"), D("0.00"), D("998.00"))
    assert pre["setlinfo"]["hifp_pay"] == D("798.00")
    acc = await cumulative(stack.client, psn, "2026-06-04 09:30:00")  # type: ignore[arg-type]
    assert (acc["inpatient_dedc"], acc["inpatient_stays"], acc["hifp_pay"]) == ("800.00", 1, "798.00")
    rev = ok(await send(stack, "2305", {"data": {"setl_id": s["setl_id"], "mdtrt_id": mdtrt_id, "psn_no": psn}},
                        "2026-06-05 09:00:00"))
    assert rev["setlinfo"]["hifp_pay"] == D("-798.00") and rev["setlinfo"]["balc"] == D("2000.00")
    assert await balance(stack.client, psn) == D("2000.00")  # type: ignore[arg-type]
    after = await cumulative(stack.client, psn, "2026-06-05 09:10:00")  # type: ignore[arg-type]
    assert after == before_any  # accumulators given back
    _, bureau = await audit(stack.client)  # type: ignore[arg-type]
    assert bureau["accumulator_mismatches"] == []


# ---- Done when: a pharmacy purchase through 2101/2102 with the national nodes ---------------------------------------
async def test_pharmacy_druginfo_drugdetail(stack: Stack) -> None:
    psn = await person(stack.client, uid("phar"), balance="100.00")  # type: ignore[arg-type]
    t = "2026-05-07 10:00:00"
    body = {"druginfo": {"psn_no": psn, "mdtrt_cert_type": "02", "mdtrt_cert_no": "", "begntime": t, "med_type": "41",
                         "medfee_sumamt": D("45.5"), "psn_setlway": "01", "insutype": "310", "acct_used_flag": "1"},
            "drugdetail": [{"feedetl_sn": "1", "rxno": "", "rx_circ_flag": "0", "fee_ocur_time": t,
                            "med_list_codg": "XB02", "medins_list_codg": "P-XB02", "det_item_fee_sumamt": D("25"),
                            "cnt": 2, "pric": D("12.5")},
                           {"feedetl_sn": "2", "rxno": "", "rx_circ_flag": "0", "fee_ocur_time": t,
                            "med_list_codg": "XA01", "medins_list_codg": "P-XA01", "det_item_fee_sumamt": D("20.50"),
                            "cnt": D("0.5"), "pric": D("41.000000")}]}
    pre = ok(await send(stack, "2101", body, t, facility=PHARMACY))
    done = ok(await send(stack, "2102", body, "2026-05-07 10:01:00", facility=PHARMACY))
    s = done["setlinfo"]
    # By hand: XB02 12.5 x 2 = 25.00 乙类 → 先行自付 25.00 x 0.05 = 1.25, in scope 23.75; XA01 41 x 0.5 = 20.50
    #   in scope. Hangzhou pharmacy purchases are not pooled: hifp 0, person 45.50, all from the account.
    assert (s["medfee_sumamt"], s["preselfpay_amt"], s["inscp_scp_amt"]) == (D("45.50"), D("1.25"), D("44.25"))
    assert (s["hifp_pay"], s["acct_pay"], s["psn_cash_pay"], s["balc"]) == (D("0.00"), D("45.50"), D("0.00"),
                                                                            D("54.50"))
    assert pre["setlinfo"]["acct_pay"] == D("45.50")
    rev = ok(await send(stack, "2103", {"data": {"setl_id": s["setl_id"], "psn_no": psn}}, "2026-05-07 11:00:00",
                        facility=PHARMACY))
    assert rev["setlinfo"]["balc"] == D("100.00")
    # More places than the field allows are refused: money 16,2.
    bad = json.loads(json.dumps(body, default=str))
    bad["druginfo"]["medfee_sumamt"] = D("45.500")
    refused(await send(stack, "2102", bad, "2026-05-07 11:01:00", facility=PHARMACY), "E_BAD_INPUT")


# ---- Done when: each refusal of point 2, nothing changed ---------------------------------------------------------------
async def test_refusals_change_nothing(stack: Stack) -> None:
    psn = await person(stack.client, uid("ref"), balance="500.00")  # type: ignore[arg-type]
    day = "2026-07-01"
    empty = await register(stack, psn, f"{day} 08:00:00")
    cancelled = await register(stack, psn, f"{day} 08:01:00")
    ok(await send(stack, "2204", {"feedetail": [fee("1", cancelled, psn, "XA01", "10", "1", f"{day} 08:02:00")]},
                  f"{day} 08:02:00"))
    ok(await send(stack, "2202", {"data": {"psn_no": psn, "mdtrt_id": cancelled, "ipt_otp_no": ""}}, f"{day} 08:03:00"))
    busy = await register(stack, psn, f"{day} 08:04:00")
    ok(await send(stack, "2204", {"feedetail": [fee("1", busy, psn, "XA01", "10", "1", f"{day} 08:05:00")]},
                  f"{day} 08:05:00"))
    adm = ok(await send(stack, "2401", {"mdtrtinfo": {"psn_no": psn, "insutype": "310", "begntime": f"{day} 08:06:00",
                                                      "mdtrt_cert_type": "02", "ipt_no": "IPT-R1"}},
                        f"{day} 08:06:00"))["data"]["mdtrt_id"]
    before = await fingerprint(stack, psn)
    cases = [
        ("unknown visit", "2207", settle_data(psn, "MNOSUCHVISIT0000000", "10.00"), "E_VISIT_UNKNOWN"),
        ("unknown visit (upload)", "2204", {"feedetail": [fee("1", "MNOSUCHVISIT0000000", psn, "XA01", "1", "1",
                                                                 f"{day} 09:00:00")]}, "E_VISIT_UNKNOWN"),
        ("someone else's visit", "2207", settle_data("nobody-else", busy, "10.00"), "E_VISIT_UNKNOWN"),
        ("cancelled", "2207", settle_data(psn, cancelled, "10.00"), "E_VISIT_CANCELLED"),
        ("cancelled (upload)", "2204", {"feedetail": [fee("2", cancelled, psn, "XA01", "1", "1", f"{day} 09:00:00")]},
         "E_VISIT_CANCELLED"),
        ("no details", "2207", settle_data(psn, empty, "0.00"), "E_VISIT_NO_DETAILS"),
        ("no details (pre-settle)", "2206", settle_data(psn, empty, "0.00"), "E_VISIT_NO_DETAILS"),
        ("unknown chrg_bchno", "2207", settle_data(psn, busy, "10.00", bchno="NOPE"), "E_CHRG_BCHNO_UNKNOWN"),
        ("stale pre-settlement total", "2207", settle_data(psn, busy, "11.00"), "E_AMOUNT_MISMATCH"),
        ("discharge without details", "2402", {"dscginfo": {"mdtrt_id": adm, "psn_no": psn, "insutype": "310",
                                                            "endtime": f"{day} 09:00:00"}}, "E_VISIT_NO_DETAILS"),
        ("inpatient settle before discharge", "2304", settle_data(psn, adm, "0.00", med_type=None, bchno=None),
         "E_NOT_DISCHARGED"),
        ("outpatient details on a stay", "2204", {"feedetail": [fee("1", adm, psn, "XA01", "1", "1",
                                                                    f"{day} 09:00:00")]}, "E_MED_TYPE_MISMATCH"),
        ("garbage time", "2204", {"feedetail": [fee("5", busy, psn, "XA01", "1", "1", f"{day} 09:00")]},
         "E_BAD_INPUT"),
        ("cancel a line never uploaded", "2205", {"data": {"mdtrt_id": busy, "chrg_bchno": "B1", "psn_no": psn,
                                                           "feedetl_sn": "77"}}, "E_DETAIL_UNKNOWN"),
        ("same feedetl_sn, other content", "2204", {"feedetail": [fee("1", busy, psn, "XA01", "20", "1",
                                                                      f"{day} 09:00:00")]}, "E_DETAIL_CONFLICT"),
        ("money with 3 places", "2207", {"data": {**settle_data(psn, busy, "10.00")["data"],
                                                  "medfee_sumamt": D("10.001")}}, "E_BAD_INPUT"),
        ("unknown field", "2201", {"data": {"psn_no": psn, "insutype": "310", "begntime": f"{day} 09:00:00",
                                            "mdtrt_cert_type": "02", "ipt_otp_no": "X", "hack": 1}}, "E_BAD_INPUT"),
    ]
    for n, (name, code, data, err) in enumerate(cases):
        reply = await send(stack, code, data, f"{day} 09:{n:02d}:30")
        assert reply.err_code == err, f"{name}: {reply.err_code} {reply.err_msg}"
    refused(await send(stack, "2201", {"data": {"psn_no": psn, "insutype": "310", "begntime": f"{day} 09:00:00",
                                                "mdtrt_cert_type": "02", "ipt_otp_no": "X"}}, f"{day} 09:50:00",
                       facility=PHARMACY), "E_FACILITY_TYPE_MISMATCH")
    assert await fingerprint(stack, psn) == before


# ---- idempotent by msgid; the sweep closes visits left open --------------------------------------------------------------
async def test_idempotent_and_swept(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    psn = await person(c, uid("swp"), balance="50.00")
    t = "2026-08-01 08:00:00"
    msgid = c.msgid(__import__("datetime").datetime(2026, 8, 1, 8, 0, 0), HOSPITAL3)
    data = {"data": {"psn_no": psn, "insutype": "310", "begntime": t, "mdtrt_cert_type": "02", "ipt_otp_no": "S1"}}
    a = ok(await send(stack, "2201", data, t, msgid=msgid))
    b = ok(await send(stack, "2201", data, t, msgid=msgid))
    assert a == b  # the original answer again, not a second visit
    refused(await send(stack, "2201", {"data": {**data["data"], "ipt_otp_no": "S2"}}, t, msgid=msgid),
            "E_MSGID_CONFLICT")
    mdtrt_id = a["data"]["mdtrt_id"]
    ok(await send(stack, "2204", {"feedetail": [fee("1", mdtrt_id, psn, "XA01", "10", "1", t)]}, t))
    _, bureau = await audit(c)
    assert mdtrt_id in {v["mdtrt_id"] for v in bureau["visits"]["open"]}  # reported open
    # The facility's 3201 of a later day sweeps it (outpatient: not finished on its day). A visit of that very
    # day stays open.
    later = "2026-08-02 18:00:00"
    today = await register(stack, psn, "2026-08-02 09:00:00")
    rec = ok(await send(stack, "3201", {"fixmedins_code": HOSPITAL3, "stmt_date": "2026-08-02", "fixmedins_setl_cnt": 0,
                                        "medfee_sumamt": "0.00", "fund_pay_sumamt": "0.00", "acct_pay": "0.00",
                                        "psn_cash_pay": "0.00"}, later))
    assert rec["visits_swept"] >= 1
    refused(await send(stack, "2207", settle_data(psn, mdtrt_id, "10.00"), later), "E_VISIT_CANCELLED")
    _, bureau = await audit(c)
    assert mdtrt_id not in {v["mdtrt_id"] for v in bureau["visits"]["open"]}
    assert today in {v["mdtrt_id"] for v in bureau["visits"]["open"]}
    assert bureau["visits"]["states"].get("expired", 0) >= 1


# ---- Done when: a request shaped like the national examples, accepted field for field ------------------------------
# Raw JSON text, written from the public field lists (2201 In2201data; 2204 feedetail; 2207 data), not from
# gongji's models: numbers are JSON numbers (pric 16,6 with six places, cnt 16,4), every listed field present.
FIXTURE_2201 = """{"data": {"psn_no": "%(psn)s", "insutype": "310", "begntime": "2026-09-01 08:30:00",
  "mdtrt_cert_type": "02", "mdtrt_cert_no": "330102199001011234", "ipt_otp_no": "MZ20260901001",
  "atddr_no": "D330100000001", "dr_name": "张医生", "dept_code": "0301", "dept_name": "内科门诊", "caty": "A03"}}"""
FIXTURE_2204 = """{"feedetail": [{"feedetl_sn": "20260901000001", "mdtrt_id": "%(mdtrt)s", "psn_no": "%(psn)s",
  "chrg_bchno": "CB20260901001", "dise_codg": "", "rxno": "RX0001", "rx_circ_flag": "0",
  "fee_ocur_time": "2026-09-01 08:40:00", "med_list_codg": "XB02", "medins_list_codg": "YP000123",
  "det_item_fee_sumamt": 36.9, "cnt": 3.0000, "pric": 12.300000, "sin_dos_dscr": "0.3g", "used_frqu_dscr": "bid",
  "prd_days": 3, "medc_way_dscr": "口服", "bilg_dept_codg": "0301", "bilg_dept_name": "内科门诊",
  "bilg_dr_codg": "D330100000001", "bilg_dr_name": "张医生", "acord_dept_codg": "", "acord_dept_name": "",
  "orders_dr_code": "", "orders_dr_name": "", "hosp_appr_flag": "1", "tcmdrug_used_way": "", "etip_flag": "",
  "etip_hosp_code": "", "dscg_tkdrug_flag": "", "matn_fee_flag": ""}]}"""
FIXTURE_2207 = """{"data": {"psn_no": "%(psn)s", "mdtrt_cert_type": "02", "mdtrt_cert_no": "330102199001011234",
  "med_type": "11", "medfee_sumamt": 36.90, "psn_setlway": "01", "mdtrt_id": "%(mdtrt)s", "chrg_bchno": "CB20260901001",
  "insutype": "310", "acct_used_flag": "1", "invono": "", "fulamt_ownpay_amt": 0, "overlmt_selfpay": 0,
  "preselfpay_amt": 1.85, "inscp_scp_amt": 35.05}}"""


async def send_text(stack: Stack, infno: str, input_text: str, when: str) -> Reply:
    c = stack.client
    assert c is not None
    sn = await sign_no(c, HOSPITAL3, when)
    req = c.envelope(infno, {}, insuplc_admdvs=HZ, when=when, fixmedins_code=HOSPITAL3, sign_no=sn)
    head = req.model_dump_json()
    assert head.endswith(',"input":{}}')
    body = head[: -len('{}}')] + input_text + "}"
    return await c.call_raw(c.names.bureau_exchange, HZ, body.encode(), req.msgid)


async def test_national_example_accepted_field_for_field(stack: Stack) -> None:
    psn = await person(stack.client, uid("fix"), balance="100.00")  # type: ignore[arg-type]
    out = ok(await send_text(stack, "2201", FIXTURE_2201 % {"psn": psn}, "2026-09-01 08:30:00"))
    mdtrt = out["data"]["mdtrt_id"]
    assert out["data"]["ipt_otp_no"] == "MZ20260901001"
    res = ok(await send_text(stack, "2204", FIXTURE_2204 % {"psn": psn, "mdtrt": mdtrt}, "2026-09-01 08:40:00"))
    (line,) = res["result"]
    # XB02 乙类 0.05: 12.300000 x 3 = 36.90; 先行自付 36.90 x 0.05 = 1.845 → 1.85 (half-up); in scope 35.05.
    assert line["feedetl_sn"] == "20260901000001" and line["chrgitm_lv"] == "02"
    assert (line["det_item_fee_sumamt"], line["pric"], line["cnt"]) == (D("36.9"), D("12.300000"), D("3.0000"))
    assert (line["preselfpay_amt"], line["inscp_scp_amt"]) == (D("1.85"), D("35.05"))
    done = ok(await send_text(stack, "2207", FIXTURE_2207 % {"psn": psn, "mdtrt": mdtrt}, "2026-09-01 08:50:00"))
    s = done["setlinfo"]
    # Employed, outpatient deductible 600: all 35.05 in scope goes to the deductible, nothing pooled;
    # the account pays 36.90: balance 100.00 - 36.90 = 63.10.
    assert (s["medfee_sumamt"], s["act_pay_dedc"], s["hifp_pay"], s["acct_pay"], s["balc"]) == \
        (D("36.90"), D("35.05"), D("0.00"), D("36.90"), D("63.10"))
    # The answer carries money as JSON numbers, as the platform does.
    c = stack.client
    assert c is not None
    sn = await sign_no(c, HOSPITAL3, "2026-09-01 09:00:00")
    req = c.envelope("5203", {"data": {"psn_no": psn, "setl_id": s["setl_id"]}}, insuplc_admdvs=HZ,
                     when="2026-09-01 09:00:00", fixmedins_code=HOSPITAL3, sign_no=sn)
    raw = await c.call_raw(c.names.bureau_exchange, HZ, req.model_dump_json().encode(), req.msgid)
    assert raw.output is not None and isinstance(raw.output["setlinfo"]["hifp_pay"], Decimal)


# ---- visit state survives a restart of the bureau; 冲正 on deadline works on the national sequence ----------------
async def test_visit_survives_bureau_restart(stack: Stack) -> None:
    import asyncio
    import signal
    psn = await person(stack.client, uid("rst"), balance="100.00")  # type: ignore[arg-type]
    t = "2026-10-01 09:00:00"
    mdtrt_id = await register(stack, psn, t)
    ok(await send(stack, "2204", {"feedetail": [fee("1", mdtrt_id, psn, "XA01", "10", "1", t)]}, t))
    stack.kill("bureau", signal.SIGKILL)
    await asyncio.sleep(0.5)
    await stack.start_worker("bureau")
    # Employed, deductible 600: the 10.00 in scope goes to the deductible; the account pays 10.00.
    s = ok(await send(stack, "2207", settle_data(psn, mdtrt_id, "10.00"), "2026-10-01 09:10:00"))["setlinfo"]
    assert (s["act_pay_dedc"], s["acct_pay"], s["balc"]) == (D("10.00"), D("10.00"), D("90.00"))


async def test_pos_national_outpatient_compensated_on_deadline(stack: Stack) -> None:
    """The POS plays 2201 → 2203 → 2204 → 2207 (no pre-settle); the accounts service is frozen, so 2207 cannot
    be answered in time: the POS sends 2601 冲正 for the 2207's msgid; the bureau undoes it once the payment is
    answered, and its visit goes back to registered (open, reported as such)."""
    import asyncio
    import signal
    from tests.harness import line, visit
    c = stack.client
    assert c is not None
    psn = await person(c, uid("cz"), balance="200.00")
    cmd = visit(psn, HOSPITAL3, "11", "2026-10-02 10:00:00", [line("XA01", "80.00")], presettle=False,
                timeout_ms=5000, uploads=1)
    stack.kill("accounts", signal.SIGSTOP)
    try:
        await c.submit(cmd)
        await asyncio.sleep(9.0)  # 2201, 2203, 2204 answered by the bureau; 2207 waits on the accounts → 2601
    finally:
        stack.kill("accounts", signal.SIGCONT)
    outcome = await c.outcome(cmd.visit_id, timeout=60)
    assert outcome.status == "compensated", (outcome.err_code, outcome.err_msg)
    assert outcome.mdtrt_id is not None and outcome.round_trips == 5  # 2201 2203 2204 2207 2601
    assert await balance(c, psn) == D("200.00")
    _, bureau = await audit(c)
    assert outcome.mdtrt_id in {v["mdtrt_id"]: v for v in bureau["visits"]["open"]}
    assert {v["mdtrt_id"]: v["state"] for v in bureau["visits"]["open"]}[outcome.mdtrt_id] == "registered"
    # The undone settlement no longer claims the visit's lines (5204), and the visit can be settled again.
    q = ok(await send(stack, "5204", {"data": {"psn_no": psn, "mdtrt_id": outcome.mdtrt_id}}, "2026-10-02 11:00:00"))
    assert [(x["feedetl_sn"], x["setl_id"], x["vali_flag"]) for x in q["feedetail"]] == [("1", "", "1")]
    s = ok(await send(stack, "2207", settle_data(psn, outcome.mdtrt_id, "80.00", bchno="B1"),
                      "2026-10-02 11:01:00"))["setlinfo"]
    assert (s["acct_pay"], s["balc"]) == (D("80.00"), D("120.00"))  # 80.00 in scope, all to the deductible


async def test_a_second_registration_under_an_open_visits_number_is_refused(stack: Stack) -> None:
    # An outside probe: a HIS re-sending 2201 (or 2401) with a new msgid after a timeout got a second mdtrt_id
    # for the same 门诊号, piling up open visits of one patient.
    psn = await person(stack.client, uid("dup"), balance="0.00")  # type: ignore[arg-type]
    t = "2026-08-20 09:00:00"
    data = {"data": {"psn_no": psn, "insutype": "310", "begntime": t, "mdtrt_cert_type": "02", "mdtrt_cert_no": "",
                     "ipt_otp_no": uid("num")[-20:], "atddr_no": "D001", "dr_name": "王医生", "dept_code": "A03",
                     "dept_name": "内科", "caty": "A03"}}
    first = ok(await send(stack, "2201", data, t))["data"]["mdtrt_id"]
    refused(await send(stack, "2201", data, "2026-08-20 09:01:00"), "E_VISIT_STATE")
    # Once that visit is cancelled (2202), the number may be registered again.
    ok(await send(stack, "2202", {"data": {"mdtrt_id": first, "psn_no": psn, "ipt_otp_no": data["data"]["ipt_otp_no"]}},
                  "2026-08-20 09:02:00"))
    again = ok(await send(stack, "2201", data, "2026-08-20 09:03:00"))["data"]["mdtrt_id"]
    assert again != first
