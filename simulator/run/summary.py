"""The human summary `gongji run` prints."""
from __future__ import annotations

import json

from ..published import yuan
from ..report import faults_ok
from ..terminal import table
from .orchestration import RunResult


def summary(result: RunResult) -> str:
    rep, lines = result.report, []
    ok_mark = "PASSED" if result.ok else "FAILED"
    lines.append(f"scenario {rep['scenario']} (seed {rep['seed']}, scale {rep['scale']}): {ok_mark}")
    pop = rep["population"]
    lines.append(f"  population: {pop['people']} people, {pop['families']} families, {pop['accounts']} accounts, "
                 f"{pop['bindings']} bindings, {pop['facilities']} facilities")
    steps = rep["steps"]
    if steps:
        lines.append("")
        rows = []
        for row in steps[:80]:
            result_txt = row.get("status") or ("infcode " + str(row.get("infcode")) if "infcode" in row else "-")
            check = ("ok" if row["passed"] else "FAIL") if row["expected"] or not row["passed"] else "-"
            rows.append((row["step"][:40], row["at"], row["event"], str(result_txt)[:14], yuan(row.get("acct_pay")),
                         yuan(row.get("acct_mulaid_pay")), yuan(row.get("psn_cash_pay")), check))
        lines.append(table(("step", "at", "event", "result", "acct_pay", "mulaid", "cash", "check"), rows,
                           right={4, 5, 6}))
        if len(steps) > 80:
            lines.append(f"  ... and {len(steps) - 80} more steps (see report.json)")
    lines.append("")
    oc = rep["outcomes"]
    lines.append(f"  visits {rep['visits']}, reversals {rep['reversals']}; outcomes: "
                 + ", ".join(f"{k} {v}" for k, v in oc["by_status"].items())
                 + ("; errors: " + ", ".join(f"{k} {v}" for k, v in oc["by_err_code"].items()) if oc["by_err_code"]
                    else ""))
    t = rep["totals"]
    lines.append(f"  totals: bill {yuan(t['medfee_sumamt'])}, pooled fund {yuan(t['hifp_pay'])}, accounts "
                 f"{yuan(t['acct_pay'])} (family {yuan(t['acct_mulaid_pay'])}), cash {yuan(t['psn_cash_pay'])}")
    exp = rep["expectations"]
    if exp["passed"] + exp["failed"] == 0:
        lines.append("  expectations: none in this scenario (the invariants below check the run)")
    else:
        lines.append(f"  expectations: {exp['passed']} passed, {exp['failed']} failed")
    for f in exp["failures"]:
        lines.append(f"    FAIL step {f['step']} ({f['where']}): {f['field']}: expected "
                     f"{json.dumps(f['expected'], ensure_ascii=False)}, got {json.dumps(f['actual'], ensure_ascii=False)}")
    lines.append("  invariants:")
    for k, v in rep["invariants"].items():
        lines.append(f"    {'ok  ' if v == 'ok' else 'FAIL'} {k}" + ("" if v == "ok" else f": {v}"))
    f = rep.get("faults")
    if f is not None:
        lines.append(f"  faults: {'clean' if faults_ok(rep) else 'NOT CLEAN'}; injected "
                     + ", ".join(f"{k} {v}" for k, v in f["injected"].items())
                     + (f"; restarted " + ", ".join(f"{k} {v}" for k, v in f["worker_restarts"].items())
                        if f["worker_restarts"] else ""))
        lines.append(f"    redelivered {f['redelivered']}, duplicates absorbed {f['duplicates_absorbed']}, "
                     f"runner retries {f['runner_retries']}; dead-lettered "
                     + (", ".join(f"{k} {v}" for k, v in f["dead_lettered"].items()) or "none"))
        lines.append(f"    visits without outcome {f['visits_without_outcome']}, double debits {f['double_debits']}, "
                     f"cap overruns {f['cap_overruns']}, negative balances {f['negative_balances']}, ledger balanced "
                     f"{f['ledger_balanced']}, reconciliation matches {f['reconciliation_matches']}")
        if "timeout_race" in f:
            lines.append("    timeout race: " + ", ".join(f"{k} {v}" for k, v in f["timeout_race"].items()))
        for text in f["not_injected"]:
            lines.append(f"    NOT INJECTED {text}")
        for text in f["errors"]:
            lines.append(f"    ERROR {text}")
    w = result.wall
    if "latency_p50" in w:
        lines.append(f"  latency per visit (command → outcome): p50 {w['latency_p50'] * 1000:.0f} ms, "
                     f"p95 {w['latency_p95'] * 1000:.0f} ms, p99 {w['latency_p99'] * 1000:.0f} ms, "
                     f"max {w['latency_max'] * 1000:.0f} ms")
    lines.append(f"  wall clock: total {w.get('total', 0):.1f} s (workers {w.get('start', 0):.1f}, "
                 f"load {w.get('load', 0):.1f}, generated traffic {w.get('traffic', 0):.1f}, "
                 f"timeline {w.get('timeline', 0):.1f}, audit {w.get('audit', 0):.1f})")
    if result.report_dir is not None:
        lines.append(f"  report: {result.report_dir}/report.json, {result.report_dir}/report.html")
    return "\n".join(lines)
