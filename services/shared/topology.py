"""The broker topology, declared once as data: the exchanges, the queues with their arguments and bindings.

Two readers: every worker process declares it at start (services/shared/broker.py: the queues marked
every_process; the bureau and the gateway declare their own queues when they start), and `gongji
broker-definitions` writes it for a deployment whose broker loads it before any worker runs
(services/shared/definitions.py: the queues marked deployed). The AsyncAPI document (simulator/schema.py)
reads it through the definitions.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from contracts.routing import REGISTRY_KEY, Names

DELIVERY_LIMIT = 20


@dataclass(frozen=True)
class Queue:
    name: str
    bindings: tuple[tuple[str, str], ...]  # (exchange, routing key)
    arguments: dict[str, Any]
    every_process: bool = True  # declared by every process at start; else by the worker that serves it
    deployed: bool = True  # in the definitions file


def exchanges(n: Names) -> dict[str, str]:
    """name → type."""
    return {n.bureau_exchange: "direct", n.registry_exchange: "direct", n.accounts_exchange: "direct",
            n.pay_exchange: "direct", n.pos_exchange: "direct", n.reply_exchange: "topic",
            n.events_exchange: "topic", n.dlx: "fanout"}


def dead_queue_args() -> dict[str, Any]:
    """<ns>.dead is bounded by length, bytes and age (oldest dropped first), so that a flood of poison can
    neither fill the broker's disk nor keep parked messages forever (GONGJI_DEAD_MAX_LENGTH,
    GONGJI_DEAD_MAX_MB, GONGJI_DEAD_TTL_DAYS). Quorum queues support all three since RabbitMQ 3.10."""
    return {"x-queue-type": "quorum", "x-overflow": "drop-head",
            "x-max-length": int(os.environ.get("GONGJI_DEAD_MAX_LENGTH", "100000")),
            "x-max-length-bytes": int(os.environ.get("GONGJI_DEAD_MAX_MB", "256")) * 1024 * 1024,
            "x-message-ttl": int(float(os.environ.get("GONGJI_DEAD_TTL_DAYS", "14")) * 86400 * 1000)}


def events_archive_args() -> dict[str, Any]:
    """<ns>.events.archive: a RabbitMQ stream (3.9+) bounded by GONGJI_ARCHIVE_MB (default 512) and
    GONGJI_ARCHIVE_MAX_AGE (default 30D). A broker holding an older quorum archive of the same name refuses
    the declaration (PRECONDITION_FAILED): delete that queue once (its events are history, nothing consumes them)."""
    return {"x-queue-type": "stream",
            "x-max-length-bytes": int(os.environ.get("GONGJI_ARCHIVE_MB", "512")) * 1024 * 1024,
            "x-max-age": os.environ.get("GONGJI_ARCHIVE_MAX_AGE", "30D"),
            "x-stream-max-segment-size-bytes": 16 * 1024 * 1024}


def work_queue_args(names: Names) -> dict[str, Any]:
    return {"x-queue-type": "quorum", "x-dead-letter-exchange": names.dlx, "x-delivery-limit": DELIVERY_LIMIT}


def bureau_bindings(n: Names, served: list[str]) -> tuple[tuple[str, str], ...]:
    """A bureau queue takes the national requests of the regions it serves and the registry transactions."""
    return tuple((ex, key) for ex in (n.bureau_exchange, n.registry_exchange) for key in [*served, REGISTRY_KEY])


def queues(n: Names, regions: list[str]) -> list[Queue]:
    """Every queue of a deployment whose bureau serves all `regions` from one queue."""
    work = work_queue_args(n)
    return [
        Queue(n.dead_queue, ((n.dlx, ""),), dead_queue_args()),
        Queue(n.accounts_pay_queue, ((n.pay_exchange, "pay"),), work),
        Queue(n.accounts_admin_queue, ((n.accounts_exchange, "admin"),), work),
        Queue(n.pos_command_queue, ((n.pos_exchange, "command"),), work),
        Queue(n.reply_queue("pos"), ((n.reply_exchange, "pos"),), work),
        Queue(n.reply_queue("bureau"), ((n.reply_exchange, "bureau"),), work, deployed=False),
        # Keeps every event routable (mandatory publishing) and gives auditors the history, replayable from
        # any offset. A stream, not a second quorum copy of every event (a quorum queue costs the broker a
        # consensus round and an index entry per message): appended to segment files, old segments dropped
        # by size and age.
        Queue(n.events_archive_queue, ((n.events_exchange, "#"),), events_archive_args()),
        # declared by the bureau worker (its regions) and the gateway when they start
        Queue(n.bureau_queue(None), bureau_bindings(n, regions), work, every_process=False),
        Queue(n.reply_queue("bureau-all"), ((n.reply_exchange, "bureau-all"),), work, every_process=False),
        Queue(n.reply_queue("gateway-1"), ((n.reply_exchange, "gateway-1"),), work, every_process=False),
    ]
