"""`gongji redrive`: put dead-lettered work back where it came from, after the cause was fixed.

<ns>.dead holds two kinds of parked messages:
- those the broker dead-lettered (a quorum queue's delivery limit: a handler that kept failing, e.g. a bug):
  the `x-death` header names the exchange and routing key they were published with;
- those a worker parked with a reason (`x-gongji-reason`) and their origin (`x-gongji-exchange`,
  `x-gongji-routing-key`): poison, a forbidden request, an answer nobody could receive.
Each is published again to its origin (persistent, confirmed, mandatory) with its message_id, reply_to and
headers (minus the dead-letter bookkeeping), so the receiver's inbox makes a redrive idempotent: a message
that was in fact handled gets its stored reply again. Messages whose body was cut (`x-gongji-truncated`),
that name no origin, that do not match the filters, or that no queue takes now, stay in <ns>.dead.

Run it as a user that may write to the origins (the pay exchange is the bureau's alone): `admin` in the
docker-compose deployment.
"""
from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq

from contracts.routing import Names
from services.shared import failover

DROP = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason", "x-delivery-count",
        "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-gongji-reason", "x-gongji-queue",
        "x-gongji-exchange", "x-gongji-routing-key")


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def origin(headers: dict[str, Any]) -> tuple[str, str] | None:
    """(exchange, routing key) a parked message was first published to, or None if it does not say."""
    if headers.get("x-gongji-exchange"):
        return _text(headers["x-gongji-exchange"]), _text(headers.get("x-gongji-routing-key"))
    deaths = headers.get("x-death") or []
    if deaths:
        first = deaths[-1] if len(deaths) > 1 else deaths[0]  # x-death is newest first; the oldest is the origin
        keys = first.get("routing-keys") or [""]
        return _text(first.get("exchange")), _text(keys[0])
    return None


def reason_of(headers: dict[str, Any]) -> str:
    reason = headers.get("x-gongji-reason") or headers.get("x-first-death-reason")
    if reason is None and headers.get("x-death"):
        reason = headers["x-death"][0].get("reason")
    return _text(reason) or "unknown"


@dataclass
class Result:
    redriven: list[str] = field(default_factory=list)
    kept: list[dict[str, str]] = field(default_factory=list)


async def redrive(amqp_url: str, namespace: str, *, reason: str | None = None, queue: str | None = None,
                  limit: int = 10000, dry_run: bool = False) -> Result:
    names = Names(namespace)
    result = Result()
    conn = await failover.connect(amqp_url)
    try:
        get_ch = await conn.channel()
        pub = await conn.channel(publisher_confirms=True, on_return_raises=True)
        dead = await get_ch.get_queue(names.dead_queue, ensure=True)
        held: list[aio_pika.abc.AbstractIncomingMessage] = []  # put back at the end (not fetched again meanwhile)
        while len(result.redriven) + len(held) < limit:
            msg = await dead.get(no_ack=False, fail=False, timeout=10)
            if msg is None:
                break
            headers = dict(msg.headers or {})
            why = reason_of(headers)
            target = origin(headers)
            keep = None
            if headers.get("x-gongji-truncated"):
                keep = "body was truncated when parked"
            elif target is None or not target[0]:
                keep = "no origin recorded"
            elif reason and reason not in why:
                keep = "reason does not match"
            elif queue and queue != _text(headers.get("x-gongji-queue") or
                                          (headers.get("x-death") or [{}])[-1].get("queue")):
                keep = "queue does not match"
            if keep is None and not dry_run:
                assert target is not None
                message = aio_pika.Message(
                    msg.body, content_type=msg.content_type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=msg.message_id, correlation_id=msg.correlation_id, reply_to=msg.reply_to,
                    headers={k: v for k, v in headers.items() if k not in DROP})
                try:
                    ex = await pub.get_exchange(target[0], ensure=False)
                    await ex.publish(message, target[1], mandatory=True)
                except aiormq.exceptions.PublishError:
                    keep = f"no queue takes {target[0]!r} key {target[1]!r} now"
                except aiormq.exceptions.AMQPChannelError as exc:  # e.g. access refused: not ours to write
                    keep = f"cannot publish to {target[0]!r}: {exc}"
                    pub = await conn.channel(publisher_confirms=True, on_return_raises=True)
            if keep is None:
                result.redriven.append(_text(msg.message_id))
                if not dry_run:
                    await msg.ack()
                else:
                    held.append(msg)
            else:
                result.kept.append({"message_id": _text(msg.message_id), "reason": why, "kept_because": keep})
                held.append(msg)
        for msg in held:
            await msg.nack(requeue=True)
    finally:
        await conn.close()
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", help="only messages whose dead-letter reason contains this text")
    p.add_argument("--queue", help="only messages dead-lettered from this queue (e.g. gongji.accounts.pay)")
    p.add_argument("--limit", type=int, default=10000, help="at most this many messages looked at")
    p.add_argument("--dry-run", action="store_true", help="say what would be redriven; change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


async def main(args: argparse.Namespace) -> int:
    res = await redrive(args.amqp_url, args.namespace, reason=args.reason, queue=args.queue, limit=args.limit,
                        dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"redriven": res.redriven, "kept": res.kept}, ensure_ascii=False))
    else:
        verb = "would redrive" if args.dry_run else "redriven"
        print(f"{verb} {len(res.redriven)}, kept {len(res.kept)} in {Names(args.namespace).dead_queue}")
        for k in res.kept[:20]:
            print(f"  kept {k['message_id']}: {k['kept_because']} ({k['reason']})")
    return 0
