"""Issue 10 end to end over RabbitMQ (the three workers as processes): resident (390) tables, the funds
above the basic fund in setldetail (330100 大额, 390200 大病, 610100 医疗救助), 5206 per fund, reversal
restoring every fund's accumulator, pharmacy pooling with a prescription. Figures by hand in the comments."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from contracts.admin import RegisterPerson
from contracts.pos import ReverseVisit
from simulator.client import Client
from tests.harness import (COMMUNITY, HOSPITAL3, HZ, PHARMACY, SH, SH_HOSPITAL3, Stack, audit, balance, bind,
                           cumulative, line, ok, person, uid, visit)

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal


async def resident(c: Client, prefix: str, *, region: str = HZ, group: str | None = None,
                   low_income: bool = False, insutype: str = "390") -> str:
    """G002 with the resident group and the low-income flag, then known to the accounts service (no account)."""
    psn = await person(c, uid(prefix), region=region, insutype=insutype, balance=None)
    p = RegisterPerson(psn_no=psn, psn_name=psn, insutype=insutype, psn_type="employed",  # type: ignore[arg-type]
                       insuplc_admdvs=region, resident_group=group, low_income=low_income)  # type: ignore[arg-type]
    await ok(c.bureau(c.envelope("G002", p.model_dump(mode="json"), insuplc_admdvs=region,
                                 when="2026-01-01 08:00:00")))
    return psn


def fund_lines(s: Any) -> dict[str, Decimal]:
    return {x.fund_pay_type: x.fund_payamt for x in s.setldetail}


def identities(s: Any) -> None:
    assert s.medfee_sumamt == s.fund_pay_sumamt + s.psn_part_amt
    assert s.psn_part_amt == s.acct_pay + s.psn_cash_pay
    assert s.fund_pay_sumamt == sum((x.fund_payamt for x in s.setldetail), D("0.00"))
    assert s.hifp_pay == sum((x.fund_payamt for x in s.setldetail if x.fund_pay_type in ("310100", "390100")),
                             D("0.00"))


async def reverse(c: Client, psn: str, facility: str, med_type: str, setl_id: str, when: str,
                  region: str = HZ) -> Any:
    out = await c.visit(ReverseVisit(visit_id=uid("rev"), fixmedins_code=facility, insuplc_admdvs=region,
                                     mdtrtarea_admvs=region, psn_no=psn, med_type=med_type, setl_id=setl_id,
                                     biz_time=when))  # type: ignore[arg-type]
    assert out.status == "reversed", out.err_msg
    return out.setlinfo


async def audited(c: Client) -> None:
    acc, bur = await audit(c)
    assert bur["accumulator_mismatches"] == []
    assert acc["ledger_sum_fen"] == 0 and acc["balance_mismatches"] == [] and acc["cap_overruns"] == []


async def test_resident_child_and_employee_same_bill_two_regions(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    # Hangzhou, inpatient 10000.00 at 三级 (HOSPITAL3), first stay, deductible 800.00 for both.
    # Child (390): (10000 - 800) * 0.75 = 6900.00 fund, 3100.00 hers, paid by her mother (共济).
    mother = await person(c, uid("mom"), balance="5000.00")
    kid = await resident(c, "kid", group="child")
    await bind(c, mother, kid)
    k = (await c.visit(visit(kid, HOSPITAL3, "21", "2026-03-01 09:00:00", [line("BED", "10000.00")],
                             insutype="390"))).setlinfo
    assert k is not None
    assert (k.hifp_pay, k.psn_part_amt, k.acct_mulaid_pay, k.psn_cash_pay) == (
        D("6900.00"), D("3100.00"), D("3100.00"), D("0.00"))
    assert fund_lines(k) == {"390100": D("6900.00")}
    identities(k)
    assert await balance(c, mother) == D("1900.00")
    # Employee (310): (10000 - 800) * 0.84 = 7728.00 fund, 2272.00 (no balance: cash).
    emp = await person(c, uid("emp"), balance="0.00")
    e = (await c.visit(visit(emp, HOSPITAL3, "21", "2026-03-01 10:00:00", [line("BED", "10000.00")]))).setlinfo
    assert e is not None and (e.hifp_pay, e.psn_part_amt) == (D("7728.00"), D("2272.00"))
    assert fund_lines(e) == {"310100": D("7728.00")}
    # Shanghai, inpatient 10000.00 at 三级. Child: deductible 300.00, (10000 - 300) * 0.60 = 5820.00;
    # employee: deductible 1500.00, (10000 - 1500) * 0.85 = 7225.00.
    sh_kid = await resident(c, "shk", region=SH, group="child")
    sk = (await c.visit(visit(sh_kid, SH_HOSPITAL3, "21", "2026-03-02 09:00:00", [line("BED", "10000.00")],
                              region=SH, insutype="390"))).setlinfo
    sh_emp = await person(c, uid("she"), region=SH, balance="0.00")
    se = (await c.visit(visit(sh_emp, SH_HOSPITAL3, "21", "2026-03-02 10:00:00", [line("BED", "10000.00")],
                              region=SH))).setlinfo
    assert sk is not None and se is not None
    assert (sk.act_pay_dedc, sk.hifp_pay, sk.psn_part_amt) == (D("300.00"), D("5820.00"), D("4180.00"))
    assert (se.act_pay_dedc, se.hifp_pay, se.psn_part_amt) == (D("1500.00"), D("7225.00"), D("2775.00"))
    await audited(c)


async def test_large_amount_supplement_and_its_reversal(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    # Hangzhou employee, inpatient 600000.00 at 三级, first stay: deductible 800.00;
    # raw (600000 - 800) * 0.84 = 503328.00 > the 400000.00 cap -> basic 400000.00.
    # Above the cap: 599200.00 - round(400000 / 0.84 = 476190.476...) = 599200.00 - 476190.48 = 123009.52;
    # 大额 0.85 * 123009.52 = 104558.092 -> 104558.09. psn = 600000 - 400000 - 104558.09 = 95441.91.
    emp = await person(c, uid("big"), balance="0.00")
    out = await c.visit(visit(emp, HOSPITAL3, "21", "2026-04-01 09:00:00", [line("SURG", "600000.00")]))
    s = out.setlinfo
    assert s is not None and out.status == "settled", out.err_msg
    assert fund_lines(s) == {"310100": D("400000.00"), "330100": D("104558.09")}
    assert s.hifp_pay == D("400000.00") and s.fund_pay_sumamt == D("504558.09") and s.psn_part_amt == D("95441.91")
    big = next(x for x in s.setldetail if x.fund_pay_type == "330100")
    assert big.inscp_scp_amt == D("123009.52") and big.crt_payb_lmt_amt == D("200000.00")
    assert big.fund_pay_type_name == "职工大额医疗费用补助"
    identities(s)
    cum = await cumulative(c, emp, "2026-04-01 12:00:00")
    assert cum["hifp_pay"] == "400000.00" and cum["large_amount_pay"] == "104558.09"
    r = await reverse(c, emp, HOSPITAL3, "21", s.setl_id, "2026-04-02 09:00:00")
    assert r.fund_pay_sumamt == D("-504558.09")
    assert {x.fund_pay_type: x.fund_payamt for x in r.setldetail} == {"310100": D("-400000.00"),
                                                                      "330100": D("-104558.09")}
    cum = await cumulative(c, emp, "2026-04-02 12:00:00")
    assert cum["hifp_pay"] == "0.00" and cum["large_amount_pay"] == "0.00" and cum["settlements"] == 0
    await audited(c)


async def test_critical_illness_and_medical_assistance_and_their_reversal(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    # 大病: Hangzhou resident adult, inpatient 100000.00 at 三级, first stay: deductible 800.00;
    # basic (100000 - 800) * 0.70 = 69440.00; burden 100000 - 69440 = 30560.00 passes 20000.00 by 10560.00;
    # 大病 0.60 * 10560 = 6336.00; psn = 100000 - 69440 - 6336 = 24224.00.
    adult = await resident(c, "crit", group="adult")
    s = (await c.visit(visit(adult, HOSPITAL3, "21", "2026-05-01 09:00:00", [line("ICU", "100000.00")],
                             insutype="390"))).setlinfo
    assert s is not None
    assert fund_lines(s) == {"390100": D("69440.00"), "390200": D("6336.00")}
    assert s.psn_part_amt == D("24224.00") and s.psn_cash_pay == D("24224.00")
    identities(s)
    cum = await cumulative(c, adult, "2026-05-01 12:00:00")
    assert (cum["crit_burden"], cum["crit_pay"]) == ("30560.00", "6336.00")
    # 医疗救助: a low-income resident child, outpatient 500.00 at a community clinic: deductible 300.00,
    # basic (500 - 300) * 0.60 = 120.00; the rest of the in-scope burden 380.00 * 0.70 = 266.00; psn 114.00.
    poor = await resident(c, "poor", group="child", low_income=True)
    a = (await c.visit(visit(poor, COMMUNITY, "11", "2026-05-02 09:00:00", [line("EXAM", "500.00")],
                             insutype="390"))).setlinfo
    assert a is not None
    assert fund_lines(a) == {"390100": D("120.00"), "610100": D("266.00")}
    assert a.fund_pay_sumamt == D("386.00") and a.psn_part_amt == D("114.00")
    identities(a)
    assert (await cumulative(c, poor, "2026-05-02 12:00:00"))["assist_pay"] == "266.00"
    # Reversals give every fund's accumulator back.
    await reverse(c, adult, HOSPITAL3, "21", s.setl_id, "2026-05-03 09:00:00")
    await reverse(c, poor, COMMUNITY, "11", a.setl_id, "2026-05-03 10:00:00")
    cum = await cumulative(c, adult, "2026-05-03 12:00:00")
    assert (cum["hifp_pay"], cum["crit_burden"], cum["crit_pay"], cum["inpatient_stays"]) == (
        "0.00", "0.00", "0.00", 0)
    cum = await cumulative(c, poor, "2026-05-03 12:00:00")
    assert (cum["hifp_pay"], cum["assist_pay"], cum["outpatient_dedc"]) == ("0.00", "0.00", "0.00")
    await audited(c)


async def test_pharmacy_purchase_with_and_without_prescription(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    # Hangzhou resident child at a pharmacy, 500.00 twice, side by side.
    kid = await resident(c, "rx", group="child")
    # Without a prescription: not pooled -> all 500.00 hers, nothing consumed.
    plain = (await c.visit(visit(kid, PHARMACY, "41", "2026-06-01 09:00:00", [line("XA01", "500.00")],
                                 insutype="390"))).setlinfo
    assert plain is not None and plain.hifp_pay == D("0.00") and plain.psn_part_amt == D("500.00")
    assert plain.setldetail == []
    # With an external prescription (rx_circ_flag 1): like outpatient, deductible 300.00,
    # (500 - 300) * 0.60 = 120.00 fund, 380.00 hers.
    rx = (await c.visit(visit(kid, PHARMACY, "41", "2026-06-01 10:00:00", [line("XA01", "500.00")],
                              insutype="390", rx_circ_flag="1"))).setlinfo
    assert rx is not None
    assert (rx.act_pay_dedc, rx.hifp_pay, rx.psn_part_amt) == (D("300.00"), D("120.00"), D("380.00"))
    assert fund_lines(rx) == {"390100": D("120.00")}
    cum = await cumulative(c, kid, "2026-06-01 12:00:00")
    assert cum["outpatient_dedc"] == "300.00" and cum["outpatient_hifp_pay"] == "120.00"


async def test_report_shows_where_each_yuan_came_from_by_fund(amqp_url: str, tmp_path, database_env,  # type: ignore
                                                             monkeypatch) -> None:
    from pathlib import Path
    for key, value in database_env.items():  # the workers run_loaded starts inherit it
        monkeypatch.setenv(key, value)

    from simulator.run.orchestration import RunOptions, run_loaded
    from simulator.terminal import Progress
    from simulator.scenario.loader import load_scenario
    repo = Path(__file__).resolve().parents[1]
    # scenarios/low_income_assistance.yaml: two stays of 10000.00; basic 6900.00 each, 医疗救助 2170.00 for
    # the low-income one; cash 930.00 + 3100.00.
    loaded = load_scenario(repo / "scenarios" / "low_income_assistance.yaml")
    result = await run_loaded(loaded, RunOptions(amqp_url=amqp_url, report_dir=tmp_path, progress=False),
                              Progress(enabled=False))
    src = result.report["sources"]  # report.json's published form: snake_case keys, money as numbers
    assert src["pooled_fund"] == 13800.00
    assert src["medical_assistance_610100"] == 2170.00
    assert src["cash"] == 4030.00
    assert "critical_illness_insurance_390200" not in src  # a fund that paid nothing is left out
    assert all(v == "ok" for v in result.report["invariants"].values()), result.report["invariants"]
