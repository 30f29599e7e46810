"""report.json (deterministic: nothing of the wall clock, no random ids; same scenario and seed → the same
bytes) and report.html (one standalone file, no network: inline CSS, inline SVG charts drawn by an inline
script, which marks the page with data-report-ready="ok" once it has run without error)."""
from __future__ import annotations

import html
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts.money import from_fen, to_fen
from contracts.pos import ReverseVisit, SettleVisit

from .audit import insurance_year, invariant_names, standing
from .figures import totals
from .report_assets import CSS, JS  # the page's inline style and script

if TYPE_CHECKING:
    from .run.observations import Obs, RunData

WHY_LIMIT = 300  # settlements explained in the HTML (all of the timeline's; generated ones up to this)
FAMILY_SERIES = 8


def _y(fen: int) -> str:
    return f"{from_fen(fen):.2f}"


def _fen(value: str) -> int:
    return to_fen(Decimal(value))


FUNDS_ABOVE = {"330100": "大额医疗费用补助 (330100)", "390200": "大病保险 (390200)", "610100": "医疗救助 (610100)"}


def sources(observations: list["Obs"]) -> dict[str, int]:
    """Where each yuan came from (net of reversals): the basic pooled fund, each fund above it (大额, 大病,
    医疗救助: setldetail), own account, family, wallet, cash."""
    out = {"pooled fund 统筹基金": 0, **{name: 0 for name in FUNDS_ABOVE.values()}, "own account 个人账户": 0,
           "family mutual aid 家庭共济": 0, "wallet 医保钱包": 0, "cash 现金": 0}
    for o in observations:
        s = o.setlinfo
        if s is None or o.outcome is None or o.outcome.status not in ("settled", "reversed"):
            continue
        wallet = _fen(s.get("wallet_pay", "0.00"))
        out["pooled fund 统筹基金"] += _fen(s["hifp_pay"])
        for line in s.get("setldetail", []):
            if line["fund_pay_type"] in FUNDS_ABOVE:
                out[FUNDS_ABOVE[line["fund_pay_type"]]] += _fen(line["fund_payamt"])
        out["family mutual aid 家庭共济"] += _fen(s["acct_mulaid_pay"])
        out["wallet 医保钱包"] += wallet
        out["own account 个人账户"] += _fen(s["acct_pay"]) - _fen(s["acct_mulaid_pay"]) - wallet
        out["cash 现金"] += _fen(s["psn_cash_pay"])
    return {k: v for k, v in out.items() if v or k not in FUNDS_ABOVE.values()}  # a fund shows when it paid


def _totals(observations: list["Obs"]) -> dict[str, str]:
    return {k: _y(v) for k, v in totals(observations).items()}


def family_figures(data: "RunData") -> dict[str, dict[str, int]]:
    """Per family (net of reversals): bill, pooled fund, out of pocket (accounts + cash), cash, mutual aid."""
    out: dict[str, dict[str, int]] = {}
    for o in data.observations:
        s = o.setlinfo
        if s is None or o.outcome is None or o.outcome.status not in ("settled", "reversed"):
            continue
        fam = o.family or f"(no family) {data.mapper.unmap_text(o.cmd.psn_no)}"
        f = out.setdefault(fam, {"medfee": 0, "pooled": 0, "out_of_pocket": 0, "cash": 0, "mulaid": 0})
        f["medfee"] += _fen(s["medfee_sumamt"])
        f["pooled"] += _fen(s["fund_pay_sumamt"])
        f["out_of_pocket"] += _fen(s["psn_part_amt"])
        f["cash"] += _fen(s["psn_cash_pay"])
        f["mulaid"] += _fen(s["acct_mulaid_pay"])
    return out


def build(data: "RunData", invariants: dict[str, str], *, scale: str) -> dict[str, Any]:
    sc = data.loaded.scenario
    m = data.mapper
    obs = sorted(data.observations, key=lambda o: o.order)
    by_status: dict[str, int] = {}
    by_infcode: dict[str, int] = {}
    by_err: dict[str, int] = {}
    for o in obs:
        if o.outcome is None:
            by_status["none"] = by_status.get("none", 0) + 1
            continue
        by_status[o.outcome.status] = by_status.get(o.outcome.status, 0) + 1
        by_infcode[str(o.outcome.infcode)] = by_infcode.get(str(o.outcome.infcode), 0) + 1
        if o.outcome.err_code:
            by_err[o.outcome.err_code] = by_err.get(o.outcome.err_code, 0) + 1
    by_category: dict[str, list[Obs]] = {}
    by_region: dict[str, list[Obs]] = {}
    for o in obs:
        by_category.setdefault(o.category, []).append(o)
        by_region.setdefault(o.cmd.insuplc_admdvs, []).append(o)
    failures = [{k: m.unmap(v) for k, v in f.items()} for f in data.failures]
    fams = family_figures(data)
    rec = data.results.get("_reconciliation", {"facility_days": 0, "matched": 0})
    report: dict[str, Any] = {
        "scenario": sc.name,
        "description": sc.description,
        "seed": sc.seed,
        "scale": scale,
        "population": {"facilities": len(data.facilities), "people": len(data.people),
                       "families": len(data.families),
                       "accounts": sum(1 for p in data.people.values() if p.balance is not None),
                       "bindings": len(data.bindings)},
        "visits": sum(1 for o in obs if isinstance(o.cmd, SettleVisit)),
        "reversals": sum(1 for o in obs if isinstance(o.cmd, ReverseVisit)),
        "outcomes": {"by_status": dict(sorted(by_status.items())), "by_infcode": dict(sorted(by_infcode.items())),
                     "by_err_code": dict(sorted(by_err.items()))},
        "totals": _totals(obs),
        "sources": {k: _y(v) for k, v in sources(obs).items()},
        "by_category": {k: _totals(v) for k, v in sorted(by_category.items())},
        "by_region": {k: _totals(v) for k, v in sorted(by_region.items())},
        "families": {"count": len(data.families), "with_visits": len(fams),
                     "out_of_pocket": _y(sum(f["out_of_pocket"] for f in fams.values())),
                     "cash": _y(sum(f["cash"] for f in fams.values())),
                     "mutual_aid": _y(sum(f["mulaid"] for f in fams.values()))},
        "expectations": {"passed": data.passed, "failed": len({f["step"] for f in failures}),
                         "failures": failures},
        "invariants": {name: invariants[name] for name in invariant_names() if name in invariants},
        "reconciliation": rec,
        # the national flow: visits registered (2201/2401), how they ended, what the bureau still has open
        "national_visits": (data.figures or {}).get("visits"),
        "admin": dict(sorted(data.admin_counts.items())),
        "steps": [m.unmap(row) for row in data.steps],
    }
    if data.aborted:
        report["aborted"] = m.unmap_text(data.aborted)
    if data.faults is not None:
        report["faults"] = fault_section(data)
    from . import published
    return published.report(json.loads(json.dumps(report, default=str)))


def dead_letter_key(entry: dict[str, str], ns: str) -> str:
    """'<queue>: <reason>' without the details that vary from run to run (namespace, client keys, parser
    positions): e.g. 'pos.commands: not JSON', 'accounts.pay: delivery_limit'."""
    queue = entry.get("queue") or ""
    if ns and queue.startswith(ns + "."):
        queue = queue[len(ns) + 1:]
    reason = (entry.get("reason") or "unknown").split(":")[0].strip()
    if ns:
        reason = reason.replace(ns, "<ns>")
    reason = re.sub(r"'[^']*'", "'…'", reason)[:120]
    return f"{queue or 'outbox'}: {reason}"


def fault_section(data: "RunData") -> dict[str, Any]:
    """What was injected, what the workers counted (summed over every process, restarted ones included),
    what ended in the dead-letter queue and why, and the auditor's figures. Keys depend only on the scenario;
    the counts depend on timing."""
    f = data.faults or {}
    stats: dict[str, int] = f.get("stats", {})
    fig = data.figures
    injected = dict(f.get("injected", {}))
    if "duplicate" in injected:
        injected["duplicate"] = stats.get("chaos_duplicates", 0)
    if "delay" in injected:
        injected["delay"] = stats.get("chaos_delays", 0)
    dead: dict[str, int] = {}
    for entry in f.get("dead", []):
        key = dead_letter_key(entry, f.get("namespace", ""))
        dead[key] = dead.get(key, 0) + 1
    out: dict[str, Any] = {
        "injected": dict(sorted(injected.items())),
        "all_injected": all(v > 0 for v in injected.values()) and not f.get("errors") and not f.get("not_injected"),
        "redelivered": stats.get("redelivered", 0),
        "duplicates_absorbed": stats.get("duplicates_absorbed", 0),
        "dead_lettered": dict(sorted(dead.items())),
        "visits_without_outcome": fig.get("visits_without_outcome"),
        "double_debits": fig.get("double_debits"),
        "cap_overruns": fig.get("cap_overruns"),
        "negative_balances": fig.get("negative_balances"),
        "ledger_balanced": fig.get("ledger_balanced"),
        "reconciliation_matches": fig.get("reconciliation_matches"),
        "worker_restarts": f.get("worker_restarts", {}),
        "connections_closed": f.get("connections_closed", 0),
        "poison_sent": f.get("poison_sent", {}),
        "messages": {"handled": stats.get("handled", 0), "published": stats.get("published", 0),
                     "dead_lettered_by_workers": stats.get("dead_lettered", 0),
                     "chaos_duplicates": stats.get("chaos_duplicates", 0),
                     "chaos_delays": stats.get("chaos_delays", 0)},
        "runner_retries": f.get("runner_retries", 0),
        "not_injected": f.get("not_injected", []),
        "errors": f.get("errors", []),
    }
    if "timeout_race" in injected:
        race = {"compensated": 0, "refused": 0, "settled": 0, "without_outcome": 0}
        for o in data.observations:
            if o.race:
                status = o.outcome.status if o.outcome is not None else "without_outcome"
                race[status] = race.get(status, 0) + 1
        # of the compensated: undone by the bureau after it had taken the settlement in (the rest were
        # cancelled before they arrived, and refused when they did)
        race["undone_after_arrival"] = fig.get("bureau_compensated")  # None with --external
        out["timeout_race"] = race
    return out


def faults_ok(report: dict[str, Any]) -> bool:
    """A fault scenario passes only if its faults happened and its figures are the clean ones."""
    f = report.get("faults")
    if f is None:
        return True
    return bool(f["all_injected"] and f["visits_without_outcome"] == 0 and f["double_debits"] == 0
                and f["cap_overruns"] == 0 and f["negative_balances"] == 0 and f["ledger_balanced"]
                and f["reconciliation_matches"])


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path, data: "RunData", report: dict[str, Any], invariants: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(dumps(report), encoding="utf-8")
    (directory / "report.html").write_text(render_html(data, report), encoding="utf-8")


# ---- the HTML ---------------------------------------------------------------------------------------------
def chart_data(data: "RunData") -> dict[str, Any]:
    m = data.mapper
    obs = sorted(data.observations, key=lambda o: o.order)
    def parts(some: list["Obs"]) -> list[list[Any]]:  # ordered pairs: JSON objects get their keys sorted
        return [[k, v] for k, v in sources(some).items()]

    src_rows = [{"label": "all", "parts": parts(obs)}]
    for cat in ("pharmacy", "outpatient", "inpatient"):
        part = [o for o in obs if o.category == cat]
        if part:
            src_rows.append({"label": cat, "parts": parts(part)})
    for region in sorted({o.cmd.insuplc_admdvs for o in obs}):
        src_rows.append({"label": f"insured in {region}", "parts": parts([o for o in obs
                                                                           if o.cmd.insuplc_admdvs == region])})
    families = _family_series(data)
    times = [p[0] for f in families for p in f["points"]]
    return {"sources": src_rows, "families": families, "limits": _limits(data), "unit": "yuan",
            "title": data.loaded.scenario.name, "ticks": time_ticks(min(times), max(times)) if times else []}


def time_ticks(first: str, last: str, most: int = 8) -> list[list[str]]:
    """Ticks for the time axis, [time, label], each label different: whole days over a span of 2 days or
    more (every k-th day so that there are at most `most`), whole hours below that."""
    from datetime import timedelta
    t0, t1 = _t(first), _t(last)
    if t1 <= t0:
        return [[first, first[:16]]]
    if t1 - t0 >= timedelta(days=2):
        start = t0.replace(hour=0, minute=0, second=0) + (timedelta(days=1) if t0.time() != t0.min.time() else
                                                          timedelta(0))
        days = (t1 - start).days + 1
        step, fmt, unit = max(1, -(-days // most)), "%m-%d", timedelta(days=1)
    else:
        start = t0.replace(minute=0, second=0) + (timedelta(hours=1) if (t0.minute, t0.second) != (0, 0) else
                                                  timedelta(0))
        hours = int((t1 - start).total_seconds() // 3600) + 1
        step, fmt, unit = max(1, -(-hours // most)), "%m-%d %H:00", timedelta(hours=1)
    ticks: list[list[str]] = []
    at = start
    while at <= t1:
        label = at.strftime(fmt)
        if not ticks or ticks[-1][1] != label:
            ticks.append([at.strftime("%Y-%m-%d %H:%M:%S"), label])
        at += unit * step
    return ticks or [[first, first[:16]]]


def _family_series(data: "RunData") -> list[dict[str, Any]]:
    figures = family_figures(data)
    explicit = [f.name for f in data.loaded.scenario.families]
    ranked = sorted((n for n in data.families if n not in explicit and n in figures),
                    key=lambda n: (-figures[n]["medfee"], n))
    chosen = (explicit + ranked)[:FAMILY_SERIES]
    points = sorted(data.balance_points, key=lambda p: (p[0], p[1]))
    series = []
    for fam in chosen:
        members = set(data.families[fam])
        latest: dict[str, int] = {}
        pts: list[list[Any]] = []
        for when, _key, psn, fen in points:
            if psn not in members:
                continue
            latest[psn] = fen
            total = sum(latest.values())
            if pts and pts[-1][0] == when:
                pts[-1][1] = total
            else:
                pts.append([when, total])
        if pts:
            series.append({"name": fam, "members": sorted(members), "points": pts})
    return series


def _limits(data: "RunData") -> list[dict[str, Any]]:
    """How full each limit got: binding caps, yearly mutual-aid caps, channel daily limits, the pooled fund's
    annual cap, deductibles. Net of reversals. The fullest 25."""
    m = data.mapper
    live, _ = standing(data)
    caps: dict[str, tuple[str, int]] = {}
    auth_names = {}
    for name, b, auth_id in data.bindings:
        if auth_id is None:
            continue
        auth_names[auth_id] = f"{b.authorizer}→{b.member}"
        for period in ("day", "month", "year"):
            cap = getattr(b, f"{period}_cap")
            if cap is not None:
                caps[f"{auth_id}:{period}"] = (f"{b.authorizer}→{b.member} {period} cap", to_fen(cap))
    used: dict[tuple[str, str], int] = {}
    labels: dict[tuple[str, str], tuple[str, int]] = {}
    for o in live:
        s = o.setlinfo
        assert s is not None
        day = s["setl_time"][:10]
        windows = {"day": day, "month": day[:7], "year": day[:4]}
        person = data.people.get(m.unmap_text(o.cmd.psn_no))
        policy = data.policies.get(o.cmd.insuplc_admdvs)
        for part in s.get("mulaid_detail", []):
            auth_id = m.unmap_text(part["auth_id"])
            for period, window in windows.items():
                key = f"{auth_id}:{period}"
                if key in caps:
                    k = (key, window)
                    used[k] = used.get(k, 0) + _fen(part["amount"])
                    labels[k] = (f"{caps[key][0]} ({window})", caps[key][1])
            auth = data.people.get(m.unmap_text(part["authorizer_psn_no"]))
            apol = data.policies.get(auth.region) if auth else None
            if apol is not None and apol.accounts.mutual_aid_annual_cap is not None and auth is not None:
                yr = str(insurance_year(apol.year_start_month, _t(s["setl_time"])))
                k = (f"mulaid:{auth.psn_no}", yr)
                used[k] = used.get(k, 0) + _fen(part["amount"])
                labels[k] = (f"{auth.psn_no} yearly mutual-aid cap ({yr})", to_fen(apol.accounts.mutual_aid_annual_cap))
        if policy is None or person is None:
            continue
        if isinstance(o.cmd, SettleVisit) and o.cmd.setl_chnl in policy.accounts.channel_daily_limit:
            k = (f"chnl:{person.psn_no}:{o.cmd.setl_chnl}", day)
            used[k] = used.get(k, 0) + _fen(s["acct_pay"])
            labels[k] = (f"{person.psn_no} {o.cmd.setl_chnl} daily limit ({day})",
                         to_fen(policy.accounts.channel_daily_limit[o.cmd.setl_chnl]))  # type: ignore[index]
        yr = str(insurance_year(policy.year_start_month, _t(s["setl_time"])))
        k = (f"cap:{person.psn_no}", yr)
        used[k] = used.get(k, 0) + _fen(s["hifp_pay"])
        labels[k] = (f"{person.psn_no} pooled-fund annual cap ({yr})", to_fen(policy.annual_cap))
        if o.category == "outpatient" and policy.benefits.outpatient.pooled and person.psn_type in \
                policy.benefits.outpatient.deductible:
            k = (f"dedc:{person.psn_no}", yr)
            used[k] = used.get(k, 0) + _fen(s["act_pay_dedc"])
            labels[k] = (f"{person.psn_no} outpatient deductible ({yr})",
                         to_fen(policy.benefits.outpatient.deductible[person.psn_type]))  # type: ignore[index]
    rows = [{"label": labels[k][0], "used": used[k], "cap": labels[k][1]} for k in used
            if labels[k][1] > 0 and used[k] > 0]
    rows.sort(key=lambda r: (-r["used"] / r["cap"], r["label"]))
    # Caps and limits first; deductibles (which every visitor fills) only fill up what is left.
    caps_first = [r for r in rows if "deductible" not in r["label"]][:20]
    return caps_first + [r for r in rows if "deductible" in r["label"]][:25 - len(caps_first)]


def _t(text: str) -> Any:
    from datetime import datetime
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")


def why_rows(data: "RunData") -> tuple[list[dict[str, Any]], int]:
    m = data.mapper
    rows = []
    total = 0
    gen_shown = 0
    for o in sorted(data.observations, key=lambda o: o.order):
        s = o.setlinfo
        total += 1
        if o.generated:
            if gen_shown >= WHY_LIMIT:
                continue
            gen_shown += 1
        if s is None:  # refused, compensated, or no outcome: why it has no split
            rows.append(_unsettled_row(o, m))
            continue
        rows.append({"step": o.step, "kind": o.kind, "status": o.outcome.status if o.outcome else "",
                     "psn_no": m.unmap_text(s["psn_no"]), "facility": m.unmap_text(o.cmd.fixmedins_code),
                     "setl_id": m.unmap_text(s["setl_id"]), "setl_time": s["setl_time"],
                     **{k: s[k] for k in ("medfee_sumamt", "act_pay_dedc", "hifp_pay", "acct_pay", "acct_mulaid_pay",
                                          "psn_cash_pay", "balc")},
                     "mulaid": [f"{m.unmap_text(p['authorizer_psn_no'])} {p['amount']}" for p in s["mulaid_detail"]],
                     "notes": [m.unmap_text(n) for n in s["notes"]]})
    return rows, total


def _unsettled_row(o: "Obs", m: Any) -> dict[str, Any]:
    from contracts.base import format_biz_time
    status = o.outcome.status if o.outcome is not None else "no outcome"
    why = []
    if o.outcome is not None and o.outcome.err_code:
        msg = o.outcome.err_msg if o.outcome.status != "settled" else ""
        why.append(f"{o.outcome.err_code}: {m.unmap_text(msg or '')}".rstrip(": "))
    if o.note:
        why.append(o.note)
    return {"step": o.step, "kind": o.kind, "status": status, "psn_no": m.unmap_text(o.cmd.psn_no),
            "facility": m.unmap_text(o.cmd.fixmedins_code), "setl_id": "",
            "setl_time": format_biz_time(o.cmd.biz_time),
            **{k: "" for k in ("medfee_sumamt", "act_pay_dedc", "hifp_pay", "acct_pay", "acct_mulaid_pay",
                               "psn_cash_pay", "balc")},
            "mulaid": [], "notes": why or [status]}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None, attrs: str = "") -> str:
    numeric = numeric or set()
    head = "".join(f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _faults_html(report: dict[str, Any]) -> str:
    f = report.get("faults")
    if f is None:
        return ""
    rows = [[_e(f"injected: {k}"), v] for k, v in f["injected"].items()]
    rows += [[_e(k.replace("_", " ")), _e(f[k])] for k in (
        "redelivered", "duplicates_absorbed", "visits_without_outcome", "double_debits", "cap_overruns",
        "negative_balances", "ledger_balanced", "reconciliation_matches", "runner_retries")]
    rows += [[_e(f"restarted: {k}"), v] for k, v in f["worker_restarts"].items()]
    rows += [[_e(f"dead-lettered: {k}"), v] for k, v in f["dead_lettered"].items()]
    rows += [[_e(f"timeout race: {k}"), v] for k, v in f.get("timeout_race", {}).items()]
    rows += [['<span class="bad">not injected</span>', _e(t)] for t in f["not_injected"]]
    rows += [['<span class="bad">error</span>', _e(t)] for t in f["errors"]]
    verdict = '<span class="ok">clean</span>' if faults_ok(report) else '<span class="bad">NOT clean</span>'
    return f"<section><h2>Faults injected: {verdict}</h2>{_table(['', 'count'], rows)}</section>"


def _expectations_heading(exp: dict[str, Any]) -> str:
    if exp["passed"] + exp["failed"] == 0:
        return "Expectations: none in this scenario"
    return f"Expectations: {exp['passed']} passed, {exp['failed']} failed"


def _expectations_note(exp: dict[str, Any]) -> str:
    if exp["passed"] + exp["failed"] == 0:
        return ('<p class="muted" id="no-expectations">This scenario states no expectations (a generated one): '
                'the invariants below are what checks the run.</p>')
    return '<p class="ok">every expectation held</p>'


def render_html(data: "RunData", report: dict[str, Any]) -> str:
    charts = chart_data(data)
    why, total_why = why_rows(data)
    exp = report["expectations"]
    ok_all = exp["failed"] == 0 and all(v == "ok" for v in report["invariants"].values()) and faults_ok(report)
    verdict = '<span class="ok">PASSED</span>' if ok_all else '<span class="bad">FAILED</span>'
    t = report["totals"]
    from .published import yuan
    kpis = "".join(f'<div class="kpi"><span class="muted">{_e(label)}</span><b>{_e(v)}</b></div>' for label, v in (
        ("visits", report["visits"]), ("reversals", report["reversals"]), ("bill 医疗费", yuan(t["medfee_sumamt"])),
        ("pooled fund 统筹", yuan(t["hifp_pay"])), ("accounts 个人账户", yuan(t["acct_pay"])),
        ("of which family 共济", yuan(t["acct_mulaid_pay"])), ("cash 现金", yuan(t["psn_cash_pay"]))))
    inv_rows = [[_e(k), '<span class="ok">ok</span>' if v == "ok" else f'<span class="bad">{_e(v)}</span>']
                for k, v in report["invariants"].items()]
    fail_rows = [[_e(f["step"]), _e(f["field"]), _e(json.dumps(f["expected"], ensure_ascii=False)),
                  _e(json.dumps(f["actual"], ensure_ascii=False)), _e(f["where"])] for f in exp["failures"]]
    outcome_rows = [[_e(k), v] for k, v in report["outcomes"]["by_status"].items()]
    outcome_rows += [[_e(f"error {k}"), v] for k, v in report["outcomes"]["by_err_code"].items()]
    why_html = []
    for r in why:
        notes = "".join(f"<li>{_e(n)}</li>" for n in r["notes"])
        mulaid = ("<br><span class='muted'>family: " + _e(", ".join(r["mulaid"])) + "</span>") if r["mulaid"] else ""
        why_html.append([f"{_e(r['step'])}<br><span class='muted'>{_e(r['setl_time'])}</span>",
                         f"{_e(r['psn_no'])}<br><span class='muted'>{_e(r['kind'])} at {_e(r['facility'])}</span>",
                         _e(r["status"]), _e(r["medfee_sumamt"]), _e(r["act_pay_dedc"]), _e(r["hifp_pay"]),
                         _e(r["acct_pay"]) + mulaid, _e(r["psn_cash_pay"]),
                         f"<details><summary>{len(r['notes'])} lines</summary><ul class='notes'>{notes}</ul></details>"])
    shown = f"{len(why)} of {total_why}" if len(why) < total_why else f"all {total_why}"
    rest = ('<p class="muted">Every visit, with its why lines, is in <code>settlements.csv</code> and '
            '<code>settlements.ndjson</code> next to this report.</p>')
    payload = json.dumps(charts, ensure_ascii=False, sort_keys=True).replace("</", "<\\/")
    sc = data.loaded.scenario
    return f"""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>gongji report — {_e(sc.name)}</title><style>{CSS}</style></head>
<body data-report-ready="no">
<header><h1>gongji scenario report: {_e(sc.name)} — {verdict}</h1>
<p>{_e(sc.description)}</p><p class="muted">seed {_e(report['seed'])}, scale {_e(report['scale'])},
{report['population']['people']} people in {report['population']['families']} families,
{report['population']['facilities']} facilities</p></header>
<main>
<section><h2>Summary</h2>{kpis}
{_table(["outcome", "count"], outcome_rows, {1})}</section>
<section><h2>{_expectations_heading(exp)}</h2>
{_table(["step", "field", "expected", "actual", "where"], fail_rows) if fail_rows else _expectations_note(exp)}</section>
<section><h2>Invariants</h2>{_table(["invariant", "result"], inv_rows)}</section>
{_faults_html(report)}
<section><h2>Where each yuan came from</h2><div id="chart-sources" class="chart"></div></section>
<section><h2>Family balances over time (personal accounts, 当年+历年)</h2><div id="chart-families" class="chart"></div></section>
<section><h2>Limit usage (the fullest first)</h2><div id="chart-limits" class="chart"></div></section>
<section><h2>Why: each visit explained ({shown})</h2>{rest}
<input id="filter" placeholder="filter (person, step, rule…)" aria-label="filter">
{_table(["step", "patient", "status", "bill", "deductible", "pooled", "accounts", "cash", "why"], why_html,
        {3, 4, 5, 6, 7}, 'id="why"')}</section>
</main>
<script type="application/json" id="report-data">{payload}</script>
<script>{JS}</script>
</body></html>
"""
