"""`gongji gateway`: the national interface over HTTP in front of gongji's bureau.

    POST /fsi/api/rsfComIfsService/callService            the JSON envelope (infno, msgid, ..., input)
    POST /fsi/api/rsfComIfsService/callService/{infno}    the same, as some clients call it

Every call is signed with the x-tif headers (contracts.credentials: one truth with the bureau's 9001); a nonce
is accepted once (services.gateway.nonces). The envelope and its input are read with the contracts, then
published to the bureau as the POS does (services.gateway.link) and the bureau's reply is returned as the
national reply JSON. Refusals have the same shape: infcode -1, err_code, err_msg, inf_refmsgid. Like the
platform, the HTTP status is 200 whenever an envelope reply is given; the outcome is in infcode.

A client whose request is not answered in time (the gateway's --reply-timeout, or the client hangs up)
does not undo anything by that: the settlement may well have happened. The national rule is to send 2601
冲正 with the original msgid (or to ask again with the same msgid); the gateway notes a missing 2601.

Why FastAPI on uvicorn: a well-kept ASGI stack on the same asyncio loop as aio-pika (one process holds the
HTTP connections and the broker connection, no thread hand-off per request), with OpenAPI documents built
from pydantic models, which is what contracts/ already are.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import structlog
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as HttpRequest

from contracts import credentials, national, wire
from contracts import infno as codes
from contracts.conformance import ConformanceFinding
from contracts.envelope import Reply, Request
from contracts.errors import ErrorCode, GongjiError
from contracts.pos import VisitOutcome
from contracts.routing import Names
from contracts.settlement import Cumulative, PersonInfo, SetlInfo, SignInOutput
from services.shared.broker import Unroutable
from services.shared.inbox import decode_input, short_error

from .conformance import Tracker, bill_key, finding, raw_findings
from .link import BureauLink
from .nonces import NonceCache

log = structlog.get_logger()

PATH = "/fsi/api/rsfComIfsService/callService"
MAX_BODY = 1_000_000  # bytes, as the workers refuse larger messages
ADMIN_PAASID = "gongji-admin"  # may send gongji's own G-codes (loading facilities, people, accounts)
PAASID_MISMATCH = "E_PAASID_MISMATCH"
BAD_MESSAGE = ErrorCode.BAD_MESSAGE

OUTPUTS: dict[str, type[BaseModel]] = {
    **{c: SetlInfo for c in codes.PRESETTLE | codes.SETTLE | codes.REVERSE},
    codes.SIGN_IN: SignInOutput, codes.PERSON_INFO: PersonInfo, codes.CUMULATIVE: Cumulative,
}


@dataclass
class Settings:
    amqp_url: str
    namespace: str = "gongji"
    secret: str | None = None  # None: GONGJI_PAAS_SECRET or the local default
    reply_timeout_s: float = 30.0
    compensate_grace_s: float = 60.0
    instance: str = field(default_factory=lambda: os.environ.get("GONGJI_GATEWAY_INSTANCE", "1"))
    admin: bool = True  # accept G-codes from ADMIN_PAASID


def _key_word(text: str) -> str:
    """A routing-key word from client text (no dots or wildcards)."""
    return re.sub(r"[^A-Za-z0-9]", "", text)[:64] or "unknown"


class Gateway:
    def __init__(self, settings: Settings):
        self.s = settings
        self.names = Names(settings.namespace)
        self.link = BureauLink(settings.amqp_url, self.names, f"gateway-{_key_word(settings.instance)}")
        self.nonces = NonceCache(2 * credentials.MAX_SKEW_S + 60)
        self.tracker = Tracker(settings.compensate_grace_s)
        self.counts = {"requests": 0, "refused_signature": 0, "forwarded": 0, "timeouts": 0, "hung_up": 0,
                       "findings": 0}
        self._scanner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.link.start()
        self._scanner = asyncio.create_task(self._scan())

    async def stop(self) -> None:
        if self._scanner is not None:
            self._scanner.cancel()
        await self.link.close()

    async def _scan(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.s.compensate_grace_s / 4 or 0.1))
            for f in self.tracker.due(time.time()):
                await self._report(f)

    async def _report(self, f: ConformanceFinding) -> None:
        self.counts["findings"] += 1
        log.info("conformance finding", kind=f.kind, fixmedins_code=f.fixmedins_code, msgid=f.msgid)
        try:
            await self.link.event(f"conformance.{_key_word(f.fixmedins_code)}", f.model_dump_json().encode(),
                                  f"cf:{uuid.uuid4().hex}")
        except Exception:
            log.exception("publishing a conformance finding failed")

    async def _refuse(self, ref: str, code: str, msg: str, findings: list[ConformanceFinding]) -> dict[str, Any]:
        for f in findings:
            await self._report(f)
        return Reply.fail(ref, code, msg).model_dump(mode="json")

    # ---- one call ----------------------------------------------------------------------------------------
    async def call(self, http: HttpRequest, path_infno: str | None) -> dict[str, Any]:
        self.counts["requests"] += 1
        declared = http.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return Reply.fail("", BAD_MESSAGE, f"body larger than {MAX_BODY} bytes").model_dump(mode="json")
        body = await _read_capped(http, MAX_BODY)  # a chunked body has no content-length to refuse it by
        if body is None:
            return Reply.fail("", BAD_MESSAGE, f"body larger than {MAX_BODY} bytes").model_dump(mode="json")
        paasid = http.headers.get(credentials.PAASID, "")
        refusal, why = credentials.check(http.headers, secret=self.s.secret)
        if refusal is None and not self.nonces.first_use(paasid, http.headers[credentials.NONCE]):
            refusal, why = credentials.NONCE_REUSED, f"{credentials.NONCE} already used by {paasid} (a replay)"
        unreadable = ""
        try:
            obj = wire.loads(body)  # numbers straight to Decimal, as the national platform sends money
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            obj, unreadable = None, f": {str(exc)[:200]}"
        ref = str(obj.get("msgid", ""))[:128] if isinstance(obj, dict) else ""
        if refusal is not None:
            self.counts["refused_signature"] += 1
            return await self._refuse(ref, refusal, why, [finding("signature_refused", paasid or "unknown",
                                                                  f"{refusal}: {why}", ref)])
        if not isinstance(obj, dict):
            return await self._refuse("", BAD_MESSAGE, f"the body is not a JSON object (the national envelope)"
                                      f"{unreadable}", [finding("malformed_envelope", paasid, "body is not a JSON object")])
        found = raw_findings(obj, paasid)
        try:
            req = Request.model_validate(obj)
        except ValidationError as exc:
            if not found:
                found = [finding("malformed_envelope", paasid, short_error(exc), ref, str(obj.get("infno", "")))]
            return await self._refuse(ref, BAD_MESSAGE, f"not a valid envelope: {short_error(exc)}", found)
        if path_infno is not None and path_infno != req.infno:
            return await self._refuse(ref, BAD_MESSAGE, f"the URL says {path_infno[:8]} but infno is {req.infno}",
                                      found)
        if req.infno.startswith("G"):
            if not (self.s.admin and paasid == ADMIN_PAASID):
                return await self._refuse(ref, PAASID_MISMATCH, f"{req.infno} is gongji's administration channel: "
                                          f"only paasid {ADMIN_PAASID} may send it", found)
        elif paasid != req.fixmedins_code:
            return await self._refuse(ref, PAASID_MISMATCH, f"paasid {paasid} may not speak for facility "
                                      f"{req.fixmedins_code}", found)
        try:
            decode_input(req, national.NATIONAL_INPUTS if national.is_national(req.infno, req.input)
                         else codes.ACCOUNTS_ADMIN_INPUTS if req.infno in codes.ACCOUNTS_ADMIN_INPUTS
                         and req.infno not in codes.BUREAU_INPUTS else codes.BUREAU_INPUTS)
        except GongjiError as exc:
            return await self._refuse(ref, exc.code, exc.message, found)
        found += self.tracker.before(req)
        for f in found:
            await self._report(f)
        return await self._forward(http, req, body)

    async def _forward(self, http: HttpRequest, req: Request, body: bytes) -> dict[str, Any]:
        structlog.contextvars.bind_contextvars(msgid=req.msgid, infno=req.infno)
        headers = {name: http.headers[name] for name in credentials.HEADERS}
        fut = self.link.expect(req.msgid)
        try:
            try:
                await self.link.send(req, body, headers)
            except Unroutable:  # the broker took it nowhere: nothing was sent
                self.link.forget(req.msgid)
                return Reply.fail(req.msgid, ErrorCode.UNROUTABLE,
                                  f"no bureau serves region {req.insuplc_admdvs}").model_dump(mode="json")
            except Exception as exc:
                # Not confirmed: it may or may not have reached the bureau (a confirm lost with the connection).
                log.exception("publishing to the bureau failed")
                self.link.forget(req.msgid)
                self.tracker.gave_up(req, time.time())
                return Reply.fail(req.msgid, ErrorCode.INTERNAL,
                                  f"the bureau cannot be reached ({type(exc).__name__}); the outcome is unknown: send "
                                  "the same msgid again (or 2601 冲正 for a settle)").model_dump(mode="json")
            self.counts["forwarded"] += 1
            hung_up = asyncio.ensure_future(_disconnected(http))
            try:
                done, _ = await asyncio.wait({fut, hung_up}, timeout=self.s.reply_timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                hung_up.cancel()
            if fut not in done:
                self.counts["hung_up" if hung_up in done else "timeouts"] += 1
                self.tracker.gave_up(req, time.time())
                # The reply may still come: its outcome event is published then.
                asyncio.ensure_future(self._late(req, fut))
                return Reply.fail(req.msgid, ErrorCode.TIMEOUT,
                                  f"no answer within {self.s.reply_timeout_s:g} s; the outcome is unknown: send "
                                  f"2601 冲正 with omsgid {req.msgid} (or the same msgid again)").model_dump(mode="json")
            reply = fut.result()
        finally:
            if fut.done():
                self.link.forget(req.msgid)
        await self._after(req, reply)
        return reply.model_dump()  # money stays Decimal: national_json writes it as the platform does

    async def _late(self, req: Request, fut: asyncio.Future[Reply]) -> None:
        try:
            reply = await asyncio.wait_for(asyncio.shield(fut), 600)
        except Exception:
            return
        finally:
            self.link.forget(req.msgid)
        await self._after(req, reply)

    async def _after(self, req: Request, reply: Reply) -> None:
        for f in self.tracker.after(req, reply):
            await self._report(f)
        outcome = self._outcome(req, reply)
        if outcome is not None:
            try:
                await self.link.event(f"outcome.{outcome.fixmedins_code}", outcome.model_dump_json().encode(),
                                      f"out:{outcome.visit_id}:{outcome.status}")
            except Exception:
                log.exception("publishing an outcome event failed")

    def _outcome(self, req: Request, reply: Reply) -> VisitOutcome | None:
        """The POS's outcome event for a settlement, reversal or 冲正 the gateway forwarded."""
        inp = req.input
        if req.infno in codes.SETTLE:
            cmd, visit, msgid = "settle", req.msgid, req.msgid
            status = "settled" if reply.infcode == 0 else "refused"
        elif req.infno in codes.REVERSE:
            cmd, visit, msgid = "reverse", req.msgid, req.msgid
            status = "reversed" if reply.infcode == 0 else "refused"
        elif req.infno == codes.COMPENSATE and reply.infcode == 0:
            visit = msgid = str(inp.get("omsgid", ""))
            cmd = "reverse" if str(inp.get("oinfno")) in codes.REVERSE else "settle"
            status = "compensated"
        else:
            return None
        try:
            return VisitOutcome.model_validate({
                "visit_id": f"gw:{visit}", "cmd": cmd, "status": status, "fixmedins_code": req.fixmedins_code,
                "psn_no": inp.get("psn_no"), "msgid": msgid, "infcode": reply.infcode, "err_code": reply.err_code,
                "err_msg": reply.err_msg,
                "setlinfo": reply.output if status in ("settled", "reversed") else None,
                "presettle": self.tracker.presettled.get(bill_key(req)) if cmd == "settle" and status != "compensated"
                else None,
                "biz_time": req.inf_time})
        except ValidationError as exc:
            log.warning("no outcome event for this reply", error=short_error(exc))
            return None


async def _read_capped(http: HttpRequest, limit: int) -> bytes | None:
    """The body, or None as soon as it grows past `limit` (never buffering more than that)."""
    chunks, size = [], 0
    async for chunk in http.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnected(http: HttpRequest) -> None:
    """Returns when the client hangs up (the body is read: the next ASGI message is the disconnect)."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return


# ---- the ASGI application and its OpenAPI document -------------------------------------------------------
def national_json(payload: dict[str, Any]) -> Response:
    """The reply as the national platform writes it: money as JSON numbers (contracts.wire), never floats."""
    return Response(wire.dumps(payload), media_type="application/json")


def create_app(settings: Settings) -> FastAPI:
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="gongji national-interface gateway", version="1.0", lifespan=lifespan,
                  description="The NHSA 定点医药机构接口 envelope over HTTP, in front of gongji's stateful bureau. "
                              "Sign every call with x-tif-paasid / x-tif-timestamp / x-tif-nonce / x-tif-signature "
                              "(SHA-256 hex of timestamp + paasToken + nonce + timestamp).")
    app.state.gateway = gateway

    async def any_infno(request: HttpRequest) -> JSONResponse:
        return national_json(await gateway.call(request, None))

    async def with_infno(request: HttpRequest, infno: str) -> JSONResponse:
        return national_json(await gateway.call(request, infno))

    transactions = documented_inputs()
    for code in sorted(transactions):  # one documented path per transaction, before the generic one
        def fixed(code: str = code):  # type: ignore[no-untyped-def]
            async def handler(request: HttpRequest) -> JSONResponse:
                return national_json(await gateway.call(request, code))
            return handler
        app.add_api_route(f"{PATH}/{code}", fixed(), methods=["POST"], summary=f"{code}",
                          tags=["admin (gongji)" if code.startswith("G") else "national"],
                          openapi_extra=_operation(code, transactions[code]))
    app.add_api_route(PATH, any_infno, methods=["POST"], summary="any transaction (infno in the envelope)",
                      openapi_extra=_operation(None, None))
    app.add_api_route(PATH + "/{infno}", with_infno, methods=["POST"], summary="any transaction, infno in the URL",
                      openapi_extra=_operation(None, None), include_in_schema=False)

    @app.exception_handler(StarletteHTTPException)
    async def national_shape(request: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        """Wrong path or method: still the national reply shape (with the HTTP status), so a HIS can log it."""
        return JSONResponse(Reply.fail("", BAD_MESSAGE, f"HTTP {exc.status_code}: {exc.detail}; POST the envelope "
                                       f"to {PATH}").model_dump(mode="json"), status_code=exc.status_code)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, **gateway.counts}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(_components(transactions))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


REF = "#/components/schemas/{model}"


def documented_inputs() -> dict[str, tuple[type[BaseModel], ...]]:
    """Every transaction's input models: the national nodes first (what a HIS sends), then gongji's flat form
    (its documented shortcut) where the infno has one."""
    flat = {**codes.BUREAU_INPUTS, **codes.ACCOUNTS_ADMIN_INPUTS}
    return {code: tuple(m for m in (national.NATIONAL_INPUTS.get(code), flat.get(code)) if m is not None)
            for code in {*flat, *national.NATIONAL_INPUTS}}


def _components(transactions: dict[str, tuple[type[BaseModel], ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in {*(m for models in transactions.values() for m in models), *OUTPUTS.values(), Request, Reply}:
        schema = model.model_json_schema(ref_template=REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _operation(code: str | None, models: tuple[type[BaseModel], ...] | None) -> dict[str, Any]:
    envelope: dict[str, Any] = {"$ref": REF.format(model="Request")}
    if models:
        refs = [{"$ref": REF.format(model=m.__name__)} for m in models]
        envelope = {"allOf": [envelope, {"type": "object", "properties": {
            "infno": {"const": code}, "input": refs[0] if len(refs) == 1 else {"anyOf": refs}}}]}
    reply: dict[str, Any] = {"$ref": REF.format(model="Reply")}
    out_model = OUTPUTS.get(code or "")
    if out_model is not None:
        reply = {"allOf": [reply, {"type": "object", "properties": {
            "output": {"anyOf": [{"$ref": REF.format(model=out_model.__name__)}, {"type": "null"}]}}}]}
    headers = [{"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
               for h in credentials.HEADERS]
    return {"parameters": headers,
            "requestBody": {"required": True, "content": {"application/json": {"schema": envelope}}},
            "responses": {"200": {"description": "the national reply (infcode 0, or -1 with err_code and err_msg)",
                                  "content": {"application/json": {"schema": reply}}}}}
