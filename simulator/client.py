"""A broker client for the CLI, the simulator and the tests: request/reply over durable queues of its own
(never direct reply-to), visit commands to the POS, and a subscription to outcome events."""
from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from contracts import credentials, wire
from contracts.base import SHANGHAI
from contracts.envelope import Reply, Request, make_msgid
from contracts.pos import ReverseVisit, SettleVisit, VisitOutcome
from contracts.routing import REGISTRY_KEY, Names
from services.shared import batching
from services.shared.access import outcome_publisher_ok
from services.shared.broker import Broker
from services.shared.store import OutMessage

CLIENT_FIXMEDINS = "GONGJICLI001"


class Client:
    def __init__(self, amqp_url: str, namespace: str = "gongji", name: str = "cli", timeout: float = 30.0):
        self.names = Names(namespace)
        self.broker = Broker(amqp_url, self.names, name=f"gongji-{name}")
        self.timeout = timeout
        self.key = f"client-{name}-{uuid.uuid4().hex[:10]}"
        self._replies: dict[str, asyncio.Future[Reply]] = {}
        self._outcome_waiters: dict[str, asyncio.Future[VisitOutcome]] = {}
        self.outcomes: dict[str, VisitOutcome] = {}
        self.outcome_events: list[VisitOutcome] = []  # every event, repeats included (tests count them)
        self.untrusted_outcomes = 0  # events not published by the POS user: ignored
        self.outcome_batches = 0  # outcome events that came packed (the POS batches them per facility)
        self.signed: dict[str, dict[str, str]] = {}  # msgid → x-tif headers of a 9001 about to be sent
        self._seq = itertools.count(random.randrange(0, 5000))
        # Visit commands sent in one loop pass go to the POS as one batch (services/shared/batching.py).
        self.commands = batching.command_sender(lambda m: self.broker.publish(m))

    async def __aenter__(self) -> "Client":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        await self.broker.connect()
        await self.broker.declare_topology()
        n = self.names
        reply_q = n.reply_queue(self.key)
        events_q = f"{n.ns}.observe.{self.key}"
        await self.broker.declare_client_queue(reply_q, [(n.reply_exchange, self.key)])
        await self.broker.declare_client_queue(events_q, [(n.events_exchange, "outcome.#")])
        await self.broker.consume(reply_q, self._on_reply, prefetch=256)
        await self.broker.consume(events_q, self._on_outcome, prefetch=256)

    async def close(self) -> None:
        await self.broker.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            reply = Reply.model_validate(wire.loads(message.body))
        except Exception:
            reply = None
        await message.ack()
        if reply is not None:
            fut = self._replies.get(reply.inf_refmsgid)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    def trusted_outcome(self, message: AbstractIncomingMessage) -> bool:
        """Outcome events count only from the POS user (RabbitMQ's validated user_id)."""
        if outcome_publisher_ok(message.user_id, self.broker.user):
            return True
        self.untrusted_outcomes += 1
        return False

    async def _on_outcome(self, message: AbstractIncomingMessage) -> None:
        if not self.trusted_outcome(message):
            await message.ack()
            return
        try:
            outcomes = [VisitOutcome.model_validate_json(body)
                        for body in batching.bodies(message.headers, message.body)]
        except Exception:  # not an outcome the POS wrote: dropped, never a crash of the client
            outcomes = []
        await message.ack()
        if batching.is_batch(message.headers):
            self.outcome_batches += 1
        for outcome in outcomes:
            self.outcome_events.append(outcome)
            self.outcomes.setdefault(outcome.visit_id, outcome)
            fut = self._outcome_waiters.get(outcome.visit_id)
            if fut is not None and not fut.done():
                fut.set_result(outcome)

    # ---- envelopes -----------------------------------------------------------------------------
    def msgid(self, when: datetime, fixmedins_code: str = CLIENT_FIXMEDINS) -> str:
        return make_msgid(fixmedins_code, when.astimezone(SHANGHAI).strftime("%Y%m%d%H%M%S"), next(self._seq) % 10000)

    def envelope(self, infno: str, data: dict[str, Any], *, insuplc_admdvs: str, mdtrtarea_admvs: str | None = None,
                 when: datetime | str | None = None, fixmedins_code: str = CLIENT_FIXMEDINS,
                 msgid: str | None = None, sign_no: str = "") -> Request:
        if isinstance(when, str):
            when = datetime.strptime(when, "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI)
        when = when or datetime.now(SHANGHAI).replace(microsecond=0)
        return Request(infno=infno, msgid=msgid or self.msgid(when, fixmedins_code), inf_time=when,
                       fixmedins_code=fixmedins_code, insuplc_admdvs=insuplc_admdvs,
                       mdtrtarea_admvs=mdtrtarea_admvs or insuplc_admdvs, opter="cli", sign_no=sign_no, input=data)

    async def call(self, exchange: str, routing_key: str, req: Request, timeout: float | None = None) -> Reply:
        if exchange == self.names.bureau_exchange and req.infno.startswith("G"):
            exchange = self.names.registry_exchange  # the bureau takes its admin transactions from there only
        if req.infno == "9001":  # sign-in carries the facility's credential (x-tif headers)
            self.signed[req.msgid] = credentials.sign(req.fixmedins_code, credentials.paas_token(req.fixmedins_code))
        return await self.call_raw(exchange, routing_key, req.model_dump_json().encode(), req.msgid, timeout)

    async def call_raw(self, exchange: str, routing_key: str, body: bytes, msgid: str,
                       timeout: float | None = None) -> Reply:
        """Send anything (tests send hostile bytes this way) and wait for the reply to `msgid`."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._replies[msgid] = fut
        try:
            await self.broker.publish(OutMessage(exchange, routing_key, body, message_id=msgid, reply_to=self.key,
                                                 headers=self.signed.pop(msgid, None)))
            return await asyncio.wait_for(fut, timeout or self.timeout)
        finally:
            self._replies.pop(msgid, None)

    async def send_raw(self, exchange: str, routing_key: str, body: bytes, msgid: str | None = None) -> None:
        await self.broker.publish(OutMessage(exchange, routing_key, body, message_id=msgid, reply_to=self.key))

    async def bureau(self, req: Request, timeout: float | None = None) -> Reply:
        return await self.call(self.names.bureau_exchange, req.insuplc_admdvs, req, timeout)

    async def bureau_registry(self, req: Request, timeout: float | None = None) -> Reply:
        """Facilities go to every bureau (each keeps its own registry); the first answer is returned."""
        return await self.call(self.names.bureau_exchange, REGISTRY_KEY, req, timeout)

    async def sign_in(self, fixmedins_code: str, when: datetime | str, region: str) -> str:
        """9001 for a facility (sent to every bureau); returns the sign_no."""
        req = self.envelope("9001", {"opter_no": "cli"}, insuplc_admdvs=region, when=when,
                            fixmedins_code=fixmedins_code)
        reply = await self.call(self.names.bureau_exchange, REGISTRY_KEY, req)
        if reply.infcode != 0 or not reply.output:
            raise RuntimeError(f"sign-in of {fixmedins_code} refused: {reply.err_code} {reply.err_msg}")
        return str(reply.output["sign_no"])

    async def accounts_admin(self, req: Request, timeout: float | None = None) -> Reply:
        return await self.call(self.names.accounts_exchange, "admin", req, timeout)

    # ---- visits through the POS ------------------------------------------------------------------
    async def submit(self, cmd: SettleVisit | ReverseVisit) -> None:
        self._outcome_waiters.setdefault(cmd.visit_id, asyncio.get_running_loop().create_future())
        await self.commands.publish(OutMessage(self.names.pos_exchange, "command", cmd.model_dump_json().encode(),
                                               message_id=cmd.visit_id))

    async def outcome(self, visit_id: str, timeout: float | None = None) -> VisitOutcome:
        if visit_id in self.outcomes:
            return self.outcomes[visit_id]
        fut = self._outcome_waiters.setdefault(visit_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(asyncio.shield(fut), timeout or self.timeout)

    async def visit(self, cmd: SettleVisit | ReverseVisit, timeout: float | None = None) -> VisitOutcome:
        await self.submit(cmd)
        return await self.outcome(cmd.visit_id, timeout)
