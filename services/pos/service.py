"""POS handlers: a visit command becomes the national sequence a HIS sends (services/pos/national_flow.py:
2201 → 2203 → 2204 … → 2206 → 2207, 2401 → 2301 … → 2402 → 2303 → 2304, 2101 → 2102; or gongji's flat
shortcut, pre-settle → settle with the whole bill); an answer moves the visit to its next stage; a settle
answer that does not come in time triggers 2601 冲正 of the original msgid. Every visit ends in exactly one
outcome event. Deadlines are real (wall-clock) transport timeouts; the business time of every message is the
visit's. Requests are kept and sent with money as JSON numbers (contracts.wire), never through a float."""
from __future__ import annotations

import time
from typing import Any

import structlog
from pydantic import TypeAdapter

from contracts import credentials, infno, wire
from contracts.envelope import Reply, Request, make_msgid
from contracts.errors import ErrorCode, GongjiError
from contracts.pos import PosCommand, ReverseVisit, SettleVisit, VisitOutcome
from contracts.settlement import setlinfo_of
from contracts.base import format_biz_time
from contracts.routing import REGISTRY_KEY, Names
from services.shared.runtime import inbox_counters
from services.shared.sql import Tx
from services.shared.store import OutMessage

from .national_flow import plan, stage_input, stage_infno
from .repository import LANES, SCHEMA, PosUnitOfWork

__all__ = ["SCHEMA", "PosService", "parse_command", "settle_input_of"]

COMMAND = TypeAdapter(PosCommand)
log = structlog.get_logger()

FINAL = ("settle", "reverse", "compensate")  # stages whose answer ends the visit
PREPARATORY_MIN_S = 30.0  # 2201/2203/2204/2205/2401/2301/2302/2402: bureau-only, idempotent, no money


def stage_timeout(cmd: SettleVisit | ReverseVisit, stage: str) -> float:
    """Seconds to wait for a stage's answer. `timeout_ms` is the deadline of the money stages (the one that
    triggers 2601 冲正 for a settle); the preparatory national transactions wait at least 30 s, so that a short
    timeout races the settlement, not the registration."""
    kind = stage.split(":")[0]
    if kind in ("register", "admit", "info", "upload", "cancel", "discharge"):
        return max(cmd.timeout_ms / 1000, PREPARATORY_MIN_S)
    return cmd.timeout_ms / 1000




def encode(request: Request) -> str:
    return wire.dumps(request.model_dump())


def decode(text: str) -> Request:
    return Request.model_validate(wire.loads(text))

class PosService:
    def __init__(self, names: Names, reply_key: str = "pos"):
        self.names = names
        self.reply_key = reply_key
        self.msgid_lane: int | None = None  # PostgreSQL: this process's msgid lane (repository.claim_lane)
        self.open_high_water = 0  # the most visits open at once that this process saw (admission control)

    # ---- commands ---------------------------------------------------------------------------------
    def handle_command(self, tx: Tx, cmd: SettleVisit | ReverseVisit,
                       max_open: int | None = None) -> list[int] | None:
        """None (and nothing written) when `max_open` visits are already open: admission control, the
        caller waits and tries again. Counted in the store, so the bound holds across POS replicas."""
        outbox: list[int] = []
        uow = PosUnitOfWork(tx)
        with uow.transaction():
            row = uow.visits.get(cmd.visit_id)
            if row is not None:
                if row["command"] != cmd.model_dump_json():
                    # Like a msgid conflict: a visit_id names one visit; other content under it is refused
                    # (never answered with the first visit's outcome).
                    raise GongjiError(ErrorCode.VISIT_ID_CONFLICT,
                                      f"visit_id {cmd.visit_id} was already used for a different visit")
                inbox_counters["duplicates_absorbed"] += 1
                if row["outcome"] is not None:  # a repeated command: repeat the outcome
                    outbox.append(self._event(uow, VisitOutcome.model_validate_json(row["outcome"])))
                return outbox
            if max_open is not None:
                n = uow.visits.count_open()
                if n >= max_open:
                    return None
                self.open_high_water = max(self.open_high_water, n + 1)
            stage = plan(cmd)[0]
            next_stage = None
            if self._sign_no(uow, cmd) is None:  # sign in (9001) first, once per facility and business day
                stage, next_stage = "signin", stage
                request = self._request(uow, cmd, infno.SIGN_IN, {"opter_no": "pos"})
            else:
                request = self._stage_request(uow, cmd, stage, None)
            uow.visits.add(cmd.visit_id, cmd.model_dump_json(), stage, next_stage, request.msgid,
                           request.msgid if stage == "settle" else None, encode(request),
                           time.time() + stage_timeout(cmd, stage), 0 if stage == "signin" else 1)
            outbox.append(self._send(uow, request))
        return outbox

    @staticmethod
    def _sign_no(uow: PosUnitOfWork, cmd: SettleVisit | ReverseVisit) -> str | None:
        row = uow.signins.get(cmd.fixmedins_code, format_biz_time(cmd.biz_time)[:10])
        if row is None or row["valid_until"] < format_biz_time(cmd.biz_time):
            return None
        return str(row["sign_no"])

    def _stage_request(self, uow: PosUnitOfWork, cmd: SettleVisit | ReverseVisit, stage: str,
                       mdtrt_id: str | None) -> Request:
        code = stage_infno(cmd, stage)
        if isinstance(cmd, SettleVisit) and cmd.flow == "flat" and stage in ("presettle", "settle"):
            return self._request(uow, cmd, code, settle_input_of(cmd))  # gongji's flat shortcut
        return self._request(uow, cmd, code, stage_input(cmd, stage, mdtrt_id))

    def _request(self, uow: PosUnitOfWork, cmd: SettleVisit | ReverseVisit, code: str,
                 data: dict[str, Any]) -> Request:
        return Request(infno=code, msgid=self._next_msgid(uow, cmd), inf_time=cmd.biz_time,
                       fixmedins_code=cmd.fixmedins_code, insuplc_admdvs=cmd.insuplc_admdvs,
                       mdtrtarea_admvs=cmd.mdtrtarea_admvs, opter="pos",
                       sign_no="" if code == infno.SIGN_IN else (self._sign_no(uow, cmd) or ""), input=data)

    def _next_msgid(self, uow: PosUnitOfWork, cmd: SettleVisit | ReverseVisit) -> str:
        """12-char facility code + business yyyyMMddHHmmss + a 4-digit sequence; the next free second if
        a facility sends more than 10,000 messages stamped with one second (in lane k of a shared PostgreSQL
        database: k000–k999, the next second after 1,000)."""
        stamp = int(cmd.biz_time.strftime("%Y%m%d%H%M%S"))
        lane = self.msgid_lane
        per_lane = 10000 if lane is None else 10000 // LANES
        while True:
            prefix = f"{cmd.fixmedins_code}{stamp}"
            n = uow.msgids.next(prefix, lane)
            if n < per_lane:
                return make_msgid(cmd.fixmedins_code, str(stamp), n + (lane or 0) * per_lane)
            stamp += 1

    def _send(self, uow: PosUnitOfWork, request: Request) -> int:
        # 9001 goes to every bureau (each checks the sign_no of the requests it serves).
        key = REGISTRY_KEY if request.infno == infno.SIGN_IN else request.insuplc_admdvs
        headers = {"gongji-kind": "bureau-request"}
        if request.infno == infno.SIGN_IN:  # signed with the facility's credential (x-tif headers)
            code = request.fixmedins_code
            headers.update(credentials.sign(code, credentials.paas_token(code)))
        return uow.outbox.add(OutMessage(self.names.bureau_exchange, key, encode(request).encode(),
                                         message_id=request.msgid, reply_to=self.reply_key, headers=headers))

    # ---- answers from the bureau --------------------------------------------------------------------
    def handle_reply(self, tx: Tx, reply: Reply) -> list[int]:
        outbox: list[int] = []
        uow = PosUnitOfWork(tx)
        with uow.transaction():
            row = uow.visits.open_by_msgid(reply.inf_refmsgid)
            if row is None:
                inbox_counters["duplicates_absorbed"] += 1
                return outbox  # late (after 冲正 or a resend) or a duplicate: the visit has moved on
            if reply.err_code == ErrorCode.MSGID_CONFLICT:
                # We never send other content under one msgid (a resend is the very same request): this answers
                # someone else's message that reused our msgid. Our own answer is still to come.
                return outbox
            cmd = COMMAND.validate_json(row["command"])
            stage = row["stage"]
            if stage == "signin" and reply.infcode == 0 and reply.output:
                uow.signins.put(cmd.fixmedins_code, format_biz_time(cmd.biz_time)[:10], reply.output["sign_no"],
                                reply.output["valid_until"])
                outbox.append(self._advance(uow, cmd, row["next_stage"], row["mdtrt_id"]))
                return outbox
            if stage not in FINAL and stage != "signin" and reply.infcode == 0:
                mdtrt_id = row["mdtrt_id"]
                if stage in ("register", "admit"):
                    mdtrt_id = str((reply.output or {})["data"]["mdtrt_id"])
                    uow.visits.set_mdtrt_id(cmd.visit_id, mdtrt_id)
                if stage == "presettle":
                    uow.visits.set_presettle(cmd.visit_id, wire.dumps(setlinfo_of(reply.output)))
                stages = plan(cmd)
                nxt = stages[stages.index(stage) + 1]
                if nxt == "abandon":  # the patient walks away: nothing settled, the bureau's sweep closes it
                    fresh = uow.visits.get(cmd.visit_id)
                    outbox.append(self._finish(uow, fresh, cmd, "abandoned", 0, None, None, None, row["msgid"]))
                else:
                    outbox.append(self._advance(uow, cmd, nxt, mdtrt_id))
                return outbox
            if stage == "compensate":
                status = "compensated" if reply.infcode == 0 else "refused"
            elif reply.infcode != 0:
                status = "refused"
            else:
                status = "reversed" if stage == "reverse" else "settled"
            setlinfo = setlinfo_of(reply.output) if status in ("settled", "reversed") else None
            outbox.append(self._finish(uow, row, cmd, status, reply.infcode, reply.err_code, reply.err_msg,
                                       setlinfo, row["msgid"]))
        return outbox

    def _advance(self, uow: PosUnitOfWork, cmd: SettleVisit | ReverseVisit, stage: str,
                 mdtrt_id: str | None) -> int:
        """Send the request of the visit's next stage and wait for its answer."""
        request = self._stage_request(uow, cmd, stage, mdtrt_id)
        uow.visits.advance(cmd.visit_id, stage, request.msgid, request.msgid if stage == "settle" else None,
                           encode(request), time.time() + stage_timeout(cmd, stage))
        return self._send(uow, request)

    def _finish(self, uow: PosUnitOfWork, row: Any, cmd: SettleVisit | ReverseVisit, status: str,
                infcode: int, err_code: str | None, err_msg: str | None, setlinfo: dict[str, Any] | None,
                msgid: str) -> int:
        outcome = VisitOutcome(visit_id=cmd.visit_id, cmd=cmd.cmd, status=status,  # type: ignore[arg-type]
                               fixmedins_code=cmd.fixmedins_code, psn_no=cmd.psn_no,
                               msgid=row["settle_msgid"] or msgid, infcode=infcode, err_code=err_code,
                               err_msg=err_msg, setlinfo=setlinfo,  # type: ignore[arg-type]
                               presettle=wire.loads(row["presettle"]) if row["presettle"] else None,
                               mdtrt_id=row["mdtrt_id"], round_trips=row["round_trips"], biz_time=cmd.biz_time)
        uow.visits.finish(cmd.visit_id, outcome.model_dump_json())
        return self._event(uow, outcome)

    def _event(self, uow: PosUnitOfWork, outcome: VisitOutcome) -> int:
        return uow.outbox.add(OutMessage(self.names.events_exchange, f"outcome.{outcome.fixmedins_code}",
                                         outcome.model_dump_json().encode(), message_id=f"out:{outcome.visit_id}"))

    # ---- deadlines -------------------------------------------------------------------------------------
    def handle_deadlines(self, tx: Tx, now: float) -> list[int]:
        outbox: list[int] = []
        uow = PosUnitOfWork(tx)
        with uow.transaction():
            for row in uow.visits.due(now):
                cmd = COMMAND.validate_json(row["command"])
                deadline = now + cmd.timeout_ms / 1000
                # A warning in the worker's log (gongji run keeps it next to the report): with a generous
                # deadline, an unanswered request is a message that was lost or stuck somewhere.
                log.warning("not answered in time", visit_id=cmd.visit_id, stage=row["stage"], msgid=row["msgid"])
                if row["stage"] not in FINAL:
                    # No money moved yet: a sign-in, registration, upload or pre-settlement pays nothing, so
                    # nothing to undo (a visit left open at the bureau is closed by its sweep).
                    outbox.append(self._finish(uow, row, cmd, "refused", -1, ErrorCode.TIMEOUT,
                                               f"{row['stage']} not answered in time", None, row["msgid"]))
                elif row["stage"] == "settle":
                    settle = decode(row["request"])
                    request = self._request(uow, cmd, infno.COMPENSATE,
                                            {"psn_no": cmd.psn_no, "omsgid": settle.msgid, "oinfno": settle.infno})
                    uow.visits.compensate(cmd.visit_id, request.msgid, encode(request), deadline)
                    outbox.append(self._send(uow, request))
                else:
                    # A reversal or a 冲正 not answered: send the very same message again (both are idempotent).
                    uow.visits.set_deadline(cmd.visit_id, deadline)
                    outbox.append(self._send(uow, decode(row["request"])))
        return outbox

    def handle_unroutable(self, tx: Tx, msgid: str, routing_key: str) -> list[int]:
        """No bureau serves the region: the visit is refused at once (nothing was sent anywhere)."""
        outbox: list[int] = []
        uow = PosUnitOfWork(tx)
        with uow.transaction():
            row = uow.visits.open_by_msgid(msgid)
            if row is not None:
                cmd = COMMAND.validate_json(row["command"])
                outbox.append(self._finish(uow, row, cmd, "refused", -1, ErrorCode.UNROUTABLE,
                                           f"no bureau serves region {routing_key}", None, row["msgid"]))
        return outbox


def settle_input_of(cmd: SettleVisit) -> dict[str, Any]:
    """The `input` of the pre-settle and settle requests of a visit."""
    data = {"psn_no": cmd.psn_no, "mdtrt_cert_type": cmd.mdtrt_cert_type, "med_type": cmd.med_type,
            "insutype": cmd.insutype, "acct_used_flag": cmd.acct_used_flag, "setl_chnl": cmd.setl_chnl,
            "medfee_sumamt": f"{sum(d.det_item_fee_sumamt for d in cmd.details):.2f}",
            "details": [d.model_dump(mode="json", exclude_none=True) for d in cmd.details]}
    if cmd.proxy_psn_no is not None:
        data["proxy_psn_no"] = cmd.proxy_psn_no
    if cmd.rx_circ_flag == "1":
        data["rx_circ_flag"] = "1"
    return data


def parse_command(body: bytes) -> SettleVisit | ReverseVisit:
    try:
        return COMMAND.validate_json(body)
    except Exception as exc:  # pydantic's ValidationError, or bytes that are not JSON
        raise GongjiError(ErrorCode.BAD_INPUT, f"bad visit command: {exc}") from None

