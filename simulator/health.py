"""`gongji health SERVICE`: is the service consuming? Asked of the broker, not of the process: each of the
service's work queues must exist and have at least one consumer. This is what a caller needs ("will my
message be taken?"), it works from any container that can reach the broker (docker-compose healthchecks run
it inside the worker's container, with the worker's own broker user), and it needs no change to the worker.

Exit code 0 healthy, 1 not (what Docker's HEALTHCHECK expects; it never returns 2, which Docker reserves).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from contracts.routing import Names

SERVICES = ("bureau", "accounts", "pos")


def service_queues(service: str, ns: str, regions: list[str] | None = None) -> list[str]:
    n = Names(ns)
    if service == "bureau":
        return [n.bureau_queue(regions or None)]
    if service == "accounts":
        return [n.accounts_pay_queue, n.accounts_admin_queue]
    if service == "pos":
        return [n.pos_command_queue]
    raise ValueError(f"unknown service {service!r} (one of {', '.join(SERVICES)})")


async def consumers(url: str, queues: list[str], timeout: float = 5.0) -> dict[str, int | None]:
    """Consumers per queue (None: the queue does not exist). Passive declares: they create nothing."""
    from services.shared import failover
    from aiormq.exceptions import ChannelNotFoundEntity

    out: dict[str, int | None] = {}
    conn = await asyncio.wait_for(failover.connect(url, timeout=timeout), (timeout + 1) * len(failover.split(url)))
    try:
        for q in queues:
            ch = await conn.channel()
            try:
                declared = await ch.declare_queue(q, passive=True)
                res: Any = declared.declaration_result
                out[q] = int(res.consumer_count)
            except ChannelNotFoundEntity:
                out[q] = None
            finally:
                if not ch.is_closed:
                    await ch.close()
    finally:
        await conn.close()
    return out


async def check(url: str, ns: str, service: str, regions: list[str] | None = None) -> tuple[bool, str]:
    """(healthy, one line)."""
    from .errors import InfrastructureError, explain_broker_error
    quiet = {n: logging.getLogger(n).level for n in ("aio_pika", "aiormq")}
    for n in quiet:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        counts = await consumers(url, service_queues(service, ns, regions))
    except InfrastructureError as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - the broker's answer, in one line
        return False, explain_broker_error(url, exc)
    finally:
        for n, level in quiet.items():
            logging.getLogger(n).setLevel(level)
    missing = [q for q, c in counts.items() if c is None]
    idle = [q for q, c in counts.items() if c == 0]
    if missing:
        return False, f"{service}: no queue {', '.join(missing)} (is the namespace {ns!r} right, the worker started?)"
    if idle:
        return False, f"{service}: nobody is consuming {', '.join(idle)} (the {service} worker is not running or not ready)"
    return True, f"{service}: healthy (" + ", ".join(f"{q} {c} consumer{'s' if c != 1 else ''}"
                                                   for q, c in counts.items()) + ")"


def main(args: Any) -> int:
    regions = [r for r in (args.regions or "").split(",") if r]
    ok, line = asyncio.run(check(args.amqp_url, args.namespace, args.service, regions))
    print(line, file=None if ok else __import__("sys").stderr)
    return 0 if ok else 1
