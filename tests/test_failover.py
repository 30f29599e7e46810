"""Several broker URLs (services/shared/failover.py): which node a client connects to, and what a refused publish
counts as. The cluster itself is in tests/test_cluster.py; these need only the main RabbitMQ and a closed port."""
from __future__ import annotations

import socket
import uuid

import aiormq
import pytest
from pamqp.commands import Basic

from contracts.routing import Names
from services.shared import failover
from services.shared.broker import Broker, recoverable
from services.shared.health import is_transient
from services.shared.store import OutMessage
from simulator.stack import cleanup_namespace


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once the socket is closed


def test_split_reads_comma_separated_urls() -> None:
    assert failover.split("amqp://a:1/, amqp://b:2/,,amqp://c:3/") == ["amqp://a:1/", "amqp://b:2/", "amqp://c:3/"]
    assert failover.split("amqp://guest:guest@localhost:5672/") == ["amqp://guest:guest@localhost:5672/"]
    assert failover.clustered("amqp://a:1/,amqp://b:2/") and not failover.clustered("amqp://a:1/")
    assert failover.where("amqp://u:secret@h:5681/") == "h:5681"  # logs never carry the password


def test_broker_errors_name_the_nodes_without_passwords() -> None:
    from simulator.errors import explain_broker_error
    said = explain_broker_error("amqp://u:secret1@h1:5681/,amqp://u:secret2@h2:5682/",
                                ConnectionRefusedError(111, "Connection refused"))
    assert "h1:5681" in said and "1 other node" in said and "secret" not in said, said


def test_a_nacked_publish_is_transient_not_poison() -> None:
    nack = aiormq.exceptions.DeliveryError(None, Basic.Nack(delivery_tag=7))
    assert failover.nacked(nack) and is_transient(nack) and recoverable(nack)
    reject = aiormq.exceptions.DeliveryError(None, Basic.Reject(delivery_tag=7))
    assert not failover.nacked(reject)
    assert not failover.nacked(ValueError("a bug"))


@pytest.mark.asyncio(loop_scope="session")
async def test_connect_skips_a_dead_node_and_tries_the_next_after_the_last_used(amqp_url: str) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/"
    nodes = failover.Nodes(f"{dead},{amqp_url}")
    conn = await nodes.connect(timeout=5)
    await conn.close()
    assert nodes.current == 1  # the first node refused; the second took the connection
    # A reconnect begins with the node after the one used last (so a lost node is not asked first again):
    # live, dead, live → the first call takes node 0, the next skips the dead node 1 and takes node 2.
    nodes = failover.Nodes(f"{amqp_url},{dead},{amqp_url}")
    for expected in (0, 2, 0):
        conn = await nodes.connect(timeout=5)
        await conn.close()
        assert nodes.current == expected
    with pytest.raises(Exception):
        await failover.Nodes(f"{dead},{dead}").connect(timeout=5)


@pytest.mark.asyncio(loop_scope="session")
async def test_broker_with_a_dead_first_node_publishes_and_consumes(amqp_url: str) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/"
    ns = f"fo{uuid.uuid4().hex[:8]}"
    names = Names(ns)
    broker = Broker(f"{dead},{amqp_url}", names, name="test-failover", passive=False)
    await broker.connect()
    queue = f"{ns}.observe.test"
    try:
        assert broker.user == "guest"  # the sender's name comes from the URLs (the first one's user)
        await broker.declare_topology()
        await broker.declare_client_queue(queue, [(names.reply_exchange, "k")])
        await broker.publish(OutMessage(names.reply_exchange, "k", b"{}", message_id="m1"))
        ch = await broker.connection.channel()  # type: ignore[union-attr]
        got = await (await ch.get_queue(queue)).get(timeout=5)
        assert got is not None and got.message_id == "m1"
        await got.ack()
    finally:
        await broker.close()
        await cleanup_namespace(amqp_url, ns, [queue, names.dead_queue, names.accounts_pay_queue,
                                               names.accounts_admin_queue, names.pos_command_queue,
                                               names.reply_queue("pos"), names.reply_queue("bureau"),
                                               names.events_archive_queue])
