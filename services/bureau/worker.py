"""`gongji worker bureau`: serves the regions it is configured for (all policy files by default)."""
from __future__ import annotations

import asyncio
import os

import structlog
from pydantic import ValidationError

from contracts.internal import AccountsReply
from services.shared.broker import Broker
from services.shared.entry import WorkerConfig
from services.shared.inbox import decode_envelope, short_error
from services.shared.policy import load_policies
from services.shared.runtime import Forbidden, Incoming, Poison, Worker
from services.shared.stores import open_store

from .pg_schema import MIGRATIONS as PG_MIGRATIONS
from .service import BureauService
from .store import SCHEMA, migrate

log = structlog.get_logger()
REGISTRY_INFNOS = frozenset({"G001", "G002", "G003", "G199"})


async def setup(cfg: WorkerConfig, broker: Broker) -> Worker:
    policies = load_policies()
    served = sorted(cfg.regions) if cfg.regions else sorted(policies)
    missing = [r for r in served if r not in policies]
    if missing:
        raise SystemExit(f"no policy file for region(s) {', '.join(missing)}")
    group = "-".join(sorted(cfg.regions)) if cfg.regions else "all"
    reply_key = f"bureau-{group}"
    names = cfg.names
    queue = await broker.declare_bureau_queue(cfg.regions or None, served)
    await broker.declare_queue(names.reply_queue(reply_key), [(names.reply_exchange, reply_key)])
    # SQLite: migrate adds the columns added since older data directories were made
    store = await open_store(f"bureau-{group}", cfg.data_dir, SCHEMA, PG_MIGRATIONS, database_url=cfg.database_url,
                             sqlite_migrate=migrate)
    service = BureauService(names, policies, served, reply_key)
    worker = Worker(broker, store)
    # Requests to the accounts service travel in batches (its pay consumer unpacks them); the national answers
    # to the POS stay one per message.
    worker.batchable = lambda m: m.exchange == names.pay_exchange and m.routing_key == "pay"
    await worker.start_relay()

    async def on_request(incoming: Incoming) -> list[int]:
        req = decode_envelope(incoming)
        structlog.contextvars.bind_contextvars(msgid=req.msgid, infno=req.infno)
        if req.infno in REGISTRY_INFNOS and incoming.exchange != names.registry_exchange:
            # Only the admin/simulator user may write to the registry exchange (broker permissions); the same
            # transaction through the national exchange (which the POS may write) is someone pretending.
            raise Forbidden(f"{req.infno} is accepted from {names.registry_exchange} only, "
                            f"not {incoming.exchange or '(default)'}")
        via_registry = incoming.exchange == names.registry_exchange  # set by the broker, not by the publisher
        return await store.run(lambda c: service.handle_request(c, req, incoming.reply_to, incoming.headers,
                                                                via_registry))

    async def on_accounts_reply(incoming: Incoming) -> list[int]:
        try:
            rep = AccountsReply.model_validate_json(incoming.body)
        except ValidationError as exc:
            raise Poison(f"not an accounts reply: {short_error(exc)}") from None
        structlog.contextvars.bind_contextvars(req_id=rep.req_id, setl_id=rep.context.get("setl_id"))
        return await store.run(lambda c: service.handle_accounts_reply(c, rep))

    sweep_s = float(os.environ.get("GONGJI_PENDING_SWEEP_S", "120"))

    async def sweep() -> None:
        """Settlements left pending (or reversing, compensating) past `sweep_s`: ask the accounts again."""
        while True:
            await asyncio.sleep(min(sweep_s, 5.0))
            try:
                ids = await store.run(lambda c: service.sweep_pending(c, sweep_s))
                if ids:
                    log.warning("asked the accounts service again for unanswered payments/refunds", count=len(ids))
                    worker.stats["pending_resent"] = worker.stats.get("pending_resent", 0) + len(ids)
                await worker.flush(ids)
            except Exception:
                log.exception("pending sweep failed; retrying")

    worker.start_task(sweep())
    await worker.serve(queue, on_request, prefetch=cfg.prefetch)
    await worker.serve(names.reply_queue(reply_key), on_accounts_reply, prefetch=cfg.prefetch)
    return worker
