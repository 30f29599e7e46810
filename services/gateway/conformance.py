"""What the gateway notices about a client's behaviour (pure: requests and replies in, findings out).

The bureau stays the one truth for sign_no and setl_id: those findings come from its refusals
(E_SIGN_NO_UNKNOWN, E_SIGN_NO_EXPIRED, E_SETTLEMENT_NOT_FOUND). The gateway itself only tracks what no
single request shows: a settle without a pre-settle of the same bill before it, and a settle the client gave
up waiting for (the gateway's reply timeout, or the client hung up) that no 2601 冲正 followed.
Memory is bounded (oldest entries dropped); a restarted gateway starts with empty memory.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

from contracts import infno as codes
from contracts.conformance import ConformanceFinding, FindingKind
from contracts.envelope import Reply, Request
from contracts.errors import ErrorCode

MSGID_RE = re.compile(r"^[A-Za-z0-9]{12}\d{14}\d{4}$")
REMEMBER = 100_000  # pre-settlements and abandoned settles remembered at most


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def finding(kind: FindingKind, fixmedins_code: str, detail: str, msgid: str = "", infno: str = "") -> ConformanceFinding:
    return ConformanceFinding(kind=kind, fixmedins_code=fixmedins_code[:64], msgid=str(msgid)[:128],
                              infno=str(infno)[:16], detail=detail[:1000], at=now_iso())


def floats_in(value: Any, path: str = "input") -> list[str]:
    """Paths of JSON numbers with a fraction (money must be "12.30", a string)."""
    if isinstance(value, float):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in floats_in(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in floats_in(v, f"{path}[{i}]")]
    return []


def msgid_problem(msgid: Any, fixmedins_code: Any) -> str | None:
    """None if msgid is 12 fixmedins_code + yyyyMMddHHmmss + 4-digit sequence."""
    if not isinstance(msgid, str) or not MSGID_RE.match(msgid):
        return f"msgid {str(msgid)[:64]!r} is not 12 fixmedins_code + 14 yyyyMMddHHmmss + 4 sequence digits"
    if isinstance(fixmedins_code, str) and msgid[:12] != fixmedins_code:
        return f"msgid {msgid} does not start with the fixmedins_code {fixmedins_code[:64]}"
    try:
        datetime.strptime(msgid[12:26], "%Y%m%d%H%M%S")
    except ValueError:
        return f"msgid {msgid}: {msgid[12:26]} is not a time yyyyMMddHHmmss"
    return None


def raw_findings(obj: dict[str, Any], who: str) -> list[ConformanceFinding]:
    """From the raw JSON envelope, before the contracts read it."""
    out = []
    fac = obj.get("fixmedins_code") if isinstance(obj.get("fixmedins_code"), str) else who
    msgid, inf = str(obj.get("msgid", ""))[:128], str(obj.get("infno", ""))[:16]
    problem = msgid_problem(obj.get("msgid"), obj.get("fixmedins_code"))
    if problem:
        out.append(finding("malformed_msgid", fac, problem, msgid, inf))
    paths = floats_in(obj.get("input"))
    if paths:
        out.append(finding("float_money", fac, f"amounts sent as JSON numbers (write \"12.30\"): "
                                              f"{', '.join(paths[:5])}", msgid, inf))
    return out


def bill_key(req: Request) -> tuple[str, ...]:
    inp = req.input
    return (req.fixmedins_code, str(inp.get("psn_no")), str(inp.get("med_type")), str(inp.get("medfee_sumamt")))


class Tracker:
    def __init__(self, grace_s: float = 60.0):
        self.grace_s = grace_s
        self.presettled: OrderedDict[tuple[str, ...], Any] = OrderedDict()  # bill → pre-settle output
        self.abandoned: OrderedDict[str, tuple[Request, float]] = OrderedDict()

    @staticmethod
    def _remember(d: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        d[key] = value
        d.move_to_end(key)
        while len(d) > REMEMBER:
            d.popitem(last=False)

    def before(self, req: Request) -> list[ConformanceFinding]:
        """A well-formed request, about to be forwarded."""
        out = []
        if req.infno in codes.SETTLE and bill_key(req) not in self.presettled:
            out.append(finding("settle_without_presettle", req.fixmedins_code,
                               f"{req.infno} for {req.input.get('psn_no')} ({req.input.get('medfee_sumamt')}) with "
                               f"no successful pre-settlement of the same bill before it", req.msgid, req.infno))
        if req.infno == codes.COMPENSATE:
            self.abandoned.pop(str(req.input.get("omsgid", "")), None)
        elif req.msgid in self.abandoned:  # the client asks again with the same msgid: it learns the outcome
            self.abandoned.pop(req.msgid, None)
        return out

    def after(self, req: Request, reply: Reply) -> list[ConformanceFinding]:
        """The bureau's answer to it."""
        out = []
        if reply.infcode == 0 and req.infno in codes.PRESETTLE:
            self._remember(self.presettled, bill_key(req), reply.output)
        if reply.err_code == ErrorCode.SIGN_NO_UNKNOWN:
            out.append(finding("sign_no_missing", req.fixmedins_code, reply.err_msg or "", req.msgid, req.infno))
        elif reply.err_code == ErrorCode.SIGN_NO_EXPIRED:
            out.append(finding("sign_no_expired", req.fixmedins_code, reply.err_msg or "", req.msgid, req.infno))
        elif reply.err_code == ErrorCode.SETTLEMENT_NOT_FOUND and req.infno in codes.REVERSE:
            out.append(finding("reverse_unknown_setl_id", req.fixmedins_code, reply.err_msg or "", req.msgid,
                               req.infno))
        return out

    def gave_up(self, req: Request, at: float) -> None:
        """The client got no answer to this request (gateway timeout or hung up)."""
        if req.infno in codes.SETTLE:
            self._remember(self.abandoned, req.msgid, (req, at))

    def due(self, now: float) -> list[ConformanceFinding]:
        """Settles given up on more than grace_s ago with no 2601 since."""
        out = []
        for msgid, (req, at) in list(self.abandoned.items()):
            if now - at < self.grace_s:
                break  # ordered by time given up
            del self.abandoned[msgid]
            out.append(finding("missing_2601", req.fixmedins_code,
                               f"{req.infno} {msgid} got no answer in time and no 2601 冲正 (omsgid {msgid}) "
                               f"followed within {self.grace_s:.0f} s", msgid, req.infno))
        return out
