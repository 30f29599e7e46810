"""The national interface's own input nodes (医疗保障信息平台 定点医药机构接口规范), field for field.

Field lists are taken from public HIS client code (the national documents' 数据元): 2201 挂号, 2202 挂号撤销,
2203 就诊信息上传, 2204 门诊费用明细上传, 2205 门诊费用明细撤销, 2206/2207/2208 门诊预结算/结算/撤销,
2401 入院, 2402 出院, 2301 住院费用明细上传, 2302 住院费用明细撤销, 2303/2304/2305 住院预结算/结算/撤销,
2101/2102/2103 药店预结算/结算/撤销 (`druginfo` + `drugdetail`), 5203 结算信息查询, 5204 费用明细查询.

Money is a JSON number as the platform sends it, read straight to Decimal (contracts.wire), with at most the
places the field allows: money 16,2, `pric` and `pric_uplmt_amt` 16,6, `cnt` 16,4. gongji's own strings
("12.30") are accepted too. Unknown fields are refused. Fields marked "gongji extension" are not in the
national lists: they carry what the simulated catalog needs (a line's declared class for items the region's
catalog does not list) and the mutual-aid channel; a national client simply leaves them out.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from .base import BizTime, PsnNo, Quantity, Ratio, Strict
from .money import Price, _parse_money
from .settlement import MAX_BILL, CertType, ChrgitmLv, Insutype, ItemScope, MedType, SetlChannel, check_line

ALL_BATCHES = "0000"  # 2205 / 2302: "0000" cancels every detail not yet settled


def _money(value: Any) -> Decimal:
    return _parse_money(value)


Money = Annotated[Decimal, BeforeValidator(_money)]  # 数值型 16,2 (stays a Decimal; answers write numbers)
Code = Annotated[str, Field(min_length=1, max_length=50)]
Text30 = Annotated[str, Field(max_length=30)]
Text = Annotated[str, Field(max_length=500)]
LongText = Annotated[str, Field(max_length=4000)]
MdtrtId = Annotated[str, Field(min_length=1, max_length=30)]
Flag = Annotated[str, Field(max_length=3)]


# ---- 2201 / 2202 挂号 ----------------------------------------------------------------------------------
class RegisterData(Strict):
    psn_no: PsnNo
    insutype: Insutype
    begntime: BizTime
    mdtrt_cert_type: CertType
    mdtrt_cert_no: Text = ""
    ipt_otp_no: Text30
    atddr_no: Text30 = ""
    dr_name: Text = ""
    dept_code: Text30 = ""
    dept_name: Text = ""
    caty: Text30 = ""


class In2201(Strict):
    data: RegisterData


class CancelRegisterData(Strict):
    psn_no: PsnNo
    mdtrt_id: MdtrtId
    ipt_otp_no: Text30 = ""


class In2202(Strict):
    data: CancelRegisterData


# ---- 2203 就诊信息上传 ------------------------------------------------------------------------------------
class MdtrtInfo2203(Strict):
    mdtrt_id: MdtrtId
    psn_no: PsnNo
    med_type: MedType
    begntime: BizTime
    main_cond_dscr: LongText = ""
    dise_codg: Text30 = ""
    dise_name: Text = ""
    birctrl_type: Text30 = ""
    birctrl_matn_date: Text30 = ""
    matn_type: Text30 = ""
    geso_val: int | None = None


class DiseInfo(Strict):
    diag_type: Flag
    diag_srt_no: int = Field(ge=0, le=99)
    diag_code: Text30
    diag_name: Text
    diag_dept: Text = ""
    dise_dor_no: Text30 = ""
    dise_dor_name: Text = ""
    diag_time: BizTime
    vali_flag: Flag = "1"
    # 2401 / 2402 carry these as well
    mdtrt_id: MdtrtId | None = None
    psn_no: PsnNo | None = None
    maindiag_flag: Flag | None = None
    adm_cond_type: Flag | None = None


class In2203(Strict):
    mdtrtinfo: MdtrtInfo2203
    diseinfo: list[DiseInfo] = Field(default=[], max_length=50)


# ---- fee details: 2204 (outpatient) / 2301 (inpatient) / drugdetail of 2101/2102 -------------------------
class FeeLine(Strict):
    """One fee detail line. 2204 and 2301 share almost every field; 2204 groups lines by `chrg_bchno`,
    2301 by the order (`drord_no`)."""

    feedetl_sn: Text30 = Field(min_length=1)
    mdtrt_id: MdtrtId
    psn_no: PsnNo
    chrg_bchno: Text30 | None = None  # 2204
    init_feedetl_sn: Text30 | None = None  # 2301
    drord_no: Text30 | None = None  # 2301
    med_type: MedType | None = None  # 2301
    dise_codg: Text30 = ""
    rxno: Text30 = ""
    rx_circ_flag: Flag = "0"
    fee_ocur_time: BizTime
    med_list_codg: Code
    medins_list_codg: Annotated[str, Field(max_length=150)] = ""
    det_item_fee_sumamt: Money
    cnt: Quantity
    pric: Price
    sin_dos_dscr: Text = ""
    used_frqu_dscr: Text = ""
    prd_days: Decimal | int | None = None
    medc_way_dscr: Text = ""
    bilg_dept_codg: Text30 = ""
    bilg_dept_name: Text = ""
    bilg_dr_codg: Text30 = ""
    bilg_dr_name: Text = ""
    acord_dept_codg: Text30 = ""
    acord_dept_name: Text = ""
    orders_dr_code: Text30 = ""
    orders_dr_name: Text = ""
    hosp_appr_flag: Flag = ""
    tcmdrug_used_way: Text30 = ""
    etip_flag: Flag = ""
    etip_hosp_code: Text30 = ""
    dscg_tkdrug_flag: Flag = ""
    matn_fee_flag: Text30 = ""
    memo: Text = ""
    # gongji extension: what the region's catalog does not know (see FeeDetail)
    med_list_name: Text = ""
    chrgitm_lv: ChrgitmLv | None = None
    selfpay_prop: Ratio | None = None
    pric_uplmt_amt: Price | None = None
    item_scope: ItemScope | None = None

    @model_validator(mode="after")
    def _amounts(self) -> "FeeLine":
        check_line(self.det_item_fee_sumamt, self.pric, self.cnt)
        return self


class In2204(Strict):
    feedetail: list[FeeLine] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _one_visit(self) -> "In2204":
        _one_visit(self.feedetail)
        if any(line.chrg_bchno is None for line in self.feedetail):
            raise ValueError("2204: every feedetail line names its chrg_bchno")
        return self


class In2301(Strict):
    feedetail: list[FeeLine] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _one_visit(self) -> "In2301":
        _one_visit(self.feedetail)
        return self


def _one_visit(lines: list[FeeLine]) -> None:
    if len({(line.mdtrt_id, line.psn_no) for line in lines}) != 1:
        raise ValueError("one upload carries the details of one visit (one mdtrt_id and psn_no)")
    sns = [line.feedetl_sn for line in lines]
    if len(set(sns)) != len(sns):
        raise ValueError("feedetl_sn repeats within the upload")


class CancelDetailsData(Strict):
    """2205: cancel the details of one charge batch (`chrg_bchno`, "0000" = all not yet settled)."""

    mdtrt_id: MdtrtId
    chrg_bchno: Text30
    psn_no: PsnNo
    feedetl_sn: Text30 | None = None  # gongji extension: cancel this one line of the batch only


class In2205(Strict):
    data: CancelDetailsData


class CancelInpatientData(Strict):
    """2302: cancel one uploaded line (`feedetl_sn`, "0000" = all not yet settled)."""

    feedetl_sn: Text30
    mdtrt_id: MdtrtId
    psn_no: PsnNo
    memo: Text = ""


class In2302(Strict):
    data: CancelInpatientData


# ---- 2401 入院 / 2402 出院 -----------------------------------------------------------------------------------
class StayDiagnosis(Strict):
    """The diagnosis, operation and maternity fields that 2401 (admission) and 2402 (discharge) share."""

    dise_codg: Text30 = ""
    dise_name: Text = ""
    oprn_oprt_code: Text30 = ""
    oprn_oprt_name: Text = ""
    fpsc_no: Text30 = ""
    matn_type: Text30 = ""
    birctrl_type: Text30 = ""
    latechb_flag: Flag = ""
    geso_val: int | None = None
    fetts: int | None = None
    fetus_cnt: int | None = None
    pret_flag: Flag = ""
    birctrl_matn_date: Text30 = ""


class AdmInfo(StayDiagnosis):
    psn_no: PsnNo
    insutype: Insutype
    coner_name: Text = ""
    tel: Text30 = ""
    begntime: BizTime
    mdtrt_cert_type: CertType
    mdtrt_cert_no: Text = ""
    med_type: Literal["21"] = "21"
    ipt_no: Text30
    medrcdno: Text30 = ""
    atddr_no: Text30 = ""
    chfpdr_name: Text = ""
    adm_diag_dscr: LongText = ""
    adm_dept_codg: Text30 = ""
    adm_dept_name: Text = ""
    adm_bed: Text30 = ""
    dscg_maindiag_code: Text30 = ""
    dscg_maindiag_name: Text = ""
    main_cond_dscr: LongText = ""
    dise_type_code: Text30 = ""
    insuplc_admdvs: Text30 = ""
    mdtrtarea_admvs: Text30 = ""


class In2401(Strict):
    mdtrtinfo: AdmInfo
    diseinfo: list[DiseInfo] = Field(default=[], max_length=50)


class DscgInfo(StayDiagnosis):
    mdtrt_id: MdtrtId
    psn_no: PsnNo
    insutype: Insutype
    endtime: BizTime
    cop_flag: Flag = ""
    dscg_dept_codg: Text30 = ""
    dscg_dept_name: Text = ""
    dscg_way: Text30 = ""
    die_date: Text30 = ""


class In2402(Strict):
    dscginfo: DscgInfo
    diseinfo: list[DiseInfo] = Field(default=[], max_length=50)


# ---- settlement of a visit: 2206/2207 (data), 2303/2304 (data) --------------------------------------------
class VisitSettleData(Strict):
    psn_no: PsnNo
    mdtrt_cert_type: CertType
    mdtrt_cert_no: Text = ""
    med_type: MedType | None = None  # 2206/2207 carry it; 2303/2304 are 21
    medfee_sumamt: Money
    psn_setlway: Literal["01", "02"] = "01"  # 按项目结算 / 按定额结算
    mdtrt_id: MdtrtId
    chrg_bchno: Text30 | None = None  # 2206/2207: the batch settled ("0000" or absent: every batch)
    acct_used_flag: Literal["0", "1"]
    insutype: Insutype
    invono: Text30 = ""
    mid_setl_flag: Flag = "0"
    fulamt_ownpay_amt: Money | None = None
    overlmt_selfpay: Money | None = None
    preselfpay_amt: Money | None = None
    inscp_scp_amt: Money | None = None
    pub_hosp_rfom_flag: Flag = ""
    # gongji extensions
    setl_chnl: SetlChannel = "offline"
    proxy_psn_no: PsnNo | None = None

    @model_validator(mode="after")
    def _sane(self) -> "VisitSettleData":
        if self.medfee_sumamt < 0 or self.medfee_sumamt > MAX_BILL:
            raise ValueError("medfee_sumamt out of range")
        return self


class InVisitSettle(Strict):
    data: VisitSettleData


class ReverseData(Strict):
    """2208 / 2305 / 2103."""

    setl_id: Annotated[str, Field(min_length=1, max_length=64)]
    mdtrt_id: MdtrtId | None = None
    psn_no: PsnNo


class InReverse(Strict):
    data: ReverseData


# ---- 2101 / 2102 药店 -----------------------------------------------------------------------------------------
class DrugInfo(Strict):
    psn_no: PsnNo
    mdtrt_cert_type: CertType
    mdtrt_cert_no: Text = ""
    begntime: BizTime | None = None
    med_type: Literal["41"] = "41"
    medfee_sumamt: Money
    psn_setlway: Literal["01", "02"] = "01"
    insutype: Insutype
    acct_used_flag: Literal["0", "1"]
    ipt_otp_no: Text30 = ""
    atddr_no: Text30 = ""
    dr_name: Text = ""
    dept_code: Text30 = ""
    dept_name: Text = ""
    caty: Text30 = ""
    invono: Text30 = ""
    medins_setl_id: Text30 = ""
    fulamt_ownpay_amt: Money | None = None
    overlmt_selfpay: Money | None = None
    preselfpay_amt: Money | None = None
    inscp_scp_amt: Money | None = None
    # gongji extensions
    setl_chnl: SetlChannel = "offline"
    proxy_psn_no: PsnNo | None = None


class DrugDetail(Strict):
    feedetl_sn: Text30 = Field(min_length=1)
    rxno: Text30 = ""
    rx_circ_flag: Flag = "0"
    fee_ocur_time: BizTime
    med_list_codg: Code
    medins_list_codg: Annotated[str, Field(max_length=150)] = ""
    det_item_fee_sumamt: Money
    cnt: Quantity
    pric: Price
    sin_dos_dscr: Text = ""
    used_frqu_dscr: Text = ""
    prd_days: Decimal | int | None = None
    medc_way_dscr: Text = ""
    bilg_dr_codg: Text30 = ""
    bilg_dr_name: Text = ""
    tcmdrug_used_way: Text30 = ""
    memo: Text = ""
    # gongji extension (see FeeLine)
    med_list_name: Text = ""
    chrgitm_lv: ChrgitmLv | None = None
    selfpay_prop: Ratio | None = None
    pric_uplmt_amt: Price | None = None
    item_scope: ItemScope | None = None

    @model_validator(mode="after")
    def _amounts(self) -> "DrugDetail":
        check_line(self.det_item_fee_sumamt, self.pric, self.cnt)
        return self


class InPharmacy(Strict):
    druginfo: DrugInfo
    drugdetail: list[DrugDetail] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _sum(self) -> "InPharmacy":
        total = sum((d.det_item_fee_sumamt for d in self.drugdetail), Decimal("0.00"))
        if total != self.druginfo.medfee_sumamt:
            raise ValueError(f"medfee_sumamt {self.druginfo.medfee_sumamt} != sum of drugdetail {total}")
        sns = [d.feedetl_sn for d in self.drugdetail]
        if len(set(sns)) != len(sns):
            raise ValueError("feedetl_sn repeats")
        return self


# ---- 5203 / 5204 ---------------------------------------------------------------------------------------------
class QueryData(Strict):
    psn_no: PsnNo
    setl_id: Annotated[str, Field(max_length=64)] = ""
    mdtrt_id: MdtrtId | None = None


class InQuery(Strict):
    data: QueryData


# The national form of each transaction code, told from the flat gongji form by its top-level node.
NATIONAL_INPUTS: dict[str, type[Strict]] = {
    "2201": In2201, "2202": In2202, "2203": In2203, "2204": In2204, "2205": In2205,
    "2206": InVisitSettle, "2207": InVisitSettle, "2208": InReverse,
    "2401": In2401, "2402": In2402, "2301": In2301, "2302": In2302,
    "2303": InVisitSettle, "2304": InVisitSettle, "2305": InReverse,
    "2101": InPharmacy, "2102": InPharmacy, "2103": InReverse,
    "5203": InQuery, "5204": InQuery,
}
VISIT_ONLY = {"2201", "2202", "2203", "2204", "2205", "2401", "2402", "2301", "2302", "5203", "5204"}


def is_national(infno: str, data: dict[str, Any]) -> bool:
    """2201…5204 always; 2206/2207/2208, 2303/2304/2305 and 2101/2102/2103 when the input has the national
    node (`data`, or `druginfo` for a pharmacy) instead of gongji's flat form."""
    if infno in VISIT_ONLY:
        return True
    return infno in NATIONAL_INPUTS and ("data" in data or "druginfo" in data)
