"""The life cycle of a settlement, pure: a state and an event in, the next state (or a refusal) out.

    (never seen) ──settle──▶ pending ──paid──▶ settled ──reverse (2208/2305/2103)──▶ reversing ──refunded──▶ reversed
                             │  └──pay failed──▶ failed
                             └──2601 冲正: cancel marked, undone once paid
                                          settled ──2601 冲正──▶ compensating ──refunded──▶ compensated
    (never seen) ──2601 冲正──▶ tombstone: the msgid, if it arrives later, is refused (E_COMPENSATED)

`reversing` and `compensating` mean the money is on its way back (the accounts service was asked to refund);
reversed, compensated, failed and tombstone are final. The handlers in service.py carry out a Step: store the
new state, give the accumulators back and ask for the refund when `undo`, refuse with `error`.
"""
from __future__ import annotations

from dataclasses import dataclass

from contracts.errors import ErrorCode

PENDING, SETTLED, FAILED = "pending", "settled", "failed"
REVERSING, REVERSED = "reversing", "reversed"
COMPENSATING, COMPENSATED = "compensating", "compensated"
TOMBSTONE = "tombstone"  # a msgid cancelled by 2601 before it arrived (an inbox entry, no settlement row)

STATES = (PENDING, SETTLED, FAILED, REVERSING, REVERSED, COMPENSATING, COMPENSATED, TOMBSTONE)
FINAL = (FAILED, REVERSED, COMPENSATED, TOMBSTONE)
COUNTED = (PENDING, SETTLED)  # the states whose deltas the accumulators hold


@dataclass(frozen=True)
class Step:
    state: str | None           # the state afterwards (None: still no settlement)
    error: str | None = None    # a refusal: nothing changes
    undo: bool = False          # give the accumulators back and ask the accounts service for a refund
    wait: bool = False          # 2601 on a pending settlement: undone as soon as the payment is answered
    duplicate: bool = False     # an answer already applied (or for a settlement that moved on): ignored


def settle(state: str | None) -> Step:
    """A settlement request for a msgid (a repeat of a known msgid is answered by the inbox before this)."""
    if state is None:
        return Step(PENDING)
    if state == TOMBSTONE:
        return Step(state, error=ErrorCode.COMPENSATED)
    return Step(state, error=ErrorCode.MSGID_CONFLICT)


def paid(state: str, ok: bool, cancelled: bool) -> Step:
    """The accounts service's answer to the payment; `cancelled`: a 2601 came while it was under way."""
    if state != PENDING:
        return Step(state, duplicate=True)
    if not ok:
        return Step(FAILED)
    if cancelled:
        return Step(COMPENSATING, undo=True)
    return Step(SETTLED)


def refunded(state: str) -> Step:
    """The accounts service's answer to the refund."""
    if state == REVERSING:
        return Step(REVERSED)
    if state == COMPENSATING:
        return Step(COMPENSATED)
    return Step(state, duplicate=True)


def reverse(state: str) -> Step:
    """2208 / 2305 / 2103 of a settlement the facility made (who may is checked before)."""
    if state == SETTLED:
        return Step(REVERSING, undo=True)
    if state in (REVERSING, REVERSED):
        return Step(state, error=ErrorCode.ALREADY_REVERSED)
    if state in (COMPENSATING, COMPENSATED):
        return Step(state, error=ErrorCode.COMPENSATED)
    if state == PENDING:
        return Step(state, error=ErrorCode.SETTLEMENT_PENDING)
    return Step(state, error=ErrorCode.SETTLEMENT_NOT_FOUND)  # failed (or a tombstone): nothing to undo


def cancel(state: str | None) -> Step:
    """2601 冲正 of a settlement msgid (None: the msgid never arrived)."""
    if state is None:
        return Step(TOMBSTONE)
    if state == PENDING:
        return Step(PENDING, wait=True)
    if state == SETTLED:
        return Step(COMPENSATING, undo=True)
    return Step(state)  # nothing left to undo: answered ok, changes nothing
