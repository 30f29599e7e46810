"""Inputs and outputs of the settlement transactions (field names from the national interface).

Money fields are `Money` (strings with 2 decimals). The settlement output obeys:
    medfee_sumamt = fund_pay_sumamt + psn_part_amt
    psn_part_amt  = acct_pay + psn_cash_pay
    acct_mulaid_pay <= acct_pay  (the family mutual-aid part is *included* in acct_pay)
"""
from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, model_validator

from .base import Admdvs, BizTime, FixmedinsCode, PsnNo, Quantity, Ratio, ShortText, Strict
from .money import Money, Price, line_total_problem

MedType = Literal["11", "13", "14", "21", "41"]  # 门诊 急诊 门诊慢特病 住院 定点药店购药
Insutype = Literal["310", "390"]  # 职工基本医疗保险 / 城乡居民基本医疗保险
CertType = Literal["01", "02", "03"]  # 医保电子凭证 / 居民身份证 / 社会保障卡
ChrgitmLv = Literal["01", "02", "03"]  # 甲类 / 乙类 / 丙类(自费)
# What an item is for. Personal accounts (own or shared) never pay the "never" scopes; the pilot scopes
# only where the region runs the pilot.
ItemScope = Literal["medical", "public_health", "fitness", "wellness", "cosmetic", "vaccination", "health_check"]
NEVER_ACCOUNT_SCOPES = ("public_health", "fitness", "wellness", "cosmetic")
PILOT_SCOPES = ("vaccination", "health_check")
SetlChannel = Literal["offline", "online"]  # gongji extension: online drug purchase has its own daily limit

MAX_BILL = Decimal("10000000.00")


def check_line(total: Decimal, pric: Decimal, cnt: Decimal) -> None:
    """A fee line's amounts, as both flows read them (FeeDetail here, the national FeeLine): never negative, never
    absurd, and the total is pric x cnt rounded to the fen."""
    if total < 0 or pric < 0:
        raise ValueError("pric and det_item_fee_sumamt must not be negative")
    if total > MAX_BILL:
        raise ValueError(f"det_item_fee_sumamt above {MAX_BILL} is refused as absurd")
    problem = line_total_problem(total, pric, cnt)
    if problem:
        raise ValueError(problem)


class FeeDetail(Strict):
    feedetl_sn: ShortText
    med_list_codg: str = Field(min_length=1, max_length=50)
    med_list_name: ShortText = ""
    cnt: Quantity
    pric: Price  # 数值型 16,6
    det_item_fee_sumamt: Money
    # Declared by the POS; the region catalog overrides them when it lists the code.
    chrgitm_lv: ChrgitmLv | None = None
    selfpay_prop: Ratio | None = None
    pric_uplmt_amt: Price | None = None
    item_scope: ItemScope | None = None  # gongji extension, for items the catalog does not list

    @model_validator(mode="after")
    def _amounts(self) -> "FeeDetail":
        check_line(self.det_item_fee_sumamt, self.pric, self.cnt)
        if self.pric_uplmt_amt is not None and self.pric_uplmt_amt < 0:
            raise ValueError("pric_uplmt_amt must not be negative")
        return self


class SettleInput(Strict):
    """2101/2102 (pharmacy), 2206/2207 (outpatient), 2303/2304 (inpatient): pre-settle and settle."""

    psn_no: PsnNo
    mdtrt_cert_type: CertType = "01"
    mdtrt_cert_no: ShortText = ""
    med_type: MedType
    insutype: Insutype
    acct_used_flag: Literal["0", "1"] = "1"
    medfee_sumamt: Money
    setl_chnl: SetlChannel = "offline"
    # 亲情账户: the person presenting the patient's e-voucher on the patient's behalf (gongji extension).
    proxy_psn_no: PsnNo | None = None
    # 外配处方: a pharmacy purchase (41) on an external prescription from a designated hospital; pooled like
    # outpatient where the region runs 门诊统筹 at pharmacies.
    rx_circ_flag: Literal["0", "1"] = "0"
    details: list[FeeDetail] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _sum(self) -> "SettleInput":
        if self.medfee_sumamt < 0:
            raise ValueError("medfee_sumamt must not be negative")
        if self.medfee_sumamt > MAX_BILL:
            raise ValueError(f"medfee_sumamt above {MAX_BILL} is refused as absurd")
        total = sum((d.det_item_fee_sumamt for d in self.details), Decimal("0.00"))
        if total != self.medfee_sumamt:
            raise ValueError(f"medfee_sumamt {self.medfee_sumamt} != sum of details {total}")
        return self


class ReverseInput(Strict):
    """2103 / 2208 / 2305: reverse (撤销) a settlement by setl_id."""

    psn_no: PsnNo
    setl_id: str = Field(min_length=1, max_length=64)


class CompensateInput(Strict):
    """2601 冲正: undo whatever the original message did, if it did anything."""

    psn_no: PsnNo
    omsgid: str = Field(min_length=1, max_length=30)
    oinfno: str = Field(pattern=r"^[0-9]{4}$")


class SignInInput(Strict):
    """9001 签到: a POS terminal signs in and gets the sign_no every later transaction carries."""

    opter_no: str = Field(min_length=1, max_length=30)
    mac: str = Field(default="", max_length=64)
    ip: str = Field(default="", max_length=64)


class SignInOutput(Strict):
    sign_no: str
    sign_time: BizTime
    valid_until: BizTime  # the end of the business day of the sign-in


class PersonInfoInput(Strict):
    """1101."""

    psn_no: PsnNo
    mdtrt_cert_type: CertType = "01"
    mdtrt_cert_no: ShortText = ""


class CumulativeInput(Strict):
    """5206: the person's yearly accumulators (累计信息)."""

    psn_no: PsnNo
    cum_year: int | None = Field(default=None, ge=1990, le=2200)


class ReconcileInput(Strict):
    """3201 对总账: a facility's own totals of one day's settlements that still stand (settled, not reversed
    or 冲正'd), for the settlements of people insured in `setl_optins` (default: the envelope's
    insuplc_admdvs). The bureau answers with its own totals and whether they match (stmt_rslt "0" 平)."""

    fixmedins_code: FixmedinsCode
    stmt_date: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    setl_optins: Admdvs | None = None
    fixmedins_setl_cnt: int = Field(ge=0)
    medfee_sumamt: Money
    fund_pay_sumamt: Money
    acct_pay: Money
    psn_cash_pay: Money


class MulaidPart(Strict):
    """One authorizer's contribution to acct_mulaid_pay."""

    authorizer_psn_no: PsnNo
    auth_id: str
    amount: Money
    balc: Money  # the authorizer's balance after this movement


class SetlDetail(Strict):
    """One fund's line of setldetail (national names): the basic pooled fund (310100 / 390100) and the funds
    above it (330100 大额, 390200 大病, 610100 医疗救助). fund_pay_sumamt is the sum of fund_payamt."""

    fund_pay_type: str = Field(pattern=r"^[0-9]{6}$")
    fund_pay_type_name: str
    inscp_scp_amt: Money  # the in-scope amount this fund worked on
    crt_payb_lmt_amt: Money | None = None  # what it could still pay this year (None: no yearly cap)
    fund_payamt: Money
    setl_proc_info: str = ""


class SetlInfo(Strict):
    setl_id: str
    psn_no: PsnNo
    insuplc_admdvs: Admdvs
    mdtrtarea_admvs: Admdvs
    med_type: MedType
    setl_time: BizTime
    medfee_sumamt: Money
    fulamt_ownpay_amt: Money  # 全自费
    overlmt_selfpay: Money  # 超限价自费
    preselfpay_amt: Money  # 先行自付
    inscp_scp_amt: Money  # 符合政策范围
    act_pay_dedc: Money  # 本次起付线
    hifp_pay: Money  # 统筹基金支出
    fund_pay_sumamt: Money
    psn_part_amt: Money
    acct_pay: Money
    acct_mulaid_pay: Money  # included in acct_pay
    psn_cash_pay: Money
    wallet_pay: Money = Decimal("0.00")  # 医保钱包, included in acct_pay (gongji extension)
    balc: Money  # the patient's own balance after
    mulaid_detail: list[MulaidPart] = []
    setldetail: list[SetlDetail] = []
    orig_setl_id: str | None = None  # set on a reversal's answer
    notes: list[str] = []  # why: which rule did what, in order


class PersonInfo(Strict):
    psn_no: PsnNo
    psn_name: ShortText
    insutype: Insutype
    psn_type: Literal["employed", "retired"]
    insuplc_admdvs: Admdvs
    psn_insu_stas: Literal["1"] = "1"  # 正常参保
    balc: Money


class Cumulative(Strict):
    psn_no: PsnNo
    cum_year: int
    outpatient_dedc: Money  # deductible consumed this year, outpatient and pharmacy
    inpatient_dedc: Money
    inpatient_stays: int
    hifp_pay: Money  # pooled fund paid this year
    outpatient_hifp_pay: Money
    settlements: int
    large_amount_pay: Money = Decimal("0.00")  # 330100 大额医疗费用补助 paid this year
    crit_burden: Money = Decimal("0.00")  # in-scope personal burden counted toward the 大病 threshold
    crit_pay: Money = Decimal("0.00")  # 390200 大病保险 paid this year
    assist_pay: Money = Decimal("0.00")  # 610100 医疗救助 paid this year


def setlinfo_of(output: dict | None) -> dict | None:
    """gongji's SetlInfo out of a settlement answer: flat, the SetlInfo itself; national, its `setlinfo` node
    with the `setldetail` node beside it."""
    if not output:
        return None
    info = output.get("setlinfo", output)
    if "setldetail" in output and "setlinfo" in output:
        info = {**info, "setldetail": output["setldetail"]}
    return {k: v for k, v in info.items() if k in SetlInfo.model_fields}
