"""The fault kind broker_node_down: one node of the run's RabbitMQ cluster stops mid-run and starts again.

The run's broker URLs (--amqp-url / AMQP_URL, comma-separated) must be the nodes of the cluster that
`gongji cluster up` started (its directory: GONGJI_CLUSTER_DIR, default .gongji/cluster). The node is stopped
with `rabbitmqctl stop_app` (its connections close, its quorum queue members go down, its Erlang VM stays) and
started again with `start_app` after down_s seconds; the clients fail over to the other nodes meanwhile.
"""
from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

from services.shared import failover

from .cluster import Cluster, Node
from .run.faults import TRIGGERED, TriggeredKind


def locate(amqp_url: str, index: int) -> tuple[Cluster, Node]:
    """The cluster and the node behind the index-th (1-based) of the run's URLs; ValueError says why not."""
    urls = failover.split(amqp_url)
    if len(urls) < 2:
        raise ValueError("needs the run's broker to be a cluster: give every node's URL, comma-separated "
                         "(`gongji cluster up`, then --amqp-url \"$(gongji cluster urls)\")")
    if index > len(urls):
        raise ValueError(f"node {index}, but the run has {len(urls)} broker URLs")
    parts = urllib.parse.urlsplit(urls[index - 1])
    cluster = Cluster()
    node = cluster.node_for_port(parts.port or 5672)
    if node is None or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"{failover.where(urls[index - 1])} is no node of the cluster in {cluster.dir} "
                         f"(`gongji cluster up`; GONGJI_CLUSTER_DIR)")
    return cluster, node


def check(amqp_url: str, fault: Any) -> str | None:
    """Before the run: why this fault cannot be injected here, or None."""
    try:
        locate(amqp_url, fault.node)
    except ValueError as exc:
        return str(exc)
    return None


async def node_down(driver: Any, fault: Any, when: str) -> None:
    """Stop the node, wait down_s, start it again (always, even if the wait is cancelled)."""
    cluster, node = locate(driver.amqp_url, fault.node)
    driver.progress.message(f"fault: broker node {node.name} down (rabbitmqctl stop_app) {when}; "
                            f"start_app in {fault.down_s:g} s")
    await asyncio.to_thread(cluster.stop_app, node)
    driver.injected["broker_node_down"] += 1
    try:
        await asyncio.sleep(fault.down_s)
    finally:
        await asyncio.to_thread(cluster.start_app, node)
    driver.progress.message(f"fault: broker node {node.name} is back")


def _check(fault: Any, external: bool, amqp_url: str) -> str | None:
    return check(amqp_url, fault)


TRIGGERED["broker_node_down"] = TriggeredKind(fire=node_down, check=_check)
