"""Admin transactions of the accounts service: people and accounts, the family mutual-aid lifecycle with
every rule the region's policy sets (each refusal its own error code), the 医保钱包, 亲情账户 and queries.

Each handler runs inside the caller's transaction; raising GongjiError rolls its effects back.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import replace
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Callable

from contracts import admin
from contracts.base import SHANGHAI, format_biz_time
from contracts.envelope import Request
from contracts.errors import ErrorCode, GongjiError
from contracts.money import from_fen, to_fen

from .binding import AuthorizerAccount, BindFacts, Party, check
from .domain import split_pockets
from .repository import AccountsUnitOfWork

if TYPE_CHECKING:
    from .service import AccountsService

ALL_RELATIONS = ("spouse", "parent", "child", "sibling", "grandparent", "grandchild")
CODE_VALID_MINUTES = 5


def fail(code: str, message: str) -> GongjiError:
    return GongjiError(code, message)


def _when(req: Request) -> str:
    return format_biz_time(req.inf_time)


def _province(admdvs: str) -> str:
    return admdvs[:2]


def _account(uow: AccountsUnitOfWork, psn_no: str, role: str = "") -> Any:
    acct = uow.accounts.get(psn_no)
    if acct is None:
        raise fail(ErrorCode.UNKNOWN_ACCOUNT, f"{role + ' ' if role else ''}{psn_no} has no personal account")
    return acct


def _person(uow: AccountsUnitOfWork, psn_no: str, role: str = "") -> Any:
    person = uow.people.get(psn_no)
    if person is None:
        raise fail(ErrorCode.UNKNOWN_PERSON, f"{role + ' ' if role else ''}{psn_no} is not known to the accounts "
                                             f"service")
    return person


def _money(value: Any, what: str, positive: bool = False) -> int:
    fen = to_fen(value)
    if fen < 0 or (positive and fen == 0):
        raise fail(ErrorCode.BAD_INPUT, f"{what} must be {'positive' if positive else 'zero or more'}")
    return fen


def verify_identity(uow: AccountsUnitOfWork, psn_no: str, verify: admin.Verify | None, when: str,
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
    row = uow.verify_codes.get(psn_no, code or "")
    if row is None:
        raise fail(ErrorCode.VERIFY_FAILED, f"wrong verification {'code' if verify.method == 'sms' else 'token'} "
                                            f"for {psn_no}")
    if row["used"]:
        raise fail(ErrorCode.VERIFY_FAILED, f"verification code for {psn_no} was already used")
    if row["expires_time"] < when:
        raise fail(ErrorCode.VERIFY_FAILED, f"verification code for {psn_no} expired at {row['expires_time']}")
    uow.verify_codes.use(psn_no, code or "")


# ---- people and accounts ---------------------------------------------------------------------------
def _open_one(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, a: admin.OpenAccount, txn: str,
              outbox: list[int]) -> bool:
    if uow.accounts.get(a.psn_no) is not None:
        return False
    opening, prior = _money(a.opening_balc, "opening_balc"), _money(a.prior_balc, "prior_balc")
    uow.people.put(a.psn_no, a.insuplc_admdvs, a.insutype, a.evoucher_active)
    year = int(svc.windows(a.insuplc_admdvs, req.inf_time)["year"])
    uow.accounts.add(a.psn_no, a.insuplc_admdvs, a.insutype, year)
    uow.ledger.post(txn, "open", _when(req), [(f"psn:{a.psn_no}", opening), (f"psnp:{a.psn_no}", prior),
                                            ("ext:contribution", -opening - prior)])
    svc.event(uow, outbox, a.psn_no, opening + prior, "open", txn, _when(req))
    return True


def open_account(svc: AccountsService, uow: AccountsUnitOfWork, req: Request,
                 a: admin.OpenAccount, outbox: list[int]) -> dict:
    if not _open_one(svc, uow, req, a, f"open:{req.msgid}", outbox):
        raise fail(ErrorCode.ACCOUNT_EXISTS, f"{a.psn_no} already has an account")
    return {"psn_no": a.psn_no, "balc": f"{from_fen(uow.accounts.balance(a.psn_no))}"}


def open_accounts(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, inp: admin.OpenAccounts,
                  outbox: list[int]) -> dict:
    opened = sum(_open_one(svc, uow, req, a, f"open:{req.msgid}:{a.psn_no}", []) for a in inp.accounts)
    return {"opened": opened}


def register_holder(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, h: admin.RegisterHolder,
                    outbox: list[int]) -> dict:
    uow.people.put_holder(h.psn_no, h.insuplc_admdvs, h.insutype, h.evoucher_active)
    return {"psn_no": h.psn_no}


def account_status(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, a: admin.AccountStatus,
                   outbox: list[int]) -> dict:
    _account(uow, a.psn_no)
    uow.accounts.set_status(a.psn_no, a.status)
    return {"psn_no": a.psn_no, "status": a.status}


def deposit(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, d: admin.Deposit, outbox: list[int]) -> dict:
    _account(uow, d.psn_no)
    fen = _money(d.amount, "deposit amount", positive=True)
    svc.roll_pockets(uow, d.psn_no, req.inf_time)
    uow.ledger.post(f"dep:{req.msgid}", "deposit", _when(req), [(f"psn:{d.psn_no}", fen), ("ext:contribution", -fen)])
    svc.event(uow, outbox, d.psn_no, fen, "deposit", req.msgid, _when(req))
    return {"psn_no": d.psn_no, "balc": f"{from_fen(uow.accounts.balance(d.psn_no))}"}


def request_code(svc: AccountsService, uow: AccountsUnitOfWork, req: Request,
                 r: admin.RequestCode, outbox: list[int]) -> dict:
    _person(uow, r.psn_no)
    # Simulated SMS: deterministic from the msgid, returned in the reply for the simulator to "type in".
    code = f"{int(hashlib.sha256(req.msgid.encode()).hexdigest(), 16) % 1_000_000:06d}"
    expires = format_biz_time(req.inf_time + timedelta(minutes=CODE_VALID_MINUTES))
    uow.verify_codes.issue(r.psn_no, code, expires)
    return {"psn_no": r.psn_no, "code": code, "expires_time": expires}


def face_check(svc: AccountsService, uow: AccountsUnitOfWork, req: Request,
               f: admin.FaceCheck, outbox: list[int]) -> dict:
    """G109: record a face check; a passed one gets a one-time token (keyed by a server secret, so it cannot
    be computed from the msgid) that the person's next G111 presents."""
    _person(uow, f.psn_no)
    if not f.passed:
        raise fail(ErrorCode.VERIFY_FAILED, f"face check of {f.psn_no} failed")
    secret = (os.environ.get("GONGJI_VERIFY_SECRET") or "gongji-local-verify-secret").encode()
    token = hmac.new(secret, f"face:{req.msgid}:{f.psn_no}".encode(), hashlib.sha256).hexdigest()[:24]
    expires = format_biz_time(req.inf_time + timedelta(minutes=CODE_VALID_MINUTES))
    uow.verify_codes.issue(f.psn_no, f"F{token}", expires)
    return {"psn_no": f.psn_no, "face_token": token, "expires_time": expires}


# ---- the binding lifecycle -------------------------------------------------------------------------
def bind(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, b: admin.Bind, outbox: list[int]) -> dict:
    when = _when(req)
    uow.accounts.lock([b.authorizer_psn_no, b.member_psn_no])  # the counts below hold until the commit
    refusal = check(_bind_facts(svc, uow, req, b))
    if refusal is not None:
        raise fail(refusal.code, refusal.message)
    # The identity check last: a binding refused for a rule does not use up the code or token.
    verify_identity(uow, b.authorizer_psn_no, b.verify, when, token_required=True)
    caps = [_money(c, "cap") if c is not None else None for c in (b.day_cap, b.month_cap, b.year_cap)]
    auth_id = f"B{req.msgid}"
    uow.bindings.add(auth_id, b.authorizer_psn_no, b.member_psn_no, b.relation, b.rank, caps, when)
    acct = uow.accounts.get(b.authorizer_psn_no)
    year = int(svc.windows(acct["insuplc_admdvs"], req.inf_time)["year"])
    uow.bindings.record_change(b.authorizer_psn_no, auth_id, "bind", year, when)
    return {"auth_id": auth_id}


def _bind_facts(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, b: admin.Bind) -> BindFacts:
    """What binding.check needs to know, read through the repositories."""
    acct = uow.accounts.get(b.authorizer_psn_no)
    auth, member = uow.people.get(b.authorizer_psn_no), uow.people.get(b.member_psn_no)
    facts = BindFacts(
        authorizer_psn_no=b.authorizer_psn_no, member_psn_no=b.member_psn_no, relation=b.relation,
        account=None if acct is None else AuthorizerAccount(acct["insuplc_admdvs"], acct["insutype"], acct["status"],
                                                            uow.accounts.balance(b.authorizer_psn_no)),
        authorizer=None if auth is None else Party(auth["insuplc_admdvs"], bool(auth["evoucher_active"])),
        member=None if member is None else Party(member["insuplc_admdvs"], bool(member["evoucher_active"])))
    if acct is None or auth is None or member is None or b.authorizer_psn_no == b.member_psn_no:
        return facts
    year = int(svc.windows(acct["insuplc_admdvs"], req.inf_time)["year"])
    return replace(facts, rules=svc.rules(acct["insuplc_admdvs"]), member_rules=svc.rules(member["insuplc_admdvs"]),
                   already_bound=uow.bindings.active_between(b.authorizer_psn_no, b.member_psn_no) is not None,
                   members=uow.bindings.count_active(b.authorizer_psn_no),
                   member_bound=bool(uow.bindings.active_of_member(b.member_psn_no)),
                   changes=uow.bindings.changes(b.authorizer_psn_no, year), year=year)


def _binding(uow: AccountsUnitOfWork, auth_id: str) -> Any:
    row = uow.bindings.active(auth_id)
    if row is None:
        raise fail(ErrorCode.BINDING_NOT_FOUND, f"no active binding {auth_id}")
    return row


def unbind(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, u: admin.Unbind, outbox: list[int]) -> dict:
    row = _binding(uow, u.auth_id)
    if u.requester_psn_no not in (row["authorizer_psn_no"], row["member_psn_no"]):
        raise fail(ErrorCode.NOT_PARTY, f"{u.requester_psn_no} is not a party to binding {u.auth_id}")
    acct = _account(uow, row["authorizer_psn_no"])
    year = int(svc.windows(acct["insuplc_admdvs"], req.inf_time)["year"])
    # Takes effect at once: every settlement handled after this commit no longer sees the binding.
    uow.bindings.unbind(u.auth_id, _when(req))
    uow.bindings.record_change(row["authorizer_psn_no"], u.auth_id, "unbind", year, _when(req))
    return {"auth_id": u.auth_id, "status": "unbound"}


def _freeze(value: int) -> Callable[..., dict]:
    def handler(svc: AccountsService, uow: AccountsUnitOfWork, req: Request,
                f: admin.Freeze, outbox: list[int]) -> dict:
        _account(uow, f.authorizer_psn_no, "authorizer")
        if f.auth_id is None:
            uow.accounts.set_sharing_frozen(f.authorizer_psn_no, value)
        else:
            row = _binding(uow, f.auth_id)
            if row["authorizer_psn_no"] != f.authorizer_psn_no:
                raise fail(ErrorCode.NOT_PARTY, f"binding {f.auth_id} is not {f.authorizer_psn_no}'s to freeze")
            uow.bindings.set_frozen(f.auth_id, value)
        return {"authorizer_psn_no": f.authorizer_psn_no, "auth_id": f.auth_id, "frozen": bool(value)}
    return handler


def reorder(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, r: admin.Reorder, outbox: list[int]) -> dict:
    member = _person(uow, r.member_psn_no, "member")
    if not svc.rules(member["insuplc_admdvs"]).reorder_allowed:
        raise fail(ErrorCode.REORDER_NOT_ALLOWED, f"region {member['insuplc_admdvs']} does not let members reorder")
    active = {row["auth_id"] for row in uow.bindings.active_of_member(r.member_psn_no)}
    if set(r.auth_ids) != active or len(r.auth_ids) != len(active):
        raise fail(ErrorCode.BAD_INPUT, f"the order must list each of {r.member_psn_no}'s active bindings once: "
                                        f"{sorted(active)}")
    for rank, auth_id in enumerate(r.auth_ids, start=1):
        uow.bindings.set_rank(auth_id, rank)
    return {"member_psn_no": r.member_psn_no, "order": r.auth_ids}


def change_caps(svc: AccountsService, uow: AccountsUnitOfWork, req: Request,
                c: admin.ChangeCaps, outbox: list[int]) -> dict:
    row = _binding(uow, c.auth_id)
    if row["authorizer_psn_no"] != c.authorizer_psn_no:
        raise fail(ErrorCode.NOT_PARTY, f"binding {c.auth_id} is not {c.authorizer_psn_no}'s")
    caps = [_money(x, "cap") if x is not None else None for x in (c.day_cap, c.month_cap, c.year_cap)]
    uow.bindings.set_caps(c.auth_id, caps)
    return {"auth_id": c.auth_id, "day_cap": c.day_cap, "month_cap": c.month_cap, "year_cap": c.year_cap}


def _binding_view(row: Any) -> dict[str, Any]:
    caps = {k: (f"{from_fen(row[f'{k}_fen'])}" if row[f"{k}_fen"] is not None else None)
            for k in ("day_cap", "month_cap", "year_cap")}
    return {"auth_id": row["auth_id"], "authorizer_psn_no": row["authorizer_psn_no"],
            "member_psn_no": row["member_psn_no"], "relation": row["relation"], "rank": row["rank"],
            "status": row["status"], "frozen": bool(row["frozen"]), "created_time": row["created_time"],
            "ended_time": row["ended_time"], **caps}


def list_bindings(svc: AccountsService, uow: AccountsUnitOfWork, req: Request,
                  q: admin.ListBindings, outbox: list[int]) -> dict:
    rows = uow.bindings.of_person(q.psn_no)
    return {"as_authorizer": [_binding_view(r) for r in rows if r["authorizer_psn_no"] == q.psn_no],
            "as_member": [_binding_view(r) for r in rows if r["member_psn_no"] == q.psn_no]}


def member_costs(svc: AccountsService, uow: AccountsUnitOfWork, req: Request,
                 q: admin.MemberCosts, outbox: list[int]) -> dict:
    member = _person(uow, q.member_psn_no, "member")
    if q.requester_psn_no != q.member_psn_no and not uow.bindings.ever_between(q.requester_psn_no, q.member_psn_no):
        raise fail(ErrorCode.NOT_FAMILY, f"{q.requester_psn_no} is neither {q.member_psn_no} nor an authorizer of "
                                         f"{q.member_psn_no}")
    year = q.year or int(svc.windows(member["insuplc_admdvs"], req.inf_time)["year"])
    totals = {"settlements": 0, "medfee": 0, "psn_part": 0, "own": 0, "mulaid": 0, "wallet": 0, "cash": 0}
    by_authorizer: dict[str, int] = {}
    for p in uow.payments.paid_of(q.member_psn_no, year):
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


def transaction_records(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, q: admin.TransactionRecords,
                        outbox: list[int]) -> dict:
    _person(uow, q.psn_no)
    rows = uow.ledger.records((f"psn:{q.psn_no}", f"psnp:{q.psn_no}", f"wallet:{q.psn_no}"), q.limit)
    pockets = {"psn": "current", "psnp": "prior_year", "wallet": "wallet"}
    return {"psn_no": q.psn_no, "records": [
        {"txn_id": r["txn_id"], "pocket": pockets[r["account"].split(":")[0]], "amount": f"{from_fen(r['amount_fen'])}",
         "kind": r["kind"], "biz_time": r["biz_time"]} for r in rows]}


def account_query(svc: AccountsService, uow: AccountsUnitOfWork, req: Request,
                  q: admin.AccountQuery, outbox: list[int]) -> dict:
    svc.roll_pockets(uow, q.psn_no, req.inf_time)
    row = _account(uow, q.psn_no)
    sums = uow.ledger.sums((f"psn:{q.psn_no}", f"psnp:{q.psn_no}"))
    bindings = [dict(b) for b in uow.bindings.of_person(q.psn_no, order="auth_id")]
    mine = [f"chnl:{q.psn_no}:", f"mulaid:{q.psn_no}:"] + [f"auth:{b['auth_id']}:" for b in bindings]
    usage = {r["key"]: r["used_fen"] for r in uow.usage.all()
             if any(r["key"].startswith(prefix) for prefix in mine)}
    return {"psn_no": q.psn_no, "balc": f"{from_fen(row['balance_fen'] + row['prior_fen'])}",
            "current_balc": f"{from_fen(row['balance_fen'])}", "prior_balc": f"{from_fen(row['prior_fen'])}",
            "wallet_balc": f"{from_fen(uow.people.wallet(q.psn_no))}",
            "ledger_balc": f"{from_fen(sum(sums.values()))}", "status": row["status"],
            "sharing_frozen": bool(row["sharing_frozen"]), "bindings": bindings, "usage_fen": usage}


# ---- 医保钱包 (cross-province sharing) -----------------------------------------------------------------
def _hhmm(text: str) -> time:
    return datetime.strptime(text, "%H:%M").time()


def wallet_transfer(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, t: admin.WalletTransfer,
                    outbox: list[int]) -> dict:
    when = _when(req)
    uow.accounts.lock([t.from_psn_no, t.to_psn_no])  # today's count and the balance hold until the commit
    acct = _account(uow, t.from_psn_no, "sender")
    to = _person(uow, t.to_psn_no, "recipient")
    verify_identity(uow, t.from_psn_no, t.verify, when, token_required=True)
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
    sent_today = uow.transfers.sent_on(t.from_psn_no, day)
    if sent_today >= wrules.max_transfers_per_day:
        raise fail(ErrorCode.WALLET_DAILY_COUNT, f"at most {wrules.max_transfers_per_day} transfers a day")
    svc.roll_pockets(uow, t.from_psn_no, req.inf_time)
    acct = _account(uow, t.from_psn_no)
    pockets = svc.shareable(acct)
    if sum(x for _, x in pockets) < amount:
        raise fail(ErrorCode.INSUFFICIENT_BALANCE, f"{t.from_psn_no} has less than {t.amount} to share")

    postings = [(a, -x) for a, x in split_pockets(amount, pockets)] + [("transit:wallet", amount)]
    transfer_id = f"W{req.msgid}"
    back_at = datetime.combine(local.date() + timedelta(days=1), _hhmm(wrules.return_at), tzinfo=SHANGHAI)
    uow.ledger.post(f"transfer:{transfer_id}", "wallet_transfer", when, postings)
    uow.transfers.add(transfer_id, t.from_psn_no, t.to_psn_no, amount, json.dumps(postings[:-1]), day, when,
                      format_biz_time(back_at))
    svc.event(uow, outbox, t.from_psn_no, -amount, "wallet_transfer", transfer_id, when)
    return {"transfer_id": transfer_id, "returns_at": format_biz_time(back_at)}


def wallet_claim(svc: AccountsService, uow: AccountsUnitOfWork, req: Request,
                 c: admin.WalletClaim, outbox: list[int]) -> dict:
    row = uow.transfers.to(c.transfer_id, c.to_psn_no)
    if row is None:
        raise fail(ErrorCode.TRANSFER_NOT_FOUND, f"no transfer {c.transfer_id} to {c.to_psn_no}")
    if row["state"] == "returned":
        raise fail(ErrorCode.TRANSFER_EXPIRED, f"transfer {c.transfer_id} was not claimed in time and went back "
                                               f"at {row['expires_time']}")
    if row["state"] != "sent":
        raise fail(ErrorCode.TRANSFER_NOT_FOUND, f"transfer {c.transfer_id} was already claimed")
    uow.ledger.post(f"claim:{c.transfer_id}", "wallet_claim", _when(req),
            [("transit:wallet", -row["amount_fen"]), (f"wallet:{c.to_psn_no}", row["amount_fen"])])
    uow.transfers.set_state(c.transfer_id, "claimed")
    svc.event(uow, outbox, c.to_psn_no, row["amount_fen"], "wallet_claim", c.transfer_id, _when(req), wallet=True)
    return {"transfer_id": c.transfer_id, "wallet_balc": f"{from_fen(uow.people.wallet(c.to_psn_no))}"}


# ---- 共济缴费 and 亲情账户 --------------------------------------------------------------------------------
def resident_contribution(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, r: admin.ResidentContribution,
                          outbox: list[int]) -> dict:
    uow.accounts.lock([r.authorizer_psn_no, r.member_psn_no])  # the caps' usage holds until the commit
    acct = _account(uow, r.authorizer_psn_no, "authorizer")
    if acct["status"] != "normal":  # as settlement, binding and wallet transfers refuse it
        raise fail(ErrorCode.ACCOUNT_NOT_NORMAL, f"authorizer account {r.authorizer_psn_no} is {acct['status']}")
    member = _person(uow, r.member_psn_no, "member")
    if not svc.rules(acct["insuplc_admdvs"]).resident_contribution:
        raise fail(ErrorCode.CONTRIBUTION_NOT_ALLOWED, f"region {acct['insuplc_admdvs']} does not let the shared "
                                                       "account pay resident contributions")
    if member["insutype"] != "390":
        raise fail(ErrorCode.NOT_RESIDENT_INSURED, f"{r.member_psn_no} is not resident-insured (居民医保)")
    binding = uow.bindings.active_between(r.authorizer_psn_no, r.member_psn_no)
    if binding is None or binding["frozen"] or acct["sharing_frozen"]:
        raise fail(ErrorCode.BINDING_NOT_FOUND, f"no active, unfrozen binding {r.authorizer_psn_no} → "
                                                f"{r.member_psn_no}")
    amount = _money(r.amount, "amount", positive=True)
    svc.roll_pockets(uow, r.authorizer_psn_no, req.inf_time)
    pockets = svc.shareable(_account(uow, r.authorizer_psn_no))
    if sum(x for _, x in pockets) < amount:
        raise fail(ErrorCode.INSUFFICIENT_BALANCE, f"{r.authorizer_psn_no} has less than {r.amount} to share")

    usage, caps = _contribution_usage(svc, uow, req, acct, member, binding, amount)
    postings = [(a, -x) for a, x in split_pockets(amount, pockets)] + [("ext:resident_contribution", amount)]
    uow.usage.add(usage, +1, caps)
    uow.ledger.post(f"contrib:{req.msgid}", "resident_contribution", _when(req), postings)
    svc.event(uow, outbox, r.authorizer_psn_no, -amount, "resident_contribution", req.msgid, _when(req))
    return {"member_psn_no": r.member_psn_no, "year": r.year, "amount": f"{from_fen(amount)}",
            "authorizer_balc": f"{from_fen(uow.accounts.balance(r.authorizer_psn_no))}"}


def _contribution_usage(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, acct: Any, member: Any,
                        binding: Any, amount: int) -> tuple[list[tuple[str, int]], dict[str, int]]:
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
        left = cap - uow.usage.of(key)
        if amount > left:
            raise fail(ErrorCode.CAP_EXCEEDED, f"共济缴费 {from_fen(amount)} counts toward {label}, which leaves "
                                               f"{from_fen(max(0, left))}")
    return [(key, amount) for key, _, _ in limits], {key: cap for key, cap, _ in limits}


def add_proxy(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, p: admin.Proxy, outbox: list[int]) -> dict:
    uow.accounts.lock([p.proxy_psn_no])  # the member count holds until the commit
    proxy = _person(uow, p.proxy_psn_no, "proxy")
    _person(uow, p.member_psn_no, "member")
    verify_identity(uow, p.proxy_psn_no, p.verify, _when(req), token_required=True)
    if p.relation not in ALL_RELATIONS:
        raise fail(ErrorCode.RELATION_NOT_ALLOWED, f"{p.relation} is not a family relation")
    limit = svc.rules(proxy["insuplc_admdvs"]).proxy_max_members
    count = uow.proxies.count_others(p.proxy_psn_no, p.member_psn_no)
    if count >= limit:
        raise fail(ErrorCode.TOO_MANY_PROXY_MEMBERS, f"{p.proxy_psn_no} already has {count} 亲情账户 members "
                                                     f"(at most {limit})")
    uow.proxies.put(p.proxy_psn_no, p.member_psn_no, p.relation)
    return {"proxy_psn_no": p.proxy_psn_no, "member_psn_no": p.member_psn_no, "status": "active"}


def remove_proxy(svc: AccountsService, uow: AccountsUnitOfWork, req: Request,
                 p: admin.Proxy, outbox: list[int]) -> dict:
    if not uow.proxies.remove(p.proxy_psn_no, p.member_psn_no):
        raise fail(ErrorCode.PROXY_NOT_AUTHORIZED, f"{p.proxy_psn_no} has no 亲情账户 link to {p.member_psn_no}")
    return {"proxy_psn_no": p.proxy_psn_no, "member_psn_no": p.member_psn_no, "status": "removed"}


def audit(svc: AccountsService, uow: AccountsUnitOfWork, req: Request, q: admin.AuditQuery, outbox: list[int]) -> dict:
    if q.scope == "items":
        return uow.payments.audit_items(q.after, q.limit, set(q.regions))
    return uow.payments.audit()


HANDLERS: dict[str, Callable[..., dict[str, Any]]] = {
    "G109": face_check, "G101": open_account, "G103": open_accounts, "G104": register_holder, "G105": account_status, "G102": deposit, "G110": request_code,
    "G111": bind, "G112": unbind, "G113": _freeze(1), "G114": _freeze(0), "G115": reorder, "G116": change_caps,
    "G117": list_bindings, "G118": member_costs, "G119": transaction_records, "G121": account_query,
    "G131": wallet_transfer, "G132": wallet_claim, "G141": resident_contribution, "G151": add_proxy,
    "G152": remove_proxy, "G199": audit,
}
