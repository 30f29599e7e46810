"""The pure adjudication function services.bureau.domain.adjudicate: worked examples and properties.

All figures are integer fen. Policies are the shipped ones (policies/330100.yaml Hangzhou,
policies/110000.yaml Beijing), loaded with services.shared.policy.load_policies().
"""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings, strategies as st

from contracts.money import to_fen
from contracts.settlement import FeeDetail
from services.bureau.domain import Accumulators, Adjudication, adjudicate
from services.shared.policy import MED_TYPE_CATEGORY, RegionPolicy, load_policies

POLICIES: dict[str, RegionPolicy] = load_policies()
HZ = POLICIES["330100"]
BJ = POLICIES["110000"]
REGIONS = ("330100", "110000")
MED_TYPES = ("11", "13", "14", "21", "41")
PSN_TYPES = ("employed", "retired")
HOSP_LVS = ("community", "level1", "level2", "level3")


def line(code: str = "ZZ01", *, pric: str, cnt: str = "1", fee: str | None = None, lv: str | None = "01",
         prop: str | None = None, limit: str | None = None, sn: str = "1") -> FeeDetail:
    return FeeDetail(feedetl_sn=sn, med_list_codg=code, cnt=cnt, pric=pric,
                     det_item_fee_sumamt=fee if fee is not None else pric,
                     chrgitm_lv=lv, selfpay_prop=prop, pric_uplmt_amt=limit)


def run(policy: RegionPolicy, lines: list[FeeDetail], *, med_type: str = "11", psn_type: str = "employed",
        hosp_lv: str = "level3", acc: Accumulators | None = None,
        catalog: RegionPolicy | None = None) -> Adjudication:
    return adjudicate(policy=policy, catalog=catalog or policy, med_type=med_type, psn_type=psn_type,
                      hosp_lv=hosp_lv, lines=lines, acc=acc or Accumulators())


def assert_balanced(adj: Adjudication) -> None:
    assert adj.fulamt_ownpay + adj.overlmt_selfpay + adj.preselfpay + adj.inscp == adj.medfee
    assert adj.hifp_pay + adj.psn_part == adj.medfee


def test_shipped_policies_are_loaded() -> None:
    assert set(REGIONS) <= set(POLICIES)
    assert to_fen(HZ.annual_cap) == 40_000_000
    assert to_fen(BJ.annual_cap) == 50_000_000
    assert BJ.benefits.outpatient.annual_cap is not None and to_fen(BJ.benefits.outpatient.annual_cap) == 2_000_000


# --- 1. the national worked example ---------------------------------------------------------------

def test_national_worked_example_hangzhou_yi_line() -> None:
    # 4.52 yuan 乙类 line, selfpay_prop 0.05:
    #   preselfpay = round(452 * 0.05) = round(22.6) = 23 fen
    #   inscp      = 452 - 23 = 429 fen
    #   deductible = 600.00 (employed, fresh year) -> all 429 go to the deductible
    #   hifp_pay   = round((429 - 429) * 0.76) = 0;  psn_part = 452 - 0 = 452
    adj = run(HZ, [line(pric="4.52", lv="02", prop="0.05")], med_type="11", psn_type="employed",
              hosp_lv="level3", acc=Accumulators())
    assert adj.category == "outpatient"
    assert adj.medfee == 452
    assert adj.fulamt_ownpay == 0
    assert adj.overlmt_selfpay == 0
    assert adj.preselfpay == 23
    assert adj.inscp == 429
    assert adj.act_pay_dedc == 429
    assert adj.hifp_pay == 0
    assert adj.psn_part == 452
    assert adj.delta == Accumulators(outpatient_dedc=429, hifp_pay=0, outpatient_hifp_pay=0, settlements=1)


# --- 2. crossing the outpatient deductible ---------------------------------------------------------

def test_hangzhou_retiree_level3_crosses_outpatient_deductible() -> None:
    # retired deductible 200.00 = 20000 fen; 15000 already used -> 5000 left
    # bill 300.00 甲类: inscp 30000; act_pay_dedc = min(30000, 5000) = 5000
    # ratio retired level3 = 0.82: hifp = round((30000 - 5000) * 0.82) = round(20500.0) = 20500
    # psn_part = 30000 - 20500 = 9500
    acc = Accumulators(outpatient_dedc=15000)
    adj = run(HZ, [line(pric="300.00", lv="01")], psn_type="retired", hosp_lv="level3", acc=acc)
    assert adj.inscp == 30000
    assert adj.act_pay_dedc == 5000
    assert adj.hifp_pay == 20500
    assert adj.psn_part == 9500
    assert adj.delta == Accumulators(outpatient_dedc=5000, hifp_pay=20500, outpatient_hifp_pay=20500,
                                     settlements=1)
    # the next visit finds the deductible used up: 100.00 甲类 -> round(10000 * 0.82) = 8200
    nxt = run(HZ, [line(pric="100.00")], psn_type="retired", hosp_lv="level3", acc=acc.plus(adj.delta))
    assert nxt.act_pay_dedc == 0
    assert nxt.hifp_pay == 8200


def test_hangzhou_employed_uses_employed_deductible_not_retired() -> None:
    # same 15000 used, but the employed deductible is 600.00 = 60000 -> 45000 left
    # bill 300.00: act_pay_dedc = min(30000, 45000) = 30000; hifp 0
    adj = run(HZ, [line(pric="300.00")], psn_type="employed", hosp_lv="level3",
              acc=Accumulators(outpatient_dedc=15000))
    assert adj.act_pay_dedc == 30000
    assert adj.hifp_pay == 0
    assert adj.psn_part == 30000


def test_beijing_employed_community_crosses_1800_deductible() -> None:
    # employed deductible 1800.00 = 180000 fen; 170000 used -> 10000 left
    # bill 500.00 甲类: inscp 50000; act_pay_dedc = 10000
    # community ratio 0.90: hifp = round((50000 - 10000) * 0.90) = 36000; psn_part = 14000
    adj = run(BJ, [line(pric="500.00")], psn_type="employed", hosp_lv="community",
              acc=Accumulators(outpatient_dedc=170000))
    assert adj.act_pay_dedc == 10000
    assert adj.hifp_pay == 36000
    assert adj.psn_part == 14000
    # same bill at a 三级 hospital: ratio 0.70 -> round(40000 * 0.70) = 28000
    adj3 = run(BJ, [line(pric="500.00")], psn_type="employed", hosp_lv="level3",
               acc=Accumulators(outpatient_dedc=170000))
    assert adj3.hifp_pay == 28000


def test_ratio_rounds_half_up_to_fen() -> None:
    # Hangzhou employed community 0.86, deductible used up; bill 0.75 甲类:
    # 75 * 0.86 = 64.5 -> half-up 65 fen (banker's half-even would give 64)
    adj = run(HZ, [line(pric="0.75")], hosp_lv="community", acc=Accumulators(outpatient_dedc=60000))
    assert adj.hifp_pay == 65  # 75 * 0.86 = 64.5 -> 65 (half-up), not 64 (half-even)


def test_urgent_and_chronic_med_types_are_outpatient() -> None:
    for med_type in ("13", "14"):
        # deductible used up; 100.00 * 0.76 = 7600
        adj = run(HZ, [line(pric="100.00")], med_type=med_type, acc=Accumulators(outpatient_dedc=60000))
        assert adj.category == "outpatient"
        assert adj.hifp_pay == 7600
        assert adj.delta.outpatient_hifp_pay == 7600


# --- 3. inpatient first stay vs later stay ---------------------------------------------------------

def test_beijing_inpatient_first_stay_deductible_1300() -> None:
    # bill 10000.00 甲类 = 1000000 fen; first stay deductible 1300.00 = 130000
    # employed level3 ratio 0.85: hifp = round((1000000 - 130000) * 0.85) = round(739500.0) = 739500
    adj = run(BJ, [line(pric="10000.00")], med_type="21", hosp_lv="level3", acc=Accumulators(inpatient_stays=0))
    assert adj.category == "inpatient"
    assert adj.act_pay_dedc == 130000
    assert adj.hifp_pay == 739500
    assert adj.psn_part == 1000000 - 739500
    assert adj.delta == Accumulators(inpatient_dedc=130000, inpatient_stays=1, hifp_pay=739500, settlements=1)


def test_beijing_inpatient_later_stay_deductible_650() -> None:
    # later stay deductible 650.00 = 65000
    # hifp = round((1000000 - 65000) * 0.85) = round(794750.0) = 794750
    acc = Accumulators(inpatient_dedc=130000, inpatient_stays=1, hifp_pay=739500, settlements=1)
    adj = run(BJ, [line(pric="10000.00")], med_type="21", hosp_lv="level3", acc=acc)
    assert adj.act_pay_dedc == 65000
    assert adj.hifp_pay == 794750
    assert adj.delta.inpatient_stays == 1
    assert adj.delta.inpatient_dedc == 65000


def test_inpatient_does_not_touch_outpatient_deductible_or_outpatient_pay() -> None:
    # a used-up outpatient deductible does not reduce the inpatient one; retired level2 Hangzhou:
    # deductible 500.00 = 50000; bill 2000.00 = 200000; hifp = round(150000 * 0.94) = 141000
    adj = run(HZ, [line(pric="2000.00")], med_type="21", psn_type="retired", hosp_lv="level2",
              acc=Accumulators(outpatient_dedc=20000))
    assert adj.act_pay_dedc == 50000
    assert adj.hifp_pay == 141000
    assert adj.delta.outpatient_dedc == 0
    assert adj.delta.outpatient_hifp_pay == 0


# --- 4. caps ---------------------------------------------------------------------------------------

def test_annual_cap_binds() -> None:
    # Hangzhou cap 400000.00 = 40000000 fen; already paid 39990000 -> 10000 left
    # inpatient bill 1000.00: deductible (level3 first stay) 80000; raw = round(20000 * 0.84) = 16800 > 10000
    acc = Accumulators(hifp_pay=39_990_000)
    adj = run(HZ, [line(pric="1000.00")], med_type="21", hosp_lv="level3", acc=acc)
    assert adj.act_pay_dedc == 80000
    assert adj.hifp_pay == 10000
    # Above the basic cap, 大额 (330100, ratio 0.85) pays on the in-scope amount the basic fund no longer
    # covers: 100000 - 80000 - round(10000 / 0.84 = 11904.76) = 20000 - 11905 = 8095; 8095 * 0.85 = 6880.75 -> 6881
    # (issue 10: before it, the person carried the whole rest).
    assert [(f.fund_pay_type, f.pay) for f in adj.funds] == [("310100", 10000), ("330100", 6881)]
    assert adj.psn_part == 100000 - 10000 - 6881
    assert acc.hifp_pay + adj.delta.hifp_pay == 40_000_000
    assert any("annual cap" in n for n in adj.notes)


def test_annual_cap_exhausted_pays_nothing() -> None:
    adj = run(HZ, [line(pric="1000.00")], med_type="11", acc=Accumulators(outpatient_dedc=60000,
                                                                             hifp_pay=40_000_000))
    assert adj.hifp_pay == 0
    # 大额 (issue 10): the whole in-scope 100000 is above the basic cap; 0.85 -> 85000
    assert adj.delta.large_amount_pay == 85000
    assert adj.psn_part == 100000 - 85000


def test_beijing_outpatient_cap_binds() -> None:
    # outpatient cap 20000.00 = 2000000 fen; 1990000 already paid -> 10000 left
    # bill 500.00 community employed, deductible used: raw = round(50000 * 0.90) = 45000 -> capped at 10000
    acc = Accumulators(outpatient_dedc=180000, hifp_pay=1_990_000, outpatient_hifp_pay=1_990_000)
    adj = run(BJ, [line(pric="500.00")], hosp_lv="community", acc=acc)
    assert adj.hifp_pay == 10000
    assert adj.delta.outpatient_hifp_pay == 10000
    assert adj.delta.hifp_pay == 10000
    assert acc.outpatient_hifp_pay + adj.delta.outpatient_hifp_pay == 2_000_000
    assert any("outpatient cap" in n for n in adj.notes)


def test_beijing_outpatient_cap_does_not_limit_inpatient() -> None:
    # outpatient cap fully used, inpatient still paid: first stay 1300.00 deductible,
    # bill 5000.00 community: round((500000 - 130000) * 0.90) = 333000
    acc = Accumulators(outpatient_dedc=180000, hifp_pay=2_000_000, outpatient_hifp_pay=2_000_000)
    adj = run(BJ, [line(pric="5000.00")], med_type="21", hosp_lv="community", acc=acc)
    assert adj.hifp_pay == 333000


def test_hangzhou_has_no_separate_outpatient_cap() -> None:
    # Hangzhou outpatient pay is limited only by the annual cap: 1990000 outpatient already paid
    # does not stop a 500.00 bill: round(50000 * 0.76) = 38000
    acc = Accumulators(outpatient_dedc=60000, hifp_pay=1_990_000, outpatient_hifp_pay=1_990_000)
    adj = run(HZ, [line(pric="500.00")], acc=acc)
    assert adj.hifp_pay == 38000


# --- 5. per-line splitting -------------------------------------------------------------------------

def test_over_price_limit_jia() -> None:
    # 甲类 pric 50.00 x 3 = 150.00, limit 40.00: over = (50.00 - 40.00) * 3 = 30.00 = 3000 fen
    # inscp = 15000 - 3000 = 12000
    adj = run(HZ, [line(pric="50.00", cnt="3", fee="150.00", limit="40.00")])
    assert adj.overlmt_selfpay == 3000
    assert adj.inscp == 12000
    assert adj.preselfpay == 0
    assert adj.medfee == 15000


def test_over_price_limit_yi_preselfpay_applies_to_the_rest() -> None:
    # 乙类 pric 50.00 x 2 = 100.00, limit 45.00, prop 0.10:
    # over = (50.00 - 45.00) * 2 = 10.00 = 1000; rest 9000; pre = round(9000 * 0.10) = 900; inscp 8100
    adj = run(HZ, [line(pric="50.00", cnt="2", fee="100.00", lv="02", prop="0.10", limit="45.00")])
    assert adj.overlmt_selfpay == 1000
    assert adj.preselfpay == 900
    assert adj.inscp == 8100


@pytest.mark.parametrize("limit", ["50.00", "60.00"])
def test_limit_at_or_above_price_is_not_over(limit: str) -> None:
    adj = run(HZ, [line(pric="50.00", cnt="2", fee="100.00", limit=limit)])
    assert adj.overlmt_selfpay == 0
    assert adj.inscp == 10000


def test_bing_declared_is_full_selfpay() -> None:
    adj = run(HZ, [line(pric="88.00", lv="03")], acc=Accumulators(outpatient_dedc=60000))
    assert adj.fulamt_ownpay == 8800
    assert adj.inscp == 0
    assert adj.hifp_pay == 0
    assert adj.psn_part == 8800


def test_catalog_xc03_is_full_selfpay_whatever_is_declared() -> None:
    # declared 甲类 but Hangzhou's catalog lists XC03 as 丙类
    adj = run(HZ, [line("XC03", pric="66.00", lv="01")], acc=Accumulators(outpatient_dedc=60000))
    assert adj.fulamt_ownpay == 6600
    assert adj.inscp == 0
    assert adj.hifp_pay == 0


def test_catalog_xb02_overrides_declared_class() -> None:
    # declared 甲类 with no selfpay, catalog says 乙类 0.05:
    # 20.00 -> pre = round(2000 * 0.05) = 100; inscp 1900
    adj = run(HZ, [line("XB02", pric="20.00", lv="01")])
    assert adj.preselfpay == 100
    assert adj.inscp == 1900
    # declared 乙类 0.30 with a limit below the price: the catalog's 0.05 and no limit win
    adj2 = run(HZ, [line("XB02", pric="20.00", lv="02", prop="0.30", limit="1.00")])
    assert adj2.overlmt_selfpay == 0
    assert adj2.preselfpay == 100
    assert adj2.inscp == 1900


def test_catalog_xa01_overrides_declared_bing() -> None:
    adj = run(HZ, [line("XA01", pric="10.00", lv="03")])
    assert adj.fulamt_ownpay == 0
    assert adj.inscp == 1000


def test_catalog_is_the_treatment_regions() -> None:
    # a Hangzhou-insured person treated in Beijing: Beijing's (empty) catalog applies, the declared
    # 甲类 of XC03 is trusted; Hangzhou's rules pay: round(1000 * 0.76) = 760 with deductible used
    adj = run(HZ, [line("XC03", pric="10.00", lv="01")], catalog=BJ, acc=Accumulators(outpatient_dedc=60000))
    assert adj.fulamt_ownpay == 0
    assert adj.inscp == 1000
    assert adj.hifp_pay == 760
    # a Beijing-insured person treated in Hangzhou: Hangzhou's catalog makes XC03 丙类
    adj2 = run(BJ, [line("XC03", pric="10.00", lv="01")], catalog=HZ)
    assert adj2.fulamt_ownpay == 1000


def test_unlisted_without_declared_class_is_full_selfpay() -> None:
    adj = run(HZ, [line("ZZ99", pric="10.00", lv=None)])
    assert adj.fulamt_ownpay == 1000
    assert adj.inscp == 0


def test_full_selfpay_region_ignores_declared_class() -> None:
    strict = HZ.model_copy(update={"unknown_items": "full_selfpay"})
    adj = run(strict, [line("ZZ01", pric="10.00", lv="01"), line("XA01", pric="5.00", sn="2")])
    assert adj.fulamt_ownpay == 1000  # unlisted ZZ01
    assert adj.inscp == 500  # listed XA01 甲类


def test_mixed_bill_sums_per_line() -> None:
    # 甲 12.30 + 乙 4.52 (pre 23) + 丙 7.00 + 甲 over limit 3 x 10.00 limit 8.00 (over 600)
    lines = [
        line(pric="12.30", sn="1"),
        line(pric="4.52", lv="02", prop="0.05", sn="2"),
        line(pric="7.00", lv="03", sn="3"),
        line(pric="10.00", cnt="3", fee="30.00", limit="8.00", sn="4"),
    ]
    adj = run(HZ, lines)
    assert adj.medfee == 1230 + 452 + 700 + 3000
    assert adj.fulamt_ownpay == 700
    assert adj.overlmt_selfpay == 600
    assert adj.preselfpay == 23
    assert adj.inscp == 1230 + 429 + 2400
    assert_balanced(adj)


# --- 6. pharmacy -----------------------------------------------------------------------------------

@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("psn_type", PSN_TYPES)
def test_pharmacy_is_not_pooled(region: str, psn_type: str) -> None:
    policy = POLICIES[region]
    # Hangzhou pools a pharmacy purchase only with an external prescription (issue 10); none here.
    assert policy.benefits.pharmacy.pooled is False or policy.benefits.pharmacy.pooled_with_prescription
    acc = Accumulators(outpatient_dedc=500000)  # any deductible long used up
    adj = run(policy, [line(pric="1000.00")], med_type="41", psn_type=psn_type, hosp_lv="community", acc=acc)
    assert adj.category == "pharmacy"
    assert adj.inscp == 100000
    assert adj.act_pay_dedc == 0
    assert adj.hifp_pay == 0
    assert adj.psn_part == 100000
    assert adj.delta == Accumulators(settlements=1)


# --- 7. properties ---------------------------------------------------------------------------------

CODES = ("XA01", "XB02", "XC03", "ZZ01", "ZZ02", "ZZ03")


def _money(fen: int) -> str:
    return f"{Decimal(fen) / 100:.2f}"


@st.composite
def fee_lines(draw: st.DrawFn) -> list[FeeDetail]:
    n = draw(st.integers(1, 8))
    out = []
    for i in range(n):
        pric = draw(st.integers(0, 500_000))
        cnt = draw(st.integers(1, 5))
        limit = draw(st.one_of(st.none(), st.integers(0, 500_000),
                               st.integers(max(0, pric - 1000), pric + 1000)))
        out.append(FeeDetail(
            feedetl_sn=str(i + 1),
            med_list_codg=draw(st.sampled_from(CODES)),
            cnt=str(cnt),
            pric=_money(pric),
            det_item_fee_sumamt=_money(pric * cnt),
            chrgitm_lv=draw(st.one_of(st.none(), st.sampled_from(("01", "02", "03")))),
            selfpay_prop=draw(st.one_of(st.none(), st.integers(0, 30).map(lambda p: f"{Decimal(p) / 100:.2f}"))),
            pric_uplmt_amt=None if limit is None else _money(limit),
        ))
    return out


def _near(top: int, within: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, top), st.integers(max(0, top - within), top), st.just(top))


@st.composite
def accumulators(draw: st.DrawFn, policy: RegionPolicy) -> Accumulators:
    cap = to_fen(policy.annual_cap)
    hifp = draw(_near(cap, 100_000))
    out_cap = policy.benefits.outpatient.annual_cap
    out_top = min(hifp, to_fen(out_cap)) if out_cap is not None else hifp
    max_dedc = max(to_fen(v) for v in policy.benefits.outpatient.deductible.values())
    stays = draw(st.integers(0, 6))
    return Accumulators(
        outpatient_dedc=draw(_near(max_dedc, 10_000)),
        inpatient_dedc=0 if stays == 0 else draw(st.integers(0, 200_000 * stays)),
        inpatient_stays=stays,
        hifp_pay=hifp,
        outpatient_hifp_pay=draw(_near(out_top, 100_000)),
        settlements=draw(st.integers(0, 50)),
    )


@st.composite
def cases(draw: st.DrawFn) -> dict:
    policy = POLICIES[draw(st.sampled_from(REGIONS))]
    catalog = POLICIES[draw(st.sampled_from(REGIONS))]
    return dict(policy=policy, catalog=catalog, med_type=draw(st.sampled_from(MED_TYPES)),
                psn_type=draw(st.sampled_from(PSN_TYPES)), hosp_lv=draw(st.sampled_from(HOSP_LVS)),
                lines=draw(fee_lines()), acc=draw(accumulators(policy)))


def _outpatient_cap(policy: RegionPolicy) -> int | None:
    cap = policy.benefits.outpatient.annual_cap
    return to_fen(cap) if cap is not None else None


@settings(max_examples=200, deadline=None)
@given(cases())
def test_property_split_sums_to_medfee(case: dict) -> None:
    adj = adjudicate(**case)
    bill = sum(to_fen(ln.det_item_fee_sumamt) for ln in case["lines"])
    assert adj.medfee == bill
    assert adj.fulamt_ownpay + adj.overlmt_selfpay + adj.preselfpay + adj.inscp == adj.medfee


@settings(max_examples=200, deadline=None)
@given(cases())
def test_property_fund_plus_person_is_medfee(case: dict) -> None:
    adj = adjudicate(**case)
    assert adj.fund_pay_sumamt + adj.psn_part == adj.medfee
    assert adj.fund_pay_sumamt == sum(f.pay for f in adj.funds)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_property_nothing_negative(case: dict) -> None:
    adj = adjudicate(**case)
    for name in ("medfee", "fulamt_ownpay", "overlmt_selfpay", "preselfpay", "inscp", "act_pay_dedc",
                 "hifp_pay", "psn_part"):
        assert getattr(adj, name) >= 0, name
    assert all(v >= 0 for v in adj.delta.as_tuple()), adj.delta
    assert adj.delta.settlements == 1


@settings(max_examples=200, deadline=None)
@given(cases())
def test_property_deductible_and_fund_within_scope(case: dict) -> None:
    adj = adjudicate(**case)
    assert adj.act_pay_dedc <= adj.inscp
    assert adj.hifp_pay <= adj.inscp - adj.act_pay_dedc
    if adj.category == "pharmacy":
        assert adj.hifp_pay == 0 and adj.act_pay_dedc == 0


@settings(max_examples=200, deadline=None)
@given(cases())
def test_property_caps_hold(case: dict) -> None:
    adj = adjudicate(**case)
    acc, policy = case["acc"], case["policy"]
    assert adj.delta.hifp_pay == adj.hifp_pay
    assert acc.hifp_pay + adj.delta.hifp_pay <= to_fen(policy.annual_cap)
    out_cap = _outpatient_cap(policy)
    if adj.category == "outpatient":
        assert adj.delta.outpatient_hifp_pay == adj.hifp_pay
        if out_cap is not None:
            assert acc.outpatient_hifp_pay + adj.delta.outpatient_hifp_pay <= out_cap
    else:
        assert adj.delta.outpatient_hifp_pay == 0


@settings(max_examples=200, deadline=None)
@given(cases())
def test_property_reversal_restores_accumulators(case: dict) -> None:
    adj = adjudicate(**case)
    acc = case["acc"]
    assert acc.plus(adj.delta).minus(adj.delta) == acc
    # and reversing then settling the same bill again gives the same answer
    again = adjudicate(**{**case, "acc": acc.plus(adj.delta).minus(adj.delta)})
    assert again == adj


@st.composite
def sequences(draw: st.DrawFn) -> dict:
    policy = POLICIES[draw(st.sampled_from(REGIONS))]
    psn_type = draw(st.sampled_from(PSN_TYPES))
    visits = draw(st.lists(st.tuples(st.sampled_from(MED_TYPES), st.sampled_from(HOSP_LVS),
                                     st.sampled_from(REGIONS), fee_lines()), min_size=1, max_size=12))
    return dict(policy=policy, psn_type=psn_type, visits=visits)


@settings(max_examples=200, deadline=None)
@given(sequences())
def test_property_yearly_deductible_never_exceeded(seq: dict) -> None:
    policy, psn_type = seq["policy"], seq["psn_type"]
    deductible = to_fen(policy.benefits.outpatient.deductible[psn_type])
    cap = to_fen(policy.annual_cap)
    out_cap = _outpatient_cap(policy)
    acc = Accumulators()
    for med_type, hosp_lv, treated_in, lines in seq["visits"]:
        adj = adjudicate(policy=policy, catalog=POLICIES[treated_in], med_type=med_type, psn_type=psn_type,
                         hosp_lv=hosp_lv, lines=lines, acc=acc)
        if adj.category == "outpatient" and adj.hifp_pay > 0:
            # the fund pays outpatient only once the year's deductible is fully consumed
            assert acc.outpatient_dedc + adj.delta.outpatient_dedc == deductible
        acc = acc.plus(adj.delta)
        assert acc.outpatient_dedc <= deductible
        assert acc.hifp_pay <= cap
        if out_cap is not None:
            assert acc.outpatient_hifp_pay <= out_cap
    assert acc.settlements == len(seq["visits"])
    assert acc.inpatient_stays == sum(1 for v in seq["visits"] if MED_TYPE_CATEGORY[v[0]] == "inpatient")
