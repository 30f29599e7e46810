"""The raw ceiling: an echo over the same broker settings as the workers, driven closed-loop."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from contracts.routing import Names
from services.shared.broker import Broker
from services.shared.store import OutMessage

from .metrics import percentile
from .processes import proc_cpu_s, self_cpu_s, system_cpu, system_cpu_share
from .workers import _wait_ready


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
