"""Pure adjudication: a bill, a person, a facility, a policy and this year's accumulators in;
the pooled fund's share, the person's share and the accumulator change out. No I/O.

All amounts are integer fen. Order, as the national rules apply it:
  1. per line, by catalog class: 丙/unlisted → 全自费; above the price limit → 超限价; 乙 → 先行自付
     by selfpay_prop; what is left is in scope (符合范围)
  2. the deductible (起付线): yearly and cumulative for outpatient, per stay for inpatient
     (the year's first stay vs later stays)
  3. the ratio by facility level and 在职/退休
  4. the annual cap (封顶线), and a separate outpatient cap where the region has one
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal

from contracts.money import round_fen, to_fen
from contracts.settlement import FeeDetail
from services.shared.policy import MED_TYPE_CATEGORY, Category, RegionPolicy


@dataclass(frozen=True)
class Accumulators:
    """One person's figures for one insurance year."""

    outpatient_dedc: int = 0  # deductible consumed (outpatient + pharmacy)
    inpatient_dedc: int = 0
    inpatient_stays: int = 0
    hifp_pay: int = 0  # all pooled-fund payments
    outpatient_hifp_pay: int = 0
    settlements: int = 0
    # the funds above the basic pooled fund (setldetail lines), and the 大病 threshold's running burden
    large_amount_pay: int = 0  # 330100 大额医疗费用补助
    crit_burden: int = 0  # 合规个人负担 counted toward the 大病保险 threshold
    crit_pay: int = 0  # 390200 大病保险
    assist_pay: int = 0  # 610100 医疗救助

    def plus(self, d: "Accumulators") -> "Accumulators":
        return Accumulators(*(a + b for a, b in zip(self.as_tuple(), d.as_tuple())))

    def minus(self, d: "Accumulators") -> "Accumulators":
        return Accumulators(*(a - b for a, b in zip(self.as_tuple(), d.as_tuple())))

    def as_tuple(self) -> tuple[int, ...]:
        return (self.outpatient_dedc, self.inpatient_dedc, self.inpatient_stays, self.hifp_pay,
                self.outpatient_hifp_pay, self.settlements, self.large_amount_pay, self.crit_burden, self.crit_pay,
                self.assist_pay)


# National fund codes (fund_pay_type) and names of the setldetail lines.
FUND_NAMES = {"310100": "职工基本医疗保险统筹基金", "390100": "城乡居民基本医疗保险基金",
              "330100": "职工大额医疗费用补助", "390200": "城乡居民大病医疗保险", "610100": "医疗救助基金"}


@dataclass(frozen=True)
class FundPay:
    """One line of setldetail: a fund, the in-scope base it worked on, the limit it had left, what it paid."""

    fund_pay_type: str
    base: int  # inscp_scp_amt: the amount this fund worked on
    limit_left: int | None  # crt_payb_lmt_amt: what the fund could still pay this year (None: no cap)
    pay: int  # fund_payamt
    info: str  # setl_proc_info: how

    @property
    def name(self) -> str:
        return FUND_NAMES[self.fund_pay_type]


@dataclass(frozen=True)
class Adjudication:
    category: Category
    medfee: int
    fulamt_ownpay: int
    overlmt_selfpay: int
    preselfpay: int
    inscp: int
    act_pay_dedc: int
    hifp_pay: int
    psn_part: int
    delta: Accumulators  # what this settlement adds to the year's accumulators
    notes: tuple[str, ...] = field(default=())
    scope_amounts: tuple[tuple[str, int], ...] = ()  # fen by non-medical item scope (cosmetic, ...)
    # setldetail: the basic fund's line (when it pays) and the funds above it; psn_part already excludes them.
    funds: tuple[FundPay, ...] = ()
    basic_fund_type: str = "310100"

    @property
    def fund_pay_sumamt(self) -> int:
        return self.hifp_pay + sum(f.pay for f in self.funds if f.fund_pay_type != self.basic_fund_type)


def _yuan(fen: int) -> str:
    return f"{Decimal(fen) / 100:.2f}"


def line_scope(line: FeeDetail, catalog: RegionPolicy) -> str:
    item = catalog.catalog_item(line.med_list_codg)
    if item is not None:
        return item.scope
    return line.item_scope or "medical"


def split_line(line: FeeDetail, catalog: RegionPolicy) -> tuple[int, int, int, int, str]:
    """(fulamt_ownpay, overlmt, preselfpay, inscope, note) for one line, in fen."""
    fee = to_fen(line.det_item_fee_sumamt)
    if line_scope(line, catalog) != "medical":
        return fee, 0, 0, 0, (f"{line.med_list_codg}: {line_scope(line, catalog)} item, 全自费 {_yuan(fee)} "
                              f"(outside basic medical insurance)")
    item = catalog.catalog_item(line.med_list_codg)
    if item is not None:
        lv, prop, limit, source = item.lv, item.selfpay_prop, item.pric_uplmt_amt, f"catalog {catalog.admdvs}"
    elif catalog.unknown_items == "declared" and line.chrgitm_lv is not None:
        lv, prop, limit, source = line.chrgitm_lv, line.selfpay_prop or Decimal(0), line.pric_uplmt_amt, "declared"
    else:
        lv, prop, limit, source = "03", Decimal(0), None, "not in catalog"
    code = line.med_list_codg
    if lv == "03":
        return fee, 0, 0, 0, f"{code}: 丙类/全自费 {_yuan(fee)} ({source})"
    over = 0
    if limit is not None and line.pric > limit:
        over = min(fee, round_fen((line.pric - limit) * line.cnt * 100))
    rest = fee - over
    pre = round_fen(rest * prop) if lv == "02" else 0
    inscope = rest - pre
    parts = [f"{code}: {'甲类' if lv == '01' else '乙类'} in scope {_yuan(inscope)}"]
    if over:
        parts.append(f"over price limit {_yuan(over)}")
    if pre:
        parts.append(f"先行自付 {prop} = {_yuan(pre)}")
    return 0, over, pre, inscope, ", ".join(parts) + f" ({source})"


def adjudicate(*, policy: RegionPolicy, catalog: RegionPolicy, med_type: str, psn_type: str, hosp_lv: str,
               lines: list[FeeDetail], acc: Accumulators, insutype: str = "310", resident_group: str | None = None,
               low_income: bool = False, rx_flag: bool = False) -> Adjudication:
    """policy: the insured region's (参保地) rules; catalog: the treatment region's (就医地) catalog.
    insutype 390 (居民医保) uses the region's resident tables, row `resident_group` (child / adult / elderly;
    default: elderly for a retired person, adult otherwise). rx_flag: a pharmacy purchase with an external
    prescription (外配处方). low_income: 医疗救助 pays where the region runs it."""
    category = MED_TYPE_CATEGORY[med_type]
    notes: list[str] = []
    fulamt = over = pre = inscp = 0
    scopes: dict[str, int] = {}
    for line in lines:
        f, o, p, i, note = split_line(line, catalog)
        fulamt, over, pre, inscp = fulamt + f, over + o, pre + p, inscp + i
        notes.append(note)
        scope = line_scope(line, catalog)
        if scope != "medical":
            scopes[scope] = scopes.get(scope, 0) + f
    medfee = fulamt + over + pre + inscp
    dedc = hifp = 0
    delta = Accumulators(settlements=1)
    resident = insutype == "390"
    benefits, key = policy.benefits, psn_type
    if resident and policy.resident_benefits is not None:
        benefits = policy.resident_benefits
        key = resident_group or ("elderly" if psn_type == "retired" else "adult")
        notes.append(f"居民医保 (390): resident tables of {policy.admdvs}, row {key}")
    elif resident:
        notes.append(f"居民医保 (390): {policy.admdvs} has no resident tables, employee tables used")
    annual_cap = benefits.annual_cap if benefits.annual_cap is not None else policy.annual_cap
    benefit = getattr(benefits, category)
    pooled_as = category
    chronic = med_type == "14" and benefits.chronic is not None
    if chronic:
        benefit = benefits.chronic
        notes.append("门诊慢特病 (14): the scheme's chronic-disease table")
    if category == "pharmacy" and benefit.pooled_with_prescription:
        if rx_flag:
            benefit, pooled_as = benefits.outpatient, "outpatient"
            notes.append("pharmacy purchase with an external prescription (外配处方): pooled like outpatient "
                         "(门诊统筹 at a designated pharmacy)")
        else:
            benefit = benefit.model_copy(update={"pooled": False})
            notes.append("pharmacy purchase without a prescription: not pooled (外配处方 needed)")
    basic_lost = 0  # in-scope amount the basic fund would have covered but for its annual cap
    ratio = Decimal(0)
    if not benefit.pooled:
        notes.append(f"{category}: the pooled fund pays nothing here ({policy.admdvs})")
    elif pooled_as == "inpatient":
        stays = acc.inpatient_stays
        table = benefit.deductible_first if stays == 0 else benefit.deductible_later
        deductible = to_fen(table.for_level(hosp_lv))
        dedc = min(inscp, deductible)
        notes.append(f"inpatient stay #{stays + 1} this year: deductible {_yuan(deductible)} at {hosp_lv}, "
                     f"consumed {_yuan(dedc)}")
        delta = replace(delta, inpatient_dedc=dedc, inpatient_stays=1)
        ratio = benefit.ratio[key].for_level(hosp_lv)
        notes.append(f"ratio {ratio} ({key}, {hosp_lv}) on {_yuan(inscp - dedc)}")
        raw = round_fen((inscp - dedc) * ratio)
        hifp = _capped(raw, annual_cap, acc, None, notes)
    else:
        deductible = to_fen(benefit.deductible[key])
        left = max(0, deductible - acc.outpatient_dedc)
        dedc = min(inscp, left)
        notes.append(f"outpatient deductible {_yuan(deductible)} ({key}), {_yuan(left)} left this year, "
                     f"consumed {_yuan(dedc)}")
        ratio = benefit.ratio[key].for_level(hosp_lv)
        notes.append(f"ratio {ratio} ({key}, {hosp_lv}) on {_yuan(inscp - dedc)}")
        own_cap = to_fen(benefit.annual_cap) if benefit.annual_cap is not None and not chronic else None
        raw = round_fen((inscp - dedc) * ratio)
        hifp = _capped(raw, annual_cap, acc, own_cap, notes)
        delta = replace(delta, outpatient_dedc=dedc, outpatient_hifp_pay=0 if chronic else hifp)
    if benefit.pooled and hifp < raw and to_fen(annual_cap) - acc.hifp_pay - hifp <= 0:
        # The annual cap (not an outpatient cap) cut the payment: the in-scope amount beyond what the basic
        # fund's payment covers at its ratio is "above the cap".
        basic_lost = max(0, inscp - dedc - round_fen(Decimal(hifp) / ratio))
    delta = replace(delta, hifp_pay=hifp)
    basic_type = "390100" if resident else "310100"
    funds: list[FundPay] = []
    if hifp:
        funds.append(FundPay(basic_type, inscp - dedc, None, hifp, f"basic pooled fund, ratio {ratio}"))
    paid_above = 0
    if not resident and basic_lost and policy.funds.large_amount is not None:
        big = policy.funds.large_amount
        left = max(0, to_fen(big.annual_cap) - acc.large_amount_pay)
        pay = min(left, round_fen(basic_lost * big.ratio))
        notes.append(f"大额医疗费用补助 (330100): {big.ratio} of {_yuan(basic_lost)} above the basic cap, "
                     f"{_yuan(left)} left this year, pays {_yuan(pay)}")
        if pay:
            funds.append(FundPay("330100", basic_lost, left, pay, f"ratio {big.ratio} above the basic cap"))
            delta = replace(delta, large_amount_pay=pay)
            paid_above += pay
    crit = policy.funds.critical_illness
    if resident and crit is not None and benefit.pooled and pooled_as in crit.categories:
        burden = inscp - hifp  # 合规个人负担 of this settlement
        threshold = to_fen(crit.threshold)
        above = max(0, acc.crit_burden + burden - max(threshold, acc.crit_burden))
        left = None if crit.annual_cap is None else max(0, to_fen(crit.annual_cap) - acc.crit_pay)
        pay = round_fen(above * crit.ratio)
        pay = pay if left is None else min(pay, left)
        delta = replace(delta, crit_burden=burden)
        if above:
            notes.append(f"大病保险 (390200): the year's in-scope personal burden {_yuan(acc.crit_burden + burden)} "
                         f"passes the threshold {_yuan(threshold)} by {_yuan(above)} here; {crit.ratio} pays "
                         f"{_yuan(pay)}")
        if pay:
            funds.append(FundPay("390200", above, left, pay, f"ratio {crit.ratio} above {_yuan(threshold)}"))
            delta = replace(delta, crit_pay=pay)
            paid_above += pay
    aid = policy.funds.medical_assistance
    if low_income and aid is not None and benefit.pooled and pooled_as in aid.categories:
        base = max(0, inscp - hifp - paid_above)
        left = max(0, to_fen(aid.annual_cap) - acc.assist_pay)
        pay = min(left, round_fen(base * aid.ratio))
        notes.append(f"医疗救助 (610100, low-income): {aid.ratio} of the remaining in-scope burden "
                     f"{_yuan(base)}, {_yuan(left)} left this year, pays {_yuan(pay)}")
        if pay:
            funds.append(FundPay("610100", base, left, pay, f"ratio {aid.ratio}, low-income"))
            delta = replace(delta, assist_pay=pay)
            paid_above += pay
    return Adjudication(category=category, medfee=medfee, fulamt_ownpay=fulamt, overlmt_selfpay=over,
                        preselfpay=pre, inscp=inscp, act_pay_dedc=dedc, hifp_pay=hifp,
                        psn_part=medfee - hifp - paid_above, delta=delta, notes=tuple(notes),
                        scope_amounts=tuple(sorted(scopes.items())), funds=tuple(funds), basic_fund_type=basic_type)


def _capped(raw: int, annual_cap: Decimal, acc: Accumulators, outpatient_cap: int | None,
            notes: list[str]) -> int:
    pay = raw
    annual_left = max(0, to_fen(annual_cap) - acc.hifp_pay)
    if pay > annual_left:
        notes.append(f"cap: annual cap {annual_cap} leaves {_yuan(annual_left)}")
        pay = annual_left
    if outpatient_cap is not None:
        left = max(0, outpatient_cap - acc.outpatient_hifp_pay)
        if pay > left:
            notes.append(f"cap: outpatient cap {_yuan(outpatient_cap)} leaves {_yuan(left)}")
            pay = left
    return pay
