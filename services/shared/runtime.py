"""The loop every worker runs: take a message, run its handler (which commits the effect, the inbox
entry and the outbox in one transaction), publish the outbox, then ack. Never the other way round.

If the process dies anywhere in between, the broker redelivers the message (not yet acked) and the
inbox turns it into a replay of the stored reply; committed-but-unpublished outbox rows are published
by the relay at the next start.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import structlog
from aio_pika.abc import AbstractIncomingMessage

from contracts import wire
from contracts.envelope import Reply
from contracts.errors import ErrorCode

from .broker import Broker, Unroutable
from .store import CHUNK, OutMessage, Store, outbox_delete, outbox_load

# Duplicates the handlers recognised and absorbed (inbox hits, stale answers); shared by this process.
inbox_counters = {"duplicates_absorbed": 0}

log = structlog.get_logger()

MAX_BODY = 1_000_000  # bytes; larger messages are refused before parsing


class Poison(Exception):
    """The message can never be processed (not JSON, no envelope, too large): dead-letter it."""


@dataclass(frozen=True)
class Incoming:
    body: bytes
    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    headers: dict[str, Any]
    redelivered: bool

    def json(self) -> Any:
        if len(self.body) > MAX_BODY:
            raise Poison(f"message of {len(self.body)} bytes is larger than {MAX_BODY}")
        try:
            return wire.loads(self.body)  # numbers with a fraction → Decimal, never float
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Poison(f"not JSON: {exc}") from None


Handler = Callable[[Incoming], Awaitable[list[int]]]


class Worker:
    """Wires handlers onto queues; owns the outbox relay."""

    def __init__(self, broker: Broker, store: Store):
        self.broker = broker
        self.store = store
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = {"handled": 0, "dead_lettered": 0, "redelivered": 0, "published": 0, "chaos_duplicates": 0,
                      "chaos_delays": 0}
        self.chaos = Chaos.from_env()
        # Called for an outbox message no queue would take, after it is parked in the dead-letter queue.
        self.on_unroutable: Callable[[OutMessage], Awaitable[None]] | None = None

    async def serve(self, queue: str, handler: Handler, prefetch: int = 64) -> None:
        async def on_message(message: AbstractIncomingMessage) -> None:
            incoming = Incoming(message.body, message.message_id, message.correlation_id, message.reply_to,
                                dict(message.headers or {}), bool(message.redelivered))
            structlog.contextvars.bind_contextvars(msgid=message.message_id, queue=queue)
            if incoming.redelivered:
                self.stats["redelivered"] += 1
            try:
                ids = await handler(incoming)
            except Poison as exc:
                log.warning("dead-lettered", reason=str(exc))
                await self.broker.dead_letter(message, str(exc), queue)
                if incoming.reply_to:  # tell the sender too, if it can be told; nothing changed
                    ref = incoming.message_id or incoming.correlation_id or ""
                    body = Reply.fail(ref, ErrorCode.BAD_MESSAGE, str(exc)).model_dump_json().encode()
                    try:
                        await self.broker.publish(OutMessage(self.broker.names.reply_exchange, incoming.reply_to,
                                                             body, message_id=f"re:{ref}", correlation_id=ref))
                    except Unroutable:
                        pass
                self.stats["dead_lettered"] += 1
                await message.ack()
                return
            except Exception:
                # Not acked: the broker redelivers; after DELIVERY_LIMIT tries it dead-letters it.
                log.exception("handler failed; message returned to the queue")
                await asyncio.sleep(0.5)
                await message.nack(requeue=True)
                return
            try:
                await self.flush(ids)
            except Exception:
                log.exception("publishing the outbox failed; the relay will retry")
            await message.ack()
            self.stats["handled"] += 1

        await self.broker.consume(queue, on_message, prefetch=prefetch)

    async def flush(self, ids: list[int] | None = None, older_than: float | None = None) -> int:
        """Publish outbox rows (these ids, or one bounded batch older than a time); returns how many.

        The rows go out together and their confirms are awaited together (one wait for the batch, not one
        per message). A row leaves the outbox only once the broker has confirmed it; if any publish fails,
        the confirmed rows are still removed and the rest stay for the relay."""
        rows = await self.store.run(lambda c: outbox_load(c, ids=ids, older_than=older_than))

        async def one(row_id: int, msg: OutMessage) -> int:
            try:
                await self._publish(msg)
            except Unroutable as exc:
                # Nobody can receive it (e.g. a client that went away): park it with the reason.
                log.warning("unroutable outbox message dead-lettered", error=str(exc))
                await self.broker.publish(OutMessage(self.broker.names.dlx, "", msg.body, msg.message_id,
                                                     msg.correlation_id, msg.reply_to,
                                                     {**(msg.headers or {}), "x-gongji-reason": str(exc)}))
                if self.on_unroutable is not None:
                    await self.on_unroutable(msg)
                return row_id
            self.stats["published"] += 1
            return row_id

        results = await asyncio.gather(*(one(row_id, msg) for row_id, msg in rows), return_exceptions=True)
        done = [r for r in results if isinstance(r, int)]
        if done:
            await self.store.run(lambda c: outbox_delete(c, done))
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return len(rows)

    async def flush_backlog(self, older_than: float) -> None:
        """Everything older than a time, batch by batch (a bulk load can leave hundreds of thousands)."""
        while await self.flush(older_than=older_than) >= CHUNK:
            pass

    async def _publish(self, msg: OutMessage) -> None:
        if self.chaos is not None and self.chaos.roll("delay"):
            self.stats["chaos_delays"] += 1
            await asyncio.sleep(self.chaos.rng.uniform(0, self.chaos.delay_ms) / 1000)
        await self.broker.publish(msg)
        if self.chaos is not None and self.chaos.roll("duplicate"):
            self.stats["chaos_duplicates"] += 1
            await self.broker.publish(msg)  # the receiver's inbox must absorb it

    def start_stats(self, directory: Path, service: str, every: float = 1.0) -> None:
        """Counters for the simulator's fault report, in <data_dir>/stats/<service>-<pid>.json."""
        directory.mkdir(parents=True, exist_ok=True)
        self._stats_path = directory / f"{service}-{os.getpid()}.json"
        self._service = service

        async def writer() -> None:
            while True:
                self.write_stats()
                await asyncio.sleep(every)
        self._tasks.append(asyncio.create_task(writer()))

    def write_stats(self) -> None:
        path = getattr(self, "_stats_path", None)
        if path is None:
            return
        data = {"service": self._service, "pid": os.getpid(), **self.stats,
                "duplicates_absorbed": inbox_counters["duplicates_absorbed"]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        tmp.replace(path)

    async def start_relay(self, every: float = 2.0, grace: float = 5.0) -> None:
        """Publishes what a crash left in the outbox now, then keeps an eye on rows older than `grace`."""
        await self.flush_backlog(older_than=time.time() + 1)

        async def relay() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    await self.flush_backlog(older_than=time.time() - grace)
                except Exception:
                    log.exception("outbox relay failed; retrying")
        self._tasks.append(asyncio.create_task(relay()))

    def start_task(self, coro: Awaitable[None]) -> None:
        self._tasks.append(asyncio.ensure_future(coro))  # type: ignore[arg-type]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.write_stats()


@dataclass
class Chaos:
    """GONGJI_CHAOS='{"seed": 1, "duplicate": 0.1, "delay": 0.1, "delay_ms": 400}': fault injection for the
    simulator's fault scenarios. Outbox messages are sometimes published twice, or late (which reorders)."""

    rng: random.Random
    duplicate: float = 0.0
    delay: float = 0.0
    delay_ms: int = 0

    @classmethod
    def from_env(cls) -> "Chaos | None":
        raw = os.environ.get("GONGJI_CHAOS")
        if not raw:
            return None
        cfg = json.loads(raw)
        return cls(random.Random(f"{cfg.get('seed', 0)}:{os.getpid()}"), float(cfg.get("duplicate", 0)),
                   float(cfg.get("delay", 0)), int(cfg.get("delay_ms", 0)))

    def roll(self, kind: str) -> bool:
        return self.rng.random() < getattr(self, kind)

