"""The pure allocation of a patient's share (个人负担) across payers: own account, authorizers, cash.

Unit tests of the rules, then hypothesis properties over random payers, limits and amounts (integer fen).
No I/O, no broker.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.accounts.domain import Allocation, Limit, Part, Payer, allocate, windows
from services.bureau.service import insurance_year
from services.shared.policy import load_policies


def own(balance: int, *, usable: bool = True, limits: tuple[Limit, ...] = ()) -> Payer:
    return Payer("M1", None, balance, usable=usable, why_unusable="" if usable else "account frozen", limits=limits)


def auth(n: int, balance: int, *, usable: bool = True, limits: tuple[Limit, ...] = ()) -> Payer:
    return Payer(f"A{n}", f"B{n}", balance, usable=usable, why_unusable="" if usable else "authorizer account frozen",
                 limits=limits)


def day_cap(n: int, cap: int, used: int = 0) -> Limit:
    return Limit(f"auth:B{n}:day:2026-03-01", cap, used, f"day cap of binding B{n}")


def chnl(cap: int, used: int = 0) -> Limit:
    return Limit("chnl:M1:online:day:2026-03-01", cap, used, "online daily limit")


def check_sum(a: Allocation, psn_part: int) -> None:
    assert a.own + a.mulaid_total + a.cash == psn_part


# ---- unit tests -------------------------------------------------------------------------------

def test_own_account_pays_first_and_alone_when_enough() -> None:
    a = allocate(psn_part=500, payable=500, own=own(1000), authorizers=[auth(1, 9999)])
    assert (a.own, a.mulaid, a.cash, a.usage) == (500, (), 0, ())
    assert a.acct_pay == 500


def test_authorizers_in_given_order_then_cash() -> None:
    a = allocate(psn_part=1000, payable=1000, own=own(100), authorizers=[auth(1, 300), auth(2, 400), auth(3, 50)])
    assert a.own == 100
    assert a.mulaid == (Part("A1", "B1", 300), Part("A2", "B2", 400), Part("A3", "B3", 50))
    assert a.cash == 150
    check_sum(a, 1000)
    # The order is the one given, not sorted by anything: reversed input, reversed payment.
    b = allocate(psn_part=500, payable=500, own=None, authorizers=[auth(2, 400), auth(1, 300)])
    assert b.mulaid == (Part("A2", "B2", 400), Part("A1", "B1", 100))
    assert b.cash == 0


def test_later_authorizer_untouched_when_earlier_suffices() -> None:
    a = allocate(psn_part=250, payable=250, own=own(0), authorizers=[auth(1, 300), auth(2, 400)])
    assert a.own == 0
    assert a.mulaid == (Part("A1", "B1", 250),)
    assert a.cash == 0


def test_frozen_and_zero_balance_payers_are_skipped_with_a_note() -> None:
    a = allocate(psn_part=600, payable=600, own=own(1000, usable=False),
                 authorizers=[auth(1, 0), auth(2, 500, usable=False), auth(3, 200)])
    assert a.own == 0
    assert a.mulaid == (Part("A3", "B3", 200),)
    assert a.cash == 400
    notes = "\n".join(a.notes)
    assert "own account M1: skipped (account frozen)" in notes
    assert "authorizer A1 (binding B1): skipped (balance 0.00)" in notes
    assert "authorizer A2 (binding B2): skipped (authorizer account frozen)" in notes
    assert "cash: 4.00" in notes


def test_per_payer_cap_is_never_exceeded() -> None:
    # B1 has a day cap of 500 with 200 already used: 300 left; B2 pays the rest.
    a = allocate(psn_part=1000, payable=1000, own=own(0), authorizers=[auth(1, 5000, limits=(day_cap(1, 500, 200),)),
                                                                      auth(2, 5000)])
    assert a.mulaid == (Part("A1", "B1", 300), Part("A2", "B2", 700))
    assert dict(a.usage) == {"auth:B1:day:2026-03-01": 300}
    assert any("bound by day cap of binding B1" in n for n in a.notes)


def test_exhausted_cap_skips_the_authorizer_with_a_note() -> None:
    a = allocate(psn_part=100, payable=100, own=None, authorizers=[auth(1, 5000, limits=(day_cap(1, 500, 500),)),
                                                                  auth(2, 5000)])
    assert a.mulaid == (Part("A2", "B2", 100),)
    assert any("A1" in n and "skipped (day cap of binding B1 reached)" in n for n in a.notes)
    assert "auth:B1:day:2026-03-01" not in dict(a.usage)


def test_shared_limit_is_shared_by_own_and_every_authorizer() -> None:
    # Online daily limit 1000 with 100 already used today: 900 in all, whoever pays.
    a = allocate(psn_part=3000, payable=3000, own=own(600), authorizers=[auth(1, 200), auth(2, 5000), auth(3, 5000)],
                 shared_limits=[chnl(1000, 100)])
    assert a.own == 600
    assert a.mulaid == (Part("A1", "B1", 200), Part("A2", "B2", 100))
    assert a.acct_pay == 900
    assert a.cash == 2100
    assert dict(a.usage) == {"chnl:M1:online:day:2026-03-01": 900}
    assert any("A3" in n and "online daily limit reached" in n for n in a.notes)


def test_shared_limit_with_several_limits_uses_the_tightest() -> None:
    tight = Limit("chnl:x:day", 300, 0, "tight")
    loose = Limit("chnl:y:day", 1000, 0, "loose")
    a = allocate(psn_part=800, payable=800, own=own(5000), authorizers=[], shared_limits=[loose, tight])
    assert a.own == 300
    assert dict(a.usage) == {"chnl:x:day": 300, "chnl:y:day": 300}
    assert any("bound by tight" in n for n in a.notes)


def test_shared_and_per_payer_limits_combined() -> None:
    a = allocate(psn_part=1000, payable=1000, own=own(100),
                 authorizers=[auth(1, 5000, limits=(day_cap(1, 250),)), auth(2, 5000)],
                 shared_limits=[chnl(600)])
    assert a.own == 100
    assert a.mulaid == (Part("A1", "B1", 250), Part("A2", "B2", 250))
    assert a.cash == 400
    assert dict(a.usage) == {"auth:B1:day:2026-03-01": 250, "chnl:M1:online:day:2026-03-01": 600}


def test_mutual_aid_not_allowed_means_no_authorizer_pays() -> None:
    a = allocate(psn_part=1000, payable=1000, own=own(300), authorizers=[auth(1, 5000, limits=(day_cap(1, 500),))],
                 mutual_aid_allowed=False, mutual_aid_why_not="inpatient in 999999")
    assert (a.own, a.mulaid, a.cash) == (300, (), 700)
    assert a.usage == ()
    assert any("mutual aid not allowed here (inpatient in 999999)" in n for n in a.notes)


def test_payable_below_share_leaves_the_difference_to_cash() -> None:
    a = allocate(psn_part=1000, payable=600, own=own(5000), authorizers=[auth(1, 5000)])
    assert (a.own, a.mulaid, a.cash) == (600, (), 400)
    assert any("accounts may pay 6.00 of the share 10.00" in n for n in a.notes)
    b = allocate(psn_part=1000, payable=0, own=own(5000), authorizers=[auth(1, 5000)])
    assert (b.own, b.mulaid, b.cash, b.usage) == (0, (), 1000, ())


def pieced(*, pieces: dict[str, int], member: set[str], own_balance: int | None,
           authorizers: list[tuple[int, set[str] | None]], **kw: object) -> Allocation:
    payers = [Payer(f"A{i + 1}", f"B{i + 1}", bal, may_pay=None if may is None else frozenset(may))
              for i, (bal, may) in enumerate(authorizers)]
    return allocate(psn_part=sum(pieces.values()), payable=sum(pieces[k] for k in member), pieces=pieces,
                    payable_pieces=frozenset(member), own=None if own_balance is None else own(own_balance),
                    authorizers=payers, **kw)  # type: ignore[arg-type]


def test_the_own_account_covers_first_what_only_it_may_pay() -> None:
    # Share 10.00 = 4.00 vaccine (only the member's region runs the pilot) + 6.00 medicine; own balance 5.00;
    # the authorizer's region lets it pay the medicine alone. By hand: own pays the vaccine 4.00 and 1.00 of the
    # medicine, the authorizer the other 5.00 of medicine: own 5.00, shared 5.00, cash 0.
    a = pieced(pieces={"medical": 600, "scope:vaccination": 400}, member={"medical", "scope:vaccination"},
               own_balance=500, authorizers=[(10_000, {"medical"})])
    assert (a.own, a.mulaid, a.cash) == (500, (Part("A1", "B1", 500),), 0)
    # The authorizer's region allows more than the member's (全自费): it may pay that too, own pays the rest.
    b = pieced(pieces={"medical": 600, "fulamt": 400}, member={"medical"}, own_balance=10_000,
               authorizers=[(10_000, {"medical", "fulamt"})])
    assert (b.own, b.mulaid_total, b.cash) == (600, 400, 0)
    # Among authorizers too: the first covers the vaccine the second may not pay, then what it has left.
    c = pieced(pieces={"medical": 600, "scope:vaccination": 400}, member={"medical", "scope:vaccination"},
               own_balance=None, authorizers=[(600, {"medical", "scope:vaccination"}), (10_000, {"medical"})])
    assert (c.mulaid, c.cash) == ((Part("A1", "B1", 600), Part("A2", "B2", 400)), 0)
    # Nobody may pay the cosmetic piece: it stays cash whatever the balances.
    d = pieced(pieces={"medical": 600, "scope:cosmetic": 300}, member={"medical"}, own_balance=10_000,
               authorizers=[(10_000, None)])
    assert (d.own, d.mulaid, d.cash) == (600, (), 300)


@pytest.mark.parametrize("pieces,member", [({"medical": 500, "fulamt": 500}, {"medical"}),  # payable says 600
                                           ({"medical": 600, "fulamt": 300}, {"medical"}),  # sum is not the share
                                           ({"medical": 700, "fulamt": -100}, {"medical"}),
                                           ({"medical": 600, "fulamt": 400}, {"medical", "wellness"})])
def test_inconsistent_pieces_are_refused(pieces: dict[str, int], member: set[str]) -> None:
    with pytest.raises(ValueError):
        allocate(psn_part=1000, payable=600, pieces=pieces, payable_pieces=frozenset(member), own=None,
                 authorizers=[])


def test_no_own_account_goes_straight_to_authorizers() -> None:
    a = allocate(psn_part=100, payable=100, own=None, authorizers=[auth(1, 80)])
    assert (a.own, a.mulaid, a.cash) == (0, (Part("A1", "B1", 80),), 20)
    assert any("own account: none" in n for n in a.notes)


def test_zero_share() -> None:
    a = allocate(psn_part=0, payable=0, own=own(100), authorizers=[auth(1, 100)], shared_limits=[chnl(100)])
    assert (a.own, a.mulaid, a.cash, a.usage) == (0, (), 0, ())


@pytest.mark.parametrize("psn_part,payable", [(-1, 0), (100, 101), (100, -1)])
def test_bad_amounts_are_refused(psn_part: int, payable: int) -> None:
    with pytest.raises(ValueError):
        allocate(psn_part=psn_part, payable=payable, own=None, authorizers=[])


def test_windows_use_asia_shanghai_not_utc() -> None:
    w = windows(datetime(2026, 6, 30, 16, 30, tzinfo=timezone.utc))
    assert w == {"day": "2026-07-01", "month": "2026-07", "year": "2026"}
    w = windows(datetime(2026, 12, 31, 15, 59, 59, tzinfo=timezone.utc))
    assert w == {"day": "2026-12-31", "month": "2026-12", "year": "2026"}
    w = windows(datetime(2026, 12, 31, 16, 0, 0, tzinfo=timezone.utc))
    assert w == {"day": "2027-01-01", "month": "2027-01", "year": "2027"}


def test_the_bureau_names_the_same_insurance_year_as_the_accounts() -> None:
    # Shanghai's insurance year starts on 1 July, Asia/Shanghai: 2026-06-30 16:30 UTC is 1 July 00:30 there.
    sh, hz = load_policies()["310000"], load_policies()["330100"]
    for when in (datetime(2026, 6, 30, 16, 30, tzinfo=timezone.utc), datetime(2026, 6, 30, 15, 59, tzinfo=timezone.utc),
                 datetime(2026, 12, 31, 16, 0, tzinfo=timezone.utc)):
        for policy in (sh, hz):
            assert str(insurance_year(policy, when)) == windows(when, policy.year_start_month)["year"], (when, policy)
    assert insurance_year(sh, datetime(2026, 6, 30, 16, 30, tzinfo=timezone.utc)) == 2026
    assert insurance_year(sh, datetime(2026, 6, 30, 15, 59, tzinfo=timezone.utc)) == 2025
    assert insurance_year(hz, datetime(2026, 12, 31, 16, 0, tzinfo=timezone.utc)) == 2027


# ---- properties -------------------------------------------------------------------------------

@st.composite
def limits(draw: st.DrawFn, prefix: str, max_size: int) -> tuple[Limit, ...]:
    out = []
    for i in range(draw(st.integers(0, max_size))):
        cap = draw(st.integers(0, 50_000))
        used = draw(st.integers(0, cap))
        out.append(Limit(f"{prefix}:{i}", cap, used, f"{prefix} limit {i}"))
    return tuple(out)


@st.composite
def payer(draw: st.DrawFn, n: int | None) -> Payer:
    prefix = "own" if n is None else f"auth:B{n}"
    balance = draw(st.one_of(st.just(0), st.integers(0, 100_000)))
    usable = draw(st.sampled_from([True, True, True, False]))
    return Payer("M1" if n is None else f"A{n}", None if n is None else f"B{n}", balance, usable=usable,
                 why_unusable="" if usable else "frozen", limits=draw(limits(prefix, 3)))


@st.composite
def scenario(draw: st.DrawFn) -> dict:
    psn_part = draw(st.integers(0, 200_000))
    payable = draw(st.one_of(st.just(psn_part), st.integers(0, psn_part)))
    own_payer = draw(st.one_of(st.none(), payer(None)))
    n = draw(st.integers(0, 4))
    authorizers = [draw(payer(i)) for i in range(1, n + 1)]
    shared = draw(limits("chnl", 2))
    allowed = draw(st.sampled_from([True, True, True, False]))
    return dict(psn_part=psn_part, payable=payable, own=own_payer, authorizers=authorizers, shared_limits=shared,
                mutual_aid_allowed=allowed, mutual_aid_why_not="not here")


def capacity(p: Payer) -> int:
    """What a payer alone could pay: its balance, within each of its own limits."""
    if not p.usable or p.balance <= 0:
        return 0
    return min([p.balance] + [lim.left for lim in p.limits])


@settings(max_examples=300, deadline=None)
@given(scenario())
def test_allocation_properties(sc: dict) -> None:
    a = allocate(**sc)
    psn_part, payable = sc["psn_part"], sc["payable"]
    own_payer: Payer | None = sc["own"]
    authorizers: list[Payer] = sc["authorizers"]
    shared: tuple[Limit, ...] = sc["shared_limits"]

    # The share is split exactly; the accounts pay no more than they may; nothing negative.
    assert a.own + a.mulaid_total + a.cash == psn_part
    assert a.acct_pay <= payable
    assert a.cash >= psn_part - payable
    assert a.own >= 0 and a.cash >= 0 and all(p.amount > 0 for p in a.mulaid)
    assert all(amount > 0 for _, amount in a.usage)
    assert [k for k, _ in a.usage] == sorted({k for k, _ in a.usage})  # sorted, one entry per key

    # Who paid what, in payer order; the parts follow the authorizers' order and name them exactly.
    by_auth = {p.auth_id: p for p in a.mulaid}
    assert len(by_auth) == len(a.mulaid)
    assert [p.auth_id for p in a.mulaid] == [q.auth_id for q in authorizers if q.auth_id in by_auth]
    for p in a.mulaid:
        src = next(q for q in authorizers if q.auth_id == p.auth_id)
        assert p.psn_no == src.psn_no
    ordered: list[tuple[Payer, int]] = []
    if own_payer is not None:
        ordered.append((own_payer, a.own))
    else:
        assert a.own == 0
    ordered += [(q, by_auth[q.auth_id].amount if q.auth_id in by_auth else 0) for q in authorizers]

    if not sc["mutual_aid_allowed"]:
        assert a.mulaid == ()

    # No payer pays beyond its balance; an unusable or empty one pays nothing.
    for p, paid in ordered:
        assert 0 <= paid <= max(p.balance, 0)
        if not p.usable or p.balance <= 0:
            assert paid == 0

    # Limits: usage recorded == what was paid against the limit, within cap - used.
    usage = dict(a.usage)
    expected_usage: dict[str, int] = {}
    for p, paid in ordered:
        if paid:
            for lim in p.limits:
                expected_usage[lim.key] = expected_usage.get(lim.key, 0) + paid
    if a.acct_pay:
        for lim in shared:
            expected_usage[lim.key] = a.acct_pay
    assert usage == expected_usage  # exactly the keys of limits that were paid against
    all_limits = [lim for p, _ in ordered for lim in p.limits] + list(shared)
    for lim in all_limits:
        assert usage.get(lim.key, 0) <= lim.cap - lim.used
        assert lim.used + usage.get(lim.key, 0) <= lim.cap

    # Order: a payer pays only if every earlier eligible payer is exhausted (its balance or one of its
    # limits used up). The shared limit cannot be the reason: once it is used up, nobody later pays.
    # (payer, paid, may pay at all): the own account always may; authorizers only where mutual aid is allowed.
    eligible = [(p, paid, p.auth_id is None or sc["mutual_aid_allowed"]) for p, paid in ordered]
    for i, (p, paid, may) in enumerate(eligible):
        if not may:
            assert paid == 0
        assert paid <= capacity(p)
        if paid:
            for q, q_paid, q_may in eligible[:i]:
                if q_may and capacity(q) > 0:
                    assert q_paid == capacity(q), f"{p.psn_no} paid while earlier {q.psn_no} was not exhausted"

    # Nothing is left to cash that some payer could have paid: the accounts pay as much as the rules allow.
    shared_left = min((lim.left for lim in shared), default=None)
    possible = sum(capacity(p) for p, _, may in eligible if may)
    bound = min(payable, possible) if shared_left is None else min(payable, possible, shared_left)
    assert a.acct_pay == bound
    if a.acct_pay < payable:
        # Every eligible payer is exhausted, or the shared limit is.
        assert (shared_left is not None and a.acct_pay == shared_left) or all(
            paid == capacity(p) for p, paid, may in eligible if may)


@settings(max_examples=300, deadline=None)
@given(scenario())
def test_reversing_the_usage_restores_every_window(sc: dict) -> None:
    """The usage an allocation records is what a reversal releases: applying it and releasing it is a no-op,
    and applying it never pushes a window over its cap."""
    a = allocate(**sc)
    used = {lim.key: lim.used for p in [sc["own"], *sc["authorizers"]] if p is not None for lim in p.limits}
    used.update({lim.key: lim.used for lim in sc["shared_limits"]})
    caps = {lim.key: lim.cap for p in [sc["own"], *sc["authorizers"]] if p is not None for lim in p.limits}
    caps.update({lim.key: lim.cap for lim in sc["shared_limits"]})
    after = dict(used)
    for key, amount in a.usage:
        after[key] += amount
        assert after[key] <= caps[key]
    for key, amount in a.usage:
        after[key] -= amount
    assert after == used


@st.composite
def pieced_scenario(draw: st.DrawFn) -> dict:
    names = ["medical", "fulamt", "scope:vaccination", "scope:cosmetic"]
    pieces = {k: draw(st.integers(0, 50_000)) for k in names}
    # What regions allow is nested, as the shipped rules make it: medical ⊂ + 全自费 ⊂ + a pilot's vaccination.
    tiers = [frozenset(names[:1]), frozenset(names[:2]), frozenset(names[:3])]
    member = draw(st.sampled_from(tiers))
    auths = [Payer(f"A{i}", f"B{i}", draw(st.integers(0, 60_000)), may_pay=draw(st.sampled_from([None, *tiers])),
                   limits=draw(limits(f"auth:B{i}", 1))) for i in range(1, draw(st.integers(0, 3)) + 1)]
    return dict(psn_part=sum(pieces.values()), payable=sum(pieces[k] for k in member), pieces=pieces,
                payable_pieces=member, own=draw(st.one_of(st.none(), payer(None))), authorizers=auths)


def max_coverable(sc: dict) -> int:
    """What the payers could cover together at best (nested sets: the widest payers take the widest pieces
    first), each within its capacity: the figure the allocation must reach."""
    payers = [p for p in [sc["own"], *sc["authorizers"]] if p is not None]
    left, total = dict(sc["pieces"]), 0
    for p in sorted(payers, key=lambda p: len(p.may_pay if p.may_pay is not None else sc["payable_pieces"]),
                    reverse=True):
        allowed = p.may_pay if p.may_pay is not None else sc["payable_pieces"]
        cap = capacity(p)
        for k in sorted(allowed, key=lambda k: ["medical", "fulamt", "scope:vaccination"].index(k), reverse=True):
            x = min(cap, left[k])
            left[k] -= x
            cap -= x
            total += x
    return total


@settings(max_examples=300, deadline=None)
@given(pieced_scenario())
def test_pieces_never_leave_to_cash_what_a_payer_could_cover(sc: dict) -> None:
    a = allocate(**sc)
    assert a.own + a.mulaid_total + a.cash == sc["psn_part"]
    assert a.cash >= sc["pieces"]["scope:cosmetic"]  # nobody may pay it
    # Own first, then ranks, and still as much covered as any order of the same payers could cover.
    assert a.acct_pay == max_coverable(sc)
