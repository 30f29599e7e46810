"""The same workers without a broker: what gongji's own code costs (`python -m simulator.bench inproc`)."""
from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from aio_pika.abc import ExchangeType

from contracts.routing import Names
from services.accounts.worker import setup as accounts_setup
from services.bureau.worker import setup as bureau_setup
from services.pos.worker import setup as pos_setup
from services.shared.broker import Broker, Unroutable
from services.shared.entry import WorkerConfig
from services.shared.logging import configure
from services.shared.store import OutMessage

from .client import BenchClient
from .metrics import Record, percentile
from .population import HZ, Population, VisitMix
from .processes import proc_detail
from .traffic import drive, load_population
from .workers import quiesce


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
