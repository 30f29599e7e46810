"""`gongji worker pos`: takes visit commands, talks to the bureau, publishes one outcome per visit."""
from __future__ import annotations

import asyncio
import os
import time

import structlog
from pydantic import ValidationError

from contracts.envelope import Reply
from contracts.errors import GongjiError
from services.shared.broker import Broker
from services.shared.entry import WorkerConfig
from services.shared.inbox import short_error
from services.shared.runtime import Incoming, Poison, Worker
from services.shared.store import OutMessage
from services.shared.stores import open_store

from .pg_schema import MIGRATIONS as PG_MIGRATIONS
from .repository import claim_lane
from .service import SCHEMA, PosService, parse_command

log = structlog.get_logger()

# Enough to keep the bureau and the accounts service busy on a 2-core machine (throughput still rises at 128
# visits outstanding as batches fill, BENCHMARKS.md), low enough that an overload queues in the broker instead of
# timing out.
DEFAULT_MAX_OPEN = 256


async def setup(cfg: WorkerConfig, broker: Broker) -> Worker:
    names = cfg.names
    store = await open_store("pos", cfg.data_dir, SCHEMA, PG_MIGRATIONS, database_url=cfg.database_url)
    service = PosService(names)
    service.msgid_lane = await store.run(claim_lane)
    bureau_url = os.environ.get("GONGJI_POS_BUREAU_URL")
    http = None
    if bureau_url:  # national transactions over HTTP (services/pos/http_transport.py); the rest stays on AMQP
        from .http_transport import HttpBureau
        http = HttpBureau(broker, bureau_url)
    worker = Worker(http or broker, store)  # type: ignore[arg-type]
    # At most this many visits open (sent to the bureau, no outcome yet) at once; 0 = no limit.
    max_open = int(os.environ.get("GONGJI_POS_MAX_OPEN", str(DEFAULT_MAX_OPEN))) or None
    worker.stats.update({"admission_waits": 0, "open_high_water": 0})
    admission = asyncio.Lock()
    slot_freed = asyncio.Event()

    async def unroutable(msg: OutMessage) -> None:
        if msg.exchange == names.bureau_exchange and msg.message_id:
            ids = await store.run(lambda c: service.handle_unroutable(c, msg.message_id or "", msg.routing_key))
            await worker.flush(ids)

    worker.on_unroutable = unroutable
    # Outcome events of one pass to the same facility's key travel together (services/shared/batching.py);
    # the national requests to the bureau never do.
    worker.batchable = lambda m: m.exchange == names.events_exchange and m.routing_key.startswith("outcome.")
    await worker.start_relay()

    async def on_command(incoming: Incoming) -> list[int]:
        incoming.json()  # not JSON at all → dead-letter
        try:
            cmd = parse_command(incoming.body)
        except Exception as exc:
            raise Poison(str(exc)) from None
        structlog.contextvars.bind_contextvars(visit_id=cmd.visit_id)
        ids = None
        try:
            if not admission.locked():  # nobody waiting: try at once
                ids = await store.run(lambda c: service.handle_command(c, cmd, max_open))
        except GongjiError as exc:  # a visit_id reused with other content: parked with the reason
            raise Poison(f"{exc.code}: {exc.message}") from None
        if ids is None:
            # Admission control: too many visits open. Hold the command (unacked; the broker keeps the rest
            # queued) rather than start a visit whose deadline would run out while the bureau works through
            # a backlog. Waiters line up on the lock (first come, first served); the head one tries again
            # when a visit finishes here, or every 200 ms (a replica may have finished one).
            worker.stats["admission_waits"] += 1
            async with admission:
                while True:
                    slot_freed.clear()  # before trying: a visit finishing meanwhile is not missed
                    try:
                        ids = await store.run(lambda c: service.handle_command(c, cmd, max_open))
                    except GongjiError as exc:
                        raise Poison(f"{exc.code}: {exc.message}") from None
                    if ids is not None:
                        break
                    try:
                        await asyncio.wait_for(slot_freed.wait(), 0.2)
                    except asyncio.TimeoutError:
                        pass
        worker.stats["open_high_water"] = service.open_high_water
        return ids

    async def on_reply(incoming: Incoming) -> list[int]:
        try:
            reply = Reply.model_validate(incoming.json())  # numbers → Decimal (contracts.wire)
        except ValidationError as exc:
            raise Poison(f"not a reply: {short_error(exc)}") from None
        structlog.contextvars.bind_contextvars(msgid=reply.inf_refmsgid)
        try:
            return await store.run(lambda c: service.handle_reply(c, reply))
        finally:
            slot_freed.set()

    async def deadlines() -> None:
        while True:
            await asyncio.sleep(0.2)
            try:
                ids = await store.run(lambda c: service.handle_deadlines(c, time.time()))
                if ids:
                    slot_freed.set()
                await worker.flush(ids)
            except Exception:
                log.exception("deadline scan failed")

    if http is not None:
        async def http_reply(body: bytes) -> None:
            ids = await on_reply(Incoming(body, None, None, None, {}, False))
            await worker.flush(ids)
        http.deliver = http_reply

    await worker.serve(names.pos_command_queue, on_command, prefetch=cfg.prefetch)
    await worker.serve(names.reply_queue("pos"), on_reply, prefetch=cfg.prefetch)
    worker.start_task(deadlines())
    return worker
