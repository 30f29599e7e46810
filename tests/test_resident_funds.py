"""Issue 10, pure core: resident (居民医保, 390) tables, the funds above the basic pooled fund (330100 大额,
390200 大病, 610100 医疗救助) and pharmacy outpatient pooling with a prescription (外配处方). Every expected
figure is computed by hand from policies/*.yaml in the comments (fen unless said otherwise)."""
from __future__ import annotations

from decimal import Decimal

from contracts.money import from_fen
from contracts.settlement import FeeDetail
from services.bureau.domain import Accumulators, Adjudication, adjudicate
from services.shared.policy import load_policies

POLICIES = load_policies()
HZ, SH, BJ = POLICIES["330100"], POLICIES["310000"], POLICIES["110000"]


def bill(yuan: str) -> list[FeeDetail]:
    return [FeeDetail(feedetl_sn="1", med_list_codg="ZZ01", cnt=Decimal("1"), pric=Decimal(yuan),
                      det_item_fee_sumamt=Decimal(yuan), chrgitm_lv="01")]


def run(policy, yuan: str, med_type: str, hosp_lv: str, *, insutype: str = "310", psn_type: str = "employed",
        group: str | None = None, acc: Accumulators = Accumulators(), low_income: bool = False,
        rx: bool = False) -> Adjudication:
    adj = adjudicate(policy=policy, catalog=policy, med_type=med_type, psn_type=psn_type, hosp_lv=hosp_lv,
                     lines=bill(yuan), acc=acc, insutype=insutype, resident_group=group, low_income=low_income,
                     rx_flag=rx)
    assert adj.fund_pay_sumamt + adj.psn_part == adj.medfee  # the identity, every time
    assert adj.fund_pay_sumamt == sum(f.pay for f in adj.funds)
    return adj


def funds(adj: Adjudication) -> dict[str, int]:
    return {f.fund_pay_type: f.pay for f in adj.funds}


# ---- resident child vs employee: same bill, same facility, different split -------------------------------
def test_hangzhou_resident_child_vs_employee() -> None:
    # Inpatient 10000.00 at 三级 (level3), first stay. Deductible 800.00 for both (by level).
    # Employee: (1000000 - 80000) * 0.84 = 772800 -> psn 227200.
    emp = run(HZ, "10000.00", "21", "level3")
    assert (emp.hifp_pay, emp.psn_part) == (772800, 227200)
    assert funds(emp) == {"310100": 772800}
    # Resident child: (1000000 - 80000) * 0.75 = 690000 -> psn 310000 (大病: burden 310000 < 2000000, none).
    kid = run(HZ, "10000.00", "21", "level3", insutype="390", group="child")
    assert (kid.hifp_pay, kid.psn_part) == (690000, 310000)
    assert funds(kid) == {"390100": 690000} and kid.delta.crit_burden == 310000
    # Resident adult: 0.70 -> 644000
    assert run(HZ, "10000.00", "21", "level3", insutype="390", group="adult").hifp_pay == 644000
    # Outpatient 500.00 at a community clinic: employee deductible 600.00 takes it all -> fund 0, psn 50000;
    # resident child deductible 300.00 -> (50000 - 30000) * 0.60 = 12000, psn 38000.
    emp_o = run(HZ, "500.00", "11", "community")
    kid_o = run(HZ, "500.00", "11", "community", insutype="390", group="child")
    assert (emp_o.act_pay_dedc, emp_o.hifp_pay, emp_o.psn_part) == (50000, 0, 50000)
    assert (kid_o.act_pay_dedc, kid_o.hifp_pay, kid_o.psn_part) == (30000, 12000, 38000)


def test_shanghai_resident_by_age_vs_employee() -> None:
    # Inpatient 10000.00 at 三级. Employee: deductible 1500.00, (1000000 - 150000) * 0.85 = 722500.
    assert run(SH, "10000.00", "21", "level3").hifp_pay == 722500
    # Resident child: deductible 300.00, (1000000 - 30000) * 0.60 = 582000; elderly 0.70 -> 679000.
    kid = run(SH, "10000.00", "21", "level3", insutype="390", group="child")
    old = run(SH, "10000.00", "21", "level3", insutype="390", group="elderly")
    assert (kid.act_pay_dedc, kid.hifp_pay, kid.psn_part) == (30000, 582000, 418000)
    assert old.hifp_pay == 679000
    # A retired resident without a registered group counts as elderly.
    assert run(SH, "10000.00", "21", "level3", insutype="390", psn_type="retired").hifp_pay == 679000
    # Outpatient 1000.00 at 三级: adult resident deductible 500.00, (100000 - 50000) * 0.50 = 25000;
    # employee deductible 500.00, * 0.70 = 35000.
    assert run(SH, "1000.00", "11", "level3", insutype="390", group="adult").hifp_pay == 25000
    assert run(SH, "1000.00", "11", "level3").hifp_pay == 35000


def test_beijing_resident_outpatient_cap() -> None:
    # Resident outpatient cap 4500.00 = 450000; 440000 paid -> 10000 left.
    # 1000.00 at community, deductible used: 100000 * 0.55 = 55000 -> capped at 10000.
    acc = Accumulators(outpatient_dedc=10000, hifp_pay=440000, outpatient_hifp_pay=440000)
    adj = run(BJ, "1000.00", "11", "community", insutype="390", group="adult", acc=acc)
    assert adj.hifp_pay == 10000 and adj.psn_part == 90000
    assert not any(f.fund_pay_type == "330100" for f in adj.funds)  # 大额 is the employees' fund


# ---- 330100 大额医疗费用补助 -----------------------------------------------------------------------------------
def test_large_amount_above_the_basic_cap() -> None:
    # Hangzhou employee, 399000.00 of the 400000.00 cap used (1000.00 = 100000 left); a later stay at 三级:
    # inpatient 20000.00 -> in scope 2000000, deductible 80000, raw (2000000 - 80000) * 0.84 = 1612800
    # -> basic pays 100000 (the cap). Above the cap: 1920000 - round(100000 / 0.84 = 119047.62) = 1800952;
    # 大额 0.85 * 1800952 = 1530809.2 -> 1530809. psn = 2000000 - 100000 - 1530809 = 369191.
    acc = Accumulators(hifp_pay=39_900_000, inpatient_stays=1)
    adj = run(HZ, "20000.00", "21", "level3", acc=acc)
    assert funds(adj) == {"310100": 100000, "330100": 1530809}
    assert adj.hifp_pay == 100000 and adj.fund_pay_sumamt == 1630809 and adj.psn_part == 369191
    assert adj.delta.large_amount_pay == 1530809
    big = next(f for f in adj.funds if f.fund_pay_type == "330100")
    assert big.base == 1800952 and big.limit_left == 20_000_000
    # Its own cap: 199999.00 of 200000.00 used -> 100 fen left.
    capped = run(HZ, "20000.00", "21", "level3", acc=Accumulators(hifp_pay=39_900_000, inpatient_stays=1,
                                                                    large_amount_pay=19_999_900))
    assert funds(capped)["330100"] == 100 and capped.psn_part == 2000000 - 100000 - 100
    # Below the cap nothing above it pays.
    assert "330100" not in funds(run(HZ, "20000.00", "21", "level3"))


# ---- 390200 大病保险 -----------------------------------------------------------------------------------------
def test_critical_illness_above_the_threshold() -> None:
    # Hangzhou resident adult, 19000.00 of burden already counted; a later stay at 三级, 10000.00:
    # basic (1000000 - 80000) * 0.70 = 644000; burden here 1000000 - 644000 = 356000; the year's
    # 1900000 + 356000 = 2256000 passes 2000000 by 256000; 0.60 * 256000 = 153600.
    # psn = 1000000 - 644000 - 153600 = 202400.
    acc = Accumulators(crit_burden=1_900_000, inpatient_stays=1, hifp_pay=5_000_000)
    adj = run(HZ, "10000.00", "21", "level3", insutype="390", group="adult", acc=acc)
    assert funds(adj) == {"390100": 644000, "390200": 153600}
    assert adj.psn_part == 202400 and adj.delta.crit_burden == 356000 and adj.delta.crit_pay == 153600
    # Already above the threshold: the whole burden counts. 356000 * 0.60 = 213600.
    above = run(HZ, "10000.00", "21", "level3", insutype="390", group="adult",
                acc=Accumulators(crit_burden=3_000_000, inpatient_stays=1))
    assert funds(above)["390200"] == 213600
    # Employees get no 大病 line here (their fund above the basic one is 大额).
    assert "390200" not in funds(run(HZ, "10000.00", "21", "level3", acc=acc))


# ---- 610100 医疗救助 -----------------------------------------------------------------------------------------
def test_medical_assistance_for_low_income() -> None:
    # Hangzhou low-income resident child, outpatient 500.00 at community: basic (50000 - 30000) * 0.60 = 12000;
    # remaining in-scope burden 50000 - 12000 = 38000; 救助 0.70 * 38000 = 26600; psn = 50000 - 12000 - 26600.
    adj = run(HZ, "500.00", "11", "community", insutype="390", group="child", low_income=True)
    assert funds(adj) == {"390100": 12000, "610100": 26600} and adj.psn_part == 11400
    assert adj.delta.assist_pay == 26600
    # Not flagged: nothing.
    assert "610100" not in funds(run(HZ, "500.00", "11", "community", insutype="390", group="child"))
    # Its yearly cap 80000.00 = 8000000: 7990000 used -> 10000 left.
    capped = run(HZ, "500.00", "11", "community", insutype="390", group="child", low_income=True,
                 acc=Accumulators(assist_pay=7_990_000))
    assert funds(capped)["610100"] == 10000
    # 全自费 stays the person's: 200.00 丙类 + nothing in scope -> no fund pays.
    lines = [FeeDetail(feedetl_sn="1", med_list_codg="ZZ03", cnt=Decimal("1"), pric=Decimal("200.00"),
                       det_item_fee_sumamt=Decimal("200.00"), chrgitm_lv="03")]
    own = adjudicate(policy=HZ, catalog=HZ, med_type="11", psn_type="employed", hosp_lv="community", lines=lines,
                     acc=Accumulators(), insutype="390", low_income=True)
    assert own.funds == () and own.psn_part == 20000


# ---- pharmacy outpatient pooling (外配处方) -----------------------------------------------------------------
def test_pharmacy_pooled_with_a_prescription_only() -> None:
    # Hangzhou resident child, pharmacy (community) purchase of 500.00.
    # Without a prescription: not pooled, nothing consumed -> psn 50000.
    plain = run(HZ, "500.00", "41", "community", insutype="390", group="child")
    assert (plain.hifp_pay, plain.act_pay_dedc, plain.psn_part) == (0, 0, 50000)
    assert plain.delta == Accumulators(settlements=1)
    # With one: like outpatient, deductible 300.00 then 0.60: (50000 - 30000) * 0.60 = 12000, psn 38000;
    # it counts as outpatient pooling (deductible and outpatient fund).
    rx = run(HZ, "500.00", "41", "community", insutype="390", group="child", rx=True)
    assert (rx.hifp_pay, rx.act_pay_dedc, rx.psn_part) == (12000, 30000, 38000)
    assert rx.delta.outpatient_dedc == 30000 and rx.delta.outpatient_hifp_pay == 12000
    # An employee with the deductible used: 50000 * 0.86 = 43000.
    emp = run(HZ, "500.00", "41", "community", rx=True, acc=Accumulators(outpatient_dedc=60000))
    assert emp.hifp_pay == 43000
    # Beijing does not pool pharmacy purchases at all, prescription or not.
    assert run(BJ, "500.00", "41", "community", rx=True, acc=Accumulators(outpatient_dedc=180000)).hifp_pay == 0


def test_every_shipped_region_has_resident_tables_and_states_its_decisions() -> None:
    import yaml
    from pathlib import Path
    for admdvs, policy in POLICIES.items():
        assert policy.resident_benefits is not None, admdvs
        raw = yaml.safe_load(Path(f"policies/{admdvs}.yaml").read_text(encoding="utf-8"))
        for key in ("cross_province", "reorder_allowed", "contribution_counts_toward_caps"):
            assert key in raw["accounts"], f"{admdvs} does not state {key}"
        assert any("居民" in s or "Resident" in s for s in policy.sources), admdvs


def test_generated_month_has_residents_and_low_income_people() -> None:
    from pathlib import Path

    from simulator.generate import generate
    from simulator.scenario.loader import load_scenario
    pop = generate(load_scenario(Path("scenarios/generated_month.yaml"), scale="0.1"))
    people = pop.people
    residents = [p for p in people if p.insutype == "390"]
    # ~27% residents (children, non-employed adults, elderly), ~1% low-income: the shares of the two cities
    assert 0.15 < len(residents) / len(people) < 0.40
    assert {p.resident_group for p in residents} == {"child", "adult", "elderly"}
    low = [p for p in people if p.low_income]
    assert low and all(p.insutype == "390" for p in low) and len(low) / len(people) < 0.03


# ---- properties over every shipped region, scheme and fund ---------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def any_case(draw):  # type: ignore[no-untyped-def]
    policy = POLICIES[draw(st.sampled_from(sorted(POLICIES)))]
    fen = draw(st.integers(min_value=0, max_value=100_000_000))
    lv = draw(st.sampled_from(["01", "02", "03"]))
    line = FeeDetail(feedetl_sn="1", med_list_codg="ZZ09", cnt=Decimal("1"), pric=from_fen(fen),
                     det_item_fee_sumamt=from_fen(fen), chrgitm_lv=lv, selfpay_prop=Decimal("0.10"))
    acc = Accumulators(outpatient_dedc=draw(st.integers(0, 300_000)), inpatient_stays=draw(st.integers(0, 3)),
                       hifp_pay=draw(st.integers(0, 70_000_000)), outpatient_hifp_pay=draw(st.integers(0, 3_000_000)),
                       large_amount_pay=draw(st.integers(0, 30_000_000)), crit_burden=draw(st.integers(0, 5_000_000)),
                       crit_pay=draw(st.integers(0, 1_000_000)), assist_pay=draw(st.integers(0, 10_000_000)))
    return dict(policy=policy, catalog=policy, med_type=draw(st.sampled_from(["11", "13", "14", "21", "41"])),
                psn_type=draw(st.sampled_from(["employed", "retired"])),
                hosp_lv=draw(st.sampled_from(["community", "level1", "level2", "level3"])), lines=[line], acc=acc,
                insutype=draw(st.sampled_from(["310", "390"])),
                resident_group=draw(st.sampled_from([None, "child", "adult", "elderly"])),
                low_income=draw(st.booleans()), rx_flag=draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(any_case())
def test_property_funds_add_up_and_stay_within_their_caps(case: dict) -> None:
    adj = adjudicate(**case)
    policy, acc = case["policy"], case["acc"]
    assert adj.fund_pay_sumamt + adj.psn_part == adj.medfee
    assert all(f.pay > 0 for f in adj.funds) and adj.psn_part >= 0
    # the funds pay only in-scope money: 全自费, 超限价 and 先行自付 stay the person's
    assert adj.psn_part >= adj.fulamt_ownpay + adj.overlmt_selfpay + adj.preselfpay
    assert adj.fund_pay_sumamt <= adj.inscp
    d = adj.delta
    assert (d.large_amount_pay, d.crit_pay, d.assist_pay) == tuple(
        sum(f.pay for f in adj.funds if f.fund_pay_type == t) for t in ("330100", "390200", "610100"))
    if policy.funds.large_amount is not None:
        assert acc.large_amount_pay + d.large_amount_pay <= max(acc.large_amount_pay,
                                                                 int(policy.funds.large_amount.annual_cap * 100))
    if policy.funds.medical_assistance is not None:
        assert acc.assist_pay + d.assist_pay <= max(acc.assist_pay,
                                                     int(policy.funds.medical_assistance.annual_cap * 100))
    if not case["low_income"]:
        assert d.assist_pay == 0
    if case["insutype"] == "310":
        assert d.crit_pay == 0
    else:
        assert d.large_amount_pay == 0


def test_an_older_bureau_database_gets_the_new_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    from services.bureau import store as db
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("CREATE TABLE persons (psn_no TEXT PRIMARY KEY, name TEXT NOT NULL, insutype TEXT NOT NULL, "
                 "psn_type TEXT NOT NULL, insuplc_admdvs TEXT NOT NULL)")
    conn.execute("CREATE TABLE accumulators (psn_no TEXT NOT NULL, year INTEGER NOT NULL, outpatient_dedc INTEGER, "
                 "inpatient_dedc INTEGER, inpatient_stays INTEGER, hifp_pay INTEGER, outpatient_hifp_pay INTEGER, "
                 "settlements INTEGER, PRIMARY KEY (psn_no, year))")
    conn.execute("INSERT INTO accumulators VALUES ('P1', 2026, 1, 2, 1, 3, 1, 1)")
    db.migrate(conn)
    db.migrate(conn)  # twice is harmless
    assert db.load_acc(conn, "P1", 2026) == Accumulators(1, 2, 1, 3, 1, 1)
    assert {r[1] for r in conn.execute("PRAGMA table_info(persons)")} >= {"resident_group", "low_income"}
