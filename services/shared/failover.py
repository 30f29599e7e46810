"""Several broker URLs (the nodes of a RabbitMQ cluster) and failing over between them.

AMQP_URL (or --amqp-url) may name several nodes, separated by commas:
`amqp://u:p@127.0.0.1:5681/,amqp://u:p@127.0.0.1:5682/,amqp://u:p@127.0.0.1:5683/`. A connection goes to the
first node that answers, starting after the one used last, so that losing a node moves every client to the
next one; the quorum queues (replicated on every node) keep their messages and elect a new leader. A node lost
is infrastructure, never the message's fault: publishes not confirmed are retried (the outbox keeps its rows
until confirmed, the receivers' inboxes absorb duplicates) and deliveries are held, not nacked.
"""
from __future__ import annotations

import urllib.parse
from typing import Any

import aio_pika
import aiormq
import structlog
from pamqp.commands import Basic

log = structlog.get_logger()


def split(spec: str) -> list[str]:
    """The URLs of a comma- (or whitespace-) separated list; empty items are ignored."""
    return [u for u in (part.strip() for part in spec.replace(" ", ",").split(",")) if u]


def first(spec: str) -> str:
    """The first URL of a list (a single URL is its own first)."""
    urls = split(spec)
    return urls[0] if urls else spec


def clustered(spec: str) -> bool:
    return len(split(spec)) > 1


def where(url: str) -> str:
    """host:port of a URL, for logs (never the password)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5672}"


def nacked(exc: BaseException) -> bool:
    """The broker answered a publish with basic.nack: it did not take the message (a quorum queue without a
    leader for a moment, a node going down). Not the message's fault: publish it again."""
    return isinstance(exc, aiormq.exceptions.DeliveryError) and \
        not isinstance(exc, aiormq.exceptions.PublishError) and isinstance(exc.frame, Basic.Nack)


class Nodes:
    """The broker nodes one client may use, and which of them it used last."""

    def __init__(self, spec: str):
        self.urls = split(spec) or [spec]
        self.current = -1  # index of the node of the live connection (-1: none yet)

    async def connect(self, **kwargs: Any) -> aio_pika.abc.AbstractConnection:
        """A connection to the first node that accepts one, trying each node once, beginning with the one after
        the last used (the first node on the first call). Raises the last node's error if none accepts."""
        n = len(self.urls)
        start = (self.current + 1) % n if self.current >= 0 else 0
        error: BaseException | None = None
        for k in range(n):
            i = (start + k) % n
            try:
                conn = await aio_pika.connect(self.urls[i], **kwargs)
            except Exception as exc:
                error = exc
                if n > 1:
                    log.warning("broker node not reachable; trying the next", node=where(self.urls[i]),
                                error=repr(exc))
                continue
            if n > 1 and self.current >= 0 and i != self.current:
                log.warning("failed over to another broker node", node=where(self.urls[i]))
            self.current = i
            return conn
        assert error is not None
        raise error


async def connect(spec: str, **kwargs: Any) -> aio_pika.abc.AbstractConnection:
    """One connection to the first reachable node of a URL list (for short-lived tools: cleanup, health)."""
    return await Nodes(spec).connect(**kwargs)
