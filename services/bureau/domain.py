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

    def plus(self, d: "Accumulators") -> "Accumulators":
        return Accumulators(*(a + b for a, b in zip(self.as_tuple(), d.as_tuple())))

    def minus(self, d: "Accumulators") -> "Accumulators":
        return Accumulators(*(a - b for a, b in zip(self.as_tuple(), d.as_tuple())))

    def as_tuple(self) -> tuple[int, ...]:
        return (self.outpatient_dedc, self.inpatient_dedc, self.inpatient_stays, self.hifp_pay,
                self.outpatient_hifp_pay, self.settlements)


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
               lines: list[FeeDetail], acc: Accumulators) -> Adjudication:
    """policy: the insured region's (参保地) rules; catalog: the treatment region's (就医地) catalog."""
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
    benefit = getattr(policy.benefits, category)
    if not benefit.pooled:
        notes.append(f"{category}: the pooled fund pays nothing here ({policy.admdvs})")
    elif category == "inpatient":
        stays = acc.inpatient_stays
        table = benefit.deductible_first if stays == 0 else benefit.deductible_later
        deductible = to_fen(table.for_level(hosp_lv))
        dedc = min(inscp, deductible)
        notes.append(f"inpatient stay #{stays + 1} this year: deductible {_yuan(deductible)} at {hosp_lv}, "
                     f"consumed {_yuan(dedc)}")
        delta = replace(delta, inpatient_dedc=dedc, inpatient_stays=1)
        ratio = benefit.ratio[psn_type].for_level(hosp_lv)
        notes.append(f"ratio {ratio} ({psn_type}, {hosp_lv}) on {_yuan(inscp - dedc)}")
        hifp = _capped(round_fen((inscp - dedc) * ratio), policy, acc, None, notes)
    else:
        deductible = to_fen(benefit.deductible[psn_type])
        left = max(0, deductible - acc.outpatient_dedc)
        dedc = min(inscp, left)
        notes.append(f"outpatient deductible {_yuan(deductible)} ({psn_type}), {_yuan(left)} left this year, "
                     f"consumed {_yuan(dedc)}")
        ratio = benefit.ratio[psn_type].for_level(hosp_lv)
        notes.append(f"ratio {ratio} ({psn_type}, {hosp_lv}) on {_yuan(inscp - dedc)}")
        own_cap = to_fen(benefit.annual_cap) if benefit.annual_cap is not None else None
        hifp = _capped(round_fen((inscp - dedc) * ratio), policy, acc, own_cap, notes)
        delta = replace(delta, outpatient_dedc=dedc, outpatient_hifp_pay=hifp)
    delta = replace(delta, hifp_pay=hifp)
    return Adjudication(category=category, medfee=medfee, fulamt_ownpay=fulamt, overlmt_selfpay=over,
                        preselfpay=pre, inscp=inscp, act_pay_dedc=dedc, hifp_pay=hifp, psn_part=medfee - hifp,
                        delta=delta, notes=tuple(notes), scope_amounts=tuple(sorted(scopes.items())))


def _capped(raw: int, policy: RegionPolicy, acc: Accumulators, outpatient_cap: int | None,
            notes: list[str]) -> int:
    pay = raw
    annual_left = max(0, to_fen(policy.annual_cap) - acc.hifp_pay)
    if pay > annual_left:
        notes.append(f"cap: annual cap {policy.annual_cap} leaves {_yuan(annual_left)}")
        pay = annual_left
    if outpatient_cap is not None:
        left = max(0, outpatient_cap - acc.outpatient_hifp_pay)
        if pay > left:
            notes.append(f"cap: outpatient cap {_yuan(outpatient_cap)} leaves {_yuan(left)}")
            pay = left
    return pay
