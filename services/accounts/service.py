"""Handlers of the payer-account service. Each handler is one transaction.

Requests from the bureau (only the bureau moves money for settlements): pay, preview, refund, balance.
Admin transactions (G1xx): accounts, people, the family mutual-aid lifecycle, wallet, 亲情账户, queries.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable, Iterable

from contracts.base import format_biz_time
from contracts.envelope import Reply, Request
from contracts.errors import ErrorCode, GongjiError
from contracts.events import BalanceChanged
from contracts.infno import ACCOUNTS_ADMIN_INPUTS
from contracts.internal import AccountsReply, AccountsRequest
from contracts.money import from_fen, to_fen
from contracts.routing import Names
from contracts.settlement import NEVER_ACCOUNT_SCOPES, PILOT_SCOPES, MulaidPart
from services.shared.inbox import decode_input, envelope_refusal, handle_idempotent
from services.shared.policy import MED_TYPE_CATEGORY, AccountRules, RegionPolicy
from services.shared.sql import Tx
from services.shared.store import OutMessage

from . import lifecycle
from .repository import AccountsUnitOfWork
from .domain import Allocation, Limit, Payer, allocate, split_pockets, windows

ZERO = Decimal("0.00")


def psn_nos_in(value: Any) -> list[str]:
    """Every person an administration input names (psn_no, from_psn_no, to_psn_no, authorizer_psn_no, ...)."""
    if isinstance(value, dict):
        return [v for k, v in value.items() if k.endswith("psn_no") and isinstance(v, str)] + \
            [p for v in value.values() if isinstance(v, (dict, list)) for p in psn_nos_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in psn_nos_in(v)]
    return []


class AccountsService:
    def __init__(self, names: Names, policies: dict[str, RegionPolicy]):
        self.names = names
        self.policies = policies
        self.default_rules = AccountRules()

    # ---- policy helpers --------------------------------------------------------------------------
    def rules(self, region: str) -> AccountRules:
        policy = self.policies.get(region)
        return policy.accounts if policy else self.default_rules

    def year_start(self, region: str) -> int:
        policy = self.policies.get(region)
        return policy.year_start_month if policy else 1

    def windows(self, region: str, when: datetime) -> dict[str, str]:
        return windows(when, self.year_start(region))

    def roll_pockets(self, uow: AccountsUnitOfWork, psn_no: str, when: datetime) -> None:
        """Where only the prior-year account is shared, the current-year account becomes prior-year when
        the insurance year turns (结转), on business time, the first time the account is touched."""
        uow.accounts.lock([psn_no])
        acct = uow.accounts.get(psn_no)
        if acct is None or self.rules(acct["insuplc_admdvs"]).shared_pocket != "prior_year":
            return
        year = int(self.windows(acct["insuplc_admdvs"], when)["year"])
        if acct["pocket_year"] is None or acct["pocket_year"] >= year:
            if acct["pocket_year"] is None:
                uow.accounts.set_pocket_year(psn_no, year)
            return
        if acct["balance_fen"]:
            uow.ledger.post(f"rollover:{psn_no}:{year}", "rollover", format_biz_time(when),
                    [(f"psn:{psn_no}", -acct["balance_fen"]), (f"psnp:{psn_no}", acct["balance_fen"])])
        uow.accounts.set_pocket_year(psn_no, year)

    def shareable(self, acct: Any) -> list[tuple[str, int]]:
        """The pockets an authorizer may share, in the order they are drawn."""
        psn = acct["psn_no"]
        if self.rules(acct["insuplc_admdvs"]).shared_pocket == "prior_year":
            return [(f"psnp:{psn}", acct["prior_fen"])]
        return [(f"psn:{psn}", acct["balance_fen"]), (f"psnp:{psn}", acct["prior_fen"])]

    def own_pockets(self, acct: Any, med_type: str | None = None) -> list[tuple[str, int]]:
        """The patient's own account: the current-year account first where the region says so for this kind
        of settlement (Shanghai: 门急诊 and pharmacy), else the prior-year account first."""
        psn = acct["psn_no"]
        pockets = [(f"psn:{psn}", acct["balance_fen"]), (f"psnp:{psn}", acct["prior_fen"])]
        category = MED_TYPE_CATEGORY.get(med_type or "")
        if category is not None and category not in self.rules(acct["insuplc_admdvs"]).current_year_first:
            pockets.reverse()
        return pockets

    @staticmethod
    def _people(uow: AccountsUnitOfWork, psn_no: str) -> list[str]:
        """A patient and the authorizers whose accounts may pay for the patient."""
        return [psn_no] + [b["authorizer_psn_no"] for b in uow.bindings.active_of_member(psn_no)]

    def sweep_transfers(self, uow: AccountsUnitOfWork, when: str, outbox: list[int], psn_nos: Iterable[str]) -> None:
        """Unclaimed wallet transfers go back to the sender at the return time (business time). Only those of the
        people a request is about, on that request's business time: a facility whose clock runs ahead must not
        send back everyone else's transfers before their time."""
        for t in uow.transfers.due(when, sorted(set(psn_nos))):
            back = [(acct, -amount) for acct, amount in json.loads(t["postings"])]
            back.append(("transit:wallet", -t["amount_fen"]))
            uow.ledger.post(f"return:{t['transfer_id']}", "wallet_return", t["expires_time"], back)
            uow.transfers.set_state(t["transfer_id"], "returned")
            self.event(uow, outbox, t["from_psn_no"], t["amount_fen"], "wallet_return", t["transfer_id"],
                       t["expires_time"])

    def event(self, uow: AccountsUnitOfWork, outbox: list[int], psn_no: str, delta: int, reason: str, ref: str,
              when: str, wallet: bool = False) -> None:
        """个人账户变动提醒: one event per person and movement."""
        if delta == 0:
            return
        balc = uow.people.wallet(psn_no) if wallet else uow.accounts.balance(psn_no)
        event = BalanceChanged(psn_no=psn_no, delta=from_fen(delta), balc=from_fen(balc), reason=reason,  # type: ignore
                               ref=ref, biz_time=when)  # type: ignore[arg-type]
        outbox.append(uow.outbox.add(OutMessage(self.names.events_exchange, f"balance.{psn_no}",
                                                event.model_dump_json().encode(),
                                                message_id=f"bal:{ref}:{psn_no}:{reason}")))

    # ---- requests from the bureau -------------------------------------------------------------
    def handle_request(self, tx: Tx, req: AccountsRequest, reply_to: str | None) -> list[int]:
        uow = AccountsUnitOfWork(tx)
        content_hash = hashlib.sha256(req.model_dump_json(exclude={"context"}).encode()).hexdigest()

        def refusal(exc: GongjiError) -> bytes:
            return AccountsReply(req_id=req.req_id, kind=req.kind, ok=False, err_code=exc.code, err_msg=exc.message,
                                 context=req.context).model_dump_json().encode()

        def effect(outbox: list[int]) -> bytes:
            if req.kind == "balance":
                reply = AccountsReply(req_id=req.req_id, kind=req.kind, ok=True,
                                      balc=from_fen(uow.accounts.balance(req.psn_no)), context=req.context)
            elif req.kind == "refund":
                self.sweep_transfers(uow, format_biz_time(req.biz_time), outbox, self._people(uow, req.psn_no))
                reply = self._refund(uow, req, outbox)
            else:
                if req.kind == "pay":
                    self.sweep_transfers(uow, format_biz_time(req.biz_time), outbox, self._people(uow, req.psn_no))
                reply = self._pay(uow, req, outbox, commit=req.kind == "pay")
            return reply.model_dump_json().encode()

        if req.kind in ("preview", "balance"):
            # Read-only: nothing to make idempotent, no inbox entry; rolled back, so nothing sticks.
            outbox: list[int] = []
            with uow.rolled_back():
                try:
                    body = effect([])
                except GongjiError as exc:
                    body = refusal(exc)
            if reply_to:
                with uow.transaction():
                    outbox.append(uow.outbox.add(OutMessage(self.names.reply_exchange, reply_to, body,
                                                            message_id=f"re:{req.req_id}",
                                                            correlation_id=req.req_id)))
            return outbox
        return handle_idempotent(uow, key=req.req_id, kind=req.kind, content_hash=content_hash, reply_to=reply_to,
                                 reply_exchange=self.names.reply_exchange, effect=effect, refusal=refusal)

    @staticmethod
    def _pieces(req: AccountsRequest, psn_part: int) -> dict[str, int]:
        """The share split by what a region may let accounts pay: the medical part, the other 全自费/超限价, and
        each non-medical scope's items (vaccination, cosmetic, ...). If funds paid some of the 全自费 part
        (the share is smaller than it), the medical part goes first, then the rest, so the pieces sum to the share."""
        scopes = {f"scope:{k}": to_fen(v) for k, v in sorted(req.scope_amounts.items())}
        ful = to_fen(req.fulamt_ownpay_amt or ZERO) + to_fen(req.overlmt_selfpay or ZERO)
        pieces = {"medical": psn_part - ful, "fulamt": ful - sum(scopes.values()), **scopes}
        short = 0
        for k in pieces:  # in order: medical, fulamt, then the scopes
            pieces[k] -= short
            short = max(0, -pieces[k])
            pieces[k] = max(0, pieces[k])
        return pieces

    @staticmethod
    def _may_pay(req: AccountsRequest, rules: AccountRules) -> frozenset[str]:
        """The pieces (see _pieces) a region's rules let personal accounts pay."""
        if req.acct_used_flag == "0":
            return frozenset()
        if not rules.pay_fulamt_ownpay:
            return frozenset({"medical"})
        return frozenset({"medical", "fulamt"} | {f"scope:{k}" for k in req.scope_amounts
                                                  if k not in NEVER_ACCOUNT_SCOPES
                                                  and (k not in PILOT_SCOPES or k in rules.pilots)})

    @staticmethod
    def _exclusion_notes(req: AccountsRequest, rules: AccountRules) -> list[str]:
        """Why the patient's own region lets the accounts pay less than the share (what _may_pay leaves out)."""
        if req.acct_used_flag == "0":
            return ["acct_used_flag 0: personal accounts not used"]
        notes = []
        if not rules.pay_fulamt_ownpay:
            excluded = to_fen(req.fulamt_ownpay_amt or ZERO) + to_fen(req.overlmt_selfpay or ZERO)
            if excluded:
                notes.append(f"the region's accounts do not pay 全自费/超限价 ({from_fen(excluded)})")
        else:
            for scope, amount in req.scope_amounts.items():
                if scope in NEVER_ACCOUNT_SCOPES or (scope in PILOT_SCOPES and scope not in rules.pilots):
                    notes.append(f"{scope} items ({amount}) may not be paid from any personal account")
        return notes

    def _payers(self, uow: AccountsUnitOfWork, req: AccountsRequest, win: dict[str, str]
                ) -> tuple[Payer | None, list[Payer], dict[str, Any], list[str]]:
        notes: list[str] = []
        bindings = uow.bindings.active_of_member(req.psn_no) if req.proxy_psn_no is None else []
        uow.accounts.lock([req.psn_no] + [b["authorizer_psn_no"] for b in bindings])  # in psn_no order
        self.roll_pockets(uow, req.psn_no, req.biz_time)
        own_row = uow.accounts.get(req.psn_no)
        own = None
        if own_row is not None:
            own = Payer(req.psn_no, None, own_row["balance_fen"] + own_row["prior_fen"],
                        usable=own_row["status"] == "normal", why_unusable=f"account {own_row['status']}")
        authorizers: list[Payer] = []
        rows: dict[str, Any] = {}
        if req.proxy_psn_no is not None:
            proxy = uow.proxies.active(req.proxy_psn_no, req.psn_no)
            if proxy is None:
                raise GongjiError(ErrorCode.PROXY_NOT_AUTHORIZED,
                                  f"{req.proxy_psn_no} may not use {req.psn_no}'s e-voucher (no 亲情账户 link)")
            notes.append(f"亲情账户: {req.proxy_psn_no} settles for {req.psn_no}; only {req.psn_no}'s own money pays")
            return own, authorizers, rows, notes
        when = format_biz_time(req.biz_time)
        for b in bindings:
            self.roll_pockets(uow, b["authorizer_psn_no"], req.biz_time)
            acct = uow.accounts.get(b["authorizer_psn_no"])
            assert acct is not None
            rows[b["authorizer_psn_no"]] = acct
            # The shared part follows the AUTHORIZER's region: its scope, 全自费 and pilot rules.
            arules = self.rules(acct["insuplc_admdvs"])
            category = MED_TYPE_CATEGORY[req.med_type] if req.med_type else None
            usable, why = True, ""
            if b["created_time"] > when:  # a back-dated bill does not reach a binding that did not exist yet
                usable, why = False, (f"binding {b['auth_id']} was made at {b['created_time']}, after this "
                                      f"settlement's business time {when}")
            elif not arules.mutual_aid_open:
                usable, why = False, f"the service is not open in {acct['insuplc_admdvs']}"
            elif category is not None and category not in arules.mutual_aid_scope:
                usable, why = False, (f"mutual aid not allowed: {category} is outside the mutual-aid scope of "
                                      f"the authorizer's region {acct['insuplc_admdvs']}")
            elif b["frozen"]:
                usable, why = False, f"binding {b['auth_id']} frozen by the authorizer"
            elif acct["sharing_frozen"]:
                usable, why = False, "the authorizer froze sharing"
            elif acct["status"] != "normal":
                usable, why = False, f"authorizer account {acct['status']}"
            limits = []
            for period, col in (("day", "day_cap_fen"), ("month", "month_cap_fen"), ("year", "year_cap_fen")):
                if b[col] is not None:
                    key = f"auth:{b['auth_id']}:{period}:{win[period]}"
                    limits.append(Limit(key, b[col], uow.usage.of(key),
                                        f"{period} cap {from_fen(b[col])} of binding {b['auth_id']}"))
            if arules.mutual_aid_annual_cap is not None:
                ayear = self.windows(acct["insuplc_admdvs"], req.biz_time)["year"]
                key = f"mulaid:{acct['psn_no']}:year:{ayear}"
                cap = to_fen(arules.mutual_aid_annual_cap)
                limits.append(Limit(key, cap, uow.usage.of(key),
                                    f"regional annual mutual-aid cap {arules.mutual_aid_annual_cap} "
                                    f"({acct['insuplc_admdvs']})"))
            available = sum(amount for _, amount in self.shareable(acct))
            authorizers.append(Payer(b["authorizer_psn_no"], b["auth_id"], available, usable=usable,
                                     why_unusable=why, limits=tuple(limits), may_pay=self._may_pay(req, arules)))
        return own, authorizers, rows, notes

    def _allocate(self, uow: AccountsUnitOfWork, req: AccountsRequest
                  ) -> tuple[Allocation, dict[str, Any], dict[str, int], list[str]]:
        if req.psn_part_amt is None or req.med_type is None:
            raise GongjiError(ErrorCode.BAD_INPUT, "pay needs psn_part_amt and med_type")
        rules = self.rules(req.insuplc_admdvs)
        psn_part = to_fen(req.psn_part_amt)
        if psn_part < 0:
            raise GongjiError(ErrorCode.BAD_INPUT, "psn_part_amt must not be negative")
        pieces, member = self._pieces(req, psn_part), self._may_pay(req, rules)
        notes = self._exclusion_notes(req, rules)
        win = self.windows(req.insuplc_admdvs, req.biz_time)
        own, authorizers, rows, more = self._payers(uow, req, win)
        notes += more
        shared: list[Limit] = []
        if req.setl_chnl in rules.channel_daily_limit:
            cap = to_fen(rules.channel_daily_limit[req.setl_chnl])
            key = f"chnl:{req.psn_no}:{req.setl_chnl}:day:{win['day']}"
            shared.append(Limit(key, cap, uow.usage.of(key), f"{req.setl_chnl} daily limit {from_fen(cap)}"))
        # The member's region must run the service; what each authorizer may pay is its own region's rule
        # (scope, 全自费, pilots: see _payers).
        wallet_fen = uow.people.wallet(req.psn_no)
        wallet = Payer(req.psn_no, "wallet", wallet_fen) if wallet_fen > 0 else None
        alloc = allocate(psn_part=psn_part, payable=sum(pieces[k] for k in member), own=own, authorizers=authorizers,
                         shared_limits=shared, mutual_aid_allowed=rules.mutual_aid_open, wallet=wallet,
                         pieces=pieces, payable_pieces=member,
                         mutual_aid_why_not=f"the service is not open in {req.insuplc_admdvs}")
        caps = {lim.key: lim.cap for p in authorizers for lim in p.limits} | {lim.key: lim.cap for lim in shared}
        return alloc, rows, caps, notes

    def _pay(self, uow: AccountsUnitOfWork, req: AccountsRequest, outbox: list[int], commit: bool) -> AccountsReply:
        alloc, rows, caps, notes = self._allocate(uow, req)
        when = format_biz_time(req.biz_time)
        own_row = uow.accounts.get(req.psn_no)
        postings: list[tuple[str, int]] = []
        if alloc.own:
            assert own_row is not None
            postings += [(a, -x) for a, x in split_pockets(alloc.own, self.own_pockets(own_row, req.med_type))]
        for part in alloc.mulaid:
            postings += [(a, -x) for a, x in split_pockets(part.amount, self.shareable(rows[part.psn_no]))]
        if alloc.wallet:
            postings.append((f"wallet:{req.psn_no}", -alloc.wallet))
        if commit:
            if not req.setl_id or not req.fixmedins_code:
                raise GongjiError(ErrorCode.BAD_INPUT, "pay needs setl_id and fixmedins_code")
            postings.append((f"fixmedins:{req.fixmedins_code}", alloc.acct_pay))
            uow.ledger.post(f"pay:{req.setl_id}", "settlement", when, postings)
            uow.usage.add(alloc.usage, +1, caps)
            year = int(self.windows(req.insuplc_admdvs, req.biz_time)["year"])
            uow.payments.add(req.setl_id, req.psn_no, req.fixmedins_code, when, year,
                             to_fen(req.medfee_sumamt or ZERO), to_fen(req.psn_part_amt or ZERO), alloc.own,
                             json.dumps([[p.psn_no, p.auth_id, p.amount] for p in alloc.mulaid]), alloc.wallet,
                             alloc.cash, json.dumps(list(alloc.usage)), json.dumps(postings))
            self.event(uow, outbox, req.psn_no, -alloc.own, "settlement", req.setl_id, when)
            self.event(uow, outbox, req.psn_no, -alloc.wallet, "wallet", req.setl_id, when, wallet=True)
            for p in alloc.mulaid:
                self.event(uow, outbox, p.psn_no, -p.amount, "mutual_aid", req.setl_id, when)
        after = 0 if commit else 1  # a preview reports balances as they would be after
        detail = [MulaidPart(authorizer_psn_no=p.psn_no, auth_id=p.auth_id, amount=from_fen(p.amount),
                             balc=from_fen(uow.accounts.balance(p.psn_no) - after * p.amount)) for p in alloc.mulaid]
        return AccountsReply(req_id=req.req_id, kind=req.kind, ok=True, acct_pay=from_fen(alloc.acct_pay),
                             acct_mulaid_pay=from_fen(alloc.mulaid_total), psn_cash_pay=from_fen(alloc.cash),
                             wallet_pay=from_fen(alloc.wallet),
                             balc=from_fen(uow.accounts.balance(req.psn_no) - after * alloc.own), mulaid_detail=detail,
                             notes=notes + list(alloc.notes), context=req.context)

    def _refund(self, uow: AccountsUnitOfWork, req: AccountsRequest, outbox: list[int]) -> AccountsReply:
        if not req.setl_id:
            raise GongjiError(ErrorCode.BAD_INPUT, "refund needs setl_id")
        pay = uow.payments.get(req.setl_id)
        when = format_biz_time(req.biz_time)
        if pay is None or pay["state"] != "paid":
            # Nothing was paid (or it is already refunded): a harmless no-op, answered as zeros.
            return AccountsReply(req_id=req.req_id, kind=req.kind, ok=True, acct_pay=ZERO, acct_mulaid_pay=ZERO,
                                 psn_cash_pay=ZERO, wallet_pay=ZERO, balc=from_fen(uow.accounts.balance(req.psn_no)),
                                 notes=["nothing to refund"], context=req.context)
        if pay["psn_no"] != req.psn_no:
            raise GongjiError(ErrorCode.NOT_YOUR_SETTLEMENT, f"payment {req.setl_id} is not {req.psn_no}'s")
        # Exactly the postings of the payment, negated: every pocket gets back what it gave.
        uow.ledger.post(f"refund:{req.setl_id}", "reversal", when, [(a, -x) for a, x in pay["postings"]])
        uow.usage.add(pay["usage"], -1)
        uow.payments.set_refunded(req.setl_id)
        mulaid = pay["mulaid"]
        self.event(uow, outbox, pay["psn_no"], pay["own_fen"], "reversal", req.setl_id, when)
        self.event(uow, outbox, pay["psn_no"], pay["wallet_fen"], "reversal", req.setl_id, when, wallet=True)
        for psn_no, _auth, amount in mulaid:
            self.event(uow, outbox, psn_no, amount, "reversal", req.setl_id, when)
        total_mulaid = sum(m[2] for m in mulaid)
        detail = [MulaidPart(authorizer_psn_no=psn_no, auth_id=auth, amount=from_fen(-amount),
                             balc=from_fen(uow.accounts.balance(psn_no))) for psn_no, auth, amount in mulaid]
        return AccountsReply(req_id=req.req_id, kind=req.kind, ok=True,
                             acct_pay=from_fen(-(pay["own_fen"] + total_mulaid + pay["wallet_fen"])),
                             acct_mulaid_pay=from_fen(-total_mulaid), psn_cash_pay=from_fen(-pay["cash_fen"]),
                             wallet_pay=from_fen(-pay["wallet_fen"]), balc=from_fen(uow.accounts.balance(pay["psn_no"])),
                             mulaid_detail=detail, notes=[f"refunded {req.setl_id}"], context=req.context)

    # ---- admin transactions (gongji's G-codes) ----------------------------------------------
    def handle_admin(self, tx: Tx, req: Request, reply_to: str | None) -> list[int]:
        uow = AccountsUnitOfWork(tx)

        def effect(outbox: list[int]) -> bytes:
            inp = decode_input(req, ACCOUNTS_ADMIN_INPUTS)
            self.sweep_transfers(uow, format_biz_time(req.inf_time), outbox, psn_nos_in(req.input))
            handler: Callable[..., dict[str, Any]] | None = lifecycle.HANDLERS.get(req.infno)
            if handler is None:
                raise GongjiError(ErrorCode.UNKNOWN_INFNO, f"infno {req.infno} is not served here")
            out = handler(self, uow, req, inp, outbox)
            return Reply.ok(req.msgid, out).model_dump_json().encode()

        return handle_idempotent(uow, key=req.msgid, kind=req.infno, content_hash=req.content_hash(),
                                 reply_to=reply_to, reply_exchange=self.names.reply_exchange, effect=effect,
                                 refusal=envelope_refusal(req.msgid))

