"""The sequence of national transactions a visit command becomes, and the input of each (as a HIS sends it:
the national nodes, money as JSON numbers). Pure: a command (and the visit's mdtrt_id once known) in, data out.

    pharmacy    2101 → 2102                         (druginfo + drugdetail)
    outpatient  2201 → 2203 → 2204 ×n → [2205 ×k] → 2206 → 2207
    inpatient   2401 → 2301 ×n → [2302 ×k] → 2402 → 2303 → 2304
    reverse     2103 / 2208 / 2305                  (data: setl_id, psn_no)
    flat        gongji's shortcut: 2206 → 2207 with the whole bill in one flat input
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from contracts import infno
from contracts.base import format_biz_time
from contracts.pos import ReverseVisit, SettleVisit
from contracts.settlement import FeeDetail

BATCH = "B1"  # every upload of a visit goes into one charge batch, settled by that chrg_bchno


def plan(cmd: SettleVisit | ReverseVisit) -> list[str]:
    """The stages, in order; the last one ends the visit (settle, reverse, or `abandon`)."""
    if isinstance(cmd, ReverseVisit):
        return ["reverse"]
    tail = (["presettle"] if cmd.presettle else []) + ["settle"]
    if cmd.flow == "flat" or cmd.med_type == "41":
        return tail
    uploads = [f"upload:{i}" for i in range(cmd.uploads)]
    cancels = [f"cancel:{i}" for i in range(len(cmd.cancel))]
    if cmd.med_type == "21":
        steps = ["admit", *uploads, *cancels, "discharge"]
    else:
        steps = ["register", "info", *uploads, *cancels]
    return steps + (["abandon"] if cmd.abandon else tail)


def stage_infno(cmd: SettleVisit | ReverseVisit, stage: str) -> str:
    pre, settle, reverse = infno.TRIPLES[cmd.med_type]
    inpatient = cmd.med_type == "21"
    kind = stage.split(":")[0]
    return {"presettle": pre, "settle": settle, "reverse": reverse, "register": "2201", "admit": "2401",
            "info": "2203", "upload": "2301" if inpatient else "2204", "cancel": "2302" if inpatient else "2205",
            "discharge": "2402", "abandon": ""}[kind]


def _num(d: Decimal) -> Decimal:
    return d


def _line(cmd: SettleVisit, d: FeeDetail, sn: int, mdtrt_id: str | None) -> dict[str, Any]:
    """One line in the national form; gongji's declared class rides along as the documented extension."""
    t = format_biz_time(cmd.biz_time)
    line: dict[str, Any] = {"feedetl_sn": str(sn), "rxno": "", "rx_circ_flag": cmd.rx_circ_flag, "fee_ocur_time": t,
                            "med_list_codg": d.med_list_codg, "medins_list_codg": d.med_list_codg,
                            "det_item_fee_sumamt": d.det_item_fee_sumamt, "cnt": d.cnt, "pric": d.pric}
    if mdtrt_id is not None:
        line.update(mdtrt_id=mdtrt_id, psn_no=cmd.psn_no)
        if cmd.med_type == "21":
            line.update(drord_no=f"DO{sn}", med_type="21")
        else:
            line["chrg_bchno"] = BATCH
    for key in ("med_list_name", "chrgitm_lv", "selfpay_prop", "pric_uplmt_amt", "item_scope"):
        value = getattr(d, key)
        if value not in (None, ""):
            line[key] = value
    return line


def upload_chunks(cmd: SettleVisit) -> list[list[tuple[int, FeeDetail]]]:
    """The details spread over `uploads` batches in order; the lines to cancel go with the last one.
    feedetl_sn is the line's position in the visit (1, 2, …)."""
    numbered = list(enumerate(cmd.details, 1))
    n = cmd.uploads
    size = -(-len(numbered) // n)
    chunks = [numbered[i * size:(i + 1) * size] for i in range(n)]
    chunks = [c for c in chunks if c] or [[]]
    chunks[-1] = chunks[-1] + list(enumerate(cmd.cancel, len(cmd.details) + 1))
    return chunks


def stage_input(cmd: SettleVisit | ReverseVisit, stage: str, mdtrt_id: str | None) -> dict[str, Any]:
    if isinstance(cmd, ReverseVisit):
        if cmd.flow == "flat":
            return {"psn_no": cmd.psn_no, "setl_id": cmd.setl_id}
        return {"data": {"setl_id": cmd.setl_id, "psn_no": cmd.psn_no}}
    t = format_biz_time(cmd.biz_time)
    kind, _, idx = stage.partition(":")
    total = sum((d.det_item_fee_sumamt for d in cmd.details), Decimal("0.00"))
    ext: dict[str, Any] = {"setl_chnl": cmd.setl_chnl} if cmd.setl_chnl != "offline" else {}
    if cmd.proxy_psn_no is not None:
        ext["proxy_psn_no"] = cmd.proxy_psn_no
    if kind in ("presettle", "settle") and cmd.med_type == "41" and cmd.flow == "national":
        return {"druginfo": {"psn_no": cmd.psn_no, "mdtrt_cert_type": cmd.mdtrt_cert_type, "mdtrt_cert_no": "",
                             "begntime": t, "med_type": "41", "medfee_sumamt": total, "psn_setlway": "01",
                             "insutype": cmd.insutype, "acct_used_flag": cmd.acct_used_flag, **ext},
                "drugdetail": [_line(cmd, d, i, None) for i, d in enumerate(cmd.details, 1)]}
    if kind == "register":
        return {"data": {"psn_no": cmd.psn_no, "insutype": cmd.insutype, "begntime": t,
                         "mdtrt_cert_type": cmd.mdtrt_cert_type, "mdtrt_cert_no": "", "ipt_otp_no": cmd.visit_id[-30:],
                         "atddr_no": "", "dr_name": "", "dept_code": "", "dept_name": "", "caty": ""}}
    if kind == "admit":
        return {"mdtrtinfo": {"psn_no": cmd.psn_no, "insutype": cmd.insutype, "begntime": t,
                              "mdtrt_cert_type": cmd.mdtrt_cert_type, "mdtrt_cert_no": "", "med_type": "21",
                              "ipt_no": cmd.visit_id[-30:]}, "diseinfo": []}
    assert mdtrt_id is not None, stage
    if kind == "info":
        return {"mdtrtinfo": {"mdtrt_id": mdtrt_id, "psn_no": cmd.psn_no, "med_type": cmd.med_type, "begntime": t},
                "diseinfo": []}
    if kind == "upload":
        chunk = upload_chunks(cmd)[int(idx)]
        return {"feedetail": [_line(cmd, d, sn, mdtrt_id) for sn, d in chunk]}
    if kind == "cancel":
        sn = str(len(cmd.details) + int(idx) + 1)
        if cmd.med_type == "21":
            return {"data": {"feedetl_sn": sn, "mdtrt_id": mdtrt_id, "psn_no": cmd.psn_no}}
        return {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": BATCH, "psn_no": cmd.psn_no, "feedetl_sn": sn}}
    if kind == "discharge":
        return {"dscginfo": {"mdtrt_id": mdtrt_id, "psn_no": cmd.psn_no, "insutype": cmd.insutype, "endtime": t},
                "diseinfo": []}
    data: dict[str, Any] = {"psn_no": cmd.psn_no, "mdtrt_cert_type": cmd.mdtrt_cert_type, "mdtrt_cert_no": "",
                            "medfee_sumamt": total, "psn_setlway": "01", "mdtrt_id": mdtrt_id,
                            "acct_used_flag": cmd.acct_used_flag, "insutype": cmd.insutype, **ext}
    if cmd.med_type != "21":
        data.update(med_type=cmd.med_type, chrg_bchno=BATCH)
    return {"data": data}
