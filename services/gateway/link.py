"""The gateway's side of the broker: publish a national request to the bureau (or the accounts' admin channel)
exactly as the POS worker does, and wait for the reply on a durable reply queue of its own.

Same exchange and routing as the POS (services/pos/service.py `_send`): `<ns>.bureau`, key insuplc_admdvs
(9001 and G001 to the registry key: every bureau keeps its own facilities and sign-ins), message_id = msgid
(the bureau's inbox makes a repeated msgid get the original reply), reply_to = this gateway's reply key.
Replies come on `<ns>.reply.<key>`, a durable quorum queue with a dead-letter exchange like the POS's
(never direct reply-to: a reply must survive a reconnect), and are matched to the waiting HTTP request by
inf_refmsgid. The x-tif headers of the client travel as AMQP headers, so the bureau can check 9001's
credentials itself (rule 7: rights are checked where the money is).
"""
from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage

from contracts import infno as codes
from contracts.envelope import Reply, Request
from contracts.routing import REGISTRY_KEY, Names
from services.shared.broker import Broker
from services.shared.store import OutMessage

log = structlog.get_logger()


def route(names: Names, req: Request) -> tuple[str, str]:
    """(exchange, routing key) of a request, as the POS and the CLI client send it."""
    if req.infno in codes.ACCOUNTS_ADMIN_INPUTS and req.infno not in codes.BUREAU_INPUTS:
        return names.accounts_exchange, "admin"
    if req.infno in (codes.SIGN_IN, "G001"):
        return names.bureau_exchange, REGISTRY_KEY
    return names.bureau_exchange, req.insuplc_admdvs


class BureauLink:
    def __init__(self, amqp_url: str, names: Names, reply_key: str):
        self.names = names
        self.reply_key = reply_key
        self.broker = Broker(amqp_url, names, name=f"gongji-{reply_key}")
        self._waiting: dict[str, tuple[asyncio.Future[Reply], int]] = {}

    async def start(self) -> None:
        await self.broker.connect()
        await self.broker.declare_topology()
        queue = self.names.reply_queue(self.reply_key)
        await self.broker.declare_queue(queue, [(self.names.reply_exchange, self.reply_key)])
        await self.broker.consume(queue, self._on_reply, prefetch=512)

    async def close(self) -> None:
        await self.broker.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            reply: Reply | None = Reply.model_validate_json(message.body)
        except Exception:
            log.warning("not a reply on the gateway's reply queue; dropped", message_id=message.message_id)
            reply = None
        await message.ack()  # nothing to commit: the reply is handed to whoever waits, or nobody does
        if reply is None:
            return
        entry = self._waiting.get(reply.inf_refmsgid)
        if entry is not None and not entry[0].done():
            entry[0].set_result(reply)
        # else: nobody waits any more (the client gave up; 9001's second bureau): the bureau keeps the reply
        # in its inbox, and the same msgid sent again gets it.

    def expect(self, msgid: str) -> asyncio.Future[Reply]:
        """The future of the reply to msgid (shared by concurrent requests with the same msgid)."""
        fut, n = self._waiting.get(msgid, (None, 0))
        if fut is None or fut.done():
            fut, n = asyncio.get_running_loop().create_future(), 0
        self._waiting[msgid] = (fut, n + 1)
        return fut

    def forget(self, msgid: str) -> None:
        fut, n = self._waiting.get(msgid, (None, 0))
        if fut is None:
            return
        if n <= 1:
            del self._waiting[msgid]
        else:
            self._waiting[msgid] = (fut, n - 1)

    async def send(self, req: Request, body: bytes, headers: dict[str, Any]) -> None:
        """Raises services.shared.broker.Unroutable when no bureau serves the region."""
        exchange, key = route(self.names, req)
        await self.broker.publish(OutMessage(exchange, key, body, message_id=req.msgid, reply_to=self.reply_key,
                                             headers={"gongji-kind": "bureau-request", **headers}))

    async def event(self, routing_key: str, body: bytes, message_id: str) -> None:
        await self.broker.publish(OutMessage(self.names.events_exchange, routing_key, body, message_id=message_id))
