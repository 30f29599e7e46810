"""The broker adapter keeps publishing and consuming when a channel is closed under it.

After a broker restart, aio-pika's robust connection restored each channel once; when that restore failed
mid-outage (stop 7's CI: "ChannelInvalidStateError: No active transport in channel"), the channel stayed
closed for good. gongji now makes its own connections and channels again (services/shared/broker.py). These
tests close a live publishing channel and a live consumer channel, against the real broker, and check that
publishing and consuming carry on; tests/test_broker_restart.py restarts the broker itself.
"""
from __future__ import annotations

import asyncio
import uuid
from typing import AsyncIterator, Awaitable, Callable

import aio_pika
import pytest
import pytest_asyncio

from contracts.routing import Names
from services.shared.broker import Broker, Unroutable
from services.shared.store import OutMessage
from simulator.stack import cleanup_namespace

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    names = Names(f"r{uuid.uuid4().hex[:8]}")
    b = Broker(amqp_url, names, name="test-recovery", passive=False)
    await b.connect()
    await b.declare_topology()
    try:
        yield b
    finally:
        await b.close()
        await cleanup_namespace(amqp_url, names.ns, [names.dead_queue, names.accounts_pay_queue,
                                                     names.accounts_admin_queue, names.pos_command_queue,
                                                     names.reply_queue("pos"), names.reply_queue("bureau"),
                                                     names.events_archive_queue])


def collector() -> tuple[list[str], Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]]]:
    """A consumer callback that acks and records each message id."""
    got: list[str] = []

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        got.append(message.message_id or "")
        await message.ack()

    return got, on_message


async def arrived(got: list[str], seconds: float = 10.0) -> list[str]:
    for _ in range(int(seconds / 0.05)):
        if got:
            break
        await asyncio.sleep(0.05)
    return got


def admin_message(b: Broker, msgid: str) -> OutMessage:
    return OutMessage(b.names.accounts_exchange, "admin", b'{"probe": true}', message_id=msgid)


async def test_publish_reopens_a_channel_that_was_not_restored(broker: Broker) -> None:
    got, on_message = collector()
    await broker.consume(broker.names.accounts_admin_queue, on_message)
    dead_channel = broker._pub
    assert dead_channel is not None
    await dead_channel.close()  # what a failed restore leaves: a closed channel nobody reopens
    assert dead_channel.is_closed

    await broker.publish(admin_message(broker, "after-close"))

    assert broker._pub is not dead_channel and not broker._pub.is_closed
    assert await arrived(got) == ["after-close"]
    # A refusal by the broker is still an error at once, not something to retry.
    with pytest.raises(Unroutable):
        await broker.publish(OutMessage(broker.names.accounts_exchange, "no-such-key", b"{}", message_id="x"))


async def test_consumer_channel_left_closed_is_replaced(broker: Broker) -> None:
    got, on_message = collector()
    await broker.consume(broker.names.pos_command_queue, on_message)
    consumer = broker._consumers[-1]
    lost = consumer.channel
    await lost.close()  # the consumer is gone; the process would look healthy and serve nothing
    await broker.publish(OutMessage(broker.names.pos_exchange, "command", b"{}", message_id="waiting"))

    assert await arrived(got) == ["waiting"]
    assert consumer.channel is not lost and not consumer.channel.is_closed
