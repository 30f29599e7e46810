"""`gongji bench`: how fast is gongji against a real broker, and how close to the transport's own ceiling?

One run:

1. raw ceiling: an echo process (`python -m simulator.bench echo`) takes each message from a durable quorum
   queue and publishes it to a reply queue; both hops use `services.shared.broker.Broker`, i.e. exactly the
   workers' settings (persistent, publisher confirms, mandatory, manual ack after the confirmed publish).
   The bench drives it closed-loop with the same concurrency → raw_round_trips_per_s;
2. the three workers start as separate processes (`gongji worker ...`) in a fresh namespace `bench-<hex>`
   and a temporary data dir; a seeded population of M accounts is loaded in bulk (G001, G003, G103 in
   messages of 5000, G111 for the families), and the load is timed;
3. visits (pharmacy 41 and outpatient 11 at a few facilities, Beijing people, cross-region purchases and
   children paid by a family member's account) go to the POS with presettle=True, in the national flow a HIS
   speaks: a pharmacy 2101 → 2102 (2 round trips to the bureau), an outpatient visit 2201 → 2203 → 2204 →
   2206 → 2207 (5). Each outcome says how many national round trips its visit took; their mean over the
   settled visits is `national_round_trips_per_settlement`, and `ratio` divides the raw ceiling by it. Closed loop (`--concurrency N` outstanding) or open
   loop (`--rate R` Poisson arrivals; latency from the *scheduled* send time, so a stalled system cannot
   hide its backlog). A warm-up is excluded. Latency: command publish → outcome event received;
4. CPU seconds per process (/proc/<pid>/stat) and peak RSS (VmHWM) of each worker, the echo, the broker
   (beam.smp, if readable) and the bench client itself; an RSS/throughput timeline (for soaks);
5. G199 audits of the accounts and bureau ledgers, then the workers stop and the namespace is deleted.

    ratio = settlements_per_s / (raw_round_trips_per_s / national_round_trips_per_settlement)

Everything is deterministic for a given --seed (population, mix, arrival times), so runs are comparable.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from contracts import infno
from contracts.admin import Bind, OpenAccount, RegisterPerson
from contracts.envelope import make_msgid
from contracts.pos import SettleVisit
from contracts.routing import REGISTRY_KEY, Names
from services.shared.broker import Broker
from services.shared.entry import DEFAULT_AMQP_URL
from services.shared.store import OutMessage

WORKERS = ("bureau", "accounts", "pos")
HZ, BJ = "330100", "110000"
BULK = 5000  # the contracts' maximum per G003 / G103 message
MAX_CHILDREN = 2000  # bound family members (one G111 each), whatever M is: the visit mix stays the same
LOAD_TIME = "2026-01-01 08:00:00"
LOAD_EPOCH = datetime(2026, 1, 1, 8, 0, 0)
VISIT_EPOCH = datetime(2026, 2, 1, 8, 0, 0)  # business time (Asia/Shanghai) of visit 0; visit i is i seconds later
LOADER_CODE = "GONGJIBENCH1"  # the fixmedins_code in the msgids of the loading messages

# (code, name, type, level, region)
FACILITIES = [
    ("PBENCH330101", "bench pharmacy 1 (Hangzhou)", "pharmacy", "community", HZ),
    ("PBENCH330102", "bench pharmacy 2 (Hangzhou)", "pharmacy", "community", HZ),
    ("PBENCH330103", "bench pharmacy 3 (Hangzhou)", "pharmacy", "community", HZ),
    ("HBENCH330101", "bench community health centre (Hangzhou)", "hospital", "community", HZ),
    ("HBENCH330103", "bench level-3 hospital (Hangzhou)", "hospital", "level3", HZ),
    ("PBENCH110001", "bench pharmacy (Beijing)", "pharmacy", "community", BJ),
    ("HBENCH110003", "bench level-3 hospital (Beijing)", "hospital", "level3", BJ),
]
HZ_PHARMACIES = ["PBENCH330101", "PBENCH330102", "PBENCH330103"]
HZ_HOSPITALS = ["HBENCH330101", "HBENCH330103"]

# (code, declared class, price range in yuan); XA01/XB02/XC03 are in Hangzhou's catalog, the rest are not
PHARMACY_ITEMS = [("XA01", "01", (8, 40)), ("XB02", "02", (15, 60)), ("XC03", "03", (30, 120)),
                  ("OTC101", "01", (5, 30)), ("OTC202", "02", (10, 80))]
OUTPATIENT_ITEMS = [("EXAM01", "01", (20, 300)), ("LAB02", "01", (30, 200)), ("XA01", "01", (8, 40)),
                    ("XB02", "02", (15, 60)), ("INJ03", "02", (10, 90))]


# ---- /proc ---------------------------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of the whole process (every thread), in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_detail(pid: int | None) -> dict[str, float]:
    """User and system CPU seconds, voluntary and involuntary context switches (pid None: this process)."""
    if pid is None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"user_s": ru.ru_utime, "sys_s": ru.ru_stime, "vol_cs": ru.ru_nvcsw, "invol_cs": ru.ru_nivcsw}
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rfind(")") + 2:].split()
        out.update(user_s=int(fields[11]) / CLK_TCK, sys_s=int(fields[12]) / CLK_TCK)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                out["vol_cs"] = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                out["invol_cs"] = int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return out


def proc_mem_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def system_cpu() -> list[int]:
    """user nice system idle iowait irq softirq steal (jiffies), from /proc/stat."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except OSError:
        return []


def system_cpu_share(a: list[int], b: list[int]) -> dict[str, float]:
    if not a or not b:
        return {}
    d = [y - x for x, y in zip(a, b)]
    total = sum(d) or 1
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    return {n: round(v / total, 3) for n, v in zip(names, d)}


def all_process_cpu() -> dict[int, tuple[str, float, int]]:
    """CPU seconds of every process on the machine, to name whoever else was busy during a measurement."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rfind(")") + 2:].split()
            out[int(entry.name)] = (text[text.find("(") + 1:text.rfind(")")],
                                    (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[19]))
    return out


def other_processes(before: dict[int, tuple[str, float, int]], after: dict[int, tuple[str, float, int]],
                    ours: set[int], seconds: float) -> list[dict[str, Any]]:
    """Processes not ours that used CPU between two snapshots (new ones count from zero)."""
    busy = []
    for pid, (name, cpu, start) in after.items():
        if pid in ours:
            continue
        # same pid and start time: the same process (kernel threads rename themselves as they work)
        used = cpu - (before[pid][1] if pid in before and before[pid][2] == start else 0.0)
        if used >= max(0.05 * seconds, 0.2):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmd = ""
            cmd = cmd.strip() or f"[{name}]"
            busy.append({"pid": pid, "cpu_s": round(used, 2), "cmd": cmd[:120]})
    return sorted(busy, key=lambda b: -b["cpu_s"])[:8]


def find_broker_pid() -> int | None:
    """The RabbitMQ node on this machine (beam.smp), to account for its CPU; None if there is none."""
    best: tuple[int, int] | None = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "beam.smp":
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"rabbit" not in cmdline:
            continue
        rss = proc_mem_kb(int(entry.name)).get("VmRSS", 0)
        if best is None or rss > best[1]:
            best = (int(entry.name), rss)
    return best[0] if best else None


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model, "mem_total_gib": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in os.getloadavg()], **code_version()}


def code_version() -> dict[str, Any]:
    """Which code was measured: the commit and how many files differed from it (read-only git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    digest = hashlib.sha256()
    for path in sorted([*root.glob("services/**/*.py"), *root.glob("contracts/**/*.py"), *root.glob("policies/*.yaml")]):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    code = {"code_sha256_12": digest.hexdigest()[:12]}  # services + contracts + policies as measured
    return {"git_head": head or None, "git_changed_files": len(dirty), **code} if head else code


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx * 60


# ---- population and visit mix ---------------------------------------------------------------------------
def adult_no(i: int) -> str:
    return f"BA{i:08d}"


def child_no(j: int) -> str:
    return f"BC{j:08d}"


def adult_region(i: int) -> str:
    return BJ if i % 10 == 9 else HZ  # one adult in ten is insured in Beijing


@dataclass
class Population:
    """M adults with a personal account (90% Hangzhou, 10% Beijing) and K Hangzhou children (居民医保, no
    account of their own) each bound by G111 to a Hangzhou adult. Fully determined by (accounts, seed)."""

    accounts: int
    seed: int
    children: int = 0
    retired: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.accounts < 10:
            raise SystemExit("--accounts must be at least 10")
        self.children = min(max(self.accounts // 10, 1), MAX_CHILDREN)

    def hz_adult(self, rng: random.Random) -> int:
        i = rng.randrange(self.accounts)
        return i - 1 if adult_region(i) == BJ else i

    def bj_adult(self, rng: random.Random) -> int:
        return rng.randrange(self.accounts // 10) * 10 + 9

    def persons(self) -> dict[str, list[dict[str, Any]]]:
        """G003 payloads' persons, by insured region."""
        rng = random.Random(self.seed * 1_000_003 + 1)
        out: dict[str, list[dict[str, Any]]] = {HZ: [], BJ: []}
        for i in range(self.accounts):
            region = adult_region(i)
            out[region].append({"psn_no": adult_no(i), "psn_name": f"bench adult {i}", "insutype": "310",
                                "psn_type": "retired" if rng.random() < 0.2 else "employed",
                                "insuplc_admdvs": region})
        for j in range(self.children):
            out[HZ].append({"psn_no": child_no(j), "psn_name": f"bench child {j}", "insutype": "390",
                            "psn_type": "employed", "insuplc_admdvs": HZ})
        return out

    def accounts_rows(self) -> list[dict[str, Any]]:
        """G103 payloads' accounts: opening balances 0 (5%) or 300..8000 yuan."""
        rng = random.Random(self.seed * 1_000_003 + 2)
        rows = []
        for i in range(self.accounts):
            balc = "0.00" if rng.random() < 0.05 else f"{rng.randint(300, 8000)}.{rng.randint(0, 99):02d}"
            rows.append({"psn_no": adult_no(i), "insuplc_admdvs": adult_region(i), "insutype": "310",
                         "opening_balc": balc})
        return rows

    def holders(self) -> list[dict[str, Any]]:
        """G104 payloads: the children are known to the accounts service without an account of their own."""
        return [{"psn_no": child_no(j), "insuplc_admdvs": HZ, "insutype": "390"} for j in range(self.children)]

    def bindings(self) -> list[dict[str, Any]]:
        """G111 payloads: child j is bound to adult 10*j (a Hangzhou adult; each authorizer has one member)."""
        out = []
        for j in range(self.children):
            caps = {"day_cap": "200.00", "month_cap": "1000.00"} if j % 2 == 0 else {}
            b: dict[str, Any] = {"authorizer_psn_no": adult_no(10 * j), "member_psn_no": child_no(j),
                                 "relation": "child", "rank": 1, **caps}
            if "verify" in Bind.model_fields:  # the identity check the binding lifecycle asks for
                b["verify"] = {"method": "face", "passed": True}
            out.append(b)
        return out


def _details(rng: random.Random, items: list[tuple[str, str, tuple[int, int]]], lines: int) -> list[dict[str, Any]]:
    out = []
    for n, (code, lv, (lo, hi)) in enumerate(rng.sample(items, lines)):
        cents = rng.randint(lo * 100, hi * 100)
        cnt = rng.choice((1, 1, 1, 2, 3))
        price = Decimal(cents).scaleb(-2)
        out.append({"feedetl_sn": str(n + 1), "med_list_codg": code, "cnt": str(cnt), "pric": f"{price:.2f}",
                    "det_item_fee_sumamt": f"{price * cnt:.2f}", "chrgitm_lv": lv})
    return out


class VisitMix:
    """Visit i, deterministic for a seed when generated in order 0, 1, 2, ...

    Patients: 10% a child paid by the family (共济), 12% a Beijing adult (1 in 5 of those buys in a Hangzhou
    pharmacy: cross-region), the rest Hangzhou adults. Visits: 60% pharmacy (41), 40% outpatient (11).
    Every visit has its own business second, so no two visits share a POS msgid prefix.
    """

    def __init__(self, pop: Population, seed: int, run_tag: str, timeout_ms: int, presettle: bool = True):
        self.pop = pop
        self.presettle = presettle  # False: settle straight away (2102 / 2207 without 2101 / 2206)
        self.rng = random.Random(seed * 1_000_003 + 4)
        self.run_tag = run_tag
        self.timeout_ms = timeout_ms
        self.kinds: Counter[str] = Counter()

    def command(self, i: int) -> tuple[bytes, str]:
        rng = self.rng
        r = rng.random()
        insutype = "310"
        if r < 0.10:
            kind, psn, region, area = "child", child_no(rng.randrange(self.pop.children)), HZ, HZ
            insutype = "390"
        elif r < 0.22:
            psn, region = adult_no(self.pop.bj_adult(rng)), BJ
            kind, area = ("bj-cross", HZ) if rng.random() < 0.2 else ("bj", BJ)
        else:
            kind, psn, region, area = "hz", adult_no(self.pop.hz_adult(rng)), HZ, HZ
        pharmacy = kind == "bj-cross" or rng.random() < 0.6
        if area == HZ:
            facility = rng.choice(HZ_PHARMACIES) if pharmacy else rng.choice(HZ_HOSPITALS)
        else:
            facility = "PBENCH110001" if pharmacy else "HBENCH110003"
        details = _details(rng, PHARMACY_ITEMS if pharmacy else OUTPATIENT_ITEMS, rng.randint(1, 3))
        self.kinds[f"{kind}/{'41' if pharmacy else '11'}"] += 1
        biz = (VISIT_EPOCH + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")
        visit_id = f"{self.run_tag}-{i}"
        cmd = {"cmd": "settle", "visit_id": visit_id, "fixmedins_code": facility, "insuplc_admdvs": region,
               "mdtrtarea_admvs": area, "psn_no": psn, "med_type": "41" if pharmacy else "11", "insutype": insutype,
               "biz_time": biz, "details": details, "presettle": self.presettle, "timeout_ms": self.timeout_ms}
        body = json.dumps(cmd, ensure_ascii=False).encode()
        if i < 20:
            SettleVisit.model_validate_json(body)  # what the bench sends is what the contracts accept
        return body, visit_id


# ---- a lean client: admin calls and outcome events ------------------------------------------------------
class BenchClient:
    """Like simulator.client.Client, but light on CPU (the bench shares the machine with what it measures):
    outcomes are parsed with json, not pydantic, and only the visits it waits for are tracked."""

    def __init__(self, amqp_url: str, names: Names):
        self.names = names
        self.broker = Broker(amqp_url, names, name="gongji-bench")
        self.key = f"bench-{uuid.uuid4().hex[:10]}"
        self.reply_queue = names.reply_queue(self.key)
        self.outcome_queue = f"{names.ns}.observe.{self.key}"
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.waiters: dict[str, asyncio.Future[tuple[str, bool]]] = {}
        self._seq = 0
        self.resent = 0  # admin messages sent again after no answer (see call)

    async def connect(self) -> None:
        await self.broker.connect()
        await self.broker.declare_topology()
        n = self.names
        await self.broker.declare_client_queue(self.reply_queue, [(n.reply_exchange, self.key)])
        await self.broker.declare_client_queue(self.outcome_queue, [(n.events_exchange, "outcome.#")])
        await self.broker.consume(self.reply_queue, self._on_reply, prefetch=256)
        await self.broker.consume(self.outcome_queue, self._on_outcome, prefetch=256)

    async def close(self) -> None:
        await self.broker.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        try:
            reply = json.loads(message.body)
        except ValueError:
            return
        fut = self._replies.get(reply.get("inf_refmsgid", ""))
        if fut is not None and not fut.done():
            fut.set_result(reply)

    async def _on_outcome(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        data = json.loads(message.body)
        fut = self.waiters.pop(data.get("visit_id", ""), None)
        if fut is not None and not fut.done():
            setl = data.get("setlinfo") or {}
            fut.set_result((data.get("status", "?"), setl.get("acct_mulaid_pay", "0.00") != "0.00",
                            int(data.get("round_trips") or 0)))

    def msgid(self) -> str:
        """Loading msgids: LOADER_CODE + a business second after LOAD_TIME + a 4-digit sequence."""
        n, self._seq = self._seq, self._seq + 1
        stamp = (LOAD_EPOCH + timedelta(seconds=n // 10000)).strftime("%Y%m%d%H%M%S")
        return make_msgid(LOADER_CODE, stamp, n % 10000)

    async def call(self, exchange: str, key: str, code: str, data: dict[str, Any], region: str,
                   timeout: float = 180.0, tries: int = 5) -> dict[str, Any]:
        """One admin transaction; resent with the same msgid (idempotent: a repeat gets the stored reply) if no
        answer comes in `timeout`, e.g. because the broker was restarted under us."""
        msgid = self.msgid()
        if exchange == self.names.bureau_exchange and code.startswith("G"):
            exchange = self.names.registry_exchange  # the bureau takes its admin transactions from there only
        env = {"infno": code, "msgid": msgid, "inf_time": LOAD_TIME, "fixmedins_code": LOADER_CODE,
               "insuplc_admdvs": region, "mdtrtarea_admvs": region, "opter": "bench", "input": data}
        body = json.dumps(env, ensure_ascii=False).encode()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[msgid] = fut
        try:
            for attempt in range(tries):
                try:
                    await self.broker.publish(OutMessage(exchange, key, body, message_id=msgid, reply_to=self.key))
                    reply = await asyncio.wait_for(asyncio.shield(fut), timeout)
                    break
                except (asyncio.TimeoutError, ConnectionError, aiormq.exceptions.AMQPError):
                    if attempt == tries - 1:
                        raise
                    self.resent += 1
                    await asyncio.sleep(1.0)
        finally:
            self._replies.pop(msgid, None)
        if reply.get("infcode") != 0:
            raise RuntimeError(f"{code} refused: {reply.get('err_code')} {reply.get('err_msg')}")
        return reply.get("output") or {}

    async def submit(self, body: bytes, visit_id: str) -> asyncio.Future[tuple[str, bool]]:
        fut: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        self.waiters[visit_id] = fut
        await self.broker.publish(OutMessage(self.names.pos_exchange, "command", body, message_id=visit_id))
        return fut


# ---- the raw ceiling: an echo over the same broker settings -----------------------------------------------
def raw_names(ns: str) -> tuple[str, str, str]:
    return f"{ns}.raw", f"{ns}.raw.requests", f"{ns}.raw.replies"


async def declare_raw(broker: Broker, ns: str) -> None:
    exchange, requests, replies = raw_names(ns)
    ch = broker._pub
    assert ch is not None
    ex = await ch.declare_exchange(exchange, ExchangeType.DIRECT, durable=True)
    for queue, key in ((requests, "req"), (replies, "rep")):
        q = await ch.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        await q.bind(ex, key)


async def echo_server(amqp_url: str, ns: str, prefetch: int) -> None:
    """Consume a request, publish it back (persistent, confirmed, mandatory), then ack: a worker without SQLite."""
    broker = Broker(amqp_url, Names(ns), name="gongji-bench-echo")
    await broker.connect()
    await declare_raw(broker, ns)
    exchange, requests, _ = raw_names(ns)

    async def on_message(message: AbstractIncomingMessage) -> None:
        await broker.publish(OutMessage(exchange, "rep", message.body, message_id=f"re:{message.message_id}",
                                        correlation_id=message.message_id))
        await message.ack()

    await broker.consume(requests, on_message, prefetch=prefetch)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("gongji bench echo ready", flush=True)
    await stop.wait()
    await broker.close()


async def measure_raw(amqp_url: str, ns: str, concurrency: int, duration: float, warmup: float,
                      prefetch: int, echo_pid_box: list[int], broker_pid: int | None = None) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-m", "simulator.bench", "echo", "--amqp-url", amqp_url,
                             "--namespace", ns, "--prefetch", str(prefetch)], stdout=subprocess.PIPE)
    echo_pid_box.append(proc.pid)
    try:
        await _wait_ready(proc, "echo")
        broker = Broker(amqp_url, Names(ns), name="gongji-bench-raw")
        await broker.connect()
        exchange, _, replies = raw_names(ns)
        waiting: dict[str, asyncio.Future[None]] = {}

        async def on_reply(message: AbstractIncomingMessage) -> None:
            await message.ack()
            fut = waiting.pop(message.correlation_id or "", None)
            if fut is not None and not fut.done():
                fut.set_result(None)

        await broker.consume(replies, on_reply, prefetch=256)
        body = b"x" * 900  # about the size of a settle request
        loop = asyncio.get_running_loop()
        t_start = loop.time()
        t_measure, t_end = t_start + warmup, t_start + warmup + duration
        samples: list[tuple[float, float]] = []
        lost: list[str] = []
        seq = iter(range(10 ** 12))
        cpu = {}

        async def one_loop() -> None:
            while loop.time() < t_end:
                mid = f"r{next(seq)}"
                fut: asyncio.Future[None] = loop.create_future()
                waiting[mid] = fut
                t0 = loop.time()
                try:
                    await broker.publish(OutMessage(exchange, "req", body, message_id=mid))
                    await asyncio.wait_for(fut, 30)
                except (asyncio.TimeoutError, ConnectionError, aiormq.exceptions.AMQPError):
                    lost.append(mid)  # e.g. the broker restarted under us: counted, not fatal
                    waiting.pop(mid, None)
                    continue
                samples.append((t0, loop.time()))

        async def mark() -> None:
            await asyncio.sleep(warmup)
            cpu["echo0"], cpu["self0"] = proc_cpu_s(proc.pid) or 0.0, self_cpu_s()
            cpu["broker0"], cpu["sys0"] = (proc_cpu_s(broker_pid) if broker_pid else None), system_cpu()
            await asyncio.sleep(duration)
            cpu["echo1"], cpu["self1"] = proc_cpu_s(proc.pid) or 0.0, self_cpu_s()
            cpu["broker1"], cpu["sys1"] = (proc_cpu_s(broker_pid) if broker_pid else None), system_cpu()

        await asyncio.gather(mark(), *(one_loop() for _ in range(concurrency)))
        await broker.close()
        done = [(a, b) for a, b in samples if t_measure <= b <= t_end]
        lat = sorted((b - a) * 1000 for a, b in done)
        return {"raw_round_trips_per_s": round(len(done) / duration, 1), "raw_concurrency": concurrency,
                "raw_lost": len(lost),
                "raw_duration_s": duration, "raw_round_trips": len(done),
                "raw_p50_ms": round(percentile(lat, 50), 2), "raw_p99_ms": round(percentile(lat, 99), 2),
                "raw_echo_cpu_s": round(cpu.get("echo1", 0) - cpu.get("echo0", 0), 2),
                "raw_client_cpu_s": round(cpu.get("self1", 0) - cpu.get("self0", 0), 2),
                "raw_broker_cpu_s": (round(cpu["broker1"] - cpu["broker0"], 2)
                                     if cpu.get("broker0") is not None and cpu.get("broker1") is not None else None),
                "raw_broker_cpu_ms_per_round_trip": (
                    round((cpu["broker1"] - cpu["broker0"]) / max(1, len(done)) * 1000, 3)
                    if cpu.get("broker0") is not None and cpu.get("broker1") is not None else None),
                "raw_system_cpu": system_cpu_share(cpu.get("sys0", []), cpu.get("sys1", []))}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---- worker processes -----------------------------------------------------------------------------------
async def _wait_ready(proc: subprocess.Popen[bytes], what: str, timeout: float = 120.0) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
    if b"ready" not in line:
        raise RuntimeError(f"{what} did not start: {line!r}")


class Workers:
    def __init__(self, amqp_url: str, ns: str, data_dir: Path, prefetch: int):
        self.amqp_url, self.ns, self.data_dir, self.prefetch = amqp_url, ns, data_dir, prefetch
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    async def start(self) -> None:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GONGJI_LOG_FORMAT": "json"}
        replicas = int(os.environ.get("GONGJI_BENCH_REPLICAS", "1"))  # processes per service (issue 12)
        for service in [s if r == 1 else f"{s}#{r}" for r in range(1, replicas + 1) for s in WORKERS]:
            cmd = [sys.executable, "-m", "simulator.cli", "worker", service.split("#")[0], "--namespace", self.ns,
                   "--data-dir", str(self.data_dir), "--amqp-url", self.amqp_url, "--prefetch", str(self.prefetch)]
            with open(logs / f"{service}.log", "ab") as log:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
            self.procs[service] = proc
            try:
                await _wait_ready(proc, f"{service} worker")
            except Exception as exc:
                tail = (logs / f"{service}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{exc}; its log ends with:\n{tail}") from None

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())


async def cleanup_namespace(amqp_url: str, ns: str, extra_queues: list[str], extra_exchanges: list[str]) -> None:
    """Delete this run's queues and exchanges: the shared cleanup (simulator.stack), plus the bench's own."""
    import aio_pika

    from simulator.stack import cleanup_namespace as cleanup_standard
    n = Names(ns)
    await cleanup_standard(amqp_url, ns, [n.bureau_queue(None), n.accounts_pay_queue, n.accounts_admin_queue,
                                          n.pos_command_queue, n.reply_queue("pos"), n.reply_queue("bureau"),
                                          n.reply_queue("bureau-all"),
                                          n.events_archive_queue, n.dead_queue, *extra_queues])
    if extra_exchanges:
        conn = await aio_pika.connect(amqp_url)
        try:
            for ex in extra_exchanges:
                try:
                    await (await conn.channel()).exchange_delete(ex)
                except Exception:
                    pass
        finally:
            await conn.close()


# ---- loading --------------------------------------------------------------------------------------------
async def load_population(client: BenchClient, pop: Population, window: int = 4,
                          throttle: Any = None) -> dict[str, Any]:
    """Facilities, persons (G003) and accounts (G103) in bulk, then holders (G104) and bindings (G111).
    `throttle`, if given, is awaited before each G103 message (see --load-max-outbox)."""
    n = client.names
    t0 = time.perf_counter()
    for code, name, kind, lv, region in FACILITIES:
        await client.call(n.bureau_exchange, REGISTRY_KEY, "G001",
                          {"fixmedins_code": code, "fixmedins_name": name, "fixmedins_type": kind, "hosp_lv": lv,
                           "admdvs": region}, region)
    persons = pop.persons()
    accounts = pop.accounts_rows()
    # The models check a sample: what we send in bulk is what the contracts accept.
    for p in persons[HZ][:3] + persons[HZ][-3:] + persons[BJ][:3]:
        RegisterPerson.model_validate(p)
    for a in accounts[:5]:
        OpenAccount.model_validate(a)
    t_gen = time.perf_counter() - t0

    async def bulk(jobs: list[tuple[str, str, str, dict[str, Any], str]], window: int = window) -> float:
        t = time.perf_counter()
        sem = asyncio.Semaphore(window)

        async def one(job: tuple[str, str, str, dict[str, Any], str]) -> None:
            async with sem:
                if throttle is not None and job[2] == "G103":
                    await throttle()
                await client.call(*job)
        await asyncio.gather(*(one(j) for j in jobs))
        return time.perf_counter() - t

    person_jobs = [(n.bureau_exchange, region, "G003", {"persons": rows[k:k + BULK]}, region)
                   for region, rows in persons.items() for k in range(0, len(rows), BULK)]
    account_jobs = [(n.accounts_exchange, "admin", "G103", {"accounts": accounts[k:k + BULK]}, HZ)
                    for k in range(0, len(accounts), BULK)]
    t1 = time.perf_counter()
    t_persons, t_accounts = await asyncio.gather(bulk(person_jobs), bulk(account_jobs))
    bindings = pop.bindings()
    for b in bindings[:3]:
        Bind.model_validate(b)
    t_bind = 0.0
    if "G104" in infno.ACCOUNTS_ADMIN_INPUTS:  # members without an account must be known to the accounts service
        t_bind += await bulk([(n.accounts_exchange, "admin", "G104", h, HZ) for h in pop.holders()], window=32)
    sem = asyncio.Semaphore(32)

    async def bind_one(b: dict[str, Any]) -> None:
        async with sem:
            if "G109" in infno.ACCOUNTS_ADMIN_INPUTS:  # the identity check is a recorded face check's token
                out = await client.call(n.accounts_exchange, "admin", "G109",
                                        {"psn_no": b["authorizer_psn_no"], "passed": True}, HZ)
                b = {**b, "verify": {"method": "face", "token": out["face_token"]}}
            await client.call(n.accounts_exchange, "admin", "G111", b, HZ)
    t = time.perf_counter()
    await asyncio.gather(*(bind_one(b) for b in bindings))
    t_bind += time.perf_counter() - t
    total = time.perf_counter() - t0
    return {"load_s": round(total, 2), "load_persons_s": round(t_persons, 2), "load_accounts_s": round(t_accounts, 2),
            "load_bulk_wall_s": round(time.perf_counter() - t1 - t_bind, 2), "load_bindings_s": round(t_bind, 2),
            "load_generate_s": round(t_gen, 2), "persons": sum(len(v) for v in persons.values()),
            "bindings": len(bindings), "bulk_messages": len(person_jobs) + len(account_jobs)}


def outbox_rows(data_dir: Path) -> dict[str, int]:
    """Rows waiting in each worker's outbox (read-only; WAL lets us read while the worker writes)."""
    import sqlite3
    if os.environ.get("GONGJI_DATABASE_URL"):  # the workers are on PostgreSQL (issue 12)
        from services.shared.pg_admin import outbox_rows as pg_outbox_rows
        return pg_outbox_rows(os.environ["GONGJI_DATABASE_URL"])
    out = {}
    for db in sorted(data_dir.glob("*.db")):
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                out[db.stem] = int(con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            finally:
                con.close()
        except sqlite3.Error:
            pass
    return out


def worker_publishes(data_dir: Path) -> dict[str, int]:
    """Messages each worker's broker confirmed so far, from the counters in their stats files (one file per
    process; a restarted worker's files add up)."""
    out: dict[str, int] = {}
    for f in sorted((data_dir / "stats").glob("*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        out[d.get("service", f.stem)] = out.get(d.get("service", f.stem), 0) + int(d.get("broker_publishes") or 0)
    return out


def sum_stat(data_dir: Path, key: str) -> int:
    """A counter summed over every worker's stats files (whole run)."""
    total = 0
    for f in (data_dir / "stats").glob("*.json"):
        try:
            total += int(json.loads(f.read_text()).get(key) or 0)
        except (OSError, ValueError):
            pass
    return total


async def publish_mark(data_dir: Path, client: Any, timeout: float) -> dict[str, int]:
    """Every publish so far, once the outboxes are empty and the stats files (written each second) caught up."""
    await quiesce(data_dir, timeout)
    await asyncio.sleep(1.5)
    return {**worker_publishes(data_dir), "bench_client": client.broker.published}


async def quiesce(data_dir: Path, timeout: float) -> dict[str, Any]:
    """Wait until every outbox is empty, so that what loading left for the relay (e.g. one balance event per
    bulk-opened account) is not measured as settlement work."""
    t0 = time.perf_counter()
    first = rows = await asyncio.to_thread(outbox_rows, data_dir)
    while sum(rows.values()) and time.perf_counter() - t0 < timeout:
        await asyncio.sleep(1.0)
        rows = await asyncio.to_thread(outbox_rows, data_dir)
    return {"outbox_rows_after_load": first, "quiesce_s": round(time.perf_counter() - t0, 1),
            "outbox_rows_left": rows}


# ---- driving visits -------------------------------------------------------------------------------------
@dataclass
class Record:
    t_send: float  # scheduled (open loop) or actual (closed loop) send time
    t_done: float
    status: str
    mulaid: bool
    round_trips: int = 0  # national transactions the visit took (the POS counts them; sign-in excluded)


def round_trips_per_settlement(settled: list[Record]) -> float:
    """The mean number of national round trips a settled visit of the mix took (2 for a pharmacy 2101 → 2102,
    5 for an outpatient 2201 → 2203 → 2204 → 2206 → 2207); 2 when nothing was counted."""
    counted = [r.round_trips for r in settled if r.round_trips > 0]
    return round(sum(counted) / len(counted), 3) if counted else 2.0


async def drive(client: BenchClient, mix: VisitMix, records: list[Record], *, concurrency: int | None,
                rate: float | None, warmup: float, duration: float, seed: int, on_window: Any, drain_timeout: float,
                max_outstanding: int) -> tuple[float, float, int]:
    """Sends visits until warm-up + duration is over, then waits for the stragglers; appends to `records`."""
    loop = asyncio.get_running_loop()
    counter = iter(range(10 ** 12))
    t_start = loop.time()
    t_measure, t_end = t_start + warmup, t_start + warmup + duration
    pending: set[asyncio.Future[Any]] = set()
    failures = Counter[str]()

    async def one(t_sched: float | None) -> None:
        body, visit_id = mix.command(next(counter))
        t0 = loop.time() if t_sched is None else t_sched
        try:
            fut = await client.submit(body, visit_id)
            status, mulaid, trips = await asyncio.wait_for(fut, mix.timeout_ms / 1000 * 3 + 30)
        except Exception as exc:  # a lost outcome is a result too, not a crash of the bench
            failures[type(exc).__name__] += 1
            client.waiters.pop(visit_id, None)
            status, mulaid, trips = f"error:{type(exc).__name__}", False, 0
        records.append(Record(t0, loop.time(), status, mulaid, trips))

    window_task = asyncio.create_task(on_window(t_measure, t_end))
    if concurrency is not None:
        async def closed() -> None:
            while loop.time() < t_end:
                await one(None)
        await asyncio.gather(*(closed() for _ in range(concurrency)))
    else:
        assert rate is not None
        rng = random.Random(seed * 1_000_003 + 5)
        t_next = t_start
        sem = asyncio.Semaphore(max_outstanding)

        async def opened(t_sched: float) -> None:
            try:
                await one(t_sched)
            finally:
                sem.release()

        while t_next < t_end:
            delay = t_next - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await sem.acquire()
            task = asyncio.ensure_future(opened(t_next))
            pending.add(task)
            task.add_done_callback(pending.discard)
            t_next += rng.expovariate(rate)
        if pending:
            await asyncio.wait(pending, timeout=drain_timeout)
    await window_task
    return t_measure, t_end, len(pending)


async def _run_profilers(pids: dict[str, int], out_dir: Path, duration: float, rate: int,
                         gil: bool) -> dict[str, Path]:
    exe = shutil.which("py-spy")
    if exe is None:
        print("  --profile: py-spy is not installed (pip install py-spy); no profile taken", file=sys.stderr)
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    procs, files = [], {}
    for name, pid in pids.items():
        path = out_dir / f"{name}.collapsed.txt"
        procs.append(await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(pid), "--duration", str(max(1, int(duration))), "--rate", str(rate),
            "--format", "raw", "--nonblocking", *(["--gil"] if gil else []), "-o", str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
        files[name] = path
    await asyncio.gather(*(p.wait() for p in procs))
    return files


PROFILE_AREAS = [  # (area, substrings of a frame's file); a sample goes to the area of its innermost match
    ("amqp client (aio-pika/aiormq/pamqp)", ("aio_pika/", "aiormq/", "pamqp/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("json", ("json/",)),
    ("structlog", ("structlog/",)),
    ("thread handoff (executor, futures, locks)", ("concurrent/futures/", "threading.py", "queue.py")),
    ("sqlite & outbox (shared/store.py)", ("shared/store.py", "sqlite3")),
    ("gongji handlers, domain, contracts", ("services/", "contracts/")),
    ("asyncio event loop & socket I/O", ("asyncio/", "selectors.py")),
]


def profile_area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for area, needles in PROFILE_AREAS:
            if any(n in frame for n in needles):
                return area
    return "other"


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks, and self time by area."""
    self_s: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    try:
        text = path.read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        self_s[frames[-1]] += count
        areas[profile_area(frames)] += count
        threads["event loop thread" if frames[0].startswith("_run_module_as_main") else "other threads (store)"] \
            += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return {"samples": 0}
    return {"samples": total,
            "by_area": [(a, round(c / total * 100, 1)) for a, c in areas.most_common()],
            "by_thread": [(t, round(c / total * 100, 1)) for t, c in threads.most_common()],
            "self": [(f, round(c / total * 100, 1)) for f, c in self_s.most_common(top)],
            "inclusive": [(f, round(c / total * 100, 1)) for f, c in incl.most_common(top * 2)]}


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from services.shared.broker import wait_for_broker
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
        if args.via_gateway:  # HTTP client → gateway → bureau → accounts (simulator/bench_http.py)
            from .bench_http import HttpVisits, start_gateway
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", DEFAULT_AMQP_URL),
                   help="RabbitMQ URL (env AMQP_URL; default %(default)s)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds (default %(default)s)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=None,
                      help="closed loop: visits outstanding at once (default 16: the most throughput on a 2-core machine, see BENCHMARKS.md)")
    load.add_argument("--rate", type=float, default=None,
                      help="open loop: visits per second (Poisson); latency from the scheduled send time")
    p.add_argument("--accounts", type=int, default=1000, help="personal accounts to load (default %(default)s)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the figures as JSON")
    p.add_argument("--warmup", type=float, default=None, help="seconds excluded first (default 20%% of "
                                                               "--duration, 1..5)")
    p.add_argument("--raw-duration", type=float, default=None, help="seconds of the echo ceiling (default "
                                                                     "--duration/2, 3..15)")
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


# ---- the same workers without a broker: what gongji's own code costs ---------------------------------------
class _FakeMessage:
    def __init__(self, queue: "_FakeQueue", msg: OutMessage):
        self._queue = queue
        self.body = msg.body
        self.message_id = msg.message_id
        self.correlation_id = msg.correlation_id
        self.reply_to = msg.reply_to
        self.headers = msg.headers or {}
        self.redelivered = False
        self.exchange, self.routing_key, self.user_id = msg.exchange, msg.routing_key, None

    async def ack(self) -> None:
        self._queue.settle()

    async def nack(self, requeue: bool = True) -> None:
        self._queue.settle()
        if requeue:
            self._queue.deliver(OutMessage("", "", self.body, self.message_id, self.correlation_id, self.reply_to,
                                           self.headers))


class _FakeQueue:
    def __init__(self) -> None:
        self.pending: list[OutMessage] = []
        self.callback: Any = None
        self.prefetch = 0
        self.inflight = 0
        self.dropped = 0

    def deliver(self, msg: OutMessage) -> None:
        self.pending.append(msg)
        self.pump()

    def settle(self) -> None:
        self.inflight -= 1
        self.pump()

    def pump(self) -> None:
        if self.callback is None:
            if len(self.pending) > 10000:  # nobody consumes it (the events archive): keep memory flat
                self.dropped += len(self.pending)
                self.pending.clear()
            return
        while self.pending and self.inflight < self.prefetch:
            self.inflight += 1
            msg = self.pending.pop(0)
            asyncio.get_running_loop().create_task(self.callback(_FakeMessage(self, msg)))


class _FakeExchange:
    def __init__(self, name: str, kind: Any):
        self.name, self.kind = name, kind


class _FakeQueueDecl:
    def __init__(self, broker: "FakeBroker", name: str):
        self.broker, self.name = broker, name

    async def bind(self, exchange: Any, routing_key: str = "") -> None:
        name = exchange if isinstance(exchange, str) else exchange.name
        if (routing_key, self.name) not in self.broker.bindings.setdefault(name, []):
            self.broker.bindings[name].append((routing_key, self.name))


class _FakeChannel:
    """Records what the real Broker declares, so the in-memory topology is always the real one."""

    def __init__(self, broker: "FakeBroker"):
        self.broker = broker

    async def declare_exchange(self, name: str, kind: Any = ExchangeType.DIRECT, durable: bool = True,
                               **_: Any) -> _FakeExchange:
        self.broker.kinds[name] = kind
        return _FakeExchange(name, kind)

    async def declare_queue(self, name: str, durable: bool = True, arguments: Any = None, **_: Any) -> _FakeQueueDecl:
        self.broker.queues.setdefault(name, _FakeQueue())
        return _FakeQueueDecl(self.broker, name)

    async def get_exchange(self, name: str, ensure: bool = True) -> _FakeExchange:
        return _FakeExchange(name, self.broker.kinds.get(name, ExchangeType.DIRECT))


class FakeBroker(Broker):
    """services.shared.broker.Broker with the AMQP connection replaced by memory: the topology is declared by the
    real Broker code into a recording channel; publish routes direct, topic (`#`, `prefix.#`) and fanout, raises
    Unroutable like mandatory publishing, and delivers with prefetch and ack/nack. Used to measure the workers'
    own code (handlers, SQLite, outbox, asyncio) without the AMQP client and the broker."""

    def __init__(self, names: Names):
        super().__init__("memory://", names, name="gongji-inproc")
        self.queues: dict[str, _FakeQueue] = {}
        self.bindings: dict[str, list[tuple[str, str]]] = {}  # exchange -> [(key pattern, queue)]
        self.kinds: dict[str, Any] = {}
        self.published = 0
        self._pub = _FakeChannel(self)  # type: ignore[assignment]

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _match(self, exchange: str, pattern: str, key: str) -> bool:
        kind = self.kinds.get(exchange, ExchangeType.DIRECT)
        if kind == ExchangeType.FANOUT:
            return True
        if kind == ExchangeType.TOPIC:
            if pattern == "#":
                return True
            if pattern.endswith(".#"):
                return key == pattern[:-2] or key.startswith(pattern[:-1])
        return pattern == key

    async def publish(self, msg: OutMessage) -> None:
        from services.shared.broker import Unroutable
        targets = {q for pattern, q in self.bindings.get(msg.exchange, [])
                   if self._match(msg.exchange, pattern, msg.routing_key)}
        if not targets:
            raise Unroutable(f"no queue for {msg.exchange!r} key {msg.routing_key!r}")
        self.published += 1
        for q in targets:
            self.queues[q].deliver(msg)

    async def consume(self, queue: str, callback: Any, prefetch: int = 64) -> None:
        q = self.queues.setdefault(queue, _FakeQueue())
        q.callback, q.prefetch = callback, prefetch
        q.pump()

    async def halt(self) -> None:
        """Deliver nothing more, and give the deliveries in flight a moment to finish."""
        for q in self.queues.values():
            q.callback = None
        for _ in range(50):
            if not any(q.inflight > 0 for q in self.queues.values()):
                break
            await asyncio.sleep(0.1)


async def run_inproc(args: argparse.Namespace) -> dict[str, Any]:
    """The three workers' real setup (handlers, Worker loop, SQLite stores with their threads) in this one
    process on a FakeBroker, driven like `gongji bench`: CPU per settlement of gongji's own code."""
    from services.accounts.worker import setup as accounts_setup
    from services.bureau.worker import setup as bureau_setup
    from services.pos.worker import setup as pos_setup
    from services.shared.entry import WorkerConfig
    from services.shared.logging import configure
    configure("bench-inproc", "WARNING")
    ns = f"inproc-{uuid.uuid4().hex[:8]}"
    data_dir = Path(tempfile.mkdtemp(prefix="gongji-inproc-"))
    names = Names(ns)
    broker = FakeBroker(names)
    await broker.declare_topology()
    cfg = WorkerConfig(amqp_url="memory://", namespace=ns, data_dir=data_dir, prefetch=args.prefetch)
    workers = [await setup(cfg, broker) for setup in (bureau_setup, accounts_setup, pos_setup)]  # type: ignore
    try:
        client = BenchClient("memory://", names)
        client.broker = broker  # type: ignore[assignment]
        await client.connect()
        pop = Population(args.accounts, args.seed)
        load = await load_population(client, pop)
        load.update(await quiesce(data_dir, 3600))
        mix = VisitMix(pop, args.seed, "i", int(args.visit_timeout * 1000))
        records: list[Record] = []
        marks: dict[str, Any] = {"published0": broker.published}

        async def on_window(t_measure: float, t_end: float) -> None:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, t_measure - loop.time()))
            marks["d0"] = proc_detail(None)
            await asyncio.sleep(max(0.0, t_end - loop.time()))
            marks["d1"] = proc_detail(None)

        warmup = args.warmup if args.warmup is not None else min(5.0, max(1.0, args.duration * 0.2))
        t_measure, t_end, _ = await drive(client, mix, records, concurrency=args.concurrency, rate=None,
                                          warmup=warmup, duration=args.duration, seed=args.seed,
                                          on_window=on_window, drain_timeout=60, max_outstanding=20000)
        settled = [r for r in records if t_measure <= r.t_done <= t_end and r.status == "settled"]
        lat = sorted((r.t_done - r.t_send) * 1000 for r in settled)
        d0, d1 = marks["d0"], marks["d1"]
        cpu = (d1["user_s"] - d0["user_s"]) + (d1["sys_s"] - d0["sys_s"])
        acc = await client.call(names.accounts_exchange, "admin", "G199", {}, HZ)
        bur = await client.call(names.bureau_exchange, HZ, "G199", {}, HZ)
        return {"mode": "in-process (no broker)", "concurrency": args.concurrency, "duration_s": args.duration,
                "accounts": args.accounts, "settlements_per_s": round(len(settled) / args.duration, 1),
                "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
                "cpu_s": round(cpu, 2), "user_s": round(d1["user_s"] - d0["user_s"], 2),
                "sys_s": round(d1["sys_s"] - d0["sys_s"], 2),
                "cpu_ms_per_settlement": round(cpu / max(1, len(settled)) * 1000, 3),
                "statuses": dict(Counter(r.status for r in records)), "load": load,
                "visits": len(records),
                "publishes_per_visit": round((broker.published - marks["published0"]) / max(1, len(records)), 2),
                "audit_ok": acc.get("ledger_sum_fen") == 0 and not acc.get("balance_mismatches")
                and not bur.get("accumulator_mismatches")}
    finally:
        await broker.halt()
        for w in workers:
            await w.stop()
            await w.store.close()
        shutil.rmtree(data_dir, ignore_errors=True)


async def _cancellable(coro: Any) -> Any:
    """SIGTERM/SIGINT cancel the run, so that its finally blocks stop the workers and delete the namespace
    (also when started in the background, where SIGINT is ignored by default)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await task


def _module_main(argv: list[str]) -> int:
    """`python -m simulator.bench echo ...` (the raw ceiling's echo process, started by the bench) or
    `python -m simulator.bench inproc ...` (the workers' own code on an in-memory broker)."""
    p = argparse.ArgumentParser(prog="python -m simulator.bench")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", DEFAULT_AMQP_URL))
    e.add_argument("--namespace", required=True)
    e.add_argument("--prefetch", type=int, default=64)
    i = sub.add_parser("inproc")
    i.add_argument("--duration", type=float, default=10.0)
    i.add_argument("--concurrency", type=int, default=32)
    i.add_argument("--accounts", type=int, default=1000)
    i.add_argument("--warmup", type=float, default=None)
    i.add_argument("--seed", type=int, default=6)
    i.add_argument("--prefetch", type=int, default=64)
    i.add_argument("--visit-timeout", type=float, default=30.0)
    i.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.cmd == "echo":
        asyncio.run(echo_server(a.amqp_url, a.namespace, a.prefetch))
        return 0
    result = asyncio.run(run_inproc(a))
    text = json.dumps(result, indent=2, ensure_ascii=False, default=str)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_module_main(sys.argv[1:]))
