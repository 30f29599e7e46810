"""Admin transactions of the accounts service: people and accounts, the family mutual-aid lifecycle with
every rule the region's policy sets (each refusal its own error code), the 医保钱包, 亲情账户 and queries.

Each handler runs inside the caller's transaction; raising GongjiError rolls its effects back.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
from datetime import datetime, time, timedelta
from typing import Any, Callable

from contracts import admin
from contracts.base import SHANGHAI, format_biz_time
from contracts.envelope import Request
from contracts.errors import ErrorCode, GongjiError
from contracts.money import from_fen, to_fen

from . import store as db
from .domain import split_pockets

ALL_RELATIONS = ("spouse", "parent", "child", "sibling", "grandparent", "grandchild")
CODE_VALID_MINUTES = 5


def fail(code: str, message: str) -> GongjiError:
    return GongjiError(code, message)


def _when(req: Request) -> str:
    return format_biz_time(req.inf_time)


def _province(admdvs: str) -> str:
    return admdvs[:2]


def _account(conn: sqlite3.Connection, psn_no: str, role: str = "") -> sqlite3.Row:
    acct = db.get_account(conn, psn_no)
    if acct is None:
        raise fail(ErrorCode.UNKNOWN_ACCOUNT, f"{role + ' ' if role else ''}{psn_no} has no personal account")
    return acct


def _person(conn: sqlite3.Connection, psn_no: str, role: str = "") -> sqlite3.Row:
    person = db.get_person(conn, psn_no)
    if person is None:
        raise fail(ErrorCode.UNKNOWN_PERSON, f"{role + ' ' if role else ''}{psn_no} is not known to the accounts "
                                             f"service")
    return person


def _money(value: Any, what: str, positive: bool = False) -> int:
    fen = to_fen(value)
    if fen < 0 or (positive and fen == 0):
        raise fail(ErrorCode.BAD_INPUT, f"{what} must be {'positive' if positive else 'zero or more'}")
    return fen


def verify_identity(conn: sqlite3.Connection, psn_no: str, verify: admin.Verify | None, when: str,
                    token_required: bool = False) -> None:
    """Identity check: an unexpired, unused SMS code from G110, or the token of a face check recorded by G109.
    `token_required` (a binding): a face check must be the token; a bare {"passed": true} is only a claim."""
    if verify is None:
        raise fail(ErrorCode.VERIFY_FAILED, f"identity check of {psn_no} required (SMS code from G110, or face)")
    if verify.method == "face" and verify.token is None:
        if token_required:
            raise fail(ErrorCode.VERIFY_FAILED, f"face check of {psn_no}: a token from G109 is required, "
                                                "a claim that it passed is not enough")
        if verify.passed is not True:
            raise fail(ErrorCode.VERIFY_FAILED, f"face check of {psn_no} failed")
        return
    code = verify.code if verify.method == "sms" else f"F{verify.token}"
    row = conn.execute("SELECT * FROM verify_codes WHERE psn_no=? AND code=?", (psn_no, code or "")).fetchone()
    if row is None:
        raise fail(ErrorCode.VERIFY_FAILED, f"wrong verification {'code' if verify.method == 'sms' else 'token'} "
                                            f"for {psn_no}")
    if row["used"]:
        raise fail(ErrorCode.VERIFY_FAILED, f"verification code for {psn_no} was already used")
    if row["expires_time"] < when:
        raise fail(ErrorCode.VERIFY_FAILED, f"verification code for {psn_no} expired at {row['expires_time']}")
    conn.execute("UPDATE verify_codes SET used=1 WHERE psn_no=? AND code=?", (psn_no, code))


# ---- people and accounts ---------------------------------------------------------------------------
def _open_one(svc: Any, conn: sqlite3.Connection, req: Request, a: admin.OpenAccount, txn: str,
              outbox: list[int]) -> bool:
    if db.get_account(conn, a.psn_no) is not None:
        return False
    opening, prior = _money(a.opening_balc, "opening_balc"), _money(a.prior_balc, "prior_balc")
    conn.execute("INSERT INTO people (psn_no, insuplc_admdvs, insutype, evoucher_active) VALUES (?,?,?,?) "
                 "ON CONFLICT(psn_no) DO UPDATE SET insuplc_admdvs=excluded.insuplc_admdvs, "
                 "insutype=excluded.insutype, evoucher_active=excluded.evoucher_active",
                 (a.psn_no, a.insuplc_admdvs, a.insutype, int(a.evoucher_active)))
    year = int(svc.windows(a.insuplc_admdvs, req.inf_time)["year"])
    conn.execute("INSERT INTO accounts (psn_no, insuplc_admdvs, insutype, balance_fen, prior_fen, pocket_year) "
                 "VALUES (?,?,?,0,0,?)", (a.psn_no, a.insuplc_admdvs, a.insutype, year))
    db.post(conn, txn, "open", _when(req), [(f"psn:{a.psn_no}", opening), (f"psnp:{a.psn_no}", prior),
                                            ("ext:contribution", -opening - prior)])
    svc.event(conn, outbox, a.psn_no, opening + prior, "open", txn, _when(req))
    return True


def open_account(svc: Any, conn: sqlite3.Connection, req: Request, a: admin.OpenAccount, outbox: list[int]) -> dict:
    if not _open_one(svc, conn, req, a, f"open:{req.msgid}", outbox):
        raise fail(ErrorCode.ACCOUNT_EXISTS, f"{a.psn_no} already has an account")
    return {"psn_no": a.psn_no, "balc": f"{from_fen(db.balance(conn, a.psn_no))}"}


def open_accounts(svc: Any, conn: sqlite3.Connection, req: Request, inp: admin.OpenAccounts,
                  outbox: list[int]) -> dict:
    opened = sum(_open_one(svc, conn, req, a, f"open:{req.msgid}:{a.psn_no}", []) for a in inp.accounts)
    return {"opened": opened}


def register_holder(svc: Any, conn: sqlite3.Connection, req: Request, h: admin.RegisterHolder,
                    outbox: list[int]) -> dict:
    conn.execute("INSERT INTO people (psn_no, insuplc_admdvs, insutype, evoucher_active) VALUES (?,?,?,?) "
                 "ON CONFLICT(psn_no) DO UPDATE SET evoucher_active=excluded.evoucher_active",
                 (h.psn_no, h.insuplc_admdvs, h.insutype, int(h.evoucher_active)))
    return {"psn_no": h.psn_no}


def account_status(svc: Any, conn: sqlite3.Connection, req: Request, a: admin.AccountStatus,
                   outbox: list[int]) -> dict:
    _account(conn, a.psn_no)
    conn.execute("UPDATE accounts SET status=? WHERE psn_no=?", (a.status, a.psn_no))
    return {"psn_no": a.psn_no, "status": a.status}


def deposit(svc: Any, conn: sqlite3.Connection, req: Request, d: admin.Deposit, outbox: list[int]) -> dict:
    _account(conn, d.psn_no)
    fen = _money(d.amount, "deposit amount", positive=True)
    svc.roll_pockets(conn, d.psn_no, req.inf_time)
    db.post(conn, f"dep:{req.msgid}", "deposit", _when(req), [(f"psn:{d.psn_no}", fen), ("ext:contribution", -fen)])
    svc.event(conn, outbox, d.psn_no, fen, "deposit", req.msgid, _when(req))
    return {"psn_no": d.psn_no, "balc": f"{from_fen(db.balance(conn, d.psn_no))}"}


def request_code(svc: Any, conn: sqlite3.Connection, req: Request, r: admin.RequestCode, outbox: list[int]) -> dict:
    _person(conn, r.psn_no)
    # Simulated SMS: deterministic from the msgid, returned in the reply for the simulator to "type in".
    code = f"{int(hashlib.sha256(req.msgid.encode()).hexdigest(), 16) % 1_000_000:06d}"
    expires = format_biz_time(req.inf_time + timedelta(minutes=CODE_VALID_MINUTES))
    conn.execute("INSERT OR REPLACE INTO verify_codes (psn_no, code, expires_time, used) VALUES (?,?,?,0)",
                 (r.psn_no, code, expires))
    return {"psn_no": r.psn_no, "code": code, "expires_time": expires}


def face_check(svc: Any, conn: sqlite3.Connection, req: Request, f: admin.FaceCheck, outbox: list[int]) -> dict:
    """G109: record a face check; a passed one gets a one-time token (keyed by a server secret, so it cannot
    be computed from the msgid) that the person's next G111 presents."""
    _person(conn, f.psn_no)
    if not f.passed:
        raise fail(ErrorCode.VERIFY_FAILED, f"face check of {f.psn_no} failed")
    secret = (os.environ.get("GONGJI_VERIFY_SECRET") or "gongji-local-verify-secret").encode()
    token = hmac.new(secret, f"face:{req.msgid}:{f.psn_no}".encode(), hashlib.sha256).hexdigest()[:24]
    expires = format_biz_time(req.inf_time + timedelta(minutes=CODE_VALID_MINUTES))
    conn.execute("INSERT OR REPLACE INTO verify_codes (psn_no, code, expires_time, used) VALUES (?,?,?,0)",
                 (f.psn_no, f"F{token}", expires))
    return {"psn_no": f.psn_no, "face_token": token, "expires_time": expires}


# ---- the binding lifecycle -------------------------------------------------------------------------
def bind(svc: Any, conn: sqlite3.Connection, req: Request, b: admin.Bind, outbox: list[int]) -> dict:
    when = _when(req)
    if b.authorizer_psn_no == b.member_psn_no:
        raise fail(ErrorCode.BINDING_INVALID, "an authorizer cannot bind himself or herself")
    acct = _account(conn, b.authorizer_psn_no, "authorizer")
    auth_person = _person(conn, b.authorizer_psn_no, "authorizer")
    member = _person(conn, b.member_psn_no, "member")
    rules, mrules = svc.rules(acct["insuplc_admdvs"]), svc.rules(member["insuplc_admdvs"])
    if acct["insutype"] != "310":
        raise fail(ErrorCode.AUTHORIZER_NOT_EMPLOYEE, f"{b.authorizer_psn_no} is not employee-insured (职工医保)")
    if acct["status"] != "normal":
        raise fail(ErrorCode.ACCOUNT_NOT_NORMAL, f"{b.authorizer_psn_no}'s account is {acct['status']}")
    if not auth_person["evoucher_active"] or not member["evoucher_active"]:
        who = b.authorizer_psn_no if not auth_person["evoucher_active"] else b.member_psn_no
        raise fail(ErrorCode.EVOUCHER_INACTIVE, f"{who} has not activated the 医保电子凭证")
    if not rules.mutual_aid_open or not mrules.mutual_aid_open:
        closed = acct["insuplc_admdvs"] if not rules.mutual_aid_open else member["insuplc_admdvs"]
        raise fail(ErrorCode.SERVICE_NOT_OPEN, f"family mutual aid is not open in region {closed}")
    if _province(acct["insuplc_admdvs"]) != _province(member["insuplc_admdvs"]) and not (
            rules.cross_province and mrules.cross_province):
        raise fail(ErrorCode.CROSS_PROVINCE_NOT_ALLOWED,
                   f"sharing between {acct['insuplc_admdvs']} and {member['insuplc_admdvs']} (another province) "
                   "is not allowed")
    if b.relation not in rules.relations:
        raise fail(ErrorCode.RELATION_NOT_ALLOWED, f"relation {b.relation} is not allowed in "
                                                   f"{acct['insuplc_admdvs']} (allowed: {', '.join(rules.relations)})")
    if rules.min_authorizer_balance is not None and db.balance(conn, b.authorizer_psn_no) < to_fen(
            rules.min_authorizer_balance):
        raise fail(ErrorCode.BALANCE_TOO_LOW, f"the authorizer's balance is below {rules.min_authorizer_balance}")
    if conn.execute("SELECT 1 FROM bindings WHERE authorizer_psn_no=? AND member_psn_no=? AND status='active'",
                    (b.authorizer_psn_no, b.member_psn_no)).fetchone():
        raise fail(ErrorCode.ALREADY_BOUND, f"{b.member_psn_no} is already bound to {b.authorizer_psn_no}")
    members = conn.execute("SELECT COUNT(*) FROM bindings WHERE authorizer_psn_no=? AND status='active'",
                           (b.authorizer_psn_no,)).fetchone()[0]
    if members >= rules.max_members:
        raise fail(ErrorCode.TOO_MANY_MEMBERS, f"{b.authorizer_psn_no} already shares with {members} members "
                                               f"(at most {rules.max_members})")
    if (rules.member_single_authorizer or mrules.member_single_authorizer) and db.active_bindings(
            conn, b.member_psn_no):
        raise fail(ErrorCode.MEMBER_ALREADY_BOUND, f"{b.member_psn_no} is already bound under another authorizer")
    year = int(svc.windows(acct["insuplc_admdvs"], req.inf_time)["year"])
    if rules.max_binding_changes_per_year is not None:
        changes = conn.execute("SELECT COUNT(*) FROM binding_changes WHERE authorizer_psn_no=? AND year=?",
                               (b.authorizer_psn_no, year)).fetchone()[0]
        if changes >= rules.max_binding_changes_per_year:
            raise fail(ErrorCode.TOO_MANY_CHANGES, f"{b.authorizer_psn_no} made {changes} binding changes in "
                                                   f"{year} (at most {rules.max_binding_changes_per_year})")
    # The identity check last: a binding refused for a rule does not use up the code or token.
    verify_identity(conn, b.authorizer_psn_no, b.verify, when, token_required=True)
    caps = [_money(c, "cap") if c is not None else None for c in (b.day_cap, b.month_cap, b.year_cap)]
    auth_id = f"B{req.msgid}"
    conn.execute("INSERT INTO bindings (auth_id, authorizer_psn_no, member_psn_no, relation, rank, day_cap_fen, "
                 "month_cap_fen, year_cap_fen, created_time) VALUES (?,?,?,?,?,?,?,?,?)",
                 (auth_id, b.authorizer_psn_no, b.member_psn_no, b.relation, b.rank, *caps, when))
    conn.execute("INSERT INTO binding_changes (authorizer_psn_no, auth_id, kind, year, biz_time) VALUES (?,?,?,?,?)",
                 (b.authorizer_psn_no, auth_id, "bind", year, when))
    return {"auth_id": auth_id}


def _binding(conn: sqlite3.Connection, auth_id: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM bindings WHERE auth_id=? AND status='active'", (auth_id,)).fetchone()
    if row is None:
        raise fail(ErrorCode.BINDING_NOT_FOUND, f"no active binding {auth_id}")
    return row


def unbind(svc: Any, conn: sqlite3.Connection, req: Request, u: admin.Unbind, outbox: list[int]) -> dict:
    row = _binding(conn, u.auth_id)
    if u.requester_psn_no not in (row["authorizer_psn_no"], row["member_psn_no"]):
        raise fail(ErrorCode.NOT_PARTY, f"{u.requester_psn_no} is not a party to binding {u.auth_id}")
    acct = _account(conn, row["authorizer_psn_no"])
    year = int(svc.windows(acct["insuplc_admdvs"], req.inf_time)["year"])
    # Takes effect at once: every settlement handled after this commit no longer sees the binding.
    conn.execute("UPDATE bindings SET status='unbound', ended_time=? WHERE auth_id=?", (_when(req), u.auth_id))
    conn.execute("INSERT INTO binding_changes (authorizer_psn_no, auth_id, kind, year, biz_time) VALUES (?,?,?,?,?)",
                 (row["authorizer_psn_no"], u.auth_id, "unbind", year, _when(req)))
    return {"auth_id": u.auth_id, "status": "unbound"}


def _freeze(value: int) -> Callable[..., dict]:
    def handler(svc: Any, conn: sqlite3.Connection, req: Request, f: admin.Freeze, outbox: list[int]) -> dict:
        _account(conn, f.authorizer_psn_no, "authorizer")
        if f.auth_id is None:
            conn.execute("UPDATE accounts SET sharing_frozen=? WHERE psn_no=?", (value, f.authorizer_psn_no))
        else:
            row = _binding(conn, f.auth_id)
            if row["authorizer_psn_no"] != f.authorizer_psn_no:
                raise fail(ErrorCode.NOT_PARTY, f"binding {f.auth_id} is not {f.authorizer_psn_no}'s to freeze")
            conn.execute("UPDATE bindings SET frozen=? WHERE auth_id=?", (value, f.auth_id))
        return {"authorizer_psn_no": f.authorizer_psn_no, "auth_id": f.auth_id, "frozen": bool(value)}
    return handler


def reorder(svc: Any, conn: sqlite3.Connection, req: Request, r: admin.Reorder, outbox: list[int]) -> dict:
    member = _person(conn, r.member_psn_no, "member")
    if not svc.rules(member["insuplc_admdvs"]).reorder_allowed:
        raise fail(ErrorCode.REORDER_NOT_ALLOWED, f"region {member['insuplc_admdvs']} does not let members reorder")
    active = {row["auth_id"] for row in db.active_bindings(conn, r.member_psn_no)}
    if set(r.auth_ids) != active or len(r.auth_ids) != len(active):
        raise fail(ErrorCode.BAD_INPUT, f"the order must list each of {r.member_psn_no}'s active bindings once: "
                                        f"{sorted(active)}")
    for rank, auth_id in enumerate(r.auth_ids, start=1):
        conn.execute("UPDATE bindings SET rank=? WHERE auth_id=?", (rank, auth_id))
    return {"member_psn_no": r.member_psn_no, "order": r.auth_ids}


def change_caps(svc: Any, conn: sqlite3.Connection, req: Request, c: admin.ChangeCaps, outbox: list[int]) -> dict:
    row = _binding(conn, c.auth_id)
    if row["authorizer_psn_no"] != c.authorizer_psn_no:
        raise fail(ErrorCode.NOT_PARTY, f"binding {c.auth_id} is not {c.authorizer_psn_no}'s")
    caps = [_money(x, "cap") if x is not None else None for x in (c.day_cap, c.month_cap, c.year_cap)]
    conn.execute("UPDATE bindings SET day_cap_fen=?, month_cap_fen=?, year_cap_fen=? WHERE auth_id=?",
                 (*caps, c.auth_id))
    return {"auth_id": c.auth_id, "day_cap": c.day_cap, "month_cap": c.month_cap, "year_cap": c.year_cap}


def _binding_view(row: sqlite3.Row) -> dict[str, Any]:
    caps = {k: (f"{from_fen(row[f'{k}_fen'])}" if row[f"{k}_fen"] is not None else None)
            for k in ("day_cap", "month_cap", "year_cap")}
    return {"auth_id": row["auth_id"], "authorizer_psn_no": row["authorizer_psn_no"],
            "member_psn_no": row["member_psn_no"], "relation": row["relation"], "rank": row["rank"],
            "status": row["status"], "frozen": bool(row["frozen"]), "created_time": row["created_time"],
            "ended_time": row["ended_time"], **caps}


def list_bindings(svc: Any, conn: sqlite3.Connection, req: Request, q: admin.ListBindings, outbox: list[int]) -> dict:
    rows = conn.execute("SELECT * FROM bindings WHERE authorizer_psn_no=? OR member_psn_no=? ORDER BY rank, auth_id",
                        (q.psn_no, q.psn_no)).fetchall()
    return {"as_authorizer": [_binding_view(r) for r in rows if r["authorizer_psn_no"] == q.psn_no],
            "as_member": [_binding_view(r) for r in rows if r["member_psn_no"] == q.psn_no]}


def member_costs(svc: Any, conn: sqlite3.Connection, req: Request, q: admin.MemberCosts, outbox: list[int]) -> dict:
    member = _person(conn, q.member_psn_no, "member")
    if q.requester_psn_no != q.member_psn_no and not conn.execute(
            "SELECT 1 FROM bindings WHERE authorizer_psn_no=? AND member_psn_no=?",
            (q.requester_psn_no, q.member_psn_no)).fetchone():
        raise fail(ErrorCode.NOT_FAMILY, f"{q.requester_psn_no} is neither {q.member_psn_no} nor an authorizer of "
                                         f"{q.member_psn_no}")
    year = q.year or int(svc.windows(member["insuplc_admdvs"], req.inf_time)["year"])
    totals = {"settlements": 0, "medfee": 0, "psn_part": 0, "own": 0, "mulaid": 0, "wallet": 0, "cash": 0}
    by_authorizer: dict[str, int] = {}
    for p in conn.execute("SELECT * FROM payments WHERE psn_no=? AND year=? AND state='paid'",
                          (q.member_psn_no, year)):
        totals["settlements"] += 1
        for key, col in (("medfee", "medfee_fen"), ("psn_part", "psn_part_fen"), ("own", "own_fen"),
                         ("wallet", "wallet_fen"), ("cash", "cash_fen")):
            totals[key] += p[col]
        for psn_no, _auth, amount in json.loads(p["mulaid"]):
            totals["mulaid"] += amount
            by_authorizer[psn_no] = by_authorizer.get(psn_no, 0) + amount
    return {"member_psn_no": q.member_psn_no, "year": year, "settlements": totals.pop("settlements"),
            **{f"{k}_amt": f"{from_fen(v)}" for k, v in totals.items()},
            "mulaid_by_authorizer": {k: f"{from_fen(v)}" for k, v in sorted(by_authorizer.items())}}


def transaction_records(svc: Any, conn: sqlite3.Connection, req: Request, q: admin.TransactionRecords,
                        outbox: list[int]) -> dict:
    _person(conn, q.psn_no)
    rows = conn.execute("SELECT * FROM ledger WHERE account IN (?,?,?) ORDER BY id LIMIT ?",
                        (f"psn:{q.psn_no}", f"psnp:{q.psn_no}", f"wallet:{q.psn_no}", q.limit)).fetchall()
    pockets = {"psn": "current", "psnp": "prior_year", "wallet": "wallet"}
    return {"psn_no": q.psn_no, "records": [
        {"txn_id": r["txn_id"], "pocket": pockets[r["account"].split(":")[0]], "amount": f"{from_fen(r['amount_fen'])}",
         "kind": r["kind"], "biz_time": r["biz_time"]} for r in rows]}


def account_query(svc: Any, conn: sqlite3.Connection, req: Request, q: admin.AccountQuery, outbox: list[int]) -> dict:
    svc.roll_pockets(conn, q.psn_no, req.inf_time)
    row = _account(conn, q.psn_no)
    sums = {r[0]: r[1] for r in conn.execute("SELECT account, SUM(amount_fen) FROM ledger WHERE account IN (?,?) "
                                             "GROUP BY account", (f"psn:{q.psn_no}", f"psnp:{q.psn_no}"))}
    bindings = [dict(b) for b in conn.execute(
        "SELECT * FROM bindings WHERE member_psn_no=? OR authorizer_psn_no=? ORDER BY auth_id", (q.psn_no, q.psn_no))]
    mine = [f"chnl:{q.psn_no}:", f"mulaid:{q.psn_no}:"] + [f"auth:{b['auth_id']}:" for b in bindings]
    usage = {r["key"]: r["used_fen"] for r in conn.execute("SELECT key, used_fen FROM usage")
             if any(r["key"].startswith(prefix) for prefix in mine)}
    return {"psn_no": q.psn_no, "balc": f"{from_fen(row['balance_fen'] + row['prior_fen'])}",
            "current_balc": f"{from_fen(row['balance_fen'])}", "prior_balc": f"{from_fen(row['prior_fen'])}",
            "wallet_balc": f"{from_fen(db.wallet(conn, q.psn_no))}",
            "ledger_balc": f"{from_fen(sum(sums.values()))}", "status": row["status"],
            "sharing_frozen": bool(row["sharing_frozen"]), "bindings": bindings, "usage_fen": usage}


# ---- 医保钱包 (cross-province sharing) -----------------------------------------------------------------
def _hhmm(text: str) -> time:
    return datetime.strptime(text, "%H:%M").time()


def wallet_transfer(svc: Any, conn: sqlite3.Connection, req: Request, t: admin.WalletTransfer,
                    outbox: list[int]) -> dict:
    when = _when(req)
    acct = _account(conn, t.from_psn_no, "sender")
    to = _person(conn, t.to_psn_no, "recipient")
    verify_identity(conn, t.from_psn_no, t.verify, when, token_required=True)
    wrules = svc.rules(acct["insuplc_admdvs"]).wallet
    if t.relation not in ALL_RELATIONS:
        raise fail(ErrorCode.RELATION_NOT_ALLOWED, f"{t.relation} is not a near relative")
    if _province(acct["insuplc_admdvs"]) == _province(to["insuplc_admdvs"]):
        raise fail(ErrorCode.WALLET_SAME_PROVINCE, "the 医保钱包 is for relatives in another province; "
                                                   "bind them for family mutual aid instead")
    if acct["status"] != "normal":
        raise fail(ErrorCode.ACCOUNT_NOT_NORMAL, f"{t.from_psn_no}'s account is {acct['status']}")
    local = req.inf_time.astimezone(SHANGHAI)
    quiet_from, quiet_to = _hhmm(wrules.quiet_from), _hhmm(wrules.quiet_to)
    if local.time() >= quiet_from or local.time() < quiet_to:
        raise fail(ErrorCode.WALLET_QUIET_HOURS, f"no wallet transfers between {wrules.quiet_from} and "
                                                 f"{wrules.quiet_to}")
    amount = _money(t.amount, "amount", positive=True)
    if amount > to_fen(wrules.max_amount):
        raise fail(ErrorCode.WALLET_AMOUNT, f"a transfer is at most {wrules.max_amount}")
    day = local.strftime("%Y-%m-%d")
    sent_today = conn.execute("SELECT COUNT(*) FROM transfers WHERE from_psn_no=? AND day=?",
                              (t.from_psn_no, day)).fetchone()[0]
    if sent_today >= wrules.max_transfers_per_day:
        raise fail(ErrorCode.WALLET_DAILY_COUNT, f"at most {wrules.max_transfers_per_day} transfers a day")
    svc.roll_pockets(conn, t.from_psn_no, req.inf_time)
    acct = _account(conn, t.from_psn_no)
    pockets = svc.shareable(acct)
    if sum(x for _, x in pockets) < amount:
        raise fail(ErrorCode.INSUFFICIENT_BALANCE, f"{t.from_psn_no} has less than {t.amount} to share")

    postings = [(a, -x) for a, x in split_pockets(amount, pockets)] + [("transit:wallet", amount)]
    transfer_id = f"W{req.msgid}"
    back_at = datetime.combine(local.date() + timedelta(days=1), _hhmm(wrules.return_at), tzinfo=SHANGHAI)
    db.post(conn, f"transfer:{transfer_id}", "wallet_transfer", when, postings)
    conn.execute("INSERT INTO transfers (transfer_id, from_psn_no, to_psn_no, amount_fen, postings, state, day, "
                 "created_time, expires_time) VALUES (?,?,?,?,?, 'sent', ?,?,?)",
                 (transfer_id, t.from_psn_no, t.to_psn_no, amount, json.dumps(postings[:-1]), day, when,
                  format_biz_time(back_at)))
    svc.event(conn, outbox, t.from_psn_no, -amount, "wallet_transfer", transfer_id, when)
    return {"transfer_id": transfer_id, "returns_at": format_biz_time(back_at)}


def wallet_claim(svc: Any, conn: sqlite3.Connection, req: Request, c: admin.WalletClaim, outbox: list[int]) -> dict:
    row = conn.execute("SELECT * FROM transfers WHERE transfer_id=? AND to_psn_no=?",
                       (c.transfer_id, c.to_psn_no)).fetchone()
    if row is None:
        raise fail(ErrorCode.TRANSFER_NOT_FOUND, f"no transfer {c.transfer_id} to {c.to_psn_no}")
    if row["state"] == "returned":
        raise fail(ErrorCode.TRANSFER_EXPIRED, f"transfer {c.transfer_id} was not claimed in time and went back "
                                               f"at {row['expires_time']}")
    if row["state"] != "sent":
        raise fail(ErrorCode.TRANSFER_NOT_FOUND, f"transfer {c.transfer_id} was already claimed")
    db.post(conn, f"claim:{c.transfer_id}", "wallet_claim", _when(req),
            [("transit:wallet", -row["amount_fen"]), (f"wallet:{c.to_psn_no}", row["amount_fen"])])
    conn.execute("UPDATE transfers SET state='claimed' WHERE transfer_id=?", (c.transfer_id,))
    svc.event(conn, outbox, c.to_psn_no, row["amount_fen"], "wallet_claim", c.transfer_id, _when(req), wallet=True)
    return {"transfer_id": c.transfer_id, "wallet_balc": f"{from_fen(db.wallet(conn, c.to_psn_no))}"}


# ---- 共济缴费 and 亲情账户 --------------------------------------------------------------------------------
def resident_contribution(svc: Any, conn: sqlite3.Connection, req: Request, r: admin.ResidentContribution,
                          outbox: list[int]) -> dict:
    acct = _account(conn, r.authorizer_psn_no, "authorizer")
    if acct["status"] != "normal":  # as settlement, binding and wallet transfers refuse it
        raise fail(ErrorCode.ACCOUNT_NOT_NORMAL, f"authorizer account {r.authorizer_psn_no} is {acct['status']}")
    member = _person(conn, r.member_psn_no, "member")
    if not svc.rules(acct["insuplc_admdvs"]).resident_contribution:
        raise fail(ErrorCode.CONTRIBUTION_NOT_ALLOWED, f"region {acct['insuplc_admdvs']} does not let the shared "
                                                       "account pay resident contributions")
    if member["insutype"] != "390":
        raise fail(ErrorCode.NOT_RESIDENT_INSURED, f"{r.member_psn_no} is not resident-insured (居民医保)")
    binding = conn.execute("SELECT * FROM bindings WHERE authorizer_psn_no=? AND member_psn_no=? AND status='active'",
                           (r.authorizer_psn_no, r.member_psn_no)).fetchone()
    if binding is None or binding["frozen"] or acct["sharing_frozen"]:
        raise fail(ErrorCode.BINDING_NOT_FOUND, f"no active, unfrozen binding {r.authorizer_psn_no} → "
                                                f"{r.member_psn_no}")
    amount = _money(r.amount, "amount", positive=True)
    svc.roll_pockets(conn, r.authorizer_psn_no, req.inf_time)
    pockets = svc.shareable(_account(conn, r.authorizer_psn_no))
    if sum(x for _, x in pockets) < amount:
        raise fail(ErrorCode.INSUFFICIENT_BALANCE, f"{r.authorizer_psn_no} has less than {r.amount} to share")

    usage, caps = _contribution_usage(svc, conn, req, acct, member, binding, amount)
    postings = [(a, -x) for a, x in split_pockets(amount, pockets)] + [("ext:resident_contribution", amount)]
    db.add_usage(conn, usage, +1, caps)
    db.post(conn, f"contrib:{req.msgid}", "resident_contribution", _when(req), postings)
    svc.event(conn, outbox, r.authorizer_psn_no, -amount, "resident_contribution", req.msgid, _when(req))
    return {"member_psn_no": r.member_psn_no, "year": r.year, "amount": f"{from_fen(amount)}",
            "authorizer_balc": f"{from_fen(db.balance(conn, r.authorizer_psn_no))}"}


def _contribution_usage(svc: Any, conn: sqlite3.Connection, req: Request, acct: sqlite3.Row, member: sqlite3.Row,
                        binding: sqlite3.Row, amount: int) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Where the authorizer's region counts 共济缴费 toward the caps (contribution_counts_toward_caps), it uses
    the binding's year cap and the regional annual mutual-aid cap like a settlement; above what they leave it
    is refused. Day and month caps are about spending on care and are not touched."""
    rules = svc.rules(acct["insuplc_admdvs"])
    if not rules.contribution_counts_toward_caps:
        return [], {}
    limits = []
    if binding["year_cap_fen"] is not None:
        year = svc.windows(member["insuplc_admdvs"], req.inf_time)["year"]
        limits.append((f"auth:{binding['auth_id']}:year:{year}", binding["year_cap_fen"], "the binding's year cap"))
    if rules.mutual_aid_annual_cap is not None:
        year = svc.windows(acct["insuplc_admdvs"], req.inf_time)["year"]
        limits.append((f"mulaid:{acct['psn_no']}:year:{year}", to_fen(rules.mutual_aid_annual_cap),
                       f"the regional annual mutual-aid cap {rules.mutual_aid_annual_cap}"))
    for key, cap, label in limits:
        left = cap - db.usage_of(conn, key)
        if amount > left:
            raise fail(ErrorCode.CAP_EXCEEDED, f"共济缴费 {from_fen(amount)} counts toward {label}, which leaves "
                                               f"{from_fen(max(0, left))}")
    return [(key, amount) for key, _, _ in limits], {key: cap for key, cap, _ in limits}


def add_proxy(svc: Any, conn: sqlite3.Connection, req: Request, p: admin.Proxy, outbox: list[int]) -> dict:
    proxy = _person(conn, p.proxy_psn_no, "proxy")
    _person(conn, p.member_psn_no, "member")
    verify_identity(conn, p.proxy_psn_no, p.verify, _when(req), token_required=True)
    if p.relation not in ALL_RELATIONS:
        raise fail(ErrorCode.RELATION_NOT_ALLOWED, f"{p.relation} is not a family relation")
    limit = svc.rules(proxy["insuplc_admdvs"]).proxy_max_members
    count = conn.execute("SELECT COUNT(*) FROM proxies WHERE proxy_psn_no=? AND status='active' AND member_psn_no!=?",
                         (p.proxy_psn_no, p.member_psn_no)).fetchone()[0]
    if count >= limit:
        raise fail(ErrorCode.TOO_MANY_PROXY_MEMBERS, f"{p.proxy_psn_no} already has {count} 亲情账户 members "
                                                     f"(at most {limit})")
    conn.execute("INSERT INTO proxies (proxy_psn_no, member_psn_no, relation, status) VALUES (?,?,?, 'active') "
                 "ON CONFLICT DO UPDATE SET status='active', relation=excluded.relation",
                 (p.proxy_psn_no, p.member_psn_no, p.relation))
    return {"proxy_psn_no": p.proxy_psn_no, "member_psn_no": p.member_psn_no, "status": "active"}


def remove_proxy(svc: Any, conn: sqlite3.Connection, req: Request, p: admin.Proxy, outbox: list[int]) -> dict:
    cur = conn.execute("UPDATE proxies SET status='removed' WHERE proxy_psn_no=? AND member_psn_no=? "
                       "AND status='active'", (p.proxy_psn_no, p.member_psn_no))
    if cur.rowcount != 1:
        raise fail(ErrorCode.PROXY_NOT_AUTHORIZED, f"{p.proxy_psn_no} has no 亲情账户 link to {p.member_psn_no}")
    return {"proxy_psn_no": p.proxy_psn_no, "member_psn_no": p.member_psn_no, "status": "removed"}


def audit(svc: Any, conn: sqlite3.Connection, req: Request, q: admin.AuditQuery, outbox: list[int]) -> dict:
    if q.scope == "items":
        return db.audit_items(conn, q.after, q.limit, set(q.regions))
    return db.audit(conn)


HANDLERS: dict[str, Callable[..., dict[str, Any]]] = {
    "G109": face_check, "G101": open_account, "G103": open_accounts, "G104": register_holder, "G105": account_status, "G102": deposit, "G110": request_code,
    "G111": bind, "G112": unbind, "G113": _freeze(1), "G114": _freeze(0), "G115": reorder, "G116": change_caps,
    "G117": list_bindings, "G118": member_costs, "G119": transaction_records, "G121": account_query,
    "G131": wallet_transfer, "G132": wallet_claim, "G141": resident_contribution, "G151": add_proxy,
    "G152": remove_proxy, "G199": audit,
}
