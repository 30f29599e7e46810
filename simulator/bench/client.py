"""A lean client for the bench: admin calls and outcome events."""
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage

from contracts.envelope import make_msgid
from contracts.routing import Names
from services.shared import batching
from services.shared.broker import Broker
from services.shared.store import OutMessage

from .population import LOAD_EPOCH, LOAD_TIME, LOADER_CODE


# ---- a lean client: admin calls and outcome events ------------------------------------------------------
class BenchClient:
    """Like simulator.client.Client, but light on CPU (the bench shares the machine with what it measures):
    outcomes are parsed with json, not pydantic, and only the visits it waits for are tracked."""

    def __init__(self, amqp_url: str, names: Names):
        self.names = names
        self.broker = Broker(amqp_url, names, name="gongji-bench")
        self.key = f"bench-{uuid.uuid4().hex[:10]}"
        self.reply_queue = names.reply_queue(self.key)
        self.outcome_queue = f"{names.ns}.observe.{self.key}"
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.waiters: dict[str, asyncio.Future[tuple[str, bool]]] = {}
        self._seq = 0
        self.resent = 0  # admin messages sent again after no answer (see call)
        # Visit commands sent in one loop pass (the outcomes of a batch arrive together) go as one batch.
        self.commands = batching.command_sender(lambda m: self.broker.publish(m))

    async def connect(self) -> None:
        await self.broker.connect()
        await self.broker.declare_topology()
        n = self.names
        await self.broker.declare_client_queue(self.reply_queue, [(n.reply_exchange, self.key)])
        await self.broker.declare_client_queue(self.outcome_queue, [(n.events_exchange, "outcome.#")])
        await self.broker.consume(self.reply_queue, self._on_reply, prefetch=256)
        await self.broker.consume(self.outcome_queue, self._on_outcome, prefetch=256)

    async def close(self) -> None:
        await self.broker.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        try:
            reply = json.loads(message.body)
        except ValueError:
            return
        fut = self._replies.get(reply.get("inf_refmsgid", ""))
        if fut is not None and not fut.done():
            fut.set_result(reply)

    async def _on_outcome(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        for body in batching.bodies(message.headers, message.body):
            data = json.loads(body)
            fut = self.waiters.pop(data.get("visit_id", ""), None)
            if fut is not None and not fut.done():
                setl = data.get("setlinfo") or {}
                fut.set_result((data.get("status", "?"), setl.get("acct_mulaid_pay", "0.00") != "0.00",
                                int(data.get("round_trips") or 0)))

    def msgid(self) -> str:
        """Loading msgids: LOADER_CODE + a business second after LOAD_TIME + a 4-digit sequence."""
        n, self._seq = self._seq, self._seq + 1
        stamp = (LOAD_EPOCH + timedelta(seconds=n // 10000)).strftime("%Y%m%d%H%M%S")
        return make_msgid(LOADER_CODE, stamp, n % 10000)

    async def call(self, exchange: str, key: str, code: str, data: dict[str, Any], region: str,
                   timeout: float = 180.0, tries: int = 5) -> dict[str, Any]:
        """One admin transaction; resent with the same msgid (idempotent: a repeat gets the stored reply) if no
        answer comes in `timeout`, e.g. because the broker was restarted under us."""
        msgid = self.msgid()
        if exchange == self.names.bureau_exchange and code.startswith("G"):
            exchange = self.names.registry_exchange  # the bureau takes its admin transactions from there only
        env = {"infno": code, "msgid": msgid, "inf_time": LOAD_TIME, "fixmedins_code": LOADER_CODE,
               "insuplc_admdvs": region, "mdtrtarea_admvs": region, "opter": "bench", "input": data}
        body = json.dumps(env, ensure_ascii=False).encode()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[msgid] = fut
        try:
            for attempt in range(tries):
                try:
                    await self.broker.publish(OutMessage(exchange, key, body, message_id=msgid, reply_to=self.key))
                    reply = await asyncio.wait_for(asyncio.shield(fut), timeout)
                    break
                except (asyncio.TimeoutError, ConnectionError, aiormq.exceptions.AMQPError):
                    if attempt == tries - 1:
                        raise
                    self.resent += 1
                    await asyncio.sleep(1.0)
        finally:
            self._replies.pop(msgid, None)
        if reply.get("infcode") != 0:
            raise RuntimeError(f"{code} refused: {reply.get('err_code')} {reply.get('err_msg')}")
        return reply.get("output") or {}

    async def submit(self, body: bytes, visit_id: str) -> asyncio.Future[tuple[str, bool]]:
        fut: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        self.waiters[visit_id] = fut
        await self.commands.publish(OutMessage(self.names.pos_exchange, "command", body, message_id=visit_id))
        return fut
