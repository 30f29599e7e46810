"""Internal traffic in batches: one AMQP message carrying the items of several handlers.

Only gongji's own hops are batched (bureau → accounts requests, accounts → bureau answers, the simulator's
visit commands to the POS, the POS's outcome events); the national transactions (POS ↔ bureau) stay one request
per message. Items travel together only when they go to the same exchange under the same routing key, so a
batch reaches exactly the queues each of its items would have reached (a subscriber bound to one facility's
outcome.<code> gets that facility's batches and no other). A batch is a JSON object
`{"batch": [{"message_id", "correlation_id", "reply_to", "headers", "body"}, ...]}` with the header
`x-gongji-batch` = its item count. Every item keeps its own idempotency key (inside its body: req_id), its
own reply_to and its own audit trail; the receiver runs each item through the same handler as a single
message, so each item has its own inbox entry, and a bad item is refused alone (see runtime.Worker).

A sender packs the rows it flushes together (one flush per loop pass: the handlers of a group commit) that
go to the same exchange and routing key, up to MAX_ITEMS; a lone row goes out as a plain message.
GONGJI_BATCH=0 turns batching off (every row its own message, as before).
"""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Awaitable, Callable

from .store import OutMessage

HEADER = "x-gongji-batch"
MAX_ITEMS = int(os.environ.get("GONGJI_BATCH_MAX", "64"))
MAX_ITEMS_IN = 1000  # a batch claiming more is refused whole


class BadBatch(ValueError):
    """The batch message itself is malformed (not one of ours): refused as a whole."""


def enabled() -> bool:
    return os.environ.get("GONGJI_BATCH", "1") != "0"


def is_batch(headers: dict[str, Any] | None) -> bool:
    return bool(headers) and HEADER in headers  # type: ignore[operator]


def pack(rows: list[tuple[int, OutMessage]], batchable: Callable[[OutMessage], bool] | None
         ) -> list[tuple[list[int], OutMessage, list[OutMessage]]]:
    """Rows → messages to publish: (the row ids it carries, the message, the items' own messages)."""
    out: list[tuple[list[int], OutMessage, list[OutMessage]]] = []
    groups: dict[tuple[str, str], list[tuple[int, OutMessage]]] = {}
    for row_id, msg in rows:
        if batchable is not None and enabled() and batchable(msg):
            group = groups.setdefault((msg.exchange, msg.routing_key), [])
            group.append((row_id, msg))
            if len(group) >= MAX_ITEMS:
                out.append(_one(group))
                groups[(msg.exchange, msg.routing_key)] = []
        else:
            out.append(([row_id], msg, [msg]))
    for group in groups.values():
        if group:
            out.append(_one(group))
    return out


def _one(group: list[tuple[int, OutMessage]]) -> tuple[list[int], OutMessage, list[OutMessage]]:
    if len(group) == 1:
        row_id, msg = group[0]
        return [row_id], msg, [msg]
    items = [{"message_id": m.message_id, "correlation_id": m.correlation_id, "reply_to": m.reply_to,
              "headers": m.headers or {}, "body": m.body.decode()} for _, m in group]
    first = group[0][1]
    body = json.dumps({"batch": items}, ensure_ascii=False, separators=(",", ":")).encode()
    msg = OutMessage(first.exchange, first.routing_key, body, message_id=f"batch:{first.message_id}",
                     headers={HEADER: len(items)})
    return [r for r, _ in group], msg, [m for _, m in group]


def unpack(body: bytes) -> list[dict[str, Any]]:
    """The items of a batch, checked for shape only (each item's content is its handler's business)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadBatch(f"batch is not JSON: {exc}") from None
    items = data.get("batch") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items or len(items) > MAX_ITEMS_IN:
        raise BadBatch("batch must hold a list of 1..1000 items")
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("body"), str) \
                or not isinstance(item.get("headers", {}), dict) \
                or not all(isinstance(item.get(k), (str, type(None))) for k in ("message_id", "correlation_id",
                                                                                  "reply_to")):
            raise BadBatch("batch item must have a string body, string ids and a headers object")
    return items


def bodies(headers: dict[str, Any] | None, body: bytes) -> list[bytes]:
    """The message bodies a delivery carries: its items' if it is a batch, else its own (for consumers that
    are not a Worker: the simulator's client, `gongji observe`, the bench). Raises BadBatch."""
    if not is_batch(headers):
        return [body]
    return [item["body"].encode() for item in unpack(body)]


class Coalescer:
    """Messages a client sends in one pass of the event loop go out packed (the same rule as a worker's outbox
    flush): e.g. the visit commands the bench or the simulator sends when a batch of outcomes arrives. `publish`
    returns once the message (in its batch) is confirmed, and raises what publishing it raised."""

    def __init__(self, publish: Callable[[OutMessage], Awaitable[None]],
                 batchable: Callable[[OutMessage], bool]):
        self._publish = publish
        self._batchable = batchable
        self._pending: list[tuple[int, OutMessage]] = []
        self._done: asyncio.Future[dict[int, BaseException | None]] | None = None
        self.batches = 0
        self.items = 0

    async def publish(self, msg: OutMessage) -> None:
        loop = asyncio.get_running_loop()
        if self._done is None:
            self._done = loop.create_future()
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        key = len(self._pending)
        self._pending.append((key, msg))
        results = await asyncio.shield(self._done)
        error = results.get(key)
        if error is not None:
            raise error

    async def _flush(self) -> None:
        rows, done = self._pending, self._done
        self._pending, self._done = [], None
        assert done is not None
        packed = pack(rows, self._batchable)
        try:
            outcomes = await asyncio.gather(*(self._publish(msg) for _, msg, _ in packed), return_exceptions=True)
        except BaseException as exc:  # cancelled: the waiters must not wait forever
            done.set_exception(exc)
            raise
        results: dict[int, BaseException | None] = {}
        for (keys, _, items), outcome in zip(packed, outcomes):
            if len(items) > 1:
                self.batches += 1
                self.items += len(items)
            for key in keys:
                results[key] = outcome if isinstance(outcome, BaseException) else None
        done.set_result(results)


def command_sender(publish: Callable[[OutMessage], Awaitable[None]]) -> Coalescer:
    """The clients' visit commands (routing key "command" to the POS), packed per loop pass."""
    return Coalescer(publish, lambda m: m.routing_key == "command")
