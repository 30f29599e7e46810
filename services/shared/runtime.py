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

from . import batching
from .access import reply_allowed
from .broker import Broker, Unroutable, parked
from .health import is_transient
from .store import CHUNK, OutMessage, Store, outbox_delete, outbox_forget, outbox_load, outbox_written

# Duplicates the handlers recognised and absorbed (inbox hits, stale answers); shared by this process.
inbox_counters = {"duplicates_absorbed": 0}

log = structlog.get_logger()

ITEM_TRIES = 5  # a batch item whose handler fails (a bug, not the store) this often is refused alone
MAX_BODY = 1_000_000  # bytes; larger messages are refused before parsing


class Poison(Exception):
    """The message can never be processed (not JSON, no envelope, too large): dead-letter it."""

    reply = True  # tell the sender (its reply_to) too


class Forbidden(Poison):
    """The sender may not ask for this (wrong exchange, someone else's reply queue): parked with the reason,
    and no answer is sent anywhere."""

    reply = False


@dataclass(frozen=True)
class Incoming:
    body: bytes
    message_id: str | None
    correlation_id: str | None
    reply_to: str | None
    headers: dict[str, Any]
    redelivered: bool
    exchange: str = ""  # where it was published (set by the broker)
    user_id: str | None = None  # the authenticated sender (validated by the broker)

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
        self.stats: dict[str, Any] = {"handled": 0, "dead_lettered": 0, "redelivered": 0, "published": 0,
                                      "chaos_duplicates": 0, "chaos_delays": 0, "healthy": True,
                                      "unhealthy_spells": 0, "transient_failures": 0, "transient_retries": 0}
        # Cleared while the store or the broker fails (transient): deliveries are held, not nacked.
        self.healthy = asyncio.Event()
        self.healthy.set()
        self._probing = asyncio.Lock()
        self.chaos = Chaos.from_env()
        self._deleting: set[int] = set()  # published outbox rows whose DELETE is queued or running
        self._to_delete: list[int] = []  # … of which not yet handed to the store
        self._deleters: set[asyncio.Task[None]] = set()
        self._passes: set[asyncio.Task[None]] = set()  # flushes of a loop pass's rows, still publishing
        self._in_pass: set[int] = set()  # … and their row ids: the relay leaves them to their pass
        self._pass: tuple[list[int], asyncio.Future[None]] | None = None  # rows of this loop pass to flush
        # Which outgoing messages may travel in a batch (their receiver unpacks batches); None: none.
        self.batchable: Callable[[OutMessage], bool] | None = None
        # Called for an outbox message no queue would take, after it is parked in the dead-letter queue.
        self.on_unroutable: Callable[[OutMessage], Awaitable[None]] | None = None

    async def serve(self, queue: str, handler: Handler, prefetch: int = 64) -> None:
        async def on_message(message: AbstractIncomingMessage) -> None:
            incoming = Incoming(message.body, message.message_id, message.correlation_id, message.reply_to,
                                dict(message.headers or {}), bool(message.redelivered), message.exchange or "",
                                message.user_id)
            structlog.contextvars.bind_contextvars(msgid=message.message_id, queue=queue)
            if incoming.redelivered:
                self.stats["redelivered"] += 1
            try:
                if not reply_allowed(incoming.user_id, incoming.reply_to, self.broker.user):
                    raise Forbidden(f"reply_to {incoming.reply_to!r} is not a reply queue of user {incoming.user_id}")
                if batching.is_batch(incoming.headers):
                    await self._call_batch(handler, incoming, queue, message.routing_key or "")
                    ids: list[int] = []  # each item published its own rows
                else:
                    if self._bug(queue):
                        raise RuntimeError("injected bug (GONGJI_CHAOS bug)")
                    ids = await self._call(handler, incoming)
            except Poison as exc:
                log.warning("dead-lettered", reason=str(exc))
                await self.broker.dead_letter(message, str(exc), queue)
                await self._tell_sender(incoming, exc)
                self.stats["dead_lettered"] += 1
                await message.ack()
                return
            except Exception:
                # A failure of the handler itself (a bug the message triggers), not of the store or the broker:
                # not acked, the broker redelivers; after DELIVERY_LIMIT tries it dead-letters it.
                log.exception("handler failed; message returned to the queue")
                await asyncio.sleep(0.5)
                await message.nack(requeue=True)
                return
            try:
                await self.flush_pass(ids)
            except Exception:
                log.exception("publishing the outbox failed; the relay will retry")
            await message.ack()
            self.stats["handled"] += 1

        await self.broker.consume(queue, on_message, prefetch=prefetch)

    async def _tell_sender(self, incoming: Incoming, exc: Poison) -> None:
        """A refused message's sender is told (its reply_to), if it can be told; nothing changed."""
        if not incoming.reply_to or not exc.reply:
            return
        ref = incoming.message_id or incoming.correlation_id or ""
        body = Reply.fail(ref, ErrorCode.BAD_MESSAGE, str(exc)).model_dump_json().encode()
        try:
            await self.broker.publish(OutMessage(self.broker.names.reply_exchange, incoming.reply_to,
                                                 body, message_id=f"re:{ref}", correlation_id=ref))
        except Unroutable:
            pass

    def _bug(self, queue: str) -> bool:
        return self.chaos is not None and any(queue.endswith(b) for b in self.chaos.bug)

    async def _call_batch(self, handler: Handler, batch: Incoming, queue: str, routing_key: str) -> None:
        """Every item of a batch through the handler, as if each were its own message (own key, own inbox
        entry, own reply), all at once so that their transactions share one group commit. A bad item is
        refused alone (dead-lettered with the reason, its sender told) while its neighbours go on; a batch
        that is not a batch at all is poison as a whole. Each item publishes its own outbox rows once it has
        committed (the rows of items finishing in one loop pass still go out together), so nothing is left
        for the caller to flush."""
        if len(batch.body) > batching.MAX_ITEMS * MAX_BODY:
            raise Poison(f"batch of {len(batch.body)} bytes is larger than {batching.MAX_ITEMS * MAX_BODY}")
        try:
            items = batching.unpack(batch.body)
        except batching.BadBatch as exc:
            raise Poison(str(exc)) from None
        self.stats["batches_in"] = self.stats.get("batches_in", 0) + 1
        self.stats["batch_items_in"] = self.stats.get("batch_items_in", 0) + len(items)

        async def one(item: dict[str, Any]) -> None:
            incoming = Incoming(item["body"].encode(), item.get("message_id"), item.get("correlation_id"),
                                item.get("reply_to"), dict(item.get("headers") or {}), batch.redelivered,
                                batch.exchange, batch.user_id)
            structlog.contextvars.bind_contextvars(msgid=incoming.message_id, batch=batch.message_id)
            tries = 0
            ids: list[int] = []
            refusal: Poison | None = None
            while True:
                try:
                    if not reply_allowed(incoming.user_id, incoming.reply_to, self.broker.user):
                        raise Forbidden(f"reply_to {incoming.reply_to!r} is not a reply queue of user "
                                        f"{incoming.user_id}")
                    if self._bug(queue):
                        raise RuntimeError("injected bug (GONGJI_CHAOS bug)")
                    ids = await self._call(handler, incoming)
                    break
                except Poison as exc:
                    refusal = exc
                except Exception as exc:
                    # A bug this item triggers: tried again here (a redelivery would replay the whole batch),
                    # then refused alone; its neighbours are not held back by it.
                    tries += 1
                    log.exception("handler failed on a batch item", tries=tries)
                    if tries < ITEM_TRIES:
                        await asyncio.sleep(0.5)
                        continue
                    refusal = Poison(f"handler failed {tries} times: {exc!r}")
                    refusal.reply = False  # as when the broker dead-letters a lone message at its limit
                break
            if refusal is None:
                # Published as soon as this item has committed, not when the whole batch is done: an item may
                # wait for others' effects (the POS's admission control waits for visits to finish, which
                # needs their requests out), and its neighbours' replies should not wait for the slowest item.
                try:
                    await self.flush_pass(ids)
                except Exception:
                    log.exception("publishing the outbox failed; the relay will retry")
                return
            log.warning("batch item dead-lettered", reason=str(refusal))
            headers = {**incoming.headers, "x-gongji-reason": str(refusal)[:1000], "x-gongji-queue": queue,
                       "x-gongji-exchange": batch.exchange, "x-gongji-routing-key": routing_key,
                       "x-gongji-batch-id": batch.message_id or ""}
            headers.pop(batching.HEADER, None)
            body, headers = parked(incoming.body, headers)
            await self.broker.publish(OutMessage(self.broker.names.dlx, "", body, incoming.message_id,
                                                 incoming.correlation_id, incoming.reply_to, headers))
            await self._tell_sender(incoming, refusal)
            self.stats["dead_lettered"] += 1

        await asyncio.gather(*(one(item) for item in items))

    async def flush_pass(self, ids: list[int]) -> None:
        """Flush these rows together with those of every other delivery that finished in this loop pass (the
        handlers of one group commit wake up together): one flush, so rows to the same place can travel in
        one batch. Returns once this delivery's rows are published (or failed: the relay retries them)."""
        if not ids:
            return
        loop = asyncio.get_running_loop()
        if self._pass is None:
            self._pass = ([], loop.create_future())
            loop.call_soon(self._run_pass)
        self._pass[0].extend(ids)
        await asyncio.shield(self._pass[1])

    def _run_pass(self) -> None:
        assert self._pass is not None
        ids, fut = self._pass
        self._pass = None
        self._in_pass.update(ids)

        async def run() -> None:
            try:
                await self.flush(ids)
            except BaseException as exc:
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(None)
            finally:
                self._in_pass.difference_update(ids)
        task = asyncio.ensure_future(run())
        self._passes.add(task)
        task.add_done_callback(self._passes.discard)
        fut.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)  # retrieved: no warning

    async def _call(self, handler: Handler, incoming: Incoming) -> list[int]:
        """Run the handler; while the store (or the broker) fails, keep the delivery unacked and try again.

        RabbitMQ counts a redelivery after a nack-requeue and after a channel close alike, so a transient
        fault handled by either would use up the quorum queue's delivery limit and dead-letter valid work.
        Instead the delivery stays with us: while unhealthy, one message at a time probes the store, backing
        off 0.1 s → 5 s; the others wait for the all-clear, and the prefetch bounds how many deliveries the
        broker hands us meanwhile (no new work is taken beyond them)."""
        delay = 0.1
        while True:
            if not self.healthy.is_set():
                async with self._probing:
                    if not self.healthy.is_set():
                        try:
                            result = await handler(incoming)
                        except Exception as exc:
                            if not is_transient(exc):
                                raise
                            self.stats["transient_retries"] += 1
                            await asyncio.sleep(delay)
                            delay = min(delay * 2, 5.0)
                            continue
                        self._set_healthy(True, None)
                        return result
            try:
                return await handler(incoming)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.stats["transient_failures"] += 1
                self._set_healthy(False, exc)

    def _set_healthy(self, healthy: bool, exc: BaseException | None) -> None:
        if healthy == self.healthy.is_set():
            return
        if healthy:
            self.healthy.set()
            self.stats["healthy"] = True
            log.warning("healthy again: the store works; consuming resumes")
        else:
            self.healthy.clear()
            self.stats["healthy"] = False
            self.stats["unhealthy_spells"] += 1
            log.error("unhealthy: the store or the broker fails; holding deliveries and retrying",
                      error=repr(exc))
        self.write_stats()

    async def flush(self, ids: list[int] | None = None, older_than: float | None = None) -> int:
        """Publish outbox rows (these ids, or one bounded batch older than a time); returns how many.

        The rows go out together and their confirms are awaited together (one wait for the batch, not one
        per message). A row leaves the outbox only once the broker has confirmed it; if any publish fails,
        the confirmed rows are still removed and the rest stay for the relay."""
        if ids is not None:
            # Just committed by this process: the messages come from the handler's own writes, not a re-read.
            rows, missing = outbox_written(self.store._conn, ids)
            if missing:
                rows += await self.store.run(lambda c: outbox_load(c, ids=missing))
        else:
            await self._drain_deletes()  # so that a backlog is not read back before its published rows go
            rows = await self.store.run(lambda c: self.store.backlog(c, older_than))
            # rows whose delete is queued were published already, and rows a pass is publishing are its own
            # (it publishes them or fails, bounded by the broker's confirm timeout): not again. The relay never
            # waits for a pass, so one publish in trouble cannot stop it.
            rows = [(i, m) for i, m in rows if i not in self._deleting and i not in self._in_pass]
            outbox_forget(self.store._conn, [i for i, _ in rows])

        async def one(row_ids: list[int], msg: OutMessage, items: list[OutMessage]) -> list[int]:
            try:
                await self._publish(msg)
            except Unroutable as exc:
                # Nobody can receive it (e.g. a client that went away): park it with the reason.
                log.warning("unroutable outbox message dead-lettered", error=str(exc))
                body, headers = parked(msg.body, {**(msg.headers or {}), "x-gongji-reason": str(exc),
                                                  "x-gongji-exchange": msg.exchange,
                                                  "x-gongji-routing-key": msg.routing_key})
                await self.broker.publish(OutMessage(self.broker.names.dlx, "", body, msg.message_id,
                                                     msg.correlation_id, msg.reply_to, headers))
                if self.on_unroutable is not None:
                    for item in items:
                        await self.on_unroutable(item)
                return row_ids
            self.stats["published"] += 1
            if len(items) > 1:
                self.stats["batches_out"] = self.stats.get("batches_out", 0) + 1
                self.stats["batch_items_out"] = self.stats.get("batch_items_out", 0) + len(items)
            return row_ids

        results = await asyncio.gather(*(one(*packed) for packed in batching.pack(rows, self.batchable)),
                                       return_exceptions=True)
        done = [i for r in results if isinstance(r, list) for i in r]
        if done:
            self._delete_later(done)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return len(rows)

    def _delete_later(self, ids: list[int]) -> None:
        """Published rows leave the outbox in one store call per loop pass, off the message's path: the ack no
        longer waits for a commit of its own, and the group commit folds the DELETE into the transaction of
        whatever handlers run next. If the delete fails or the process dies first, the relay publishes the
        rows again and the receivers' inboxes absorb the duplicates (as after any crash between publish and
        delete)."""
        first = not self._to_delete
        self._to_delete.extend(ids)
        self._deleting.update(ids)
        if first:
            asyncio.get_running_loop().call_soon(self._start_delete)

    def _start_delete(self) -> None:
        if not self._to_delete:
            return
        ids, self._to_delete = self._to_delete, []
        task = asyncio.ensure_future(self._delete(ids))
        self._deleters.add(task)
        task.add_done_callback(self._deleters.discard)

    async def _drain_deletes(self) -> None:
        if self._to_delete:
            self._start_delete()
        if self._deleters:
            await asyncio.gather(*self._deleters, return_exceptions=True)

    async def _delete(self, ids: list[int]) -> None:
        try:
            await self.store.run(lambda c: outbox_delete(c, ids))
        except Exception as exc:
            log.warning("deleting published outbox rows failed; the relay will publish them again", error=repr(exc))
        finally:
            self._deleting.difference_update(ids)

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
                "duplicates_absorbed": inbox_counters["duplicates_absorbed"], "broker_publishes": self.broker.published,
                "broker_reconnects": self.broker.reconnects,
                "confirm_timeouts": getattr(self.broker, "confirm_timeouts", 0),
                "store_retries": self.store.retries}  # PostgreSQL: deadlocks etc. re-run
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data, sort_keys=True))
            tmp.replace(path)
        except OSError:  # a full disk must not stop the worker (or turn a transient fault into a nack)
            pass

    async def start_relay(self, every: float = 2.0, grace: float | None = None) -> None:
        """Publishes what a crash left in the outbox now, then keeps an eye on rows older than `grace` (env
        GONGJI_RELAY_GRACE_S, default 5 s: a row that young is still on its way out through its handler)."""
        if grace is None:
            grace = float(os.environ.get("GONGJI_RELAY_GRACE_S", "5"))
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
        if self._passes:  # what is on its way out gets a moment; what is not published stays for the relay
            await asyncio.wait(list(self._passes), timeout=5)
        await self._drain_deletes()
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
    bug: tuple[str, ...] = ()  # queues (name suffixes) whose handler fails as a bug would (redrive tests)

    @classmethod
    def from_env(cls) -> "Chaos | None":
        raw = os.environ.get("GONGJI_CHAOS")
        if not raw:
            return None
        cfg = json.loads(raw)
        return cls(random.Random(f"{cfg.get('seed', 0)}:{os.getpid()}"), float(cfg.get("duplicate", 0)),
                   float(cfg.get("delay", 0)), int(cfg.get("delay_ms", 0)), tuple(cfg.get("bug", ())))

    def roll(self, kind: str) -> bool:
        return self.rng.random() < getattr(self, kind)

