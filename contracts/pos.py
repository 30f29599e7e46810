"""Commands to the POS (the pharmacies and hospitals gongji plays) and the outcome events it publishes."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from .base import Admdvs, BizTime, FixmedinsCode, PsnNo, Strict
from .settlement import CertType, FeeDetail, Insutype, MedType, SetlChannel, SetlInfo

VisitId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,80}$")]


class SettleVisit(Strict):
    """Settle one visit: pre-settle, then settle; 冲正 (2601) if the settle answer does not come in time."""

    cmd: Literal["settle"] = "settle"
    visit_id: VisitId
    fixmedins_code: FixmedinsCode
    insuplc_admdvs: Admdvs
    mdtrtarea_admvs: Admdvs
    psn_no: PsnNo
    med_type: MedType
    insutype: Insutype = "310"
    mdtrt_cert_type: CertType = "01"
    acct_used_flag: Literal["0", "1"] = "1"
    setl_chnl: SetlChannel = "offline"
    proxy_psn_no: PsnNo | None = None  # 亲情账户: who presents the patient's e-voucher
    rx_circ_flag: Literal["0", "1"] = "0"  # 外配处方 (pharmacy purchase on an external prescription)
    biz_time: BizTime
    details: list[FeeDetail] = Field(min_length=1, max_length=500)
    presettle: bool = True
    timeout_ms: int = Field(default=10000, ge=1, le=600000)


class ReverseVisit(Strict):
    """Reverse (撤销) an earlier settlement by its setl_id."""

    cmd: Literal["reverse"] = "reverse"
    visit_id: VisitId
    fixmedins_code: FixmedinsCode
    insuplc_admdvs: Admdvs
    mdtrtarea_admvs: Admdvs
    psn_no: PsnNo
    med_type: MedType
    setl_id: str = Field(min_length=1, max_length=64)
    biz_time: BizTime
    timeout_ms: int = Field(default=10000, ge=1, le=600000)


PosCommand = Annotated[Union[SettleVisit, ReverseVisit], Field(discriminator="cmd")]

OutcomeStatus = Literal["settled", "reversed", "refused", "compensated"]


class VisitOutcome(Strict):
    """Exactly one per visit: what finally happened.

    settled      the settlement (or reversal) took effect; setlinfo holds the split
    reversed     a reverse command took effect; setlinfo holds the negated split
    refused      the bureau said no (infcode -1); nothing changed
    compensated  the answer did not come in time; 2601 冲正 was sent and acknowledged, nothing remains
    """

    visit_id: VisitId
    cmd: Literal["settle", "reverse"]
    status: OutcomeStatus
    fixmedins_code: FixmedinsCode
    psn_no: PsnNo
    msgid: str
    infcode: int
    err_code: str | None = None
    err_msg: str | None = None
    setlinfo: SetlInfo | None = None
    presettle: SetlInfo | None = None
    biz_time: BizTime
