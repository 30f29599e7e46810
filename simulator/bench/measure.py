"""`gongji bench`: one measured run end to end, and its command line."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from contracts.routing import Names
from services.shared.broker import wait_for_broker
from services.shared.entry import DEFAULT_AMQP_URL

from .client import BenchClient
from .http import HttpVisits, start_gateway
from .metrics import Record, percentile, round_trips_per_settlement, slope_per_min
from .population import HZ, Population, VisitMix
from .processes import (all_process_cpu, find_broker_pid, machine_info, other_processes, proc_cpu_s, proc_detail,
                        proc_mem_kb, self_cpu_s, system_cpu, system_cpu_share)
from .profiling import _run_profilers, summarize_profile
from .raw import measure_raw, raw_names
from .render import render
from .traffic import drive, load_population
from .workers import Workers, cleanup_namespace, outbox_rows, publish_mark, quiesce, sum_stat


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    try:
        await wait_for_broker(args.amqp_url, timeout=30)
    except Exception as exc:
        raise SystemExit(f"cannot reach RabbitMQ at {args.amqp_url}: {exc}")
    closed_loop = args.rate is None
    concurrency = args.concurrency if closed_loop else None
    warmup = args.warmup if args.warmup is not None else min(5.0, max(1.0, args.duration * 0.2))
    raw_duration = args.raw_duration if args.raw_duration is not None else min(15.0, max(3.0, args.duration / 2))
    raw_concurrency = args.raw_concurrency or (args.concurrency if closed_loop else 32)
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    data_dir = Path(tempfile.mkdtemp(prefix="gongji-bench-"))
    result: dict[str, Any] = {
        "command": "gongji bench " + " ".join(args.argv), "namespace": ns, "mode": "closed" if closed_loop else "open",
        "concurrency": concurrency, "rate": args.rate, "duration_s": args.duration, "warmup_s": warmup,
        "accounts": args.accounts, "seed": args.seed, "worker_prefetch": args.prefetch,
        "storage": "postgresql" if os.environ.get("GONGJI_DATABASE_URL") else "sqlite",
        "replicas": int(os.environ.get("GONGJI_BENCH_REPLICAS", "1")),
        "visit_timeout_ms": int(args.visit_timeout * 1000), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info()}
    print(f"gongji bench: namespace {ns}, data {data_dir}, load average {result['machine']['loadavg_before']}",
          flush=True)
    broker_pid = find_broker_pid()
    workers = Workers(args.amqp_url, ns, data_dir, args.prefetch)
    client: BenchClient | None = None
    echo_pid: list[int] = []
    try:
        # 1. the raw ceiling, before the workers exist (nothing else of ours on the CPU)
        print(f"raw echo ceiling: concurrency {raw_concurrency}, {raw_duration:g} s ...", flush=True)
        raw = await measure_raw(args.amqp_url, ns, raw_concurrency, raw_duration, 1.0, args.prefetch, echo_pid,
                                broker_pid)
        result.update(raw)
        print(f"  raw round trips/s {raw['raw_round_trips_per_s']}  p50 {raw['raw_p50_ms']} ms  "
              f"p99 {raw['raw_p99_ms']} ms", flush=True)

        # 2. workers and population
        await workers.start()
        pids = {name: p.pid for name, p in workers.procs.items()}
        client = BenchClient(args.amqp_url, Names(ns))
        await client.connect()
        try:
            server = client.broker.connection.transport.connection.server_properties  # type: ignore[union-attr]
            result["machine"]["rabbitmq"] = (server.get("version") or b"").decode() if isinstance(
                server.get("version"), bytes) else server.get("version")
        except Exception:
            pass
        pop = Population(args.accounts, args.seed)
        print(f"loading {args.accounts} accounts + {pop.children} family members ...", flush=True)
        cpu_load0 = {k: proc_cpu_s(p) for k, p in pids.items()}
        throttled = {"waits": 0, "s": 0.0}

        async def throttle() -> None:
            # Keep what bulk opening leaves in the accounts outbox below --load-max-outbox: the relay loads
            # every pending row at once and deletes them with one `IN (...)` statement, which fails above
            # SQLite's 250,000 variables, and then republishes the whole batch forever (see BENCHMARKS.md).
            t = time.perf_counter()
            while (await asyncio.to_thread(outbox_rows, data_dir)).get("accounts", 0) > args.load_max_outbox:
                throttled["waits"] += 1
                await asyncio.sleep(2.0)
            throttled["s"] += time.perf_counter() - t

        load = await load_population(client, pop, throttle=throttle if args.load_max_outbox > 0 else None)
        load["load_throttled_s"] = round(throttled["s"], 1)
        load["load_messages_resent"] = client.resent
        cpu_load1 = {k: proc_cpu_s(p) for k, p in pids.items()}
        load["load_cpu_s"] = {k: round((cpu_load1[k] or 0) - (cpu_load0[k] or 0), 2) for k in pids}
        result["load"] = load
        print(f"  loaded in {load['load_s']} s (persons {load['load_persons_s']} s, accounts "
              f"{load['load_accounts_s']} s, throttle waits summed over the 4 senders {load['load_throttled_s']} s; "
              f"bindings {load['load_bindings_s']} s)", flush=True)
        q = await quiesce(data_dir, args.quiesce_timeout)
        q["quiesce_cpu_s"] = {k: round((proc_cpu_s(p) or 0) - (cpu_load1[k] or 0), 2) for k, p in pids.items()}
        load.update(q)
        if sum(q["outbox_rows_after_load"].values()):
            print(f"  outboxes after loading {q['outbox_rows_after_load']}: drained by the relays in "
                  f"{q['quiesce_s']} s", flush=True)

        # 3. visits
        mix = VisitMix(pop, args.seed, ns.replace("bench-", "v"), int(args.visit_timeout * 1000),
                       presettle=not args.no_presettle)
        result["presettle"] = not args.no_presettle
        pub0 = await publish_mark(data_dir, client, args.quiesce_timeout) if not args.via_gateway else None
        watched = dict(pids)
        if broker_pid:
            watched["broker"] = broker_pid
        if os.environ.get("GONGJI_DATABASE_URL"):  # the PostgreSQL server processes of each store (issue 12)
            from services.shared.pg_admin import backend_pids
            watched.update(backend_pids(os.environ["GONGJI_DATABASE_URL"]))
        timeline: list[dict[str, Any]] = []
        marks: dict[str, Any] = {}
        profile_files: dict[str, Path] = {}
        records: list[Record] = []

        async def on_window(t_measure: float, t_end: float) -> None:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, t_measure - loop.time()))
            marks["cpu0"] = {k: proc_cpu_s(p) for k, p in watched.items()}
            marks["det0"] = {**{k: proc_detail(p) for k, p in watched.items()}, "bench_client": proc_detail(None)}
            marks["self0"], marks["sys0"] = self_cpu_s(), system_cpu()
            marks["mem0"] = {k: proc_mem_kb(p) for k, p in watched.items()}
            marks["all0"] = all_process_cpu()
            prof = None
            if args.profile:
                prof = asyncio.create_task(_run_profilers(pids, Path(args.profile), t_end - loop.time(),
                                                          args.profile_rate, args.profile_gil))
            seen = len(records)
            while loop.time() < t_end - 0.05:
                await asyncio.sleep(min(args.sample_every, max(0.0, t_end - loop.time())))
                recent = sorted((r.t_done - r.t_send) * 1000 for r in records[seen:] if r.status == "settled")
                seen = len(records)
                timeline.append({"t_s": round(loop.time() - t_measure, 1),
                                 "outcomes": len(records), "settled_in_interval": len(recent),
                                 "p50_ms": round(percentile(recent, 50), 1) if recent else None,
                                 "p99_ms": round(percentile(recent, 99), 1) if recent else None,
                                 "rss_kb": {k: proc_mem_kb(p).get("VmRSS") for k, p in watched.items()},
                                 "cpu_s": {k: proc_cpu_s(p) for k, p in watched.items()}})
            marks["cpu1"] = {k: proc_cpu_s(p) for k, p in watched.items()}
            marks["det1"] = {**{k: proc_detail(p) for k, p in watched.items()}, "bench_client": proc_detail(None)}
            marks["self1"], marks["sys1"] = self_cpu_s(), system_cpu()
            marks["mem1"] = {k: proc_mem_kb(p) for k, p in watched.items()}
            marks["all1"] = all_process_cpu()
            if prof is not None:
                profile_files.update(await prof)

        what = f"concurrency {concurrency}" if closed_loop else f"rate {args.rate}/s (Poisson)"
        print(f"visits: {what}, warm-up {warmup:g} s, measured {args.duration:g} s ...", flush=True)
        visits: Any = client
        if args.via_gateway:  # HTTP client → gateway → bureau → accounts (simulator/bench/http.py)
            gateway, gateway_url = await start_gateway(args.amqp_url, ns, data_dir / "logs")
            workers.procs["gateway"] = gateway
            watched["gateway"] = gateway.pid
            visits = HttpVisits(gateway_url)
            result["via"] = "gateway"
        try:
            t_measure, t_end, unfinished = await drive(
                visits, mix, records, concurrency=concurrency, rate=args.rate, warmup=warmup, duration=args.duration,
                seed=args.seed, on_window=on_window, drain_timeout=args.visit_timeout * 3 + 30,
                max_outstanding=args.max_outstanding)
        finally:
            if visits is not client:
                await visits.close()
        got = records
        result["unfinished_visits"] = unfinished
        if pub0 is not None:
            # Every publish of the visit phase (warm-up and drain included: the outbox tail of the last visits
            # too), by the workers' and the bench client's own counters, over every visit settled in it.
            pub1 = await publish_mark(data_dir, client, args.quiesce_timeout)
            per = {k: pub1.get(k, 0) - pub0.get(k, 0) for k in pub1}
            n_settled = sum(1 for r in got if r.status == "settled")
            result["publishes"] = {"by_process": per, "total": sum(per.values()), "settlements": n_settled}
            result["publishes_per_settlement"] = round(sum(per.values()) / max(1, n_settled), 3)
            result["batching"] = {k: sum_stat(data_dir, k) for k in ("batches_out", "batch_items_out",
                                                                    "batches_in", "batch_items_in")}
            # the bench's visit commands: those sent in one loop pass went as one batch (batching.Coalescer)
            result["batching"].update({"command_batches": client.commands.batches,
                                       "commands_in_batches": client.commands.items,
                                       "commands_sent": len(got) + unfinished})
        if not workers.alive():
            raise RuntimeError("a worker died during the run; see the logs in " + str(data_dir / "logs"))

        # 4. figures
        window = [r for r in got if t_measure <= r.t_done <= t_end]
        settled = [r for r in window if r.status == "settled"]
        lat = sorted((r.t_done - r.t_send) * 1000 for r in settled)
        sps = len(settled) / args.duration
        trips = round_trips_per_settlement(settled)
        result.update({
            "settlements_per_s": round(sps, 1),
            "visits_per_s": round(len(window) / args.duration, 1),
            "settlements": len(settled),
            "p50_ms": round(percentile(lat, 50), 2), "p95_ms": round(percentile(lat, 95), 2),
            "p99_ms": round(percentile(lat, 99), 2), "max_ms": round(lat[-1], 2) if lat else float("nan"),
            "mean_ms": round(sum(lat) / len(lat), 2) if lat else float("nan"),
            "national_round_trips_per_settlement": trips,
            "ratio": round(sps / (result["raw_round_trips_per_s"] / trips), 3) if result["raw_round_trips_per_s"] else 0,
            "statuses": dict(Counter(r.status for r in got)),
            "mutual_aid_settlements": sum(1 for r in got if r.mulaid),
            "visits_sent": len(got) + unfinished, "mix": dict(sorted(mix.kinds.items())),
        })
        dur = args.duration
        cpu = {}
        for k in watched:
            a, b = marks["cpu0"].get(k), marks["cpu1"].get(k)
            if a is not None and b is not None:
                cpu[k] = {"cpu_s": round(b - a, 2), "cpu_share_of_one_core": round((b - a) / dur, 3)}
        cpu["bench_client"] = {"cpu_s": round(marks["self1"] - marks["self0"], 2),
                               "cpu_share_of_one_core": round((marks["self1"] - marks["self0"]) / dur, 3)}
        for k, v in cpu.items():
            d0, d1 = marks["det0"].get(k, {}), marks["det1"].get(k, {})
            for f in ("user_s", "sys_s"):
                if f in d0 and f in d1:
                    v[f] = round(d1[f] - d0[f], 2)
            for f in ("vol_cs", "invol_cs"):
                if f in d0 and f in d1:
                    v[f"{f}_per_settlement"] = round((d1[f] - d0[f]) / max(1, len(settled)), 1)
        result["cpu"] = cpu
        result["cpu_ms_per_settlement_total"] = round(sum(v["cpu_s"] for v in cpu.values()) / max(1, len(settled))
                                                      * 1000, 3)
        raw_cpu = (result.get("raw_broker_cpu_s") or 0) + result.get("raw_echo_cpu_s", 0) + \
            result.get("raw_client_cpu_s", 0)
        if result.get("raw_round_trips") and raw_cpu:
            # all processes' CPU of one raw round trip (broker, echo, its client) in the same run
            result["raw_cpu_ms_per_round_trip"] = round(raw_cpu / result["raw_round_trips"] * 1000, 3)
            result["cpu_per_settlement_over_raw_round_trip"] = round(
                result["cpu_ms_per_settlement_total"] / result["raw_cpu_ms_per_round_trip"], 2)
        result["cpu_s_per_settlement_ms"] = {k: round(v["cpu_s"] / max(1, len(settled)) * 1000, 3)
                                             for k, v in cpu.items()}
        result["system_cpu"] = sc = system_cpu_share(marks["sys0"], marks["sys1"])
        if sc:
            # Cores busy on this machine minus what the bench accounted for: other people's work on a shared box
            # (and kernel threads doing our I/O).
            busy = (1 - sc["idle"] - sc["iowait"] - sc["steal"]) * (os.cpu_count() or 1)
            ours = sum(v["cpu_s"] for v in cpu.values()) / dur
            result["machine_busy_cores"] = round(busy, 2)
            result["unaccounted_busy_cores"] = round(busy - ours, 2)
        result["other_busy_processes"] = other_processes(marks["all0"], marks["all1"],
                                                         {os.getpid(), *watched.values()}, dur)
        mem = {}
        for k in watched:
            m0, m1 = marks["mem0"].get(k, {}), marks["mem1"].get(k, {})
            series = [(s["t_s"], s["rss_kb"].get(k)) for s in timeline if s["rss_kb"].get(k)]
            mem[k] = {"peak_rss_kb": m1.get("VmHWM"), "rss_start_kb": m0.get("VmRSS"), "rss_end_kb": m1.get("VmRSS"),
                      "rss_slope_kb_per_min": (round(s, 1) if (s := slope_per_min(series)) is not None else None)}
        ru = resource.getrusage(resource.RUSAGE_SELF)
        mem["bench_client"] = {"peak_rss_kb": ru.ru_maxrss}
        result["memory"] = mem
        result["timeline"] = timeline
        if profile_files:
            result["profile"] = {k: {"file": str(v), **summarize_profile(v)} for k, v in profile_files.items()}

        # 5. audits
        print("audits (G199) ...", flush=True)
        n = client.names
        acc = await client.call(n.accounts_exchange, "admin", "G199", {}, HZ)
        bur = await client.call(n.bureau_exchange, HZ, "G199", {}, HZ)
        result["audit"] = {
            "accounts": {k: acc.get(k) for k in ("accounts", "ledger_sum_fen", "unbalanced_txns", "balance_mismatches",
                                                  "negative_balances", "negative_usage", "cap_overruns",
                                                  "payments_paid")},
            "bureau": {"accumulator_mismatches": bur.get("accumulator_mismatches"), "states": bur.get("states")},
        }
        result["db_size_mb"] = {p.name: round(p.stat().st_size / 1e6, 1) for p in sorted(data_dir.glob("*.db*"))}

        # 6. the raw ceiling again, after the visits (the workers idle): a machine whose speed drifted during the
        # run shows as raw_drift far from 1, and ratio_bracketed uses the mean of both ceilings.
        if args.raw_after:
            print("raw echo ceiling again ...", flush=True)
            after = await measure_raw(args.amqp_url, ns, raw_concurrency, raw_duration, 1.0, args.prefetch,
                                      echo_pid, broker_pid)
            result["raw_after_round_trips_per_s"] = rt_after = after["raw_round_trips_per_s"]
            rt_before = result["raw_round_trips_per_s"]
            trips = result.get("national_round_trips_per_settlement") or 0
            if rt_before and rt_after:
                result["raw_drift"] = round(rt_after / rt_before, 3)
                if trips:
                    result["ratio_bracketed"] = round(result["settlements_per_s"] / ((rt_before + rt_after) / 2 / trips), 3)
        return result
    finally:
        if client is not None:
            await client.close()
        workers.stop()
        extra_q = [*raw_names(ns)[1:]]
        if client is not None:
            extra_q += [client.reply_queue, client.outcome_queue]
        await cleanup_namespace(args.amqp_url, ns, extra_q, [raw_names(ns)[0]])
        if args.keep_data:
            print(f"data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", DEFAULT_AMQP_URL),
                   help="RabbitMQ URL (env AMQP_URL; default %(default)s)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds (default %(default)s)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=None,
                      help="closed loop: visits outstanding at once (default 16, the figure the targets are stated at; deeper windows fill the batches and carry more, see BENCHMARKS.md)")
    load.add_argument("--rate", type=float, default=None,
                      help="open loop: visits per second (Poisson); latency from the scheduled send time")
    p.add_argument("--accounts", type=int, default=1000, help="personal accounts to load (default %(default)s)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the figures as JSON")
    p.add_argument("--warmup", type=float, default=None, help="seconds excluded first (default 20%% of "
                                                               "--duration, 1..5)")
    p.add_argument("--raw-duration", type=float, default=None, help="seconds of the echo ceiling (default "
                                                                     "--duration/2, 3..15)")
    p.add_argument("--no-raw-after", dest="raw_after", action="store_false",
                   help="skip the second raw ceiling after the visits (raw_drift, ratio_bracketed)")
    p.add_argument("--raw-concurrency", type=int, default=None,
                   help="echo round trips outstanding (default: --concurrency, or 32 with --rate)")
    p.add_argument("--via-gateway", action="store_true",
                   help="send the visits as a HIS does, over HTTP through `gongji gateway` (2101 + 2102, signed), "
                        "instead of as commands to the POS worker")
    p.add_argument("--seed", type=int, default=6, help="population, mix and arrivals (default %(default)s)")
    p.add_argument("--prefetch", type=int, default=64, help="the workers' --prefetch (default %(default)s)")
    p.add_argument("--visit-timeout", type=float, default=30.0,
                   help="the POS's 冲正 deadline per visit, seconds (default %(default)s)")
    p.add_argument("--max-outstanding", type=int, default=20000, help="open loop: cap on visits in flight")
    p.add_argument("--sample-every", type=float, default=5.0, help="timeline sampling period, seconds")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="py-spy record each worker during the measured window (collapsed stacks in DIR)")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--profile-gil", action="store_true",
                   help="py-spy --gil: only samples holding the GIL (Python CPU; no waits on disk or locks)")
    p.add_argument("--no-presettle", action="store_true",
                   help="settle straight away (2102 / 2207, no 2101 / 2206 pre-settle first); ratio is then the "
                        "settle-only ratio")
    p.add_argument("--keep-data", action="store_true", help="keep the workers' SQLite files and logs")
    p.add_argument("--load-max-outbox", type=int, default=100000,
                   help="pause bulk loading while the accounts outbox holds more rows than this (0: never); "
                        "works around the relay failing on batches above 250,000 rows")
    p.add_argument("--quiesce-timeout", type=float, default=3600.0,
                   help="after loading, wait at most this long for the workers' outboxes to drain")


def main(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    if args.rate is None and args.concurrency is None:
        args.concurrency = 16
    if args.concurrency is not None and args.concurrency < 1:
        raise SystemExit("--concurrency must be at least 1")
    if args.rate is not None and args.rate <= 0:
        raise SystemExit("--rate must be positive")
    args.argv = argv if argv is not None else sys.argv[2:]
    result = asyncio.run(_cancellable(run_bench(args)))
    print(render(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 0


async def _cancellable(coro: Any) -> Any:
    """SIGTERM/SIGINT cancel the run, so that its finally blocks stop the workers and delete the namespace
    (also when started in the background, where SIGINT is ignored by default)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await task
