"""The `gongji` command."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import AbstractContextManager
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from contracts.money import line_total
from services.shared.entry import DEFAULT_AMQP_URL, WorkerConfig

WORKERS = ("bureau", "accounts", "pos")
# What `docker compose up` and `gongji up` run once the workers are up (the same command line in both).
MAIN_JOB = ("run", "scenarios/child_paid_by_mother.yaml", "--external", "--report-dir", "reports")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", DEFAULT_AMQP_URL),
                   help="RabbitMQ URL (env AMQP_URL; default %(default)s)")
    p.add_argument("--namespace", default=os.environ.get("GONGJI_NAMESPACE", "gongji"),
                   help="prefix of every exchange and queue (env GONGJI_NAMESPACE)")


def _database(p: argparse.ArgumentParser, throwaway: bool = False) -> None:
    where = ("a throwaway database on this server (created, dropped at the end), like the fresh SQLite data "
             "directory of a run" if throwaway else "one schema per service")
    p.add_argument("--database-url", default=os.environ.get("GONGJI_DATABASE_URL") or None,
                   help="PostgreSQL instead of SQLite files, e.g. postgresql://postgres@127.0.0.1:5432/gongji "
                        f"(env GONGJI_DATABASE_URL): {where}")


def _throwaway_database(args: argparse.Namespace) -> AbstractContextManager[str | None]:
    """run / bench with --database-url: the workers they start get a database of their own on that server."""
    from simulator.databases import throwaway
    url = None if getattr(args, "external", False) else getattr(args, "database_url", None)
    return throwaway(url, prefix=f"gongji_{args.command}_", keep=getattr(args, "keep_data", False))


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _v
    try:
        return _v("gongji")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    from simulator.errors import EXIT_CODES_HELP
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="gongji", description="Medical-insurance settlement simulator with "
                                                                "family mutual aid (医保家庭共济).",
                                     epilog=EXIT_CODES_HELP, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"gongji {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run one worker process")
    w.add_argument("service", choices=WORKERS)
    _common(w)
    w.add_argument("--data-dir", default=os.environ.get("GONGJI_DATA_DIR", "data"), help="where SQLite files live")
    w.add_argument("--regions", default=os.environ.get("GONGJI_REGIONS", ""),
                   help="bureau only: comma-separated admdvs to serve (default: every policy file)")
    w.add_argument("--prefetch", type=int, default=64)
    _database(w)
    w.add_argument("--bureau-url", default=None,
                   help="pos only: send national transactions over HTTP to this gateway URL (…/callService) "
                        "instead of RabbitMQ, signed per facility from GONGJI_PAAS_SECRET (env GONGJI_POS_BUREAU_URL)")

    d = sub.add_parser("demo", help="load the demo population and settle a few visits")
    _common(d)
    d.add_argument("--json", action="store_true", help="print outcomes as JSON")

    u = sub.add_parser("up", help="start the three workers as processes and run the main scenario against them "
                                  "(the no-Docker `docker compose up`)")
    _common(u)
    u.add_argument("--data-dir", default=os.environ.get("GONGJI_DATA_DIR", "data"))
    u.add_argument("--once", action="store_true", help="stop the workers after the scenario")
    _database(u)

    s = sub.add_parser("settle", help="settle one visit through the POS and print the split")
    _common(s)
    s.add_argument("--psn", required=True, help="psn_no of the patient")
    s.add_argument("--facility", required=True, help="fixmedins_code (12 chars)")
    s.add_argument("--insuplc", required=True, help="insured region 参保地 (admdvs)")
    s.add_argument("--mdtrtarea", help="region of treatment 就医地 (default: the insured region)")
    s.add_argument("--med-type", default="41", choices=["11", "13", "14", "21", "41"])
    s.add_argument("--insutype", default="310", choices=["310", "390"])
    s.add_argument("--item", action="append", required=True, metavar="CODE:PRICE[:CNT[:LV[:PROP]]]",
                   help="a bill line, e.g. XB02:36.50:2:02:0.05 (LV 01 甲 / 02 乙 / 03 丙)")
    s.add_argument("--time", default=None, help="business time 'yyyy-MM-dd HH:mm:ss' (Asia/Shanghai; default now)")
    s.add_argument("--channel", default="offline", choices=["offline", "online"])
    s.add_argument("--no-account", action="store_true", help="acct_used_flag 0: do not use personal accounts")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds before the POS sends 2601 冲正")
    s.add_argument("--json", action="store_true", help="print the outcome as JSON")

    ld = sub.add_parser("load-demo", help="load only the demo population (idempotent)")
    _common(ld)

    bd = sub.add_parser("broker-definitions", help="print the RabbitMQ definitions (topology, one user per "
                                                   "service) that docker-compose loads")
    bd.add_argument("--namespace", default="gongji")

    from simulator import redrive
    rd = sub.add_parser("redrive", help="put dead-lettered work back where it came from, after a fix")
    _common(rd)
    redrive.add_arguments(rd)

    from simulator.bench import measure as bench
    bench.add_arguments(b := sub.add_parser("bench", help="start the workers, load M accounts, measure settlements/s, "
                                                          "latency, CPU and memory against the raw broker ceiling"))
    _database(b, throwaway=True)

    from services.gateway import main as gateway
    gateway.add_arguments(sub.add_parser("gateway", help="serve the national interface over HTTP "
                                                         "(/fsi/api/rsfComIfsService/callService) in front of the bureau"))
    cr = sub.add_parser("credentials", help="print a facility's x-tif paasid and paasToken (from GONGJI_PAAS_SECRET)")
    cr.add_argument("fixmedins_code", help="the facility code (= paasid), or gongji-admin for the G-codes")
    cr.add_argument("--json", action="store_true")
    from simulator import observe
    observe.add_arguments(sub.add_parser("observe", help="watch outcome and conformance events (e.g. of gateway "
                                                         "traffic) and write report.json, report.html and a CSV"))

    from simulator import compare
    from simulator.run import command as run_command
    run_command.add_arguments(r := sub.add_parser("run", help="run a scenario file: start the workers, drive the "
                                                              "timeline, audit the invariants, write report.json "
                                                              "and report.html",
                                                  epilog=EXIT_CODES_HELP, formatter_class=raw))
    _database(r, throwaway=True)
    compare.add_arguments(sub.add_parser("compare", help="policy what-if: run one scenario under two policy sets "
                                                         "and compare family out-of-pocket and pooled-fund spending",
                                         epilog=EXIT_CODES_HELP, formatter_class=raw))
    h = sub.add_parser("health", help="is a worker consuming? (exit 0 healthy, 1 not; the compose healthcheck)")
    h.add_argument("service", choices=WORKERS)
    _common(h)
    h.add_argument("--regions", default=os.environ.get("GONGJI_REGIONS", ""),
                   help="bureau only: the regions the worker serves (as given to `gongji worker`)")
    from simulator import cluster
    cluster.add_arguments(sub.add_parser("cluster", help="a 3-node RabbitMQ cluster on this machine (up, down, status)"))
    sc = sub.add_parser("schema", help="write JSON Schemas of every contract and of the scenario file, and an "
                                       "AsyncAPI 3.0 document of the exchanges, routing keys and messages")
    sc.add_argument("directory", help="where to write them (created)")
    sc.add_argument("--namespace", default="gongji")
    return parser


def _preflight(argv: list[str]) -> int | None:
    """run / compare with a broker URL given: a broker that is not there, or refuses us, is said in one line
    (exit 3) before the scenario machinery (a second of pydantic models) is even loaded."""
    if not argv or argv[0] not in ("run", "compare") or "-h" in argv or "--help" in argv:
        return None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--amqp-url", default=os.environ.get("AMQP_URL"))
    pre.add_argument("--junit", default=None)
    known, rest = pre.parse_known_args(argv[1:])
    if not known.amqp_url:
        return None
    from simulator.errors import EXIT_INFRA, InfrastructureError, check_broker
    try:
        asyncio.run(check_broker(known.amqp_url))
    except InfrastructureError as exc:
        print(f"gongji {argv[0]}: {exc}", file=sys.stderr)
        if known.junit:
            from simulator import junit
            name = Path(next((a for a in rest if not a.startswith("-")), "scenario")).stem
            junit.write(known.junit, junit.error_suite(name, str(exc)))
        return EXIT_INFRA
    return None


def main(argv: list[str] | None = None) -> int:
    early = _preflight(list(sys.argv[1:] if argv is None else argv))
    if early is not None:
        return early
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        return _worker(args)
    if args.command == "demo":
        return _guarded(args, lambda: _demo(args))
    if args.command == "broker-definitions":
        from services.shared.definitions import build, render
        sys.stdout.write(render(build(args.namespace)))
        return 0
    if args.command == "redrive":
        from simulator import redrive
        return asyncio.run(redrive.main(args))
    if args.command == "load-demo":
        return _guarded(args, lambda: _load_demo(args))
    if args.command == "settle":
        return _guarded(args, lambda: _settle(args))
    if args.command == "up":
        return _up(args)
    if args.command == "bench":
        from simulator.bench import measure as bench
        with _throwaway_database(args):
            return bench.main(args, argv if argv is not None else sys.argv[2:])
    if args.command == "run":
        from simulator.run import command as run_command
        with _throwaway_database(args):
            return run_command.main(args)
    if args.command == "gateway":
        from services.gateway import main as gateway
        return gateway.main(args)
    if args.command == "credentials":
        return _credentials(args)
    if args.command == "observe":
        from simulator import observe
        return observe.main(args)
    if args.command == "compare":
        from simulator import compare
        return compare.main(args)
    if args.command == "health":
        from simulator import health
        return health.main(args)
    if args.command == "cluster":
        from simulator import cluster
        return cluster.main(args)
    if args.command == "schema":
        from simulator import schema
        return schema.main(args)
    return 2


def _credentials(args: argparse.Namespace) -> int:
    from contracts import credentials
    token = credentials.paas_token(args.fixmedins_code)
    if args.json:
        print(json.dumps({"paasid": args.fixmedins_code, "paasToken": token}))
    else:
        print(f"paasid {args.fixmedins_code}\npaasToken {token}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from services.shared.entry import run
    if args.bureau_url:
        if args.service != "pos":
            raise SystemExit("--bureau-url is a setting of the pos worker")
        os.environ["GONGJI_POS_BUREAU_URL"] = args.bureau_url  # read by services.pos.worker
    cfg = WorkerConfig(amqp_url=args.amqp_url, namespace=args.namespace, data_dir=Path(args.data_dir),
                       regions=[r for r in args.regions.split(",") if r], prefetch=args.prefetch,
                       database_url=args.database_url or None)
    if args.service == "bureau":
        from services.bureau.worker import setup
    elif args.service == "accounts":
        from services.accounts.worker import setup  # type: ignore[no-redef]
    else:
        from services.pos.worker import setup  # type: ignore[no-redef]
    run(args.service, cfg, setup)
    return 0


async def _client(args: argparse.Namespace, name: str, needs: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """A connected client; InfrastructureError (one line, exit 3) if the broker or a needed worker is not there."""
    from simulator.client import Client
    from simulator.errors import InfrastructureError, check_broker
    from simulator.health import check
    await check_broker(args.amqp_url)
    for service in needs:  # a clear message now rather than a timeout later
        ok, line = await check(args.amqp_url, args.namespace, service)
        if not ok:
            raise InfrastructureError(f"{line}: start the workers (`gongji up`, `docker compose up`)")
    client = Client(args.amqp_url, args.namespace, name=name)
    await client.connect()
    return client


def _guarded(args: argparse.Namespace, make) -> int:  # type: ignore[no-untyped-def]
    from simulator.errors import run_guarded
    code, result, message = run_guarded(make, args.amqp_url, args.namespace)
    if message is not None:
        print(f"gongji {args.command}: {message}", file=sys.stderr)
        return code
    return int(result or 0)


async def _load_demo(args: argparse.Namespace) -> int:
    from simulator import demo
    client = await _client(args, "demo")
    try:
        await demo.load(client)
        print("demo population loaded")
    finally:
        await client.close()
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from simulator import demo
    client = await _client(args, "demo")
    failures = 0
    try:
        await demo.load(client)
        for cmd in demo.visits("v1"):
            outcome = await client.visit(cmd, timeout=60)
            if args.json:
                print(outcome.model_dump_json())
            else:
                print(render_outcome(outcome.model_dump(mode="json")))
            failures += outcome.status != "settled"
    finally:
        await client.close()
    return 1 if failures else 0


class ItemError(ValueError):
    pass


def _number(text: str, item: str, what: str, example: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ItemError(f"--item {item!r}: {what} {text!r} is not a number (e.g. {example})") from None
    if not value.is_finite() or value < 0:
        raise ItemError(f"--item {item!r}: {what} {text!r} must be a number ≥ 0 (e.g. {example})")
    return value


def _parse_item(text: str, n: int) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 5 or not parts[0]:
        raise ItemError(f"--item {text!r}: expected CODE:PRICE[:CNT[:LV[:PROP]]], e.g. XB02:36.50:2:02:0.05")
    code = parts[0]
    price = _number(parts[1], text, "PRICE", "12.50")
    if int(price.as_tuple().exponent) < -6:  # 单价 is 数值型(16,6): at most 6 decimal places
        raise ItemError(f"--item {text!r}: PRICE {parts[1]!r} has more than 6 decimals (e.g. 12.50 or 0.123456)")
    cnt = parts[2] if len(parts) > 2 else "1"
    _number(cnt, text, "CNT", "2")
    lv = parts[3] if len(parts) > 3 else "01"
    if lv not in ("01", "02", "03"):
        raise ItemError(f"--item {text!r}: LV {lv!r} must be 01 (甲), 02 (乙) or 03 (丙)")
    prop = parts[4] if len(parts) > 4 else None
    if prop is not None:
        _number(prop, text, "PROP", "0.05")
    total = line_total(price, cnt)
    item = {"feedetl_sn": str(n), "med_list_codg": code, "cnt": cnt, "pric": f"{price}",
            "det_item_fee_sumamt": f"{total}", "chrgitm_lv": lv}
    if prop is not None:
        item["selfpay_prop"] = prop
    return item


async def _settle(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from contracts.base import SHANGHAI
    from contracts.pos import SettleVisit
    when = args.time or datetime.now(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
    try:
        details = [_parse_item(t, i + 1) for i, t in enumerate(args.item)]
    except ItemError as exc:
        print(f"gongji settle: {exc}", file=sys.stderr)
        return 2
    try:
        cmd = SettleVisit.model_validate({
            "visit_id": f"cli-{uuid.uuid4().hex[:16]}", "fixmedins_code": args.facility, "insuplc_admdvs": args.insuplc,
            "mdtrtarea_admvs": args.mdtrtarea or args.insuplc, "psn_no": args.psn, "med_type": args.med_type,
            "insutype": args.insutype, "acct_used_flag": "0" if args.no_account else "1", "setl_chnl": args.channel,
            "biz_time": when, "details": details, "timeout_ms": int(args.timeout * 1000)})
    except ValidationError as exc:
        print("gongji settle: invalid visit: " + "; ".join(_field_error(e) for e in exc.errors(include_url=False)),
              file=sys.stderr)
        return 2
    client = await _client(args, "settle", needs=WORKERS)
    try:
        outcome = await client.visit(cmd, timeout=args.timeout * 3 + 10)
    finally:
        await client.close()
    print(outcome.model_dump_json(indent=2) if args.json else render_outcome(outcome.model_dump(mode="json")))
    return 0 if outcome.status == "settled" else 1


# The settle options by the name of the field they fill, for errors a person can map back to the command line.
_OPTION_OF = {"fixmedins_code": "--facility", "insuplc_admdvs": "--insuplc", "mdtrtarea_admvs": "--mdtrtarea",
              "psn_no": "--psn", "biz_time": "--time", "timeout_ms": "--timeout"}


def _field_error(e: Any) -> str:
    loc = [str(x) for x in e.get("loc", ())]
    if loc and loc[0] == "details" and len(loc) > 2:
        where = f"--item #{int(loc[1]) + 1} {loc[2]}"
    else:
        where = _OPTION_OF.get(loc[0], ".".join(loc)) if loc else "visit"
    return f"{where}: {e.get('msg', 'invalid')}"


def render_outcome(o: dict[str, Any]) -> str:
    head = f"visit {o['visit_id']}  {o['psn_no']} at {o['fixmedins_code']}  {o['biz_time']}  → {o['status']}"
    if not o.get("setlinfo"):
        return f"{head}\n  {o.get('err_code')}: {o.get('err_msg')}\n"
    s = o["setlinfo"]
    rows = [("medfee_sumamt", "bill 医疗费总额"), ("fulamt_ownpay_amt", "全自费"), ("overlmt_selfpay", "超限价自费"),
            ("preselfpay_amt", "先行自付"), ("inscp_scp_amt", "in scope 符合范围"), ("act_pay_dedc", "deductible 起付线"),
            ("hifp_pay", "pooled fund 统筹基金"), ("psn_part_amt", "patient share 个人负担"),
            ("acct_pay", "personal accounts 个人账户"), ("acct_mulaid_pay", "  of which family 共济"),
            ("psn_cash_pay", "cash 现金"), ("balc", "own balance after 余额")]
    from simulator.terminal import table
    lines = [head, f"  setl_id {s['setl_id']}"]
    lines.append(table(("", "yuan", "field"), [(label, s[key], key) for key, label in rows], right={1}))
    for part in s.get("mulaid_detail", []):
        lines.append(f"    family: {part['authorizer_psn_no']} paid {part['amount']} (balance now {part['balc']})")
    lines += [f"  why: {note}" for note in s.get("notes", [])]
    return "\n".join(lines) + "\n"


def _up(args: argparse.Namespace) -> int:
    """The no-Docker `docker compose up`: the same worker commands, as child processes."""
    env = {**os.environ, "AMQP_URL": args.amqp_url, "GONGJI_NAMESPACE": args.namespace,
           "GONGJI_DATA_DIR": str(Path(args.data_dir).resolve())}
    if args.database_url:
        env["GONGJI_DATABASE_URL"] = args.database_url
    repo = Path(__file__).resolve().parents[1]  # the workers and the job run this very code
    from simulator.stack import die_with_parent
    # The workers' own logs (JSON lines) go to files; the terminal gets only the lines written for people.
    log_dir = Path(args.data_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env.setdefault("GONGJI_LOG_FORMAT", "json")
    procs = []
    for name in WORKERS:
        with open(log_dir / f"{name}.log", "ab") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "simulator.cli", "worker", name], env=env, cwd=repo,
                                          preexec_fn=die_with_parent, stdout=subprocess.PIPE, stderr=log))
    code = 0
    try:
        for name, proc in zip(WORKERS, procs):  # each prints one line when its queues are declared
            assert proc.stdout is not None
            line = proc.stdout.readline().decode(errors="replace").strip()
            if "ready" not in line:
                tail = (log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-5:]
                print(f"the {name} worker did not start ({line or 'no output'}); its log: {log_dir / (name + '.log')}"
                      + "".join(f"\n  {t}" for t in tail), file=sys.stderr)
                return 3
            print(f"{line} (log: {log_dir / (name + '.log')})", flush=True)
        # From the repository (where scenarios/ lives); the report lands in ./reports of the caller.
        job = [str(Path.cwd() / "reports") if a == "reports" else a for a in MAIN_JOB]
        code = subprocess.call([sys.executable, "-m", "simulator.cli", *job], env=env, cwd=repo)
        if not args.once:
            print("workers running; Ctrl-C to stop", flush=True)
            while all(p.poll() is None for p in procs):
                time.sleep(1)
            code = 1
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    return code


if __name__ == "__main__":
    sys.exit(main())
