"""The POS's national transactions over HTTP (`gongji worker pos --bureau-url URL`) instead of RabbitMQ.

A seam, not a second POS: the visit logic (services/pos/service.py) is unchanged. Its outbox rows for the
bureau exchange are POSTed to the national URL (…/fsi/api/rsfComIfsService/callService) signed with the
facility's x-tif headers (paasid = fixmedins_code, paasToken derived from GONGJI_PAAS_SECRET: see
contracts/credentials.py), and the HTTP answer is handed to the same reply handler an AMQP reply goes to.
Everything else (commands in, outcome events out) stays on the broker.

Deadlines, 冲正 and resends work as before because they are the POS's, not the transport's: a POST that
fails or hangs is simply an answer that does not come; the deadline scan sends 2601 for a settle (or resends a
reversal / 冲正), and an answer that arrives after that is a stale reply the POS ignores.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

import httpx
import structlog

from contracts import credentials
from services.shared.broker import Broker
from services.shared.store import OutMessage

log = structlog.get_logger()

HTTP_TIMEOUT_S = 120.0  # longer than any visit deadline: the POS's own deadline decides, not the socket


class HttpBureau:
    """Stands in for the worker's broker: bureau-bound messages go over HTTP, the rest to the real broker."""

    def __init__(self, broker: Broker, url: str, deliver: Callable[[bytes], Awaitable[None]] | None = None,
                 secret: str | None = None):
        self._broker = broker
        self.url = url
        self.deliver = deliver
        self.secret = secret
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(HTTP_TIMEOUT_S, pool=None),
                                      limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))
        self._inflight: set[asyncio.Task[None]] = set()
        self.stats = {"http_posts": 0, "http_failures": 0}

    def __getattr__(self, name: str) -> Any:  # consume, dead_letter, names, ...: the real broker's
        return getattr(self._broker, name)

    async def publish(self, msg: OutMessage) -> None:
        if msg.exchange != self._broker.names.bureau_exchange:
            await self._broker.publish(msg)
            return
        # Handed over like a confirmed publish: the POST runs on its own, its answer comes back as a reply.
        task = asyncio.create_task(self._post(msg.body))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _post(self, body: bytes) -> None:
        try:
            fixmedins_code = str(json.loads(body)["fixmedins_code"])
        except Exception:
            log.error("not an envelope; not sent", size=len(body))
            return
        token = credentials.paas_token(fixmedins_code, self.secret)
        headers = {**credentials.sign(fixmedins_code, token), "content-type": "application/json"}
        self.stats["http_posts"] += 1
        try:
            resp = await self.http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self.stats["http_failures"] += 1
            log.warning("POST to the bureau failed; the visit's deadline decides", error=repr(exc))
            return
        if resp.status_code != 200:
            self.stats["http_failures"] += 1
            log.warning("the bureau answered HTTP %s; the visit's deadline decides" % resp.status_code)
            return
        if _unknown_outcome(resp.content):
            # The gateway gave up waiting (E_TIMEOUT) or could not confirm the publish (E_INTERNAL): the request
            # may still take effect. Not a refusal: the visit's deadline sends 2601 冲正 (or resends), as over AMQP.
            self.stats["http_failures"] += 1
            log.warning("the bureau's gateway does not know the outcome; the visit's deadline decides")
            return
        if self.deliver is not None:
            try:
                await self.deliver(resp.content)
            except Exception:
                log.exception("handling the bureau's HTTP answer failed; the visit's deadline decides")

    async def close(self) -> None:
        for task in list(self._inflight):
            task.cancel()
        await self.http.aclose()


UNKNOWN_OUTCOME = {"E_TIMEOUT", "E_INTERNAL"}


def _unknown_outcome(body: bytes) -> bool:
    try:
        reply = json.loads(body)
    except ValueError:
        return False
    return isinstance(reply, dict) and reply.get("infcode") != 0 and reply.get("err_code") in UNKNOWN_OUTCOME
