"""settlements.csv and settlements.ndjson: one row per visit (settle or reverse, generated ones included),
written as each outcome arrives, so a run of any size keeps nothing of it in memory for the export.

    export = SettlementExport(report_dir)        # opens both files (truncates)
    export.write(outcome, step=..., kind=...)    # outcome: a VisitOutcome or its JSON dict, or None
    export.close()

Money rule (the same as report.json): a JSON number in yuan with at most two decimals (12.3 is 12.30);
exact in fen as round(x * 100). In the CSV money is written "12.30". Rows come in the order the outcomes
arrived (generated families run concurrently): sort by `biz_time` and `visit_id` for a stable order.
"""
from __future__ import annotations

import csv
import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from contracts.base import format_biz_time

# Every money field of SetlInfo, in wire order.
SETLINFO_MONEY = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
                  "act_pay_dedc", "hifp_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay", "acct_mulaid_pay",
                  "psn_cash_pay", "wallet_pay", "balc")
# Who paid what: the patient's own account (acct_pay less family and wallet), family, wallet, cash, funds.
PAID_BY = ("own_account_pay", "family_pay", "cash_pay", "fund_pay")  # wallet_pay is a setlinfo field
COLUMNS = ("visit_id", "step", "generated", "family", "event", "kind", "category", "reverse_of", "psn_no",
           "fixmedins_code", "insuplc_admdvs", "mdtrtarea_admvs", "med_type", "setl_chnl", "biz_time", "status",
           "infcode", "err_code", "err_msg", "note", "setl_id", "orig_setl_id", "setl_time", *SETLINFO_MONEY,
           *PAID_BY, "authorizers", "funds", "why")
SCHEMA_VERSION = 1


def money(value: Any) -> float | None:
    """'12.30' → 12.3 (a JSON number; the decimal text of two places round-trips exactly through float)."""
    if value is None or value == "":
        return None
    return float(Decimal(str(value)).quantize(Decimal("0.01")))


def _fen(value: Any) -> int:
    return int((Decimal(str(value)) * 100).to_integral_value()) if value not in (None, "") else 0


def settlement_row(outcome: Any, *, step: str | None = None, generated: bool = False, family: str | None = None,
                   kind: str | None = None, category: str | None = None, reverse_of: str | None = None,
                   note: str | None = None, cmd: Any = None, unmap: Callable[[str], str] | None = None
                   ) -> dict[str, Any]:
    """One flat row: the visit, its outcome, every setlinfo money field as a number, who paid what."""
    u = unmap or (lambda s: s)
    o = _as_dict(outcome)
    c = _cmd_fields(cmd)
    s = o.get("setlinfo") or {}
    row: dict[str, Any] = {k: None for k in COLUMNS}
    row.update({
        "visit_id": u(o.get("visit_id") or c.get("visit_id") or ""), "step": step, "generated": generated,
        "family": family, "event": o.get("cmd") or c.get("cmd"), "kind": kind, "category": category,
        "reverse_of": reverse_of, "psn_no": u(o.get("psn_no") or c.get("psn_no") or ""),
        "fixmedins_code": u(o.get("fixmedins_code") or c.get("fixmedins_code") or ""),
        "insuplc_admdvs": s.get("insuplc_admdvs") or c.get("insuplc_admdvs"),
        "mdtrtarea_admvs": s.get("mdtrtarea_admvs") or c.get("mdtrtarea_admvs"),
        "med_type": s.get("med_type") or c.get("med_type"), "setl_chnl": c.get("setl_chnl"),
        "biz_time": o.get("biz_time") or c.get("biz_time"), "status": o.get("status") or "without_outcome",
        "infcode": o.get("infcode"), "err_code": o.get("err_code"),
        "err_msg": u(o["err_msg"]) if o.get("err_msg") else None, "note": note,
    })
    if s:
        row.update({"setl_id": u(s["setl_id"]), "orig_setl_id": u(s["orig_setl_id"]) if s.get("orig_setl_id") else None,
                    "setl_time": s.get("setl_time")})
        for f in SETLINFO_MONEY:
            row[f] = money(s.get(f, "0.00"))
        acct, mulaid, wallet = _fen(s.get("acct_pay")), _fen(s.get("acct_mulaid_pay")), _fen(s.get("wallet_pay"))
        row.update({"own_account_pay": (acct - mulaid - wallet) / 100, "family_pay": mulaid / 100,
                    "cash_pay": money(s.get("psn_cash_pay")),
                    "fund_pay": money(s.get("fund_pay_sumamt"))})
        row["authorizers"] = [{"psn_no": u(p["authorizer_psn_no"]), "auth_id": u(str(p.get("auth_id", ""))),
                               "amount": money(p["amount"]), "balc": money(p.get("balc"))}
                              for p in s.get("mulaid_detail") or []]
        # The funds that paid (setldetail, where the settlement carries one): code and amount.
        funds = s.get("setldetail") or s.get("funds") or []
        row["funds"] = [{"fund_pay_type": f.get("fund_pay_type") or f.get("code"),
                         "amount": money(f.get("fund_payamt", f.get("amount")))} for f in funds if isinstance(f, dict)]
        row["why"] = [u(n) for n in s.get("notes") or []]
    else:
        row.update({"authorizers": [], "funds": [], "why": []})
    return row


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    return obj.model_dump(mode="json")  # a pydantic model


_CMD_FIELDS = ("cmd", "visit_id", "psn_no", "fixmedins_code", "insuplc_admdvs", "mdtrtarea_admvs", "med_type",
               "setl_chnl", "biz_time")


def _cmd_fields(cmd: Any) -> dict[str, Any]:
    """The few fields of a visit command the row needs (without dumping its bill)."""
    if cmd is None:
        return {}
    if isinstance(cmd, dict):
        return cmd
    out = {k: getattr(cmd, k, None) for k in _CMD_FIELDS}
    if isinstance(out["biz_time"], datetime):
        out["biz_time"] = format_biz_time(out["biz_time"])
    return out


def csv_cells(row: dict[str, Any]) -> list[str]:
    out = []
    for k in COLUMNS:
        v = row.get(k)
        if v is None:
            out.append("")
        elif k in SETLINFO_MONEY or k in PAID_BY:
            out.append(f"{Decimal(str(v)):.2f}")
        elif k == "authorizers":
            out.append(";".join(f"{a['psn_no']}:{a['amount']:.2f}" for a in v))
        elif k == "funds":
            out.append(";".join(f"{f['fund_pay_type']}:{f['amount']:.2f}" for f in v if f["amount"] is not None))
        elif k == "why":
            out.append(" | ".join(v))
        elif isinstance(v, bool):
            out.append("true" if v else "false")
        else:
            out.append(str(v))
    return out


class SettlementExport:
    """Appends one row per visit to <dir>/settlements.csv and <dir>/settlements.ndjson as outcomes arrive."""

    def __init__(self, directory: Path | str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.dir / "settlements.csv"
        self.ndjson_path = self.dir / "settlements.ndjson"
        self._csv_file = self.csv_path.open("w", encoding="utf-8", newline="")
        self._ndjson = self.ndjson_path.open("w", encoding="utf-8")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(COLUMNS)
        self.rows = 0

    def write(self, outcome: Any, **context: Any) -> dict[str, Any]:
        """outcome: a VisitOutcome (model or JSON dict) or None (no outcome: give cmd= and note=)."""
        row = settlement_row(outcome, **context)
        self.write_row(row)
        return row

    def write_row(self, row: dict[str, Any]) -> None:
        self._csv.writerow(csv_cells(row))
        self._ndjson.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows += 1

    def flush(self) -> None:
        self._csv_file.flush()
        self._ndjson.flush()

    def close(self) -> None:
        for f in (self._csv_file, self._ndjson):
            if not f.closed:
                f.close()

    def __enter__(self) -> "SettlementExport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
