"""Bureau → payer-account service, and back. Only the bureau asks the accounts service to move money.

`req_id` is the idempotency key of the request ("pay:<setl_id>", "refund:<setl_id>", ...).
`context` is opaque to the accounts service and echoed in the reply, so the bureau needs no
waiting state of its own for read-only requests.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import Admdvs, BizTime, FixmedinsCode, PsnNo, Strict
from .money import Money
from .settlement import ItemScope, MedType, MulaidPart, SetlChannel

AccountsKind = Literal["pay", "preview", "refund", "balance"]


class AccountsRequest(Strict):
    req_id: str = Field(min_length=1, max_length=80)
    kind: AccountsKind
    psn_no: PsnNo
    insuplc_admdvs: Admdvs
    biz_time: BizTime
    fixmedins_code: FixmedinsCode | None = None
    med_type: MedType | None = None
    setl_chnl: SetlChannel = "offline"
    setl_id: str | None = None
    acct_used_flag: Literal["0", "1"] = "1"
    psn_part_amt: Money | None = None
    # Parts of psn_part_amt the region may forbid the account to pay.
    fulamt_ownpay_amt: Money | None = None
    overlmt_selfpay: Money | None = None
    # Amounts of the bill by non-medical item scope (cosmetic, vaccination, ...): the accounts decide
    # from the region's rules which of them any account may pay.
    scope_amounts: dict[ItemScope, Money] = {}
    medfee_sumamt: Money | None = None
    proxy_psn_no: PsnNo | None = None
    context: dict[str, Any] = {}


class AccountsReply(Strict):
    req_id: str
    kind: AccountsKind
    ok: bool
    err_code: str | None = None
    err_msg: str | None = None
    acct_pay: Money | None = None
    acct_mulaid_pay: Money | None = None
    psn_cash_pay: Money | None = None
    wallet_pay: Money | None = None
    balc: Money | None = None
    mulaid_detail: list[MulaidPart] = []
    notes: list[str] = []
    context: dict[str, Any] = {}
