"""The national flow of a visit, as a HIS speaks it: 2201 挂号 / 2401 入院 → 2203 就诊信息 → 2204 / 2301 fee
details (adjudicated line by line at upload) → 2205 / 2302 cancel → 2402 出院 → 2206/2207, 2303/2304 settle
what was uploaded → 2208 / 2305 reverse; 2202 cancels a registration; 2101/2102/2103 in the pharmacy's
`druginfo` + `drugdetail` nodes; 5203 / 5204 answer a settlement and a visit's details.

Settlement builds gongji's internal bill (SettleInput) from the visit's current lines and goes through the
bureau's one settle path, so allocation, mutual aid, reversal and 冲正 are the same code. A pre-settlement
(2206/2303) changes nothing; a line cancelled after it simply is not in the bill any more, and the 2207/2304
whose `medfee_sumamt` no longer matches the current lines is refused (E_AMOUNT_MISMATCH: pre-settle again).
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from contracts import national as nat
from contracts.base import format_biz_time
from contracts.envelope import Reply, Request
from contracts.errors import ErrorCode, GongjiError
from contracts.money import from_fen
from contracts.settlement import FeeDetail, ReverseInput, SettleInput
from services.shared.inbox import short_error
from services.shared.policy import RegionPolicy

from .repository import BureauUnitOfWork
from .domain import line_scope, split_line
from .visit_store import SWEEP_AFTER_DAYS

if TYPE_CHECKING:
    from .service import BureauService

PRESETTLE = {"2101", "2206", "2303"}
MONEY = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt", "act_pay_dedc",
         "hifp_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay", "acct_mulaid_pay", "psn_cash_pay", "wallet_pay",
         "balc")
FUND_MONEY = ("inscp_scp_amt", "crt_payb_lmt_amt", "fund_payamt")


def decode(req: Request) -> Any:
    from pydantic import ValidationError
    try:
        return nat.NATIONAL_INPUTS[req.infno].model_validate(req.input)
    except ValidationError as exc:
        raise GongjiError(ErrorCode.BAD_INPUT, f"input for {req.infno}: {short_error(exc)}") from None


def _d(fen: int) -> Decimal:
    return from_fen(fen)


# ---- the answers, numbers as the platform writes them ------------------------------------------------------
def national_output(adjudication: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """A settlement (or reversal, or pre-settlement) answer: gongji's SetlInfo as it is when the request came in
    gongji's flat form; `setlinfo` + `setldetail` with money as numbers when it came in the national form."""
    nat_ctx = adjudication.get("national")
    if not nat_ctx:
        return info
    setlinfo: dict[str, Any] = {k: (Decimal(v) if k in MONEY and isinstance(v, str) else v) for k, v in info.items()}
    setlinfo["mdtrt_id"] = nat_ctx.get("mdtrt_id", "")
    setlinfo["medins_setl_id"] = nat_ctx.get("msgid", "")
    setlinfo["insutype"] = nat_ctx.get("insutype", "")
    setlinfo["clr_optins"] = setlinfo.get("insuplc_admdvs", "")
    # setldetail is a node of its own in the national answer: every fund line (the basic fund, 大额, 大病, 救助)
    lines = setlinfo.pop("setldetail", None) or []
    detail = [{k: (Decimal(v) if k in FUND_MONEY and isinstance(v, str) else v) for k, v in line.items()}
              for line in lines]
    return {"setlinfo": setlinfo, "setldetail": detail}




class VisitDesk:
    """The national visit transactions, for one bureau (uses its checks and its one settle path)."""

    def __init__(self, bureau: "BureauService"):
        self.b = bureau

    # ---- dispatch ----------------------------------------------------------------------------------------
    def effect(self, uow: BureauUnitOfWork, req: Request, reply_to: str | None, outbox: list[int]) -> bytes | None:
        inp = decode(req)
        code = req.infno
        handler = {"2201": self._register, "2401": self._admit, "2202": self._cancel_registration,
                   "2203": self._visit_info, "2204": self._upload, "2301": self._upload, "2205": self._cancel_lines,
                   "2302": self._cancel_lines, "2402": self._discharge, "5203": self._query_settlement,
                   "5204": self._query_details}.get(code)
        if handler is not None:
            return _ok(req, handler(uow, req, inp))
        if code in ("2207", "2304", "2102"):
            settle, national = self._bill(uow, req, inp)
            self.b._settle(uow, req, settle, reply_to, outbox)
            row = uow.settlements.by_msgid(req.msgid)
            assert row is not None
            adj = json.loads(row["adjudication"])
            adj["national"] = national
            uow.settlements.set_adjudication(row["setl_id"], json.dumps(adj))
            if national.get("form") == "visit":
                uow.visits.start_settling(national["mdtrt_id"], row["setl_id"], national["batch"],
                                          format_biz_time(req.inf_time))
            return None
        if code in ("2208", "2305", "2103"):
            data = inp.data
            if data.mdtrt_id is not None:
                visit = uow.visits.get(data.mdtrt_id)
                if visit is None or visit["setl_id"] != data.setl_id:
                    raise GongjiError(ErrorCode.SETTLEMENT_NOT_FOUND,
                                      f"settlement {data.setl_id} is not the settlement of visit {data.mdtrt_id}")
            self.b._reverse(uow, req, ReverseInput(psn_no=data.psn_no, setl_id=data.setl_id), reply_to, outbox)
            return None
        raise GongjiError(ErrorCode.UNKNOWN_INFNO, f"infno {code} is not served here")

    def presettle(self, uow: BureauUnitOfWork, req: Request, reply_to: str | None, outbox: list[int]) -> None:
        """2206 / 2303 / 2101 in the national form: changes nothing; the accounts service fills in balances."""
        inp = decode(req)
        settle, national = self._bill(uow, req, inp)
        person, policy, facility = self.b._check_settle(uow, req, settle)
        adj = self.b._adjudicate(uow, req, settle, person, policy, facility)
        context = {"msgid": req.msgid, "reply_to": reply_to, "infno": req.infno, "national": national,
                   "setlinfo": self.b._base_setlinfo(f"PRE{req.msgid}", req, settle.psn_no, settle.med_type, adj)}
        self.b._ask_accounts(uow, outbox, "preview", f"pre:{req.msgid}", req, settle, adj, context)

    # ---- checks --------------------------------------------------------------------------------------------
    def _visit(self, uow: BureauUnitOfWork, req: Request, mdtrt_id: str, psn_no: str) -> Any:
        self.b._region(req)
        row = uow.visits.get(mdtrt_id)
        if (row is None or row["fixmedins_code"] != req.fixmedins_code or row["psn_no"] != psn_no
                or row["insuplc_admdvs"] != req.insuplc_admdvs):
            raise GongjiError(ErrorCode.VISIT_UNKNOWN, f"no visit {mdtrt_id} of {psn_no} at {req.fixmedins_code}")
        return row

    @staticmethod
    def _must_be(row: Any, *states: str) -> None:
        state = row["state"]
        if state in states:
            return
        if state in ("settled", "settling", "reversed"):
            raise GongjiError(ErrorCode.VISIT_SETTLED, f"visit {row['mdtrt_id']} is already {state}")
        if state == "cancelled":
            raise GongjiError(ErrorCode.VISIT_CANCELLED, f"visit {row['mdtrt_id']} was cancelled (2202)")
        if state == "expired":
            raise GongjiError(ErrorCode.VISIT_CANCELLED, f"visit {row['mdtrt_id']} was closed by the sweep: "
                                                         "left open too long")
        raise GongjiError(ErrorCode.VISIT_STATE, f"visit {row['mdtrt_id']} is {state}: not for this transaction "
                                                 f"(expected {' or '.join(states)})")

    def _touch(self, uow: BureauUnitOfWork, mdtrt_id: str, req: Request) -> None:
        uow.visits.touch(mdtrt_id, format_biz_time(req.inf_time))

    # ---- registration, admission, discharge ------------------------------------------------------------------
    def _new_visit(self, uow: BureauUnitOfWork, req: Request, *, psn_no: str, insutype: str, med_type: str,
                   kind: str, ipt_otp_no: str, begntime: Any, info: dict[str, Any] | None) -> dict[str, Any]:
        self.b._region(req)
        person = self.b._person(uow, psn_no, req.insuplc_admdvs)
        if person["insutype"] != insutype:
            raise GongjiError(ErrorCode.WRONG_INSUTYPE, f"{psn_no} is insured under {person['insutype']}, "
                                                        f"not {insutype}")
        facility = uow.registry.facility(req.fixmedins_code)
        if facility is None:
            raise GongjiError(ErrorCode.UNKNOWN_FACILITY, f"facility {req.fixmedins_code} is not a designated one")
        if facility["type"] != "hospital":
            raise GongjiError(ErrorCode.FACILITY_TYPE_MISMATCH, "a pharmacy settles with 2101/2102, it does not "
                                                                "register visits")
        open_one = uow.visits.open_with_number(psn_no, req.fixmedins_code, ipt_otp_no)
        if open_one is not None:
            # A HIS that re-registers after a timeout (a new msgid) would pile up open visits of one patient.
            raise GongjiError(ErrorCode.VISIT_STATE, f"{psn_no} already has visit {open_one} open under number "
                                                     f"{ipt_otp_no}: continue it, or cancel it (2202) first")
        # Deterministic from the msgid: replicas sharing the store, and a redelivery, give the same mdtrt_id.
        mdtrt_id = "M" + hashlib.sha256(req.msgid.encode()).hexdigest()[:19].upper()
        uow.visits.add(mdtrt_id, req.msgid, psn_no, req.fixmedins_code, req.insuplc_admdvs, req.mdtrtarea_admvs,
                       insutype, med_type, kind, ipt_otp_no, format_biz_time(begntime),
                       "admitted" if kind == "inpatient" else "registered",
                       json.dumps(info, default=str) if info else None, format_biz_time(req.inf_time))
        return {"data": {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "ipt_otp_no": ipt_otp_no}}

    def _register(self, uow: BureauUnitOfWork, req: Request, inp: nat.In2201) -> dict[str, Any]:
        d = inp.data
        return self._new_visit(uow, req, psn_no=d.psn_no, insutype=d.insutype, med_type="11", kind="outpatient",
                               ipt_otp_no=d.ipt_otp_no, begntime=d.begntime, info=None)

    def _admit(self, uow: BureauUnitOfWork, req: Request, inp: nat.In2401) -> dict[str, Any]:
        m = inp.mdtrtinfo
        return self._new_visit(uow, req, psn_no=m.psn_no, insutype=m.insutype, med_type="21", kind="inpatient",
                               ipt_otp_no=m.ipt_no, begntime=m.begntime,
                               info={"adm": inp.model_dump(mode="json")})

    def _cancel_registration(self, uow: BureauUnitOfWork, req: Request, inp: nat.In2202) -> dict[str, Any]:
        row = self._visit(uow, req, inp.data.mdtrt_id, inp.data.psn_no)
        self._must_be(row, "registered")
        uow.visits.cancel(row["mdtrt_id"], req.msgid, format_biz_time(req.inf_time))
        return {"mdtrt_id": row["mdtrt_id"], "result": "cancelled"}

    def _visit_info(self, uow: BureauUnitOfWork, req: Request, inp: nat.In2203) -> dict[str, Any]:
        m = inp.mdtrtinfo
        row = self._visit(uow, req, m.mdtrt_id, m.psn_no)
        self._must_be(row, "registered")
        if m.med_type == "21" or m.med_type == "41":
            raise GongjiError(ErrorCode.MED_TYPE_MISMATCH, f"med_type {m.med_type} is not an outpatient visit")
        uow.visits.set_info(m.mdtrt_id, m.med_type, json.dumps(inp.model_dump(mode="json")),
                            format_biz_time(req.inf_time))
        return {"mdtrt_id": m.mdtrt_id, "med_type": m.med_type}

    def _discharge(self, uow: BureauUnitOfWork, req: Request, inp: nat.In2402) -> dict[str, Any]:
        d = inp.dscginfo
        row = self._visit(uow, req, d.mdtrt_id, d.psn_no)
        self._must_be(row, "admitted")
        if uow.visits.active_lines(row["mdtrt_id"]) == []:
            raise GongjiError(ErrorCode.VISIT_NO_DETAILS, f"visit {d.mdtrt_id} has no fee details: upload them "
                                                          "(2301) before discharge")
        info = json.loads(row["info"] or "{}")
        info["dscg"] = inp.model_dump(mode="json")
        uow.visits.discharge(d.mdtrt_id, format_biz_time(d.endtime), json.dumps(info), format_biz_time(req.inf_time))
        return {"mdtrt_id": d.mdtrt_id, "psn_no": d.psn_no, "endtime": format_biz_time(d.endtime)}

    # ---- fee details -----------------------------------------------------------------------------------------
    def _catalog(self, uow: BureauUnitOfWork, req: Request) -> RegionPolicy:
        """The catalog of where the facility is registered (as the settlement's, BureauService._adjudicate)."""
        policy = self.b._region(req)
        facility = uow.registry.facility(req.fixmedins_code)
        return self.b.policies.get(facility["admdvs"] if facility is not None else req.mdtrtarea_admvs, policy)

    def _upload(self, uow: BureauUnitOfWork, req: Request, inp: nat.In2204 | nat.In2301) -> dict[str, Any]:
        first = inp.feedetail[0]
        row = self._visit(uow, req, first.mdtrt_id, first.psn_no)
        inpatient = req.infno == "2301"
        if (row["kind"] == "inpatient") != inpatient:
            raise GongjiError(ErrorCode.MED_TYPE_MISMATCH, f"visit {row['mdtrt_id']} is {row['kind']}: details go "
                                                           f"with {'2301' if row['kind'] == 'inpatient' else '2204'}")
        self._must_be(row, "admitted" if inpatient else "registered")
        catalog = self._catalog(uow, req)
        result = []
        for line in inp.feedetail:
            internal = internal_line(line)
            batch = line.chrg_bchno if line.chrg_bchno is not None else (line.drord_no or "")
            split = line_split(internal, catalog)
            answer = {"feedetl_sn": line.feedetl_sn, "det_item_fee_sumamt": line.det_item_fee_sumamt,
                      "cnt": line.cnt, "pric": line.pric, **split}
            national = line.model_dump(mode="json")
            old = uow.visits.detail(row["mdtrt_id"], line.feedetl_sn)
            if old is not None:
                if old["state"] != "active" or json.loads(old["national"]) != national:
                    raise GongjiError(ErrorCode.DETAIL_CONFLICT, f"feedetl_sn {line.feedetl_sn} was uploaded before "
                                                                 "with other content (or cancelled)")
                result.append(json.loads(old["split"], parse_float=Decimal))
                continue
            uow.visits.add_detail(row["mdtrt_id"], line.feedetl_sn, batch, format_biz_time(line.fee_ocur_time),
                                  internal.model_dump_json(), json.dumps(national), _plain_json(answer), req.msgid)
            result.append(answer)
        self._touch(uow, row["mdtrt_id"], req)
        return {"result": result}

    def _cancel_lines(self, uow: BureauUnitOfWork, req: Request, inp: nat.In2205 | nat.In2302) -> dict[str, Any]:
        d = inp.data
        row = self._visit(uow, req, d.mdtrt_id, d.psn_no)
        inpatient = req.infno == "2302"
        if (row["kind"] == "inpatient") != inpatient:
            raise GongjiError(ErrorCode.MED_TYPE_MISMATCH, f"visit {row['mdtrt_id']} is {row['kind']}")
        self._must_be(row, "admitted" if inpatient else "registered")
        if inpatient:
            sn, batch = (None, "") if d.feedetl_sn == nat.ALL_BATCHES else (d.feedetl_sn, "")
        else:
            sn, batch = d.feedetl_sn, ("" if d.chrg_bchno == nat.ALL_BATCHES else d.chrg_bchno)
        found = uow.visits.active_sns(row["mdtrt_id"], batch, sn)
        if not found:
            if batch and sn is None and not uow.visits.has_batch(row["mdtrt_id"], batch):
                raise GongjiError(ErrorCode.CHRG_BCHNO_UNKNOWN, f"no details uploaded with chrg_bchno {batch}")
            raise GongjiError(ErrorCode.DETAIL_UNKNOWN, f"no active detail {sn or batch or '(any)'} on visit "
                                                        f"{row['mdtrt_id']}")
        uow.visits.cancel_lines(row["mdtrt_id"], batch, sn, req.msgid)
        self._touch(uow, row["mdtrt_id"], req)
        return {"mdtrt_id": row["mdtrt_id"], "cancelled": sorted(found)}

    # ---- the bill to settle ------------------------------------------------------------------------------------
    def _bill(self, uow: BureauUnitOfWork, req: Request, inp: Any) -> tuple[SettleInput, dict[str, Any]]:
        if isinstance(inp, nat.InPharmacy):
            i = inp.druginfo
            details = [internal_line(d) for d in inp.drugdetail]
            national = {"form": "pharmacy", "mdtrt_id": "", "msgid": req.msgid, "insutype": i.insutype}
            # 外配处方: the national flag rides on each drug line; one prescribed line makes the purchase prescribed
            rx = "1" if any(x.rx_circ_flag == "1" for x in inp.drugdetail) else "0"
            return _settle_input(i, "41", i.medfee_sumamt, details, rx), national
        d = inp.data
        row = self._visit(uow, req, d.mdtrt_id, d.psn_no)
        presettle = req.infno in PRESETTLE
        inpatient = req.infno in ("2303", "2304")
        if (row["kind"] == "inpatient") != inpatient:
            raise GongjiError(ErrorCode.MED_TYPE_MISMATCH, f"visit {row['mdtrt_id']} is {row['kind']}: settled with "
                                                           f"{'2303/2304' if row['kind'] == 'inpatient' else '2206/2207'}")
        if inpatient and not presettle and row["state"] == "admitted":
            raise GongjiError(ErrorCode.NOT_DISCHARGED, f"visit {row['mdtrt_id']} is not discharged: 2402 first")
        self._must_be(row, *(("admitted", "discharged") if inpatient else ("registered",)))
        if d.med_type is not None and d.med_type != row["med_type"]:
            raise GongjiError(ErrorCode.MED_TYPE_MISMATCH, f"visit {row['mdtrt_id']} is med_type {row['med_type']}")
        batch = "" if inpatient or d.chrg_bchno in (None, nat.ALL_BATCHES) else d.chrg_bchno
        if not uow.visits.active_lines(row["mdtrt_id"]):
            raise GongjiError(ErrorCode.VISIT_NO_DETAILS, f"visit {row['mdtrt_id']} has no fee details to settle")
        if batch and not uow.visits.has_batch(row["mdtrt_id"], batch):
            raise GongjiError(ErrorCode.CHRG_BCHNO_UNKNOWN, f"no details uploaded with chrg_bchno {batch} on visit "
                                                            f"{row['mdtrt_id']}")
        lines = uow.visits.active_lines(row["mdtrt_id"], batch)
        if not lines:
            raise GongjiError(ErrorCode.VISIT_NO_DETAILS, f"visit {row['mdtrt_id']} has no fee details "
                                                          f"{'in ' + batch if batch else ''} to settle")
        details = [FeeDetail.model_validate_json(r["line"]) for r in lines]
        total = sum((x.det_item_fee_sumamt for x in details), Decimal("0.00"))
        if total != d.medfee_sumamt:
            raise GongjiError(ErrorCode.AMOUNT_MISMATCH,
                              f"medfee_sumamt {d.medfee_sumamt} != the visit's current details {total} (a line was "
                              "cancelled or added since the pre-settlement: pre-settle again)")
        national = {"form": "visit", "mdtrt_id": row["mdtrt_id"], "batch": batch, "msgid": req.msgid,
                    "insutype": row["insutype"]}
        return _settle_input(d, row["med_type"], total, details), national

    # ---- queries -------------------------------------------------------------------------------------------------
    def _query_settlement(self, uow: BureauUnitOfWork, req: Request, inp: nat.InQuery) -> dict[str, Any]:
        d = inp.data
        self.b._region(req)
        setl_id = d.setl_id
        if not setl_id and d.mdtrt_id:
            setl_id = self._visit(uow, req, d.mdtrt_id, d.psn_no)["setl_id"] or ""
        row = uow.settlements.by_setl_id(setl_id) if setl_id else None
        if (row is None or row["psn_no"] != d.psn_no or row["fixmedins_code"] != req.fixmedins_code
                or json.loads(row["adjudication"])["insuplc_admdvs"] != req.insuplc_admdvs):
            raise GongjiError(ErrorCode.SETTLEMENT_NOT_FOUND, f"no settlement {setl_id or '(none)'} of {d.psn_no}")
        if row["setlinfo"] is None:
            raise GongjiError(ErrorCode.SETTLEMENT_PENDING, f"settlement {setl_id} is {row['state']}")
        adj = json.loads(row["adjudication"])
        out = national_output({"national": adj.get("national") or {"mdtrt_id": "", "msgid": row["msgid"]}},
                              json.loads(row["setlinfo"]))
        out["setlinfo"]["setl_stas"] = row["state"]
        return out

    def _query_details(self, uow: BureauUnitOfWork, req: Request, inp: nat.InQuery) -> dict[str, Any]:
        d = inp.data
        if not d.mdtrt_id:
            raise GongjiError(ErrorCode.BAD_INPUT, "5204 names the visit (mdtrt_id)")
        row = self._visit(uow, req, d.mdtrt_id, d.psn_no)
        out = []
        for r in uow.visits.all_details(row["mdtrt_id"]):
            split = json.loads(r["split"], parse_float=Decimal)
            line = json.loads(r["national"], parse_float=Decimal)
            out.append({**split, "mdtrt_id": row["mdtrt_id"], "setl_id": r["setl_id"] or "",
                        "chrg_bchno": r["chrg_bchno"], "med_type": row["med_type"],
                        "fee_ocur_time": r["fee_ocur_time"], "med_list_codg": line["med_list_codg"],
                        "medins_list_codg": line.get("medins_list_codg", ""),
                        "vali_flag": "1" if r["state"] == "active" else "0"})
        return {"mdtrt_id": row["mdtrt_id"], "state": row["state"], "feedetail": out}

    # ---- the reconciliation sweep ----------------------------------------------------------------------------------
    @staticmethod
    def sweep(uow: BureauUnitOfWork, fixmedins_code: str, region: str, stmt_date: str) -> int:
        """The reconciliation sweep, run by the facility's 3201 对总账 of a day (business time, never the wall
        clock): its visits in the region still open with no transaction for SWEEP_AFTER_DAYS before the end of
        that day are closed as abandoned ('expired'; nothing was paid, their details are kept for 5204).
        Not on registrations: visits of different business days may be in flight at once."""
        n = 0
        end = datetime.strptime(stmt_date, "%Y-%m-%d") + timedelta(days=1)
        for kind, days in SWEEP_AFTER_DAYS.items():
            cutoff = (end - timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S")
            n += uow.visits.expire(fixmedins_code, region, kind, cutoff)
        return n


# ---- conversions --------------------------------------------------------------------------------------------------
def internal_line(line: nat.FeeLine | nat.DrugDetail) -> FeeDetail:
    data = {"feedetl_sn": line.feedetl_sn, "med_list_codg": line.med_list_codg, "med_list_name": line.med_list_name,
            "cnt": line.cnt, "pric": line.pric, "det_item_fee_sumamt": line.det_item_fee_sumamt,
            "chrgitm_lv": line.chrgitm_lv, "selfpay_prop": line.selfpay_prop, "pric_uplmt_amt": line.pric_uplmt_amt,
            "item_scope": line.item_scope}
    return FeeDetail.model_validate({k: v for k, v in data.items() if v is not None})


def line_split(line: FeeDetail, catalog: RegionPolicy) -> dict[str, Any]:
    """The 2204 / 2301 per-line answer: the class and ratio that applied, and the split (split_line's)."""
    fulamt, over, pre, inscp, note = split_line(line, catalog)
    item = catalog.catalog_item(line.med_list_codg)
    if line_scope(line, catalog) != "medical":
        lv, prop, limit = "03", Decimal(1), None
    elif item is not None:
        lv, prop, limit = item.lv, item.selfpay_prop, item.pric_uplmt_amt
    elif catalog.unknown_items == "declared" and line.chrgitm_lv is not None:
        lv, prop, limit = line.chrgitm_lv, line.selfpay_prop or Decimal(0), line.pric_uplmt_amt
    else:
        lv, prop, limit = "03", Decimal(1), None
    if lv == "03":
        prop = Decimal(1)
    elif lv == "01":
        prop = Decimal(0)
    return {"chrgitm_lv": lv, "selfpay_prop": Decimal(prop), "pric_uplmt_amt": limit if limit is not None
            else Decimal(0), "fulamt_ownpay_amt": _d(fulamt), "overlmt_amt": _d(over), "preselfpay_amt": _d(pre),
            "inscp_scp_amt": _d(inscp), "memo": note}


def _settle_input(d: Any, med_type: str, total: Decimal, details: list[FeeDetail], rx: str = "0") -> SettleInput:
    data: dict[str, Any] = {"rx_circ_flag": rx, "psn_no": d.psn_no, "mdtrt_cert_type": d.mdtrt_cert_type, "mdtrt_cert_no": d.mdtrt_cert_no,
                            "med_type": med_type, "insutype": d.insutype, "acct_used_flag": d.acct_used_flag,
                            "medfee_sumamt": total, "setl_chnl": d.setl_chnl, "details": details}
    if d.proxy_psn_no is not None:
        data["proxy_psn_no"] = d.proxy_psn_no
    if isinstance(d, nat.DrugInfo) and total != d.medfee_sumamt:
        raise GongjiError(ErrorCode.AMOUNT_MISMATCH, f"medfee_sumamt {d.medfee_sumamt} != details {total}")
    return SettleInput.model_validate(data)


def _plain_json(obj: Any) -> str:
    from contracts import wire
    return wire.dumps(obj)


def _ok(req: Request, output: dict[str, Any]) -> bytes:
    return Reply.ok(req.msgid, output).model_dump_json().encode()
