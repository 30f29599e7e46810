"""Events published on the events exchange (topic). Routing keys:
    outcome.<fixmedins_code>      VisitOutcome (contracts.pos)
    balance.<psn_no>              BalanceChanged (个人账户变动提醒)
"""
from __future__ import annotations

from typing import Literal

from .base import BizTime, PsnNo, Strict
from .money import Money


class BalanceChanged(Strict):
    psn_no: PsnNo
    delta: Money
    balc: Money
    reason: Literal["open", "deposit", "settlement", "mutual_aid", "wallet", "reversal", "wallet_transfer",
                    "wallet_claim", "wallet_return", "resident_contribution"]
    ref: str
    biz_time: BizTime
