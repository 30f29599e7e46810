"""The bench's figures as text."""
from __future__ import annotations

from typing import Any


def render(r: dict[str, Any]) -> str:
    lines = [
        "",
        f"gongji bench  {'via the HTTP gateway  ' if r.get('via') == 'gateway' else ''}{r['mode']} loop  " + (f"concurrency {r['concurrency']}" if r["mode"] == "closed"
                                              else f"rate {r['rate']}/s") +
        f"  accounts {r['accounts']}  measured {r['duration_s']:g} s (+{r['warmup_s']:g} s warm-up)",
        f"  settlements/s        {r['settlements_per_s']:>10}   ({r['settlements']} settled in the window)",
        f"  latency ms           p50 {r['p50_ms']}  p95 {r['p95_ms']}  p99 {r['p99_ms']}  max {r['max_ms']}",
        f"  raw round trips/s    {r['raw_round_trips_per_s']:>10}   (echo, concurrency {r['raw_concurrency']}, "
        f"p50 {r['raw_p50_ms']} ms)",
        f"  ratio = settlements_per_s / (raw_round_trips_per_s / national_round_trips_per_settlement "
        f"{r['national_round_trips_per_settlement']}) = {r['ratio']}"
        + ("" if r.get("presettle", True) else "   (settle only: --no-presettle)"),
        *([f"  raw again after       {r['raw_after_round_trips_per_s']:>9}   (drift {r.get('raw_drift', '-')}; ratio "
           f"against the mean of both ceilings {r.get('ratio_bracketed', '-')})"]
          if "raw_after_round_trips_per_s" in r else []),
        f"  publishes/settlement {r.get('publishes_per_settlement', '-'):>10}   "
        f"{(r.get('publishes') or {}).get('by_process', '')}",
        f"  CPU ms/settlement    {r.get('cpu_ms_per_settlement_total', '-'):>10}   (all processes, broker included; "
        f"{r.get('cpu_per_settlement_over_raw_round_trip', '-')}× the CPU of one raw round trip)",
        f"  outcomes             {r['statuses']}  mutual aid {r['mutual_aid_settlements']}  "
        f"unfinished {r['unfinished_visits']}",
        f"  load                 {r['load']['load_s']} s for {r['accounts']} accounts, {r['load']['persons']} persons, "
        f"{r['load']['bindings']} bindings",
        "  process          CPU s   of one core   CPU ms/settlement   peak RSS MB   RSS slope KB/min",
    ]
    for k, v in r["cpu"].items():
        m = r["memory"].get(k, {})
        peak = m.get("peak_rss_kb")
        slope = m.get("rss_slope_kb_per_min")
        lines.append(f"  {k:<14}{v['cpu_s']:>8}   {v['cpu_share_of_one_core']:>11.0%}   "
                     f"{r['cpu_s_per_settlement_ms'][k]:>17}   {peak / 1024 if peak else float('nan'):>11.1f}   "
                     f"{slope if slope is not None else '-':>16}   user {v.get('user_s', '-')} sys "
                     f"{v.get('sys_s', '-')} ctxsw/settlement {v.get('vol_cs_per_settlement', '-')}")
    lines.append(f"  machine CPU          {r['system_cpu']}")
    if "machine_busy_cores" in r:
        lines.append(f"  busy cores           {r['machine_busy_cores']} of {r['machine']['nproc']}, of which not the bench's "
                     f"processes {r['unaccounted_busy_cores']} (kernel I/O threads, or others on a shared machine)")
    for o in r.get("other_busy_processes") or []:
        lines.append(f"    not ours: {o['cpu_s']:>6} CPU s  pid {o['pid']}  {o['cmd'][:90]}")
    a = r.get("audit", {})
    if a:
        lines.append(f"  audit                ledger_sum_fen {a['accounts']['ledger_sum_fen']}  balance_mismatches "
                     f"{len(a['accounts']['balance_mismatches'] or [])}  accumulator_mismatches "
                     f"{len(a['bureau']['accumulator_mismatches'] or [])}")
    for name, p in (r.get("profile") or {}).items():
        lines.append(f"  profile {name} ({p.get('samples')} samples, {p.get('file')}); by area: "
                     + ", ".join(f"{area} {pct}%" for area, pct in (p.get("by_area") or [])))
        lines.append("    top self:")
        for f, pct in (p.get("self") or [])[:8]:
            lines.append(f"      {pct:>5}%  {f}")
    return "\n".join(lines) + "\n"
