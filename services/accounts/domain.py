"""Pure allocation of a patient's share (个人负担) across payers. No I/O; integer fen throughout.

Order: the patient's own account, then the authorizers (授权人) in rank order, then the patient's
医保钱包 (wallet, money a relative in another province transferred), then cash. A payer with a
zero balance, a frozen account or an exhausted window is skipped; nothing is ever taken beyond a
balance or a cap. The limits that apply to all account payment (a channel's daily limit) are shared
by every payer of one settlement.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Mapping, Sequence

from contracts.base import SHANGHAI


@dataclass(frozen=True)
class Limit:
    key: str  # usage key, one per window: e.g. "auth:A1:day:2026-11-23"
    cap: int
    used: int
    label: str

    @property
    def left(self) -> int:
        return max(0, self.cap - self.used)


@dataclass(frozen=True)
class Payer:
    psn_no: str
    auth_id: str | None  # None: the patient's own account
    balance: int
    usable: bool = True
    why_unusable: str = ""
    limits: tuple[Limit, ...] = ()
    # The pieces of the share this payer may cover (its region's rules: 全自费 or pilot items it may not pay);
    # None: the pieces the patient's own region lets accounts pay. An authorizer's follow the authorizer's region.
    may_pay: frozenset[str] | None = None


@dataclass(frozen=True)
class Part:
    psn_no: str
    auth_id: str
    amount: int


@dataclass(frozen=True)
class Allocation:
    own: int
    mulaid: tuple[Part, ...]
    cash: int
    usage: tuple[tuple[str, int], ...]  # (usage key, fen consumed), to be released exactly on reversal
    notes: tuple[str, ...] = field(default=())
    wallet: int = 0

    @property
    def acct_pay(self) -> int:
        return self.own + self.mulaid_total + self.wallet

    @property
    def mulaid_total(self) -> int:
        return sum(p.amount for p in self.mulaid)


def _yuan(fen: int) -> str:
    return f"{Decimal(fen) / 100:.2f}"


PAYABLE, EXCLUDED = "payable", "excluded"  # the two pieces of a share given only as (psn_part, payable)


def allocate(*, psn_part: int, payable: int, own: Payer | None, authorizers: Sequence[Payer],
             shared_limits: Sequence[Limit] = (), mutual_aid_allowed: bool = True,
             mutual_aid_why_not: str = "", wallet: Payer | None = None,
             pieces: Mapping[str, int] | None = None, payable_pieces: frozenset[str] | None = None) -> Allocation:
    """psn_part: the patient's share; payable: the part of it the accounts may pay (<= psn_part).

    pieces (optional) split the share by what regions allow accounts to pay (e.g. the medical part, 全自费, a
    pilot's vaccination): payable_pieces are those the patient's own region allows (they sum to `payable`), a
    payer's `may_pay` those its region allows. Each payer covers first the pieces the fewest payers after it
    may cover, so that the order of payers never leaves to cash what a later one could have paid.
    """
    if pieces is None:
        pieces, payable_pieces = {PAYABLE: payable, EXCLUDED: psn_part - payable}, frozenset({PAYABLE})
    member = frozenset(payable_pieces if payable_pieces is not None else pieces)
    if (psn_part < 0 or not (0 <= payable <= psn_part) or any(v < 0 for v in pieces.values())
            or sum(pieces.values()) != psn_part or not member <= set(pieces)
            or sum(pieces[k] for k in member) != payable):
        raise ValueError(f"bad amounts: psn_part={psn_part} payable={payable} pieces={dict(pieces)}")
    notes: list[str] = []
    usage: dict[str, int] = {}
    left = dict(pieces)  # what of each piece no payer has covered yet
    if payable < psn_part:
        notes.append(f"accounts may pay {_yuan(payable)} of the share {_yuan(psn_part)} (region rules)")
    shared_left = min((lim.left for lim in shared_limits), default=None)
    mutual_aid = bool(authorizers) and mutual_aid_allowed
    order = [p for p in [own, *(authorizers if mutual_aid else ()), wallet] if p is not None]

    def may_pay(payer: Payer) -> frozenset[str]:
        return member if payer.may_pay is None else payer.may_pay

    def take(payer: Payer, who: str) -> int:
        nonlocal shared_left
        allowed = may_pay(payer)
        room = sum(left.get(k, 0) for k in allowed)  # what this payer may still cover, after the payers before it
        if room <= 0:
            if allowed != member and any(left[k] for k in member):
                notes.append(f"{who}: skipped (its region's accounts may not pay what is left)")
            return 0
        if not payer.usable:
            notes.append(f"{who}: skipped ({payer.why_unusable or 'not usable'})")
            return 0
        if payer.balance <= 0:
            notes.append(f"{who}: skipped (balance 0.00)")
            return 0
        amount = min(room, payer.balance)
        binding = ("share" if amount == room and allowed == member else "its region's payable part"
                   if amount == room else "balance")
        for lim in payer.limits:
            if lim.left < amount:
                amount, binding = lim.left, lim.label
        if shared_left is not None and shared_left < amount:
            amount = shared_left
            binding = next(lim.label for lim in shared_limits if lim.left == min(l.left for l in shared_limits))
        if amount <= 0:
            notes.append(f"{who}: skipped ({binding} reached)")
            return 0
        for lim in payer.limits:
            usage[lim.key] = usage.get(lim.key, 0) + amount
        for lim in shared_limits:
            usage[lim.key] = usage.get(lim.key, 0) + amount
        if shared_left is not None:
            shared_left -= amount
        at = next(i for i, p in enumerate(order) if p is payer)
        later = [may_pay(p) for p in order[at + 1:] if p.usable and p.balance > 0]
        rest = amount
        for k in sorted((k for k in allowed if left.get(k)), key=lambda k: (sum(k in s for s in later), k)):
            x = min(rest, left[k])
            left[k] -= x
            rest -= x
        notes.append(f"{who}: paid {_yuan(amount)} (bound by {binding})")
        return amount

    own_paid = take(own, f"own account {own.psn_no}") if own is not None else 0
    if own is None and payable:
        notes.append("own account: none")
    parts: list[Part] = []
    if any(left[k] for k in member) and authorizers and not mutual_aid_allowed:
        notes.append(f"mutual aid not allowed here ({mutual_aid_why_not})")
    elif mutual_aid:
        for payer in authorizers:
            paid = take(payer, f"authorizer {payer.psn_no} (binding {payer.auth_id})")
            if paid:
                parts.append(Part(payer.psn_no, payer.auth_id or "", paid))
    wallet_paid = take(wallet, f"医保钱包 of {wallet.psn_no}") if wallet is not None else 0
    acct = own_paid + sum(p.amount for p in parts) + wallet_paid
    cash = psn_part - acct
    if cash:
        notes.append(f"cash: {_yuan(cash)}")
    return Allocation(own=own_paid, mulaid=tuple(parts), cash=cash, usage=tuple(sorted(usage.items())),
                      notes=tuple(notes), wallet=wallet_paid)


def windows(biz_time: datetime, year_start_month: int = 1) -> dict[str, str]:
    """Windows of a business time, in Asia/Shanghai (never the wall clock). The year is the insurance year
    (named by the calendar year it starts in; Shanghai's starts on 1 July)."""
    local = biz_time.astimezone(SHANGHAI)
    year = local.year if local.month >= year_start_month else local.year - 1
    return {"day": local.strftime("%Y-%m-%d"), "month": local.strftime("%Y-%m"), "year": str(year)}


def split_pockets(amount: int, pockets: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Take `amount` from pockets in order (e.g. 当年账户 then 历年账户); each pocket at most its balance."""
    taken = []
    for name, available in pockets:
        x = min(amount, max(0, available))
        if x:
            taken.append((name, x))
            amount -= x
    if amount:
        raise ValueError("pockets hold less than the amount")
    return taken
