"""`gongji observe`: watch a running gongji (e.g. a HIS or POS under test talking through `gongji gateway`) and
write what it saw: report.json, report.html and settlements.csv, with the auditor's invariants and the
conformance findings of each client.

It listens on the events exchange (outcome.# — the POS's and the gateway's VisitOutcome events — and
conformance.# — the gateway's findings) from the moment it starts until Ctrl-C / SIGTERM, or --until
N outcomes, or --until Ns seconds. At the end it asks the services for their own audits (accounts and bureau
G199), as `gongji run` does after a scenario. The invariants that need a scenario (expected balances,
5206 per person) are not checked here: observe does not know what the client meant to do.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from contracts.conformance import ConformanceFinding
from contracts.money import from_fen
from contracts.pos import VisitOutcome
from services.shared import batching
from services.shared.entry import DEFAULT_AMQP_URL

from .audit import _fen, _verdict, ledger_problems, setlinfo_problems
from .export import SettlementExport

SETTLEMENT_COLUMNS = ["visit_id", "status", "fixmedins_code", "psn_no", "msgid", "setl_id", "orig_setl_id",
                      "setl_time", "medfee_sumamt", "fund_pay_sumamt", "hifp_pay", "psn_part_amt", "acct_pay",
                      "acct_mulaid_pay", "psn_cash_pay", "balc"]
MONEY = ("medfee_sumamt", "fund_pay_sumamt", "hifp_pay", "psn_part_amt", "acct_pay", "acct_mulaid_pay",
         "psn_cash_pay")


@dataclass
class Observed:
    outcomes: dict[str, list[VisitOutcome]] = field(default_factory=dict)  # visit_id → distinct outcomes, in order
    findings: list[ConformanceFinding] = field(default_factory=list)
    seen_findings: set[tuple[str, str, str]] = field(default_factory=set)

    def add_outcome(self, o: VisitOutcome) -> bool:
        """False for an exact repeat (a republished event)."""
        seen = self.outcomes.setdefault(o.visit_id, [])
        if any(x == o for x in seen):
            return False
        seen.append(o)
        return True

    def add_finding(self, f: ConformanceFinding) -> None:
        key = (f.kind, f.msgid, f.detail)
        if key not in self.seen_findings:
            self.seen_findings.add(key)
            self.findings.append(f)

    def final(self) -> list[VisitOutcome]:
        return [seen[-1] for seen in self.outcomes.values()]


# ---- invariants (pure) -----------------------------------------------------------------------------------
def invariants(obs: Observed, accounts: dict[str, Any] | None, bureaus: dict[str, dict[str, Any] | None]
               ) -> dict[str, str]:
    inv: dict[str, str] = {}
    problems = []
    for visit, seen in obs.outcomes.items():
        # settled (or refused) then compensated by a later 2601 is one history; two different answers are not
        answers = [o for o in seen if o.status != "compensated"]
        if len({(o.status, o.setlinfo.setl_id if o.setlinfo else None) for o in answers}) > 1:
            problems.append(f"{visit}: {', '.join(o.status for o in seen)}")
    inv["one_final_outcome_per_visit"] = _verdict(problems)

    problems = []
    for o in obs.final():
        if o.setlinfo is None:
            continue
        s = o.setlinfo.model_dump(mode="json")
        why = setlinfo_problems(s, reversed_=o.status == "reversed")
        if why:
            problems.append(f"{o.visit_id} ({s['setl_id']}): {', '.join(why)}")
    inv["settlement_identities"] = _verdict(problems)

    problems = []
    for o in obs.final():
        if o.setlinfo is None:
            continue
        if o.setlinfo.balc < 0:
            problems.append(f"{o.visit_id}: balc {o.setlinfo.balc}")
        for p in o.setlinfo.mulaid_detail:
            if p.balc < 0:
                problems.append(f"{o.visit_id}: authorizer {p.authorizer_psn_no} balc {p.balc}")
    if accounts is None:
        problems.append("no accounts audit (G199 refused or unanswered)")
    else:
        if accounts.get("negative_balances"):
            problems.append(f"{accounts['negative_balances']} negative balances in the accounts service")
        for over in accounts.get("cap_overruns", []):
            problems.append(f"usage {over.get('key')}: {from_fen(over['used_fen'])} > cap {from_fen(over['cap_fen'])}")
    inv["no_negative_balance_or_cap_overrun"] = _verdict(problems)

    problems = []
    settled = {o.setlinfo.setl_id: o for o in obs.final() if o.status == "settled" and o.setlinfo is not None}
    undone: Counter[str] = Counter()
    for o in obs.final():
        if o.status != "reversed" or o.setlinfo is None:
            continue
        orig = o.setlinfo.orig_setl_id
        if orig is None:
            problems.append(f"{o.visit_id}: a reversal that names no orig_setl_id")
            continue
        undone[orig] += 1
        base = settled.get(orig)
        if base is not None and base.setlinfo is not None:
            a, b = base.setlinfo.model_dump(mode="json"), o.setlinfo.model_dump(mode="json")
            if any(_fen(a[k]) != -_fen(b[k]) for k in MONEY):
                problems.append(f"{o.visit_id}: reversal of {orig} does not negate it")
    problems += [f"{setl_id} reversed {n} times" for setl_id, n in undone.items() if n > 1]
    inv["reversals_undo_settlements"] = _verdict(problems)

    inv["ledger_balanced"] = _verdict(ledger_problems(accounts))

    problems = []
    for region, bur in sorted(bureaus.items()):
        if bur is None:
            problems.append(f"bureau {region}: no audit (G199 refused or unanswered)")
            continue
        for mm in bur.get("accumulator_mismatches", []):
            problems.append(f"bureau {region}: {mm.get('psn_no')} {mm.get('year')} accumulators != settlements")
    inv["accumulators_match_settlements"] = _verdict(problems)
    return inv


# ---- report ------------------------------------------------------------------------------------------------
def build_report(obs: Observed, inv: dict[str, str]) -> dict[str, Any]:
    final = obs.final()
    by_client: dict[str, Counter[str]] = {}
    for f in obs.findings:
        by_client.setdefault(f.fixmedins_code, Counter())[f.kind] += 1
    totals = {k: 0 for k in MONEY}
    for o in final:
        if o.setlinfo is not None and o.status in ("settled", "reversed"):
            s = o.setlinfo.model_dump(mode="json")
            for k in MONEY:
                totals[k] += _fen(s[k])
    return {
        "ok": all(v == "ok" for v in inv.values()),
        "invariants": inv,
        "outcomes": dict(sorted(Counter(o.status for o in final).items())),
        "visits": len(final),
        "totals": {k: f"{from_fen(v)}" for k, v in totals.items()},
        "conformance": {
            "findings": len(obs.findings),
            "by_client": {c: dict(sorted(k.items())) for c, k in sorted(by_client.items())},
            "list": [f.model_dump(mode="json") for f in obs.findings],
        },
    }


def settlement_rows(obs: Observed) -> list[dict[str, str]]:
    rows = []
    for o in obs.final():
        s = o.setlinfo.model_dump(mode="json") if o.setlinfo is not None else {}
        rows.append({"visit_id": o.visit_id, "status": o.status, "fixmedins_code": o.fixmedins_code,
                     "psn_no": o.psn_no, "msgid": o.msgid, **{k: str(s.get(k) or "") for k in SETTLEMENT_COLUMNS
                                                              if k not in ("visit_id", "status", "fixmedins_code",
                                                                           "psn_no", "msgid")}})
    return rows



def _e(value: Any) -> str:
    import html
    return html.escape(str(value))


def render_html(rep: dict[str, Any], rows: list[dict[str, str]]) -> str:
    def table(headers: list[str], body: list[list[Any]]) -> str:
        head = "".join(f"<th>{_e(h)}</th>" for h in headers)
        trs = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in body)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>"
    inv = table(["invariant", "verdict"], [[k, v] for k, v in rep["invariants"].items()])
    conf = rep["conformance"]
    by_client = table(["client (fixmedins_code)", "finding", "count"],
                      [[c, k, n] for c, kinds in conf["by_client"].items() for k, n in kinds.items()])
    findings = table(["client", "kind", "infno", "msgid", "detail", "at"],
                     [[f["fixmedins_code"], f["kind"], f["infno"], f["msgid"], f["detail"], f["at"]]
                      for f in conf["list"]])
    setl = table(SETTLEMENT_COLUMNS, [[r.get(c, "") for c in SETTLEMENT_COLUMNS] for r in rows])
    verdict = "PASS" if rep["ok"] else "FAIL"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>gongji observe: {verdict}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}</style></head><body>"
            f"<h1>gongji observe: {verdict}</h1><p>{rep['visits']} visits, outcomes {_e(rep['outcomes'])}; "
            f"totals {_e(rep['totals'])}</p><h2>Invariants</h2>{inv}"
            f"<h2>Conformance findings ({conf['findings']})</h2>{by_client}{findings}"
            f"<h2>Settlements</h2>{setl}</body></html>")


def write(directory: Path, obs: Observed, rep: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rows = settlement_rows(obs)
    (directory / "report.json").write_text(json.dumps(rep, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    (directory / "report.html").write_text(render_html(rep, rows), encoding="utf-8")
    with SettlementExport(directory) as export:  # the same settlements.csv / .ndjson as `gongji run` writes
        for o in obs.final():
            export.write(o)


# ---- the command -----------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report-dir", required=True, help="where report.json, report.html and settlements.csv go")
    p.add_argument("--until", default=None,
                   help="stop after N outcomes (e.g. 20) or after a time (e.g. 30s); default: Ctrl-C / SIGTERM")
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", DEFAULT_AMQP_URL),
                   help="RabbitMQ URL (env AMQP_URL; default %(default)s)")
    p.add_argument("--namespace", default=os.environ.get("GONGJI_NAMESPACE", "gongji"),
                   help="the workers' namespace (env GONGJI_NAMESPACE)")
    p.add_argument("--region", action="append", default=None,
                   help="regions whose bureau audit (G199) to include (repeatable; default: the regions of the "
                        "observed settlements, else 330100)")


def parse_until(text: str | None) -> tuple[int | None, float | None]:
    if not text:
        return None, None
    if text.endswith("s"):
        return None, float(text[:-1])
    return int(text), None


async def observe(args: argparse.Namespace) -> int:
    from contracts.envelope import Reply

    from .client import Client
    until_n, until_s = parse_until(args.until)
    obs = Observed()
    client = Client(args.amqp_url, args.namespace, name="observe", timeout=30)
    stop = asyncio.Event()
    n_outcomes = 0
    regions: set[str] = set(args.region or [])

    async def on_event(message: AbstractIncomingMessage) -> None:
        nonlocal n_outcomes
        await message.ack()
        key = message.routing_key or ""
        try:
            for body in batching.bodies(message.headers, message.body):  # the POS batches its outcomes
                if key.startswith("outcome."):
                    o = VisitOutcome.model_validate_json(body)
                    if obs.add_outcome(o):
                        n_outcomes += 1
                        if o.setlinfo is not None and not args.region:
                            regions.add(o.setlinfo.insuplc_admdvs)
                        if until_n is not None and n_outcomes >= until_n:
                            stop.set()
                elif key.startswith("conformance."):
                    obs.add_finding(ConformanceFinding.model_validate_json(body))
        except Exception as exc:
            print(f"observe: an event that is not gongji's ({key}): {exc}", flush=True)

    await client.broker.connect()
    await client.broker.declare_topology()
    n = client.names
    reply_q, events_q = n.reply_queue(client.key), f"{n.ns}.observe.{uuid.uuid4().hex[:10]}"
    await client.broker.declare_client_queue(reply_q, [(n.reply_exchange, client.key)])
    await client.broker.declare_client_queue(events_q, [(n.events_exchange, "outcome.#"),
                                                        (n.events_exchange, "conformance.#")])
    await client.broker.consume(reply_q, client._on_reply, prefetch=256)
    await client.broker.consume(events_q, on_event, prefetch=512)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"gongji observe ready (namespace {args.namespace}); Ctrl-C to write the report", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), until_s)
    except asyncio.TimeoutError:
        pass
    await asyncio.sleep(0.5)  # events already on their way
    try:
        async def g199(service: str, region: str) -> dict[str, Any] | None:
            env = client.envelope("G199", {}, insuplc_admdvs=region)
            try:
                rep: Reply = await (client.accounts_admin(env) if service == "accounts" else client.bureau(env))
            except Exception:
                return None
            return rep.output if rep.infcode == 0 else None
        regions = regions or {"330100"}
        accounts = await g199("accounts", sorted(regions)[0])
        bureaus = {r: await g199("bureau", r) for r in sorted(regions)}
    finally:
        await client.close()
    rep = build_report(obs, invariants(obs, accounts, bureaus))
    write(Path(args.report_dir), obs, rep)
    print(f"{rep['visits']} visits {rep['outcomes']}, {rep['conformance']['findings']} conformance findings; "
          f"invariants {'ok' if rep['ok'] else 'FAILED'}; report: {args.report_dir}/report.json", flush=True)
    return 0 if rep["ok"] else 1


def main(args: argparse.Namespace) -> int:
    return asyncio.run(observe(args))
