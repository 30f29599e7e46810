"""Commands to the POS (the pharmacies and hospitals gongji plays) and the outcome events it publishes."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

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
    # How the POS speaks to the bureau. "national" (the default): the sequence a HIS sends — 2201 挂号 → 2203 →
    # 2204 (in `uploads` batches) → 2205 (the `cancel` lines) → 2206 → 2207 for outpatient; 2401 → 2301 … → 2302 →
    # 2402 → 2303 → 2304 for inpatient; 2101 → 2102 with druginfo + drugdetail for a pharmacy.
    # "flat": gongji's shortcut for bulk load — one 2206/2207 carrying the whole bill in `details`.
    flow: Literal["national", "flat"] = "national"
    uploads: int = Field(default=1, ge=1, le=20)  # fee-detail uploads the details are spread over
    cancel: list[FeeDetail] = Field(default=[], max_length=50)  # uploaded, then cancelled before settlement
    abandon: bool = False  # register and upload, then walk away: never settled (the bureau's sweep closes it)
    # timeout_ms is the deadline of the money stages (a settle not answered in time → 2601 冲正); the preparatory
    # national transactions (2201, 2203, 2204, …) wait at least 30 s.

    @model_validator(mode="after")
    def _flow(self) -> "SettleVisit":
        if self.flow == "flat" or self.med_type == "41":
            if self.uploads != 1 or self.cancel or self.abandon:
                raise ValueError("uploads, cancel and abandon need the national flow of a hospital visit")
        return self


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
    flow: Literal["national", "flat"] = "national"


PosCommand = Annotated[Union[SettleVisit, ReverseVisit], Field(discriminator="cmd")]

OutcomeStatus = Literal["settled", "reversed", "refused", "compensated", "abandoned"]


class VisitOutcome(Strict):
    """Exactly one per visit: what finally happened.

    settled      the settlement (or reversal) took effect; setlinfo holds the split
    reversed     a reverse command took effect; setlinfo holds the negated split
    refused      the bureau said no (infcode -1); nothing changed
    compensated  the answer did not come in time; 2601 冲正 was sent and acknowledged, nothing remains
    abandoned    the visit was registered and details uploaded, then left (SettleVisit.abandon): nothing paid
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
    mdtrt_id: str | None = None  # the bureau's 就诊ID of the visit (national flow)
    round_trips: int = 0  # national transactions this visit took (sign-in excluded)
    biz_time: BizTime
