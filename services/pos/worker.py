"""`gongji worker pos`: takes visit commands, talks to the bureau, publishes one outcome per visit."""
from __future__ import annotations

import asyncio
import time

import structlog
from pydantic import ValidationError

from contracts.envelope import Reply
from services.shared.broker import Broker
from services.shared.entry import WorkerConfig
from services.shared.inbox import short_error
from services.shared.runtime import Incoming, Poison, Worker
from services.shared.store import OutMessage, Store

from .service import SCHEMA, PosService, parse_command

log = structlog.get_logger()


async def setup(cfg: WorkerConfig, broker: Broker) -> Worker:
    names = cfg.names
    store = Store(cfg.data_dir / "pos.db", SCHEMA)
    await store.open()
    service = PosService(names)
    worker = Worker(broker, store)

    async def unroutable(msg: OutMessage) -> None:
        if msg.exchange == names.bureau_exchange and msg.message_id:
            ids = await store.run(lambda c: service.handle_unroutable(c, msg.message_id or "", msg.routing_key))
            await worker.flush(ids)

    worker.on_unroutable = unroutable
    await worker.start_relay()

    async def on_command(incoming: Incoming) -> list[int]:
        incoming.json()  # not JSON at all → dead-letter
        try:
            cmd = parse_command(incoming.body)
        except Exception as exc:
            raise Poison(str(exc)) from None
        structlog.contextvars.bind_contextvars(visit_id=cmd.visit_id)
        return await store.run(lambda c: service.handle_command(c, cmd))

    async def on_reply(incoming: Incoming) -> list[int]:
        try:
            reply = Reply.model_validate_json(incoming.body)
        except ValidationError as exc:
            raise Poison(f"not a reply: {short_error(exc)}") from None
        structlog.contextvars.bind_contextvars(msgid=reply.inf_refmsgid)
        return await store.run(lambda c: service.handle_reply(c, reply))

    async def deadlines() -> None:
        while True:
            await asyncio.sleep(0.2)
            try:
                ids = await store.run(lambda c: service.handle_deadlines(c, time.time()))
                await worker.flush(ids)
            except Exception:
                log.exception("deadline scan failed")

    await worker.serve(names.pos_command_queue, on_command, prefetch=cfg.prefetch)
    await worker.serve(names.reply_queue("pos"), on_reply, prefetch=cfg.prefetch)
    worker.start_task(deadlines())
    return worker
