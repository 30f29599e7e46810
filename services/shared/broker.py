"""RabbitMQ through aio-pika, with the settings money needs (aio-pika's defaults are not enough):

- durable quorum queues, each dead-lettering to <ns>.dlx, with a delivery limit so a message that
  crashes its consumer again and again ends in <ns>.dead instead of looping forever;
- persistent messages, publisher confirms, and mandatory publishing that raises on unroutable;
- manual ack, done by the caller only after its transaction has committed.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from contracts.routing import REGISTRY_KEY, Names

from .store import OutMessage

log = structlog.get_logger()

DELIVERY_LIMIT = 20
# Errors that mean "the connection or channel is going or gone". A channel closed by the broker for a
# reason (access refused, no such exchange: subclasses of ChannelClosed) is not among them.
RECOVERABLE: tuple[type[BaseException], ...] = (aiormq.exceptions.ChannelInvalidStateError,
                                                 aiormq.exceptions.AMQPConnectionError, ConnectionError)


def recoverable(exc: BaseException) -> bool:
    return isinstance(exc, RECOVERABLE) or type(exc) is aiormq.exceptions.ChannelClosed


class Unroutable(Exception):
    """The broker returned a mandatory message: no queue is bound for its routing key."""


def topology_exchanges(n: Names) -> list[str]:
    return [n.bureau_exchange, n.accounts_exchange, n.pay_exchange, n.pos_exchange, n.reply_exchange,
            n.events_exchange, n.dlx]


def work_queue_args(names: Names) -> dict[str, Any]:
    return {"x-queue-type": "quorum", "x-dead-letter-exchange": names.dlx, "x-delivery-limit": DELIVERY_LIMIT}


class Broker:
    """passive=True (env GONGJI_DECLARE=passive): the topology was loaded into the broker beforehand (the
    definitions file of deploy/rabbitmq) and this process only checks that it is there, so that it can run
    as a user without `configure` permission."""

    def __init__(self, url: str, names: Names, name: str = "gongji", passive: bool | None = None):
        self.url = url
        self.names = names
        self.name = name
        self.passive = os.environ.get("GONGJI_DECLARE") == "passive" if passive is None else passive
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._pub: aio_pika.abc.AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self._consumers: list[_Consumer] = []
        self._watchdog: asyncio.Task[None] | None = None
        self.publish_retry_s = float(os.environ.get("GONGJI_PUBLISH_RETRY_S", "60"))
        self._recovering = asyncio.Lock()

    async def connect(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url, client_properties={"connection_name": self.name})
        self._pub = await self.connection.channel(publisher_confirms=True, on_return_raises=True)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.connection is not None:
            await self.connection.close()

    async def declare_topology(self) -> None:
        """The fixed part of the topology. Every process declares it, so start order never matters."""
        n = self.names
        ch = self._pub
        assert ch is not None
        if self.passive:
            for name in topology_exchanges(n):
                self._exchanges[name] = await ch.get_exchange(name, ensure=True)
            for queue in (n.dead_queue, n.accounts_pay_queue, n.accounts_admin_queue, n.pos_command_queue,
                          n.reply_queue("pos"), n.events_archive_queue):
                await ch.get_queue(queue, ensure=True)
            return
        dlx = await ch.declare_exchange(n.dlx, ExchangeType.FANOUT, durable=True)
        dead = await ch.declare_queue(n.dead_queue, durable=True, arguments={"x-queue-type": "quorum"})
        await dead.bind(dlx, "")
        for name, kind in [(n.bureau_exchange, ExchangeType.DIRECT), (n.accounts_exchange, ExchangeType.DIRECT),
                           (n.pay_exchange, ExchangeType.DIRECT),
                           (n.pos_exchange, ExchangeType.DIRECT), (n.reply_exchange, ExchangeType.DIRECT),
                           (n.events_exchange, ExchangeType.TOPIC)]:
            self._exchanges[name] = await ch.declare_exchange(name, kind, durable=True)
        self._exchanges[n.dlx] = dlx
        await self.declare_queue(n.accounts_pay_queue, [(n.pay_exchange, "pay")])
        await self.declare_queue(n.accounts_admin_queue, [(n.accounts_exchange, "admin")])
        await self.declare_queue(n.pos_command_queue, [(n.pos_exchange, "command")])
        for key in ("pos", "bureau"):
            await self.declare_queue(n.reply_queue(key), [(n.reply_exchange, key)])
        # Keeps every event routable (mandatory publishing) and gives auditors the history.
        # No dead-lettering here: old events simply drop off the head.
        await self.declare_queue(n.events_archive_queue, [(n.events_exchange, "#")],
                                 arguments={"x-queue-type": "quorum", "x-max-length": 200000,
                                            "x-overflow": "drop-head"})

    async def declare_bureau_queue(self, regions: list[str] | None, served: list[str]) -> str:
        name = self.names.bureau_queue(regions)
        bindings = [(self.names.bureau_exchange, r) for r in served] + [(self.names.bureau_exchange, REGISTRY_KEY)]
        await self.declare_queue(name, bindings)
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
        queue = await self._pub.declare_queue(name, durable=True, arguments={"x-expires": 600000})
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

        While the connection is being recovered (a broker restart, a dropped connection) the publish is
        retried for up to `publish_retry_s`. A retried message may reach the broker twice; every consumer's
        inbox absorbs that, which is what the msgid is for."""
        message = aio_pika.Message(
            msg.body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=msg.message_id,
            correlation_id=msg.correlation_id,
            reply_to=msg.reply_to,
            headers=msg.headers or {},
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_retry_s
        while True:
            channel = self._pub
            try:
                exchange = await self._exchange(msg.exchange)
                await exchange.publish(message, msg.routing_key, mandatory=True)
                return
            except aiormq.exceptions.PublishError as exc:
                raise Unroutable(f"no queue for {msg.exchange!r} key {msg.routing_key!r}") from exc
            except Exception as exc:
                gone = self.connection is None or self.connection.is_closed  # closed on purpose
                if not recoverable(exc) or gone or loop.time() > deadline:
                    raise
                log.warning("publish failed while the connection recovers; retrying", error=repr(exc))
                await self._recover_publisher(channel, deadline)

    async def _recover_publisher(self, failed: aio_pika.abc.AbstractChannel | None, deadline: float) -> None:
        """Wait for aio-pika's robust recovery of the publishing channel; if it does not come back (its
        restore can itself fail mid-outage and then never retries), open a fresh channel. Concurrent
        publishers that failed on the same channel replace it once: the first in does it, the rest find
        it done."""
        assert self.connection is not None
        loop = asyncio.get_running_loop()
        async with self._recovering:
            if self._pub is not failed or self._pub is None:
                return
            try:
                await asyncio.wait_for(self._pub.ready(),  # type: ignore[attr-defined]
                                       timeout=max(0.1, min(5.0, deadline - loop.time())))
                if not self._pub.is_closed:
                    return
            except (asyncio.TimeoutError, *RECOVERABLE):
                pass
            try:
                await asyncio.wait_for(self.connection.ready(),  # type: ignore[attr-defined]
                                       timeout=max(0.1, deadline - loop.time()))
                old = self._pub
                self._pub = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
                self._exchanges.clear()  # exchange objects belong to the old channel
                try:
                    await old.close()
                except Exception:
                    pass
            except (asyncio.TimeoutError, *RECOVERABLE):
                await asyncio.sleep(0.5)

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str, queue: str) -> None:
        """Park an unprocessable message in <ns>.dead with the reason, before acking the original."""
        headers = dict(message.headers or {})
        headers.update({"x-gongji-reason": reason[:1000], "x-gongji-queue": queue})
        await self.publish(OutMessage(self.names.dlx, "", message.body, message.message_id,
                                      message.correlation_id, message.reply_to, headers))

    async def consume(self, queue: str, callback: Callable[[AbstractIncomingMessage], Awaitable[None]],
                      prefetch: int = 64) -> None:
        consumer = _Consumer(queue, callback, prefetch, await self._open_consumer(queue, callback, prefetch))
        self._consumers.append(consumer)
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch_consumers())

    async def _open_consumer(self, queue: str, callback: Callable[[AbstractIncomingMessage], Awaitable[None]],
                             prefetch: int) -> aio_pika.abc.AbstractChannel:
        assert self.connection is not None
        ch = await self.connection.channel(publisher_confirms=False)
        await ch.set_qos(prefetch_count=prefetch)
        q = await ch.get_queue(queue, ensure=True)
        await q.consume(callback, no_ack=False)
        return ch

    async def _watch_consumers(self, every: float = 1.0, strikes: int = 5) -> None:
        """aio-pika restores channels after a reconnect, but a restore that fails mid-outage is not tried
        again, and the consumer would be gone for good while the process looks healthy. So: a consumer
        channel still closed `strikes` checks after the connection is back is replaced by a fresh one."""
        while self.connection is not None and not self.connection.is_closed:
            await asyncio.sleep(every)
            if not self.connection.connected.is_set():  # type: ignore[attr-defined]
                for c in self._consumers:
                    c.strikes = 0
                continue
            for c in self._consumers:
                if not c.channel.is_closed:
                    c.strikes = 0
                    continue
                c.strikes += 1
                if c.strikes < strikes:
                    continue
                try:
                    fresh = await self._open_consumer(c.queue, c.callback, c.prefetch)
                except Exception as exc:
                    log.warning("reopening a consumer failed; will retry", queue=c.queue, error=repr(exc))
                    continue
                old, c.channel, c.strikes = c.channel, fresh, 0
                log.warning("consumer channel was not restored after reconnect; reopened", queue=c.queue)
                try:
                    await old.close()
                except Exception:
                    pass


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
            conn = await aio_pika.connect(url, timeout=5)
            await conn.close()
            return
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
