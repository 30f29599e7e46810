"""RabbitMQ through aio-pika, with the settings money needs (aio-pika's defaults are not enough):

- durable quorum queues, each dead-lettering to <ns>.dlx, with a delivery limit so a message that
  crashes its consumer again and again ends in <ns>.dead instead of looping forever;
- persistent messages, publisher confirms, and mandatory publishing that raises on unroutable;
- manual ack, done by the caller only after its transaction has committed.
"""
from __future__ import annotations

import asyncio
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from contracts.routing import Names

from . import failover
from .store import OutMessage
from .topology import bureau_bindings, exchanges, queues, work_queue_args

log = structlog.get_logger()

# Errors that mean "the connection or channel is going or gone". A channel closed by the broker for a
# reason (access refused, no such exchange: subclasses of ChannelClosed) is not among them.
RECOVERABLE: tuple[type[BaseException], ...] = (aiormq.exceptions.ChannelInvalidStateError,
                                                 aiormq.exceptions.AMQPConnectionError, ConnectionError,
                                                 TimeoutError)
# Every step of connecting or recovering is bounded: a step that hangs (a broker half-way through a restart)
# becomes a failure and a retry, never a worker that waits forever.
STEP_S = 10.0


def recoverable(exc: BaseException) -> bool:
    return isinstance(exc, RECOVERABLE) or type(exc) is aiormq.exceptions.ChannelClosed or failover.nacked(exc)


class Unroutable(Exception):
    """The broker returned a mandatory message: no queue is bound for its routing key."""


def dead_body_limit() -> int:
    """Bytes of a parked message's body that are kept (GONGJI_DEAD_BODY_KB, default 64 KB)."""
    return int(os.environ.get("GONGJI_DEAD_BODY_KB", "64")) * 1024


def parked(body: bytes, headers: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """A body cut to the dead-letter limit, saying so (x-gongji-body-bytes: the original size)."""
    limit = dead_body_limit()
    if len(body) <= limit:
        return body, headers
    return body[:limit], {**headers, "x-gongji-truncated": True, "x-gongji-body-bytes": len(body)}


class Broker:
    """passive=True (env GONGJI_DECLARE=passive): the topology was loaded into the broker beforehand (the
    definitions file of deploy/rabbitmq) and this process only checks that it is there, so that it can run
    as a user without `configure` permission.

    Reconnection is gongji's own, on a plain aio-pika connection. aio-pika's robust connection restores each
    channel once after a reconnect; a restore that fails or hangs mid-restart was never tried again and left
    a worker that looked healthy and served nothing (stop 7's CI). Here, when the connection goes, a fresh one
    is made (backing off 0.5 s to 5 s), then the publishing channel and every consumer are opened on it, each
    step with a timeout; any failure throws the new connection away and starts over. Publishers wait for it
    (up to `publish_retry_s`)."""

    def __init__(self, url: str, names: Names, name: str = "gongji", passive: bool | None = None):
        self.url = url
        self.nodes = failover.Nodes(url)  # one URL, or several (a cluster's nodes): services.shared.failover
        self.names = names
        self.name = name
        self.passive = os.environ.get("GONGJI_DECLARE") == "passive" if passive is None else passive
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self._pub: aio_pika.abc.AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self._consumers: list[_Consumer] = []
        self._watchdog: asyncio.Task[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._up = asyncio.Event()
        self._recovering = asyncio.Lock()
        self._closing = False
        self.reconnects = 0
        self.published = 0  # messages the broker confirmed (the bench's publishes_per_settlement)
        self.publish_retry_s = float(os.environ.get("GONGJI_PUBLISH_RETRY_S", "60"))
        # How long a publish waits for its confirm before it is sent again on a fresh channel. A confirm is not
        # guaranteed to come (a frame lost as the broker restarts): without a bound, the publish, the outbox
        # rows it carries and everything that waits for it would hang for good (seen: 24 visits of a
        # broker_restart run never answered, the POS unable to stop).
        self.confirm_timeout_s = float(os.environ.get("GONGJI_CONFIRM_TIMEOUT_S", "15"))
        self.confirm_timeouts = 0
        # Every message names its sender; RabbitMQ refuses a user_id other than the connection's user, so the
        # receiver can trust it (services.shared.access).
        self.user = urllib.parse.unquote(urllib.parse.urlparse(self.nodes.urls[0]).username or "") or None

    async def connect(self) -> None:
        await self._open()

    async def close(self) -> None:
        self._closing = True
        for task in (self._watchdog, self._reconnector):
            if task is not None:
                task.cancel()
        if self.connection is not None:
            try:
                await asyncio.wait_for(self.connection.close(), STEP_S)
            except Exception:
                pass

    async def _open(self) -> None:
        """A new connection with the publishing channel and every registered consumer on it."""
        conn = await asyncio.wait_for(
            self.nodes.connect(client_properties={"connection_name": self.name}, timeout=STEP_S),
            (STEP_S + 1) * len(self.nodes.urls))
        try:
            pub = await asyncio.wait_for(conn.channel(publisher_confirms=True, on_return_raises=True), STEP_S)
            channels = [await asyncio.wait_for(self._open_consumer(conn, c.queue, c.callback, c.prefetch), STEP_S)
                        for c in self._consumers]
        except BaseException:
            self._discard(conn)
            raise
        for consumer, channel in zip(self._consumers, channels):
            consumer.channel, consumer.strikes = channel, 0
        self.connection, self._pub = conn, pub
        self._exchanges.clear()  # exchange objects belong to a channel
        conn.close_callbacks.add(self._on_connection_closed)
        self._up.set()

    def _on_connection_closed(self, conn: Any, exc: BaseException | None = None) -> None:
        self._lost(conn)

    def _lost(self, conn: Any) -> None:
        """This connection is unusable (closed by the broker, dropped, or failing): make a new one."""
        if self._closing or conn is not self.connection:
            return
        self._up.clear()
        if self._reconnector is None or self._reconnector.done():
            self._discard(conn)
            self._reconnector = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.5
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await self._open()
            except Exception as exc:
                log.warning("reconnecting to the broker failed; retrying", error=repr(exc), retry_in_s=delay)
                delay = min(delay * 2, 5.0)
                continue
            self.reconnects += 1
            log.warning("reconnected to the broker", reconnects=self.reconnects)
            return

    def _discard(self, closable: Any) -> None:
        """Close a connection or channel we no longer use, in the background and bounded."""
        async def close() -> None:
            try:
                await asyncio.wait_for(closable.close(), STEP_S)
            except BaseException:
                pass
        task = asyncio.create_task(close())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def declare_topology(self) -> None:
        """The fixed part of the topology (services/shared/topology.py). Every process declares it, so start
        order never matters."""
        n = self.names
        ch = self._pub
        assert ch is not None
        mine = [q for q in queues(n, []) if q.every_process]
        if self.passive:
            for name in exchanges(n):
                self._exchanges[name] = await ch.get_exchange(name, ensure=True)
            for q in mine:
                if q.deployed:
                    await ch.get_queue(q.name, ensure=True)
            return
        for name, kind in exchanges(n).items():
            self._exchanges[name] = await ch.declare_exchange(name, ExchangeType(kind), durable=True)
        for q in mine:
            await self.declare_queue(q.name, list(q.bindings), q.arguments)

    async def declare_bureau_queue(self, regions: list[str] | None, served: list[str]) -> str:
        name = self.names.bureau_queue(regions)
        await self.declare_queue(name, list(bureau_bindings(self.names, served)))
        return name

    async def declare_queue(self, name: str, bindings: list[tuple[str, str]],
                            arguments: dict[str, Any] | None = None) -> None:
        assert self._pub is not None
        if self.passive:
            await self._pub.get_queue(name, ensure=True)
            return
        queue = await self._pub.declare_queue(name, durable=True,
                                              arguments=arguments or work_queue_args(self.names))
        for exchange, key in bindings:
            await queue.bind(exchange, key)

    async def declare_client_queue(self, name: str, bindings: list[tuple[str, str]]) -> None:
        """A CLI's or test's own reply/observer queue: durable, but removed once unused for 10 minutes."""
        assert self._pub is not None
        # On a cluster a quorum queue, so that losing the node it was declared on loses none of its messages.
        args: dict[str, Any] = {"x-expires": 600000}
        if len(self.nodes.urls) > 1:
            args["x-queue-type"] = "quorum"
        queue = await self._pub.declare_queue(name, durable=True, arguments=args)
        for exchange, key in bindings:
            await queue.bind(exchange, key)

    async def _exchange(self, name: str) -> aio_pika.abc.AbstractExchange:
        ex = self._exchanges.get(name)
        if ex is None:
            assert self._pub is not None
            ex = await self._pub.get_exchange(name, ensure=True)
            self._exchanges[name] = ex
        return ex

    async def publish(self, msg: OutMessage) -> None:
        """Returns once the broker has confirmed the message; raises Unroutable if no queue took it.

        While the connection is being recovered (a broker restart, a dropped connection) the publish waits and
        is retried for up to `publish_retry_s`. A retried message may reach the broker twice; every
        consumer's inbox absorbs that, which is what the msgid is for."""
        message = aio_pika.Message(
            msg.body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=msg.message_id,
            correlation_id=msg.correlation_id,
            reply_to=msg.reply_to,
            headers=msg.headers or {},
            user_id=self.user,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_retry_s
        while True:
            if not self._up.is_set():
                try:
                    await asyncio.wait_for(self._up.wait(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise ConnectionError(f"no broker connection for {self.publish_retry_s:.0f} s") from None
            channel = self._pub
            try:
                # asyncio.timeout, not wait_for: no task per publish on the hot path.
                async with asyncio.timeout(self.confirm_timeout_s):
                    exchange = await self._exchange(msg.exchange)
                    await exchange.publish(message, msg.routing_key, mandatory=True)
                self.published += 1
                return
            except aiormq.exceptions.PublishError as exc:
                raise Unroutable(f"no queue for {msg.exchange!r} key {msg.routing_key!r}") from exc
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    self.confirm_timeouts += 1
                if not recoverable(exc) or self._closing or loop.time() > deadline:
                    raise
                log.warning("publish failed or not confirmed; retrying on a fresh channel", error=repr(exc))
                await self._recover_publisher(channel)

    async def _recover_publisher(self, failed: aio_pika.abc.AbstractChannel | None) -> None:
        """The publishing channel failed. On a live connection, open another channel (the broker may close
        a channel alone); otherwise, or if that fails, the connection is replaced. Concurrent publishers
        that failed on the same channel recover it once: the first in does it, the rest find it done."""
        async with self._recovering:
            conn = self.connection
            if self._pub is not failed or not self._up.is_set():
                return
            if conn is None or conn.is_closed:
                self._lost(conn)
                return
            try:
                pub = await asyncio.wait_for(conn.channel(publisher_confirms=True, on_return_raises=True), STEP_S)
            except Exception as exc:
                log.warning("the broker connection is not usable; replacing it", error=repr(exc))
                self._lost(conn)
                return
            self._pub = pub
            self._exchanges.clear()
            if failed is not None:
                self._discard(failed)

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str, queue: str) -> None:
        """Park an unprocessable message in <ns>.dead with the reason, before acking the original."""
        headers = dict(message.headers or {})
        headers.update({"x-gongji-reason": reason[:1000], "x-gongji-queue": queue,
                        "x-gongji-exchange": message.exchange or "", "x-gongji-routing-key": message.routing_key or ""})
        body, headers = parked(message.body, headers)
        await self.publish(OutMessage(self.names.dlx, "", body, message.message_id,
                                      message.correlation_id, message.reply_to, headers))

    async def consume(self, queue: str, callback: Callable[[AbstractIncomingMessage], Awaitable[None]],
                      prefetch: int = 64) -> None:
        await asyncio.wait_for(self._up.wait(), STEP_S)
        assert self.connection is not None
        channel = await asyncio.wait_for(self._open_consumer(self.connection, queue, callback, prefetch), STEP_S)
        self._consumers.append(_Consumer(queue, callback, prefetch, channel))
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch_consumers())

    @staticmethod
    async def _open_consumer(conn: aio_pika.abc.AbstractConnection, queue: str,
                             callback: Callable[[AbstractIncomingMessage], Awaitable[None]],
                             prefetch: int) -> aio_pika.abc.AbstractChannel:
        ch = await conn.channel(publisher_confirms=False)
        await ch.set_qos(prefetch_count=prefetch)
        q = await ch.get_queue(queue, ensure=True)
        await q.consume(callback, no_ack=False)
        return ch

    async def _watch_consumers(self, every: float = 1.0, strikes: int = 3) -> None:
        """A consumer channel the broker closed on a live connection (the connection itself is handled by
        the reconnect) is reopened after `strikes` checks, so a worker never goes on without its consumer."""
        while not self._closing:
            await asyncio.sleep(every)
            conn = self.connection
            if not self._up.is_set() or conn is None or conn.is_closed:
                continue
            for c in list(self._consumers):
                if not c.channel.is_closed:
                    c.strikes = 0
                    continue
                c.strikes += 1
                if c.strikes < strikes:
                    continue
                try:
                    fresh = await asyncio.wait_for(self._open_consumer(conn, c.queue, c.callback, c.prefetch),
                                                   STEP_S)
                except Exception as exc:
                    log.warning("reopening a consumer failed; replacing the connection", queue=c.queue,
                                error=repr(exc))
                    self._lost(conn)
                    break
                old, c.channel, c.strikes = c.channel, fresh, 0
                log.warning("consumer channel was closed; reopened", queue=c.queue)
                self._discard(old)


@dataclass
class _Consumer:
    queue: str
    callback: Callable[[AbstractIncomingMessage], Awaitable[None]]
    prefetch: int
    channel: aio_pika.abc.AbstractChannel
    strikes: int = 0


async def wait_for_broker(url: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            conn = await failover.connect(url, timeout=5)
            await conn.close()
            return
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
