"""Idempotent handling, shared by every consumer.

One transaction holds: the inbox check, the effect, the inbox entry with the reply, and the outbox rows.
A duplicate msgid gets the stored reply again; the same msgid with other content gets a conflict error;
a msgid whose effect is still waiting on another service gets nothing now (the reply follows later).
A refusal (GongjiError) rolls the effect back to a savepoint, so bad input changes nothing but the inbox.
"""
from __future__ import annotations

from typing import Callable

from pydantic import BaseModel, ValidationError

from contracts.envelope import Reply, Request
from contracts.errors import ErrorCode, GongjiError

from .runtime import Incoming, Poison, inbox_counters
from .store import OutMessage
from .uow import UnitOfWork

# effect(outbox) -> reply body now, or None when the reply will follow once another service answers
Effect = Callable[[list[int]], bytes | None]


def handle_idempotent(uow: UnitOfWork, *, key: str, kind: str, content_hash: str, reply_to: str | None,
                      reply_exchange: str, effect: Effect, refusal: Callable[[GongjiError], bytes]) -> list[int]:
    outbox: list[int] = []

    def send(body: bytes) -> None:
        if reply_to:
            outbox.append(uow.outbox.add(OutMessage(reply_exchange, reply_to, body, message_id=f"re:{key}",
                                                    correlation_id=key)))

    with uow.transaction():
        entry = uow.inbox.get(key)
        if entry is not None:
            inbox_counters["duplicates_absorbed"] += 1
            if entry.kind == "tombstone" and entry.reply is not None:
                send(entry.reply.encode())  # cancelled by 冲正 before it arrived
            elif entry.content_hash != content_hash:
                send(refusal(GongjiError(ErrorCode.MSGID_CONFLICT,
                                         f"msgid {key} was already used for a different message")))
            elif entry.reply is not None:
                send(entry.reply.encode())
            return outbox
        try:
            with uow.transaction():  # a savepoint: a refusal undoes the effect, not the inbox entry
                body = effect(outbox)
        except GongjiError as exc:
            outbox.clear()
            body = refusal(exc)
        uow.inbox.put(key, kind, content_hash, body.decode() if body is not None else None, reply_to)
        if body is not None:
            send(body)
    return outbox


def envelope_refusal(msgid: str) -> Callable[[GongjiError], bytes]:
    return lambda exc: Reply.fail(msgid, exc.code, exc.message).model_dump_json().encode()


def short_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "message"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def decode_envelope(incoming: Incoming) -> Request:
    data = incoming.json()
    if not isinstance(data, dict):
        raise Poison("message is JSON but not an object (envelope expected)")
    try:
        return Request.model_validate(data)
    except ValidationError as exc:
        raise Poison(f"not a valid envelope: {short_error(exc)}") from None


def decode_input(req: Request, inputs: dict[str, type[BaseModel]]) -> BaseModel:
    model = inputs.get(req.infno)
    if model is None:
        raise GongjiError(ErrorCode.UNKNOWN_INFNO, f"infno {req.infno} is not served here")
    try:
        return model.model_validate(req.input)
    except ValidationError as exc:
        raise GongjiError(ErrorCode.BAD_INPUT, f"input for {req.infno}: {short_error(exc)}") from None
