"""The published form of report.json and compare.json: what other programs read.

- `schema_version`: bumped when a key changes meaning or goes away (adding keys does not bump it).
- Money: one rule everywhere — a JSON number in yuan with at most two decimals (12.3 is 12.30), exact in
  fen as round(x * 100). Two documented exceptions keep what was written or sent as it was:
  `expectations.failures[].expected/actual` (the scenario's own text) and `steps[].output` (a service's reply
  as on the wire, money as "12.30" strings).
- Keys: stable snake_case identifiers; display labels (Chinese included) live in the HTML only.
- The whole document loads with `pandas.json_normalize`.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

SCHEMA_VERSION = 2  # 1: money as strings and display-label keys (before gongji 0.2)

# report.sources: display label → key
SOURCE_KEYS = {"pooled fund 统筹基金": "pooled_fund", "own account 个人账户": "own_account",
               "family mutual aid 家庭共济": "family_mutual_aid", "wallet 医保钱包": "wallet", "cash 现金": "cash",
               # the funds above the basic one (report.FUNDS_ABOVE), by fund_pay_type
               "大额医疗费用补助 (330100)": "large_amount_subsidy_330100",
               "大病保险 (390200)": "critical_illness_insurance_390200",
               "医疗救助 (610100)": "medical_assistance_610100"}
STEP_MONEY = {"medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
              "act_pay_dedc", "hifp_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay", "acct_mulaid_pay",
              "psn_cash_pay", "wallet_pay", "balc"}


def num(value: Any) -> Any:
    """'12.30' → 12.3; anything that is not money text is returned as it is."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+\.\d{2}", value):
        return float(Decimal(value))
    return value


def snake(label: str) -> str:
    """A display label → a snake_case key ('pooled fund 统筹基金' → 'pooled_fund')."""
    if label in SOURCE_KEYS:
        return SOURCE_KEYS[label]
    ascii_part = re.sub(r"[^0-9A-Za-z]+", "_", label).strip("_").lower()
    return ascii_part or "key"


def _money_map(d: dict[str, Any]) -> dict[str, Any]:
    return {k: num(v) for k, v in d.items()}


def report(rep: dict[str, Any]) -> dict[str, Any]:
    """report.build's dict → the published report.json (a new dict; the input is left alone)."""
    out = dict(rep)
    out["schema_version"] = SCHEMA_VERSION
    out["money_unit"] = "yuan"  # every money value: a JSON number, at most 2 decimals
    for key in ("totals",):
        if isinstance(out.get(key), dict):
            out[key] = _money_map(out[key])
    if isinstance(out.get("sources"), dict):
        out["sources"] = {snake(k): num(v) for k, v in out["sources"].items()}
    for key in ("by_category", "by_region"):
        if isinstance(out.get(key), dict):
            out[key] = {k: _money_map(v) if isinstance(v, dict) else v for k, v in out[key].items()}
    if isinstance(out.get("families"), dict):
        out["families"] = {k: num(v) for k, v in out["families"].items()}
    steps = []
    for row in out.get("steps") or []:
        row = {k: (num(v) if k in STEP_MONEY else v) for k, v in row.items()}
        if isinstance(row.get("mulaid"), dict):
            row["mulaid"] = _money_map(row["mulaid"])
        steps.append(row)
    out["steps"] = steps
    return out


def yuan(value: Any) -> str:
    """For the terminal and the HTML: a published money number (or money text) → '12.30'."""
    if value is None or value == "":
        return ""
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return f"{Decimal(str(value)):.2f}"
    return str(value)
