"""The invariant auditor, run after every scenario: from what the run observed (every outcome event) and
from the services' own ledgers (G199 audits, 5206 accumulators, G121 balances, 3201 reconciliation).

Each invariant is a small async function named for what it checks, registered in INVARIANTS (at the end of
the invariants); the report and the JUnit file take their names from there. Each gives its problems, and its
verdict is "ok" or a short description of what is wrong (the first few cases and a count).
"""
from __future__ import annotations

import asyncio
import random
from datetime import datetime
from decimal import Decimal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from contracts.base import format_biz_time
from contracts.envelope import Reply
from contracts.money import from_fen, to_fen
from contracts.pos import ReverseVisit, SettleVisit
from simulator.reconcile import fetch_items, reconcile

from . import visit_audit

if TYPE_CHECKING:
    from .run.identities import Mapper
    from .run.observations import Obs, RunData
    from .run.runner import Runner

SAMPLE_ALL_UP_TO = 2000  # people checked one by one (5206, G121) up to this many; a seeded sample beyond
SAMPLE_SIZE = 500
MAX_SHOWN = 5



# setldetail fund lines above the basic fund → their 5206 accumulator
FUND_ACCUMULATORS = {"330100": "large_amount_pay", "390200": "crit_pay", "610100": "assist_pay"}

def _verdict(problems: list[str]) -> str:
    if not problems:
        return "ok"
    shown = "; ".join(problems[:MAX_SHOWN])
    more = f" (and {len(problems) - MAX_SHOWN} more)" if len(problems) > MAX_SHOWN else ""
    return f"{len(problems)} problem{'s' if len(problems) != 1 else ''}: {shown}{more}"


def _fen(value: str) -> int:
    return to_fen(Decimal(value))


def insurance_year(year_start_month: int, when: datetime) -> int:
    return when.year if when.month >= year_start_month else when.year - 1


def _time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def standing(data: "RunData") -> tuple[list["Obs"], dict[str, "Obs"]]:
    """Settlements that still count (settled and not reversed), and reversals by the setl_id they undo."""
    reversals = {}
    for o in data.observations:
        s = o.setlinfo
        if o.outcome is not None and o.outcome.status == "reversed" and s is not None and s.get("orig_setl_id"):
            reversals[s["orig_setl_id"]] = o
    settled = [o for o in data.observations if o.outcome is not None and o.outcome.status == "settled"
               and isinstance(o.cmd, SettleVisit) and o.setlinfo is not None]
    return [o for o in settled if o.setlinfo["setl_id"] not in reversals], reversals  # type: ignore[index]



def setlinfo_problems(s: dict[str, Any], reversed_: bool = False) -> list[str]:
    """The identities of one settlement (a reversal's with signs turned): medfee = funds + person's part,
    person's part = accounts + cash, mutual aid within the account part, nothing negative, mulaid_detail and
    setldetail adding up, hifp_pay the basic fund's line."""
    f = {k: _fen(s[k]) for k in ("medfee_sumamt", "fund_pay_sumamt", "hifp_pay", "psn_part_amt", "acct_pay",
                                 "acct_mulaid_pay", "psn_cash_pay")}
    sign = -1 if reversed_ else 1
    why = []
    if f["fund_pay_sumamt"] + f["acct_pay"] + f["psn_cash_pay"] != f["medfee_sumamt"]:
        why.append("fund_pay_sumamt + acct_pay + psn_cash_pay != medfee_sumamt")
    if f["acct_pay"] + f["psn_cash_pay"] != f["psn_part_amt"]:
        why.append("acct_pay + psn_cash_pay != psn_part_amt")
    if not (0 <= sign * f["acct_mulaid_pay"] <= sign * f["acct_pay"]):
        why.append("acct_mulaid_pay not within [0, acct_pay]")
    if any(sign * v < 0 for v in f.values()):
        why.append("a negative amount")
    if sum(_fen(p["amount"]) for p in s.get("mulaid_detail", [])) != f["acct_mulaid_pay"]:
        why.append("mulaid_detail does not add up to acct_mulaid_pay")
    lines = s.get("setldetail", [])
    if lines and sum(_fen(x["fund_payamt"]) for x in lines) != f["fund_pay_sumamt"]:
        why.append("setldetail does not add up to fund_pay_sumamt")
    basic = sum(_fen(x["fund_payamt"]) for x in lines if x["fund_pay_type"] in ("310100", "390100"))
    if (lines or f["fund_pay_sumamt"] != f["hifp_pay"]) and basic != f["hifp_pay"]:
        why.append("hifp_pay is not the basic fund's setldetail line")
    return why


def ledger_problems(acc: dict[str, Any] | None, unmap: Callable[[str], str] = lambda t: t) -> list[str]:
    """The accounts service's own figures (G199): the ledger sums to zero, every transaction balances, every
    stored balance equals its ledger, wallet transfers in transit match, nothing was posted twice."""
    if acc is None:
        return ["no accounts audit"]
    problems = []
    if acc.get("ledger_sum_fen") != 0:
        problems.append(f"ledger sums to {from_fen(int(acc.get('ledger_sum_fen') or 0))}")
    if acc.get("unbalanced_txns"):
        problems.append(f"{acc['unbalanced_txns']} unbalanced transactions")
    for mm in acc.get("balance_mismatches", []):
        problems.append(f"{unmap(mm['psn_no'])}: stored balance != ledger ({mm})")
    if acc.get("transit_mismatch_fen"):
        problems.append(f"wallet transfers in transit differ from the ledger by {from_fen(acc['transit_mismatch_fen'])}")
    if acc.get("double_debits"):
        problems.append(f"{acc['double_debits']} postings made twice (double debits)")
    return problems

@dataclass
class Context:
    """What every invariant may read: the run, the services' own audits (G199) and what follows from them."""

    runner: "Runner"
    data: "RunData"
    region: str  # the envelope region of the auditor's own calls
    when: datetime  # business time of those calls: the end of the run
    accounts_rep: Reply
    bureau_rep: Reply
    live: list["Obs"]  # settlements that still count (settled, not reversed)
    reversals: dict[str, "Obs"]  # by the setl_id they undo
    settled_all: list["Obs"]
    must: set[str]  # people always checked one by one: those of visits a timeout race ended early, their families
    figures: dict[str, Any] = field(default_factory=dict)  # the auditor's counts, for the report

    @property
    def mapper(self) -> "Mapper":
        return self.data.mapper

    @property
    def acc(self) -> dict[str, Any] | None:
        return self.accounts_rep.output or {} if self.accounts_rep.infcode == 0 else None

    @property
    def bur(self) -> dict[str, Any] | None:
        return self.bureau_rep.output or {} if self.bureau_rep.infcode == 0 else None


Invariant = Callable[[Context], Awaitable["list[str] | None"]]  # its problems; None: it does not apply to this run


async def audit(runner: "Runner", data: "RunData") -> dict[str, str]:
    """Every invariant of INVARIANTS, in order: its name → "ok" or what is wrong."""
    c = await context(runner, data)
    inv: dict[str, str] = {}
    for invariant in INVARIANTS:
        problems = await invariant(c)
        if problems is not None:
            inv[invariant.__name__] = _verdict(problems)
    bur = c.bur
    # settlements the bureau had taken in (adjudicated, maybe paid) and then undid for a 2601 冲正
    c.figures["bureau_compensated"] = (bur.get("states", {}).get("compensated", 0)
                                       if bur is not None and not data.mapper.tag else None)  # --external: not ours alone
    data.figures = c.figures
    return inv


def invariant_names() -> list[str]:
    """The names the report and the JUnit file show, in order (balances_follow_observed_flows only applies to
    runs whose balances the runner can follow)."""
    return [f.__name__ for f in INVARIANTS]


async def context(runner: "Runner", data: "RunData") -> Context:
    mapper = data.mapper
    region = runner.regions[0]
    when = data.end_time or runner.sc.start
    accounts_rep = await runner.call("accounts", "G199", {}, when, region)
    bureau_rep = await runner.call("bureau", "G199", {}, when, region)
    live, reversals = standing(data)
    settled_all = [o for o in data.observations if o.outcome is not None and o.outcome.status == "settled"
                   and isinstance(o.cmd, SettleVisit) and o.setlinfo is not None]
    raced = {mapper.unmap_text(o.cmd.psn_no) for o in data.observations
             if o.race and (o.outcome is None or o.outcome.status != "settled")}
    raced_families = {data.family_of[p] for p in raced if p in data.family_of}
    must = raced | {m for fam in raced_families for m in data.families.get(fam, [])}
    return Context(runner=runner, data=data, region=region, when=when, accounts_rep=accounts_rep,
                   bureau_rep=bureau_rep, live=live, reversals=reversals, settled_all=settled_all, must=must)


# ---- the invariants ----------------------------------------------------------------------------------------
async def one_final_outcome_per_visit(c: Context) -> list[str]:
    """Every visit has exactly one final outcome. A generated visit ends by its POS timeout (compensated, or
    refused E_TIMEOUT) only when a timeout_race gave it a short timeout on purpose: with the generous timeout of
    the others, such an end means a message was lost or stuck."""
    problems = []
    without = 0
    for o in c.data.observations:
        events = set(c.runner.client.events.get(o.cmd.visit_id, []))
        if o.outcome is None:
            without += 1
            problems.append(f"{o.step}: {o.note or 'no outcome'}")
        elif len(events) > 1:
            problems.append(f"{o.step}: {len(events)} different outcomes")
        elif o.generated and not o.race and (o.outcome.status == "compensated" or o.outcome.err_code == "E_TIMEOUT"):
            problems.append(f"{o.step}: ended by its POS timeout ({o.outcome.status} {o.outcome.err_code or ''})")
    c.figures["visits_without_outcome"] = without
    return problems


async def settlement_identities(c: Context) -> list[str]:
    """The identities of every settlement (and of every reversal, with signs turned), and medfee = the bill."""
    problems = []
    for o in c.data.observations:
        s = o.setlinfo
        if s is None:
            continue
        sign = -1 if o.outcome is not None and o.outcome.status == "reversed" else 1
        why = setlinfo_problems(s, reversed_=sign == -1)
        if sign == 1 and isinstance(o.cmd, SettleVisit):
            billed = sum(to_fen(d.det_item_fee_sumamt) for d in o.cmd.details)
            if billed != _fen(s["medfee_sumamt"]):
                why.append(f"medfee_sumamt {s['medfee_sumamt']} != the bill {from_fen(billed)}")
        if why:
            problems.append(f"{o.step} ({c.mapper.unmap_text(s['setl_id'])}): {', '.join(why)}")
    return problems


async def no_negative_balance(c: Context) -> list[str]:
    """No balance ever negative: in the outcomes, and in the accounts service (balances, limit usages)."""
    mapper, acc = c.mapper, c.acc
    problems = []
    negatives = 0
    for o in c.data.observations:
        s = o.setlinfo
        if s is None:
            continue
        if _fen(s["balc"]) < 0:
            negatives += 1
            problems.append(f"{o.step}: balc {s['balc']}")
        for p in s.get("mulaid_detail", []):
            if _fen(p["balc"]) < 0:
                negatives += 1
                problems.append(f"{o.step}: authorizer {mapper.unmap_text(p['authorizer_psn_no'])} balc {p['balc']}")
    if acc is None:
        problems.append(f"accounts audit refused: {c.accounts_rep.err_code} {c.accounts_rep.err_msg}")
    else:
        if acc.get("negative_balances"):
            negatives += acc["negative_balances"]
            problems.append(f"{acc['negative_balances']} negative balances in the accounts service")
        if acc.get("negative_usage"):
            negatives += acc["negative_usage"]
            problems.append(f"{acc['negative_usage']} negative limit usages")
    c.figures["negative_balances"] = negatives if acc is not None else None
    return problems


async def caps_respected(c: Context) -> list[str]:
    """No cap ever exceeded: binding caps and yearly mutual-aid caps (the accounts' usage windows), the pooled
    fund's annual and outpatient caps, the channel daily limits (observed, net of reversals)."""
    data, mapper, acc = c.data, c.mapper, c.acc
    problems = []
    if acc is not None:
        for over in acc.get("cap_overruns", []):
            problems.append(f"usage {mapper.unmap_text(over['key'])}: {from_fen(over['used_fen'])} > cap "
                            f"{from_fen(over['cap_fen'])}")
    hifp: dict[tuple[str, int], int] = {}
    outp: dict[tuple[str, int], int] = {}
    chnl: dict[tuple[str, str, str], int] = {}
    for o in c.live:
        s = o.setlinfo
        assert s is not None
        policy = data.policies.get(o.cmd.insuplc_admdvs)
        if policy is None:
            continue
        year = insurance_year(policy.year_start_month, _time(s["setl_time"]))
        key = (o.cmd.psn_no, year)
        hifp[key] = hifp.get(key, 0) + _fen(s["hifp_pay"])
        who = data.people.get(mapper.unmap_text(o.cmd.psn_no))
        scheme = (policy.resident_benefits if who is not None and who.insutype == "390" and policy.resident_benefits
                  else policy.benefits)
        if o.category != "inpatient" and not (s["med_type"] == "14" and scheme.chronic is not None):
            outp[key] = outp.get(key, 0) + _fen(s["hifp_pay"])
        ch = o.cmd.setl_chnl if isinstance(o.cmd, SettleVisit) else "offline"
        if ch in policy.accounts.channel_daily_limit:
            ck = (o.cmd.psn_no, ch, s["setl_time"][:10])
            chnl[ck] = chnl.get(ck, 0) + _fen(s["acct_pay"])
    for (psn, year), fen in sorted(hifp.items()):
        policy = data.policies[data.people[mapper.unmap_text(psn)].region] if mapper.unmap_text(psn) in data.people \
            else None
        who = data.people.get(mapper.unmap_text(psn))
        benefits = policy.benefits if policy is not None else None
        if policy is not None and who is not None and who.insutype == "390" and policy.resident_benefits:
            benefits = policy.resident_benefits
        annual = (benefits.annual_cap if benefits is not None and benefits.annual_cap is not None
                  else policy.annual_cap if policy is not None else None)
        if annual is not None and fen > to_fen(annual):
            problems.append(f"{mapper.unmap_text(psn)} {year}: pooled fund paid {from_fen(fen)} > annual cap "
                            f"{annual}")
        cap = benefits.outpatient.annual_cap if benefits is not None else None
        if cap is not None and outp.get((psn, year), 0) > to_fen(cap):
            problems.append(f"{mapper.unmap_text(psn)} {year}: outpatient pooled {from_fen(outp[(psn, year)])} > "
                            f"{cap}")
    for (psn, ch, day), fen in sorted(chnl.items()):
        person = data.people.get(mapper.unmap_text(psn))
        policy = data.policies.get(person.region) if person else None
        limit = policy.accounts.channel_daily_limit.get(ch) if policy else None  # type: ignore[call-overload]
        if limit is not None and fen > to_fen(limit):
            problems.append(f"{mapper.unmap_text(psn)} {day}: {ch} account payments {from_fen(fen)} > daily limit "
                            f"{limit}")
    c.figures["cap_overruns"] = len(problems) if acc is not None else None
    return problems


async def ledger_balanced(c: Context) -> list[str]:
    """The ledger sums to zero and every balance equals its ledger (the accounts service's G199)."""
    acc = c.acc
    problems = ledger_problems(acc, c.mapper.unmap_text)
    c.figures["double_debits"] = acc.get("double_debits") if acc is not None else None
    c.figures["ledger_balanced"] = not problems
    return problems


async def balances_follow_observed_flows(c: Context) -> list[str] | None:
    """Every balance equals what the observed flows say (opening + deposits - payments + refunds); only when
    the runner could follow every balance (no admin event it does not model)."""
    data, mapper = c.data, c.mapper
    if data.untracked_all:
        return None
    expected: dict[str, int] = {}
    for psn, person in data.people.items():
        if person.balance is not None and psn not in data.untracked_people:
            expected[psn] = to_fen(person.balance) + to_fen(person.prior_balance or Decimal("0.00")) \
                + data.deposits.get(psn, 0)
    for o in data.observations:
        s = o.setlinfo
        if s is None or o.outcome is None or o.outcome.status not in ("settled", "reversed"):
            continue
        patient = mapper.unmap_text(s["psn_no"])
        own = _fen(s["acct_pay"]) - _fen(s["acct_mulaid_pay"]) - _fen(s.get("wallet_pay", "0.00"))
        if patient in expected:
            expected[patient] -= own
        for p in s.get("mulaid_detail", []):
            who = mapper.unmap_text(p["authorizer_psn_no"])
            if who in expected:
                expected[who] -= _fen(p["amount"])
    chosen = _sample(sorted(expected), c.runner.sc.seed, c.must)
    got = await _gather(c.runner, [("accounts", "G121", {"psn_no": mapper.psn(psn)}, data.people[psn].region)
                                   for psn in chosen], c.when)
    problems = []
    for psn, rep in zip(chosen, got):
        if rep.infcode != 0:
            problems.append(f"{psn}: {rep.err_code}")
            continue
        out = rep.output or {}
        if _fen(out["balc"]) != expected[psn]:
            problems.append(f"{psn}: balance {out['balc']}, the observed flows say {from_fen(expected[psn])}")
        if out.get("ledger_balc") is not None and out["ledger_balc"] != out["balc"]:
            problems.append(f"{psn}: balance {out['balc']} != ledger {out['ledger_balc']}")
    return problems


def _zero_accumulators() -> dict[str, int]:
    return {"outpatient_dedc": 0, "inpatient_dedc": 0, "inpatient_stays": 0, "hifp_pay": 0,
            "outpatient_hifp_pay": 0, "settlements": 0, **{f: 0 for f in FUND_ACCUMULATORS.values()}}


async def accumulators_match_settlements(c: Context) -> list[str]:
    """Accumulators equal the sum of the settlements (the bureau's own audit, and 5206 against what we saw)."""
    data, mapper, bur, must = c.data, c.mapper, c.bur, c.must
    problems = []
    if bur is None:
        problems.append(f"bureau audit refused: {c.bureau_rep.err_code} {c.bureau_rep.err_msg}")
    else:
        for mm in bur.get("accumulator_mismatches", []):
            problems.append(f"bureau: {mapper.unmap_text(mm['psn_no'])} {mm['year']} accumulators != settlements")
    acc_obs: dict[tuple[str, int], dict[str, int]] = {}
    touched: set[tuple[str, int]] = set()
    for o in c.settled_all:
        s = o.setlinfo
        assert s is not None
        policy = data.policies.get(o.cmd.insuplc_admdvs)
        if policy is None:
            continue
        key = (mapper.unmap_text(o.cmd.psn_no), insurance_year(policy.year_start_month, _time(s["setl_time"])))
        touched.add(key)
        a = acc_obs.setdefault(key, _zero_accumulators())
        if s["setl_id"] in c.reversals:
            continue
        a["settlements"] += 1
        a["hifp_pay"] += _fen(s["hifp_pay"])
        for line in s.get("setldetail", []):  # each fund above the basic one has its own accumulator
            if line["fund_pay_type"] in FUND_ACCUMULATORS:
                a[FUND_ACCUMULATORS[line["fund_pay_type"]]] += _fen(line["fund_payamt"])
        who = data.people.get(key[0])
        scheme = (policy.resident_benefits if who is not None and who.insutype == "390" and policy.resident_benefits
                  else policy.benefits)
        if o.category == "inpatient":
            a["inpatient_dedc"] += _fen(s["act_pay_dedc"])
            a["inpatient_stays"] += 1 if scheme.inpatient.pooled else 0
        else:
            a["outpatient_dedc"] += _fen(s["act_pay_dedc"])
            if not (s["med_type"] == "14" and scheme.chronic is not None):  # 门诊慢特病: annual cap only
                a["outpatient_hifp_pay"] += _fen(s["hifp_pay"])
    for o in data.observations:  # accumulators of raced people who have no settlement left: all zero
        if o.race and mapper.unmap_text(o.cmd.psn_no) in must:
            policy = data.policies.get(o.cmd.insuplc_admdvs)
            if policy is not None:
                key = (mapper.unmap_text(o.cmd.psn_no),
                       insurance_year(policy.year_start_month, _time(format_biz_time(o.cmd.biz_time))))
                touched.add(key)
                acc_obs.setdefault(key, _zero_accumulators())
    keys = _sample(sorted(touched), c.runner.sc.seed, {k for k in touched if k[0] in must})
    got = await _gather(c.runner, [("bureau", "5206", {"psn_no": mapper.psn(psn), "cum_year": year},
                                    data.people[psn].region if psn in data.people else None) for psn, year in keys],
                        c.when)
    for (psn, year), rep in zip(keys, got):
        if rep.infcode != 0:
            problems.append(f"5206 {psn} {year}: {rep.err_code}")
            continue
        out = rep.output or {}
        for k, v in acc_obs[(psn, year)].items():
            have = out.get(k)
            have_fen = have if k in ("inpatient_stays", "settlements") else _fen(str(have))
            if have_fen != v:
                shown = v if k in ("inpatient_stays", "settlements") else from_fen(v)
                problems.append(f"{psn} {year}: {k} is {have}, the settlements say {shown}")
    return problems


REVERSED_MONEY = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
                  "act_pay_dedc", "hifp_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay", "acct_mulaid_pay",
                  "psn_cash_pay")


async def reversals_net_to_zero(c: Context) -> list[str]:
    """A reversal is the negation of the settlement it undoes; each settlement is reversed at most once, and
    the bureau counts the reversals the run saw."""
    data, mapper, bur = c.data, c.mapper, c.bur
    by_setl = {o.setlinfo["setl_id"]: o for o in c.settled_all}  # type: ignore[index]
    problems = []
    for orig_id, rev in sorted(c.reversals.items()):
        orig = by_setl.get(orig_id)
        r = rev.setlinfo
        assert r is not None
        if orig is None:
            problems.append(f"{rev.step}: reverses {mapper.unmap_text(orig_id)}, which was never seen settled")
            continue
        s = orig.setlinfo
        assert s is not None
        bad = [k for k in REVERSED_MONEY if _fen(r[k]) != -_fen(s[k])]
        parts_s = sorted((p["authorizer_psn_no"], _fen(p["amount"])) for p in s.get("mulaid_detail", []))
        parts_r = sorted((p["authorizer_psn_no"], -_fen(p["amount"])) for p in r.get("mulaid_detail", []))
        if parts_s != parts_r:
            bad.append("mulaid_detail")
        if bad:
            problems.append(f"{rev.step}: {', '.join(bad)} not the negation of {orig.step}")
    n_rev = sum(1 for o in data.observations if isinstance(o.cmd, ReverseVisit) and o.outcome is not None
                and o.outcome.status == "reversed")
    if len(c.reversals) != n_rev:
        problems.append(f"{n_rev} reversals, {len(c.reversals)} distinct settlements reversed")
    if bur is not None and not mapper.tag:
        states = bur.get("states", {})
        if states.get("reversed", 0) != n_rev:
            problems.append(f"the bureau has {states.get('reversed', 0)} reversed settlements, the run saw {n_rev}")
    return problems


async def daily_reconciliation_3201(c: Context) -> list[str]:
    """Per facility and day: a 3201 reconciliation (对总账) of the POS's totals against the bureau's."""
    data, mapper, bur = c.data, c.mapper, c.bur
    problems = []
    groups: dict[tuple[str, str, str], dict[str, int]] = {}
    for o in c.live:
        s = o.setlinfo
        assert s is not None
        key = (o.cmd.fixmedins_code, s["setl_time"][:10], o.cmd.insuplc_admdvs)
        g = groups.setdefault(key, {"cnt": 0, "medfee_sumamt": 0, "fund_pay_sumamt": 0, "acct_pay": 0,
                                    "psn_cash_pay": 0})
        g["cnt"] += 1
        for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
            g[k] += _fen(s[k])
    keys3 = sorted(groups)
    calls = [("audit", "3201", {"fixmedins_code": fac, "stmt_date": day, "setl_optins": reg,
                                 "fixmedins_setl_cnt": groups[(fac, day, reg)]["cnt"],
                                 **{k: f"{from_fen(groups[(fac, day, reg)][k]):.2f}"
                                    for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay")}},
              reg) for fac, day, reg in keys3]
    got = await _gather(c.runner, calls, c.when, sample=False)
    matched = 0
    for (fac, day, reg), rep in zip(keys3, got):
        if rep.infcode != 0:
            problems.append(f"3201 {mapper.unmap_text(fac)} {day}: {rep.err_code} {rep.err_msg}")
        elif (rep.output or {}).get("stmt_rslt") != "0":
            problems.append(f"3201 {mapper.unmap_text(fac)} {day} ({reg}): "
                            f"{mapper.unmap_text(str((rep.output or {}).get('stmt_rslt_dscr')))}")
        else:
            matched += 1
    if bur is not None:
        ours = set(mapper.fac(code) for code in data.facilities)
        pos_days: dict[str, dict[str, int]] = {}
        for (fac, day, _reg), g in groups.items():
            d = pos_days.setdefault(f"{fac}/{day}", {"count": 0, "medfee_fen": 0})
            d["count"] += g["cnt"]
            d["medfee_fen"] += g["medfee_sumamt"]
        for key, totals in sorted(bur.get("daily_totals", {}).items()):
            if key.split("/")[0] not in ours:
                continue
            pos = pos_days.get(key, {"count": 0, "medfee_fen": 0})
            if pos["count"] != totals["count"] or pos["medfee_fen"] != totals["medfee_fen"]:
                problems.append(f"{mapper.unmap_text(key)}: bureau {totals['count']} settlements "
                                f"{from_fen(totals['medfee_fen'])}, POS {pos['count']} {from_fen(pos['medfee_fen'])}")
    data.results["_reconciliation"] = {"facility_days": len(keys3), "matched": matched}
    c.figures["reconciliation_matches"] = not problems and matched == len(keys3)
    return problems


async def nothing_in_flight(c: Context) -> list[str]:
    """Nothing left half-done: no settlement still pending, reversing or compensating."""
    bur = c.bur
    problems = []
    if bur is not None and not c.mapper.tag:
        for state in ("pending", "reversing", "compensating"):
            if bur.get("states", {}).get(state):
                problems.append(f"{bur['states'][state]} settlements still {state}")
    return problems


async def every_visit_settled_cancelled_or_open(c: Context) -> list[str]:
    """Every registered visit ends settled, cancelled or reported open (after the 3201 sweep above)."""
    after = await c.runner.call("bureau", "G199", {}, c.when, c.region)
    problems, c.figures["visits"] = visit_audit.check(c.data, after.output or {} if after.infcode == 0 else None)
    return problems


async def bureau_matches_accounts(c: Context) -> list[str]:
    """Bureau against accounts, item by item by setl_id (3202 对明细账): a payment without its settlement, a
    settlement without its payment, an undone settlement not refunded, amounts that differ."""
    if c.mapper.tag:  # --external: the services hold more than this run
        return []
    try:
        diffs = await reconcile_services(c.runner, c.when, c.region)
    except Exception as exc:  # a side that cannot answer is a finding too
        diffs = [{"setl_id": "-", "problem": f"item reconciliation failed: {exc}"}]
    c.figures["item_differences"] = len(diffs)
    return [f"{c.mapper.unmap_text(d['setl_id'])}: {d['problem']}" for d in diffs]


# The auditor: every invariant, in the order of the report and the JUnit file; the name is the function's.
INVARIANTS: list[Invariant] = [
    one_final_outcome_per_visit, settlement_identities, no_negative_balance, caps_respected, ledger_balanced,
    balances_follow_observed_flows, accumulators_match_settlements, reversals_net_to_zero,
    daily_reconciliation_3201, nothing_in_flight, every_visit_settled_cancelled_or_open, bureau_matches_accounts,
]


async def reconcile_services(runner: "Runner", when: datetime, region: str) -> list[dict[str, Any]]:
    """Both sides' G199 items (every bureau region of the run), compared by setl_id."""
    async def side(service: str, reg: str, regions: list[str]) -> Any:
        async def call(data: dict[str, Any]) -> dict[str, Any]:
            rep = await runner.call(service, "G199", data, when, reg)
            if rep.infcode != 0:
                raise RuntimeError(f"{service} G199 items refused: {rep.err_code} {rep.err_msg}")
            return rep.output or {}
        return await fetch_items(call, regions)
    bureau: dict[str, Any] = {}
    for reg in runner.regions:
        bureau.update(await side("bureau", reg, [reg]))
    accounts = await side("accounts", region, list(runner.regions))
    return reconcile(bureau, accounts)


def _sample(items: list[Any], seed: int, must: set[Any] | None = None) -> list[Any]:
    """All items up to SAMPLE_ALL_UP_TO, else a seeded sample of SAMPLE_SIZE plus every item in `must`."""
    if len(items) <= SAMPLE_ALL_UP_TO:
        return items
    return sorted(set(random.Random(seed).sample(items, SAMPLE_SIZE)) | ({i for i in items if i in must}
                                                                          if must else set()))


async def _gather(runner: "Runner", calls: list[tuple[str, str, dict[str, Any], str | None]], when: datetime,
                  sample: bool = True, concurrency: int = 32) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one(service: str, infno: str, data: dict[str, Any], region: str | None) -> Any:
        async with sem:
            return await runner.call(service, infno, data, when, region)

    return list(await asyncio.gather(*(one(*c) for c in calls)))
