"""POS handlers: a visit command becomes the national sequence a HIS sends (services/pos/national_flow.py:
2201 → 2203 → 2204 … → 2206 → 2207, 2401 → 2301 … → 2402 → 2303 → 2304, 2101 → 2102; or gongji's flat
shortcut, pre-settle → settle with the whole bill); an answer moves the visit to its next stage; a settle
answer that does not come in time triggers 2601 冲正 of the original msgid. Every visit ends in exactly one
outcome event. Deadlines are real (wall-clock) transport timeouts; the business time of every message is the
visit's. Requests are kept and sent with money as JSON numbers (contracts.wire), never through a float."""
from __future__ import annotations

import sqlite3
import time
from typing import Any

from pydantic import TypeAdapter

from contracts import credentials, infno, wire
from contracts.envelope import Reply, Request, make_msgid
from contracts.errors import ErrorCode, GongjiError
from contracts.pos import PosCommand, ReverseVisit, SettleVisit, VisitOutcome
from contracts.settlement import setlinfo_of
from contracts.base import format_biz_time
from contracts.routing import REGISTRY_KEY, Names
from services.shared.runtime import inbox_counters
from services.shared.store import OutMessage, outbox_add, transaction

from .national_flow import plan, stage_input, stage_infno

COMMAND = TypeAdapter(PosCommand)

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

SCHEMA = """
CREATE TABLE IF NOT EXISTS visits (
    visit_id TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    state TEXT NOT NULL,             -- open | done
    stage TEXT NOT NULL,             -- signin | register | admit | info | upload:N | cancel:N | discharge
                                     -- | presettle | settle | reverse | compensate  (national_flow.plan)
    next_stage TEXT,                 -- after a sign-in: the stage it was needed for
    msgid TEXT NOT NULL,             -- the request we are waiting on
    settle_msgid TEXT,
    request TEXT NOT NULL,           -- that request, to resend as it was
    deadline REAL NOT NULL,
    presettle TEXT,
    outcome TEXT,
    mdtrt_id TEXT,                   -- the bureau's 就诊ID, from the 2201 / 2401 answer
    round_trips INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS visits_msgid ON visits(msgid);
CREATE INDEX IF NOT EXISTS visits_open ON visits(state, deadline);
CREATE TABLE IF NOT EXISTS msgid_seq (prefix TEXT PRIMARY KEY, n INTEGER NOT NULL);
-- one sign-in per facility and business day (a visit of any day finds the sign-in of its own day)
CREATE TABLE IF NOT EXISTS signins (fixmedins_code TEXT NOT NULL, day TEXT NOT NULL, sign_no TEXT NOT NULL,
                                    valid_until TEXT NOT NULL, PRIMARY KEY (fixmedins_code, day));
"""


class PosService:
    def __init__(self, names: Names, reply_key: str = "pos"):
        self.names = names
        self.reply_key = reply_key
        self.open_high_water = 0  # the most visits open at once that this process saw (admission control)

    # ---- commands ---------------------------------------------------------------------------------
    def handle_command(self, conn: sqlite3.Connection, cmd: SettleVisit | ReverseVisit,
                       max_open: int | None = None) -> list[int] | None:
        """None (and nothing written) when `max_open` visits are already open: admission control, the
        caller waits and tries again. Counted in the store, so the bound holds across POS replicas."""
        outbox: list[int] = []
        with transaction(conn):
            row = conn.execute("SELECT * FROM visits WHERE visit_id=?", (cmd.visit_id,)).fetchone()
            if row is not None:
                if row["command"] != cmd.model_dump_json():
                    # Like a msgid conflict: a visit_id names one visit; other content under it is refused
                    # (never answered with the first visit's outcome).
                    raise GongjiError(ErrorCode.VISIT_ID_CONFLICT,
                                      f"visit_id {cmd.visit_id} was already used for a different visit")
                inbox_counters["duplicates_absorbed"] += 1
                if row["outcome"] is not None:  # a repeated command: repeat the outcome
                    outbox.append(self._event(conn, VisitOutcome.model_validate_json(row["outcome"])))
                return outbox
            if max_open is not None:
                n = self.open_visits(conn)
                if n >= max_open:
                    return None
                self.open_high_water = max(self.open_high_water, n + 1)
            stage = plan(cmd)[0]
            next_stage = None
            if self._sign_no(conn, cmd) is None:  # sign in (9001) first, once per facility and business day
                stage, next_stage = "signin", stage
                request = self._request(conn, cmd, infno.SIGN_IN, {"opter_no": "pos"})
            else:
                request = self._stage_request(conn, cmd, stage, None)
            conn.execute("INSERT INTO visits (visit_id, command, state, stage, next_stage, msgid, settle_msgid, request,"
                         " deadline, round_trips) VALUES (?,?, 'open', ?,?,?,?,?,?,?)",
                         (cmd.visit_id, cmd.model_dump_json(), stage, next_stage, request.msgid,
                          request.msgid if stage == "settle" else None, encode(request),
                          time.time() + stage_timeout(cmd, stage), 0 if stage == "signin" else 1))
            outbox.append(self._send(conn, request))
        return outbox

    @staticmethod
    def open_visits(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM visits WHERE state='open'").fetchone()[0])

    @staticmethod
    def _sign_no(conn: sqlite3.Connection, cmd: SettleVisit | ReverseVisit) -> str | None:
        row = conn.execute("SELECT sign_no, valid_until FROM signins WHERE fixmedins_code=? AND day=?",
                           (cmd.fixmedins_code, format_biz_time(cmd.biz_time)[:10])).fetchone()
        if row is None or row["valid_until"] < format_biz_time(cmd.biz_time):
            return None
        return str(row["sign_no"])

    def _stage_request(self, conn: sqlite3.Connection, cmd: SettleVisit | ReverseVisit, stage: str,
                       mdtrt_id: str | None) -> Request:
        code = stage_infno(cmd, stage)
        if isinstance(cmd, SettleVisit) and cmd.flow == "flat" and stage in ("presettle", "settle"):
            return self._request(conn, cmd, code, settle_input_of(cmd))  # gongji's flat shortcut
        return self._request(conn, cmd, code, stage_input(cmd, stage, mdtrt_id))

    def _request(self, conn: sqlite3.Connection, cmd: SettleVisit | ReverseVisit, code: str,
                 data: dict[str, Any]) -> Request:
        return Request(infno=code, msgid=self._next_msgid(conn, cmd), inf_time=cmd.biz_time,
                       fixmedins_code=cmd.fixmedins_code, insuplc_admdvs=cmd.insuplc_admdvs,
                       mdtrtarea_admvs=cmd.mdtrtarea_admvs, opter="pos",
                       sign_no="" if code == infno.SIGN_IN else (self._sign_no(conn, cmd) or ""), input=data)

    @staticmethod
    def _next_msgid(conn: sqlite3.Connection, cmd: SettleVisit | ReverseVisit) -> str:
        """12-char facility code + business yyyyMMddHHmmss + a 4-digit sequence; the next free second if
        a facility sends more than 10,000 messages stamped with one second."""
        stamp = int(cmd.biz_time.strftime("%Y%m%d%H%M%S"))
        while True:
            prefix = f"{cmd.fixmedins_code}{stamp}"
            row = conn.execute("SELECT n FROM msgid_seq WHERE prefix=?", (prefix,)).fetchone()
            n = 0 if row is None else row[0] + 1
            if n <= 9999:
                conn.execute("INSERT OR REPLACE INTO msgid_seq (prefix, n) VALUES (?, ?)", (prefix, n))
                return make_msgid(cmd.fixmedins_code, str(stamp), n)
            stamp += 1

    def _send(self, conn: sqlite3.Connection, request: Request) -> int:
        # 9001 goes to every bureau (each checks the sign_no of the requests it serves).
        key = REGISTRY_KEY if request.infno == infno.SIGN_IN else request.insuplc_admdvs
        headers = {"gongji-kind": "bureau-request"}
        if request.infno == infno.SIGN_IN:  # signed with the facility's credential (x-tif headers)
            code = request.fixmedins_code
            headers.update(credentials.sign(code, credentials.paas_token(code)))
        return outbox_add(conn, OutMessage(self.names.bureau_exchange, key,
                                           encode(request).encode(), message_id=request.msgid,
                                           reply_to=self.reply_key, headers=headers))

    # ---- answers from the bureau --------------------------------------------------------------------
    def handle_reply(self, conn: sqlite3.Connection, reply: Reply) -> list[int]:
        outbox: list[int] = []
        with transaction(conn):
            row = conn.execute("SELECT * FROM visits WHERE msgid=? AND state='open'",
                               (reply.inf_refmsgid,)).fetchone()
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
                conn.execute("INSERT OR REPLACE INTO signins (fixmedins_code, day, sign_no, valid_until) "
                             "VALUES (?,?,?,?)", (cmd.fixmedins_code, format_biz_time(cmd.biz_time)[:10],
                                                  reply.output["sign_no"], reply.output["valid_until"]))
                outbox.append(self._advance(conn, cmd, row["next_stage"], row["mdtrt_id"]))
                return outbox
            if stage not in FINAL and stage != "signin" and reply.infcode == 0:
                mdtrt_id = row["mdtrt_id"]
                if stage in ("register", "admit"):
                    mdtrt_id = str((reply.output or {})["data"]["mdtrt_id"])
                    conn.execute("UPDATE visits SET mdtrt_id=? WHERE visit_id=?", (mdtrt_id, cmd.visit_id))
                if stage == "presettle":
                    conn.execute("UPDATE visits SET presettle=? WHERE visit_id=?",
                                 (wire.dumps(setlinfo_of(reply.output)), cmd.visit_id))
                stages = plan(cmd)
                nxt = stages[stages.index(stage) + 1]
                if nxt == "abandon":  # the patient walks away: nothing settled, the bureau's sweep closes it
                    fresh = conn.execute("SELECT * FROM visits WHERE visit_id=?", (cmd.visit_id,)).fetchone()
                    outbox.append(self._finish(conn, fresh, cmd, "abandoned", 0, None, None, None, row["msgid"]))
                else:
                    outbox.append(self._advance(conn, cmd, nxt, mdtrt_id))
                return outbox
            if stage == "compensate":
                status = "compensated" if reply.infcode == 0 else "refused"
            elif reply.infcode != 0:
                status = "refused"
            else:
                status = "reversed" if stage == "reverse" else "settled"
            setlinfo = setlinfo_of(reply.output) if status in ("settled", "reversed") else None
            outbox.append(self._finish(conn, row, cmd, status, reply.infcode, reply.err_code, reply.err_msg,
                                       setlinfo, row["msgid"]))
        return outbox

    def _advance(self, conn: sqlite3.Connection, cmd: SettleVisit | ReverseVisit, stage: str,
                 mdtrt_id: str | None) -> int:
        """Send the request of the visit's next stage and wait for its answer."""
        request = self._stage_request(conn, cmd, stage, mdtrt_id)
        conn.execute("UPDATE visits SET stage=?, next_stage=NULL, msgid=?, settle_msgid=COALESCE(?, settle_msgid), "
                     "request=?, deadline=?, round_trips=round_trips+1 WHERE visit_id=?",
                     (stage, request.msgid, request.msgid if stage == "settle" else None, encode(request),
                      time.time() + stage_timeout(cmd, stage), cmd.visit_id))
        return self._send(conn, request)

    def _finish(self, conn: sqlite3.Connection, row: sqlite3.Row, cmd: SettleVisit | ReverseVisit, status: str,
                infcode: int, err_code: str | None, err_msg: str | None, setlinfo: dict[str, Any] | None,
                msgid: str) -> int:
        outcome = VisitOutcome(visit_id=cmd.visit_id, cmd=cmd.cmd, status=status,  # type: ignore[arg-type]
                               fixmedins_code=cmd.fixmedins_code, psn_no=cmd.psn_no,
                               msgid=row["settle_msgid"] or msgid, infcode=infcode, err_code=err_code,
                               err_msg=err_msg, setlinfo=setlinfo,  # type: ignore[arg-type]
                               presettle=wire.loads(row["presettle"]) if row["presettle"] else None,
                               mdtrt_id=row["mdtrt_id"], round_trips=row["round_trips"], biz_time=cmd.biz_time)
        conn.execute("UPDATE visits SET state='done', outcome=? WHERE visit_id=?",
                     (outcome.model_dump_json(), cmd.visit_id))
        return self._event(conn, outcome)

    def _event(self, conn: sqlite3.Connection, outcome: VisitOutcome) -> int:
        return outbox_add(conn, OutMessage(self.names.events_exchange, f"outcome.{outcome.fixmedins_code}",
                                           outcome.model_dump_json().encode(), message_id=f"out:{outcome.visit_id}"))

    # ---- deadlines -------------------------------------------------------------------------------------
    def handle_deadlines(self, conn: sqlite3.Connection, now: float) -> list[int]:
        outbox: list[int] = []
        with transaction(conn):
            for row in conn.execute("SELECT * FROM visits WHERE state='open' AND deadline < ? LIMIT 500",
                                    (now,)).fetchall():
                cmd = COMMAND.validate_json(row["command"])
                deadline = now + cmd.timeout_ms / 1000
                if row["stage"] not in FINAL:
                    # No money moved yet: a sign-in, registration, upload or pre-settlement pays nothing, so
                    # nothing to undo (a visit left open at the bureau is closed by its sweep).
                    outbox.append(self._finish(conn, row, cmd, "refused", -1, ErrorCode.TIMEOUT,
                                               f"{row['stage']} not answered in time", None, row["msgid"]))
                elif row["stage"] == "settle":
                    settle = decode(row["request"])
                    request = self._request(conn, cmd, infno.COMPENSATE,
                                            {"psn_no": cmd.psn_no, "omsgid": settle.msgid, "oinfno": settle.infno})
                    conn.execute("UPDATE visits SET stage='compensate', msgid=?, request=?, deadline=?, "
                                 "round_trips=round_trips+1 WHERE visit_id=?",
                                 (request.msgid, encode(request), deadline, cmd.visit_id))
                    outbox.append(self._send(conn, request))
                else:
                    # A reversal or a 冲正 not answered: send the very same message again (both are idempotent).
                    conn.execute("UPDATE visits SET deadline=? WHERE visit_id=?", (deadline, cmd.visit_id))
                    outbox.append(self._send(conn, decode(row["request"])))
        return outbox

    def handle_unroutable(self, conn: sqlite3.Connection, msgid: str, routing_key: str) -> list[int]:
        """No bureau serves the region: the visit is refused at once (nothing was sent anywhere)."""
        outbox: list[int] = []
        with transaction(conn):
            row = conn.execute("SELECT * FROM visits WHERE msgid=? AND state='open'", (msgid,)).fetchone()
            if row is not None:
                cmd = COMMAND.validate_json(row["command"])
                outbox.append(self._finish(conn, row, cmd, "refused", -1, ErrorCode.UNROUTABLE,
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

