"""Issue 12: the settlement life cycle as a pure state machine (services/bureau/settlement.py), on its own.

Expectations come from the rules (README "Reversal and 冲正", the bureau's schema comment, the audit that the
accumulators equal the settlements that still count), not from the code: a settlement is undone at most once,
nothing leaves a final state, a msgid cancelled before it arrived is refused when it comes, the accumulators
count a settlement exactly while it is pending or settled, and each refusal carries one of the documented codes.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.errors import ErrorCode
from services.bureau import settlement as life

EVENTS = ("settle", "paid_ok", "paid_fail", "refunded", "reverse", "cancel")
# The codes a refusal may carry, per request (README, contracts/errors.py).
DOCUMENTED = {
    "settle": {ErrorCode.COMPENSATED, ErrorCode.MSGID_CONFLICT},
    "reverse": {ErrorCode.ALREADY_REVERSED, ErrorCode.COMPENSATED, ErrorCode.SETTLEMENT_PENDING,
                ErrorCode.SETTLEMENT_NOT_FOUND},
    "cancel": set(),      # 2601 is never refused for the state: at worst "nothing left to undo"
    "paid_ok": set(), "paid_fail": set(), "refunded": set(),  # answers: applied or ignored, never refused
}
FINAL = {"reversed", "compensated", "failed", "tombstone"}
# The edges of the life cycle (the bureau's schema comment and README), and nothing else.
ALLOWED = {(None, "pending"), ("pending", "settled"), ("pending", "failed"), ("settled", "reversing"),
           ("reversing", "reversed"), ("settled", "compensating"), ("pending", "compensating"),
           ("compensating", "compensated"), (None, "tombstone")}


def step_of(state: str | None, event: str, cancel_marked: bool) -> life.Step | None:
    """The machine's answer, or None where the event cannot happen (no settlement to answer for)."""
    if event == "settle":
        return life.settle(state)
    if event == "cancel":
        return life.cancel(state)
    if state in (None, "tombstone"):
        return None  # the accounts answer only what was asked; a reversal needs a settlement to name
    if event in ("paid_ok", "paid_fail"):
        return life.paid(state, event == "paid_ok", cancelled=cancel_marked)
    if event == "refunded":
        return life.refunded(state)
    return life.reverse(state)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(EVENTS), max_size=12))
def test_any_sequence_of_requests_and_answers_keeps_the_life_cycle_sound(events: list[str]) -> None:
    state: str | None = None
    counted = 0        # settlements the accumulators hold for this msgid
    undone = 0         # times the money was given back
    cancel_marked = False
    for event in events:
        step = step_of(state, event, cancel_marked)
        if step is None:
            continue
        if step.error is not None:
            assert step.error in DOCUMENTED[event], (state, event, step.error)
        if step.error is not None or step.duplicate or step.state == state:
            assert step.state == state and not step.undo, "a refusal or a repeat changes nothing"
            cancel_marked = cancel_marked or step.wait
            continue
        assert state not in FINAL, f"{state} is final, yet {event} moved it to {step.state}"
        assert (state, step.state) in ALLOWED, (state, event, step.state)
        if state is None and step.state == "pending":
            counted += 1
        if state == "pending" and step.state == "failed":
            counted -= 1  # the payment was refused: the settlement no longer counts
        if step.undo:
            counted -= 1
            undone += 1
        state = step.state
        assert counted == (1 if state in life.COUNTED else 0), (events, state, counted)
        assert undone <= 1, "a settlement is undone at most once"


@given(st.sampled_from(sorted(FINAL)), st.sampled_from(EVENTS), st.booleans())
def test_nothing_leaves_a_final_state(state: str, event: str, cancel_marked: bool) -> None:
    step = step_of(state, event, cancel_marked)
    if step is not None:
        assert step.state == state and not step.undo


@given(st.sampled_from(EVENTS))
def test_a_tombstone_forbids_a_later_settlement(_: str) -> None:
    tomb = life.cancel(None)
    assert tomb.state == life.TOMBSTONE and not tomb.undo
    late = life.settle(tomb.state)
    assert late.error == ErrorCode.COMPENSATED and late.state == life.TOMBSTONE


def test_cancel_while_paying_undoes_once_the_payment_is_answered() -> None:
    """README: 2601 undoes a settlement even one still waiting for its payment."""
    waiting = life.cancel("pending")
    assert waiting.state == "pending" and waiting.wait and not waiting.undo
    paid = life.paid("pending", ok=True, cancelled=True)
    assert paid.state == "compensating" and paid.undo
    assert life.refunded(paid.state).state == "compensated"
    refused = life.paid("pending", ok=False, cancelled=True)
    assert refused.state == "failed" and not refused.undo  # nothing was taken: nothing to give back


def test_reversal_only_of_a_settled_settlement() -> None:
    assert life.reverse("settled") == life.Step("reversing", undo=True)
    assert life.refunded("reversing").state == "reversed"
    assert life.reverse("pending").error == ErrorCode.SETTLEMENT_PENDING
    assert life.reverse("reversed").error == ErrorCode.ALREADY_REVERSED
    assert life.reverse("compensated").error == ErrorCode.COMPENSATED
    assert life.paid("settled", ok=True, cancelled=False).duplicate  # a second answer to one payment
