"""`gongji worker accounts`: the payer-account service."""
from __future__ import annotations

import structlog
from pydantic import ValidationError

from contracts.internal import AccountsRequest
from services.shared.broker import Broker
from services.shared.entry import WorkerConfig
from services.shared.inbox import decode_envelope, short_error
from services.shared.policy import load_policies
from services.shared.runtime import Incoming, Poison, Worker
from services.shared.stores import open_store

from .pg_schema import MIGRATIONS as PG_MIGRATIONS
from .service import AccountsService
from .store import SCHEMA


async def setup(cfg: WorkerConfig, broker: Broker) -> Worker:
    names = cfg.names
    store = await open_store("accounts", cfg.data_dir, SCHEMA, PG_MIGRATIONS, database_url=cfg.database_url)
    service = AccountsService(names, load_policies())
    worker = Worker(broker, store)
    # Answers to a bureau travel in batches (the bureau's reply consumer unpacks them); balance events and
    # answers to anyone else one by one.
    worker.batchable = lambda m: m.exchange == names.reply_exchange and m.routing_key.startswith("bureau-")
    await worker.start_relay()

    async def on_pay(incoming: Incoming) -> list[int]:
        try:
            req = AccountsRequest.model_validate_json(incoming.body)
        except ValidationError as exc:
            raise Poison(f"not an accounts request: {short_error(exc)}") from None
        structlog.contextvars.bind_contextvars(req_id=req.req_id, setl_id=req.setl_id)
        return await store.run(lambda c: service.handle_request(c, req, incoming.reply_to))

    async def on_admin(incoming: Incoming) -> list[int]:
        req = decode_envelope(incoming)
        structlog.contextvars.bind_contextvars(msgid=req.msgid, infno=req.infno)
        return await store.run(lambda c: service.handle_admin(c, req, incoming.reply_to))

    await worker.serve(names.accounts_pay_queue, on_pay, prefetch=cfg.prefetch)
    await worker.serve(names.accounts_admin_queue, on_admin, prefetch=cfg.prefetch)
    return worker
