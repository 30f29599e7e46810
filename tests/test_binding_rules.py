"""Issue 12: the family mutual-aid binding rules as a pure check (services/accounts/binding.py), on its own.

Each rule of README's table "Family mutual aid: rules and where they are set" is broken alone on an otherwise
valid binding and must give that rule's err_code; a binding that breaks none is accepted; where several are
broken, who the parties are is checked before the authorizer's account, the account before the regions, and
the regions before the binding's own limits.
"""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.errors import ErrorCode
from services.accounts.binding import AuthorizerAccount, BindFacts, Party, check
from services.shared.policy import AccountRules

RELATIONS = ["spouse", "parent", "child", "sibling", "grandparent", "grandchild"]


@st.composite
def valid(draw: st.DrawFn) -> BindFacts:
    """A binding every rule allows."""
    region = draw(st.sampled_from(["110000", "310000", "330100", "420100"]))
    cross = draw(st.booleans())
    member_region = draw(st.sampled_from(["110000", "310000", "330100", "420100"])) if cross else region
    relations = draw(st.lists(st.sampled_from(RELATIONS), min_size=1, unique=True))
    max_members = draw(st.integers(1, 6))
    max_changes = draw(st.none() | st.integers(1, 10))
    min_balance = draw(st.none() | st.integers(0, 100_000))
    balance = draw(st.integers(min_balance or 0, 1_000_000))
    single = draw(st.booleans())
    rules = AccountRules(relations=relations, max_members=max_members, max_binding_changes_per_year=max_changes,
                         min_authorizer_balance=None if min_balance is None else Decimal(min_balance) / 100,
                         cross_province=True, member_single_authorizer=single)
    member_rules = AccountRules(cross_province=True, member_single_authorizer=False)
    return BindFacts(
        authorizer_psn_no="A" + draw(st.text("0123456789", min_size=1, max_size=6)),
        member_psn_no="M" + draw(st.text("0123456789", min_size=1, max_size=6)),
        relation=draw(st.sampled_from(relations)),
        account=AuthorizerAccount(region, "310", "normal", balance),
        authorizer=Party(region, True), member=Party(member_region, True),
        rules=rules, member_rules=member_rules, already_bound=False,
        members=draw(st.integers(0, max_members - 1)),
        member_bound=False if single else draw(st.booleans()),  # bound elsewhere is fine where no region forbids
        changes=0 if max_changes is None else draw(st.integers(0, max_changes - 1)), year=2026)


def _rules(f: BindFacts, **kw: object) -> AccountRules:
    assert f.rules is not None
    return f.rules.model_copy(update=kw)


def _other_province(region: str) -> str:
    return "440100" if not region.startswith("44") else "110000"


# Each rule broken alone, and the code README gives it.
BREAK: dict[str, tuple[str, Callable[[BindFacts], BindFacts]]] = {
    "self": (ErrorCode.BINDING_INVALID, lambda f: replace(f, member_psn_no=f.authorizer_psn_no)),
    "no account": (ErrorCode.UNKNOWN_ACCOUNT, lambda f: replace(f, account=None)),
    "unknown authorizer": (ErrorCode.UNKNOWN_PERSON, lambda f: replace(f, authorizer=None)),
    "unknown member": (ErrorCode.UNKNOWN_PERSON, lambda f: replace(f, member=None)),
    "resident authorizer": (ErrorCode.AUTHORIZER_NOT_EMPLOYEE,
                            lambda f: replace(f, account=replace(f.account, insutype="390"))),  # type: ignore[type-var]
    "account not normal": (ErrorCode.ACCOUNT_NOT_NORMAL,
                           lambda f: replace(f, account=replace(f.account, status="frozen"))),  # type: ignore[type-var]
    "authorizer e-voucher": (ErrorCode.EVOUCHER_INACTIVE,
                             lambda f: replace(f, authorizer=replace(f.authorizer, evoucher_active=False))),  # type: ignore[type-var]
    "member e-voucher": (ErrorCode.EVOUCHER_INACTIVE,
                         lambda f: replace(f, member=replace(f.member, evoucher_active=False))),  # type: ignore[type-var]
    "closed here": (ErrorCode.SERVICE_NOT_OPEN, lambda f: replace(f, rules=_rules(f, mutual_aid_open=False))),
    "closed there": (ErrorCode.SERVICE_NOT_OPEN, lambda f: replace(
        f, member_rules=f.member_rules.model_copy(update={"mutual_aid_open": False}))),  # type: ignore[union-attr]
    "cross-province": (ErrorCode.CROSS_PROVINCE_NOT_ALLOWED, lambda f: replace(
        f, rules=_rules(f, cross_province=False),
        member=replace(f.member, region=_other_province(f.account.region)))),  # type: ignore[union-attr,type-var]
    "relation": (ErrorCode.RELATION_NOT_ALLOWED, lambda f: replace(
        f, rules=_rules(f, relations=[r for r in RELATIONS if r != f.relation][:1]))),
    "balance": (ErrorCode.BALANCE_TOO_LOW, lambda f: replace(
        f, rules=_rules(f, min_authorizer_balance=Decimal(f.account.balance_fen + 1) / 100))),  # type: ignore[union-attr]
    "already bound": (ErrorCode.ALREADY_BOUND, lambda f: replace(f, already_bound=True)),
    "too many members": (ErrorCode.TOO_MANY_MEMBERS, lambda f: replace(f, members=f.rules.max_members)),  # type: ignore[union-attr]
    "member elsewhere": (ErrorCode.MEMBER_ALREADY_BOUND, lambda f: replace(
        f, member_bound=True, member_rules=f.member_rules.model_copy(  # type: ignore[union-attr]
            update={"member_single_authorizer": True}))),
    "too many changes": (ErrorCode.TOO_MANY_CHANGES, lambda f: replace(
        f, rules=_rules(f, max_binding_changes_per_year=3), changes=3)),
}
# Parties, then the authorizer's account, then the regions, then the binding's own limits.
PRECEDENCE = ["self", "no account", "unknown authorizer", "unknown member", "resident authorizer",
              "account not normal", "authorizer e-voucher", "member e-voucher", "closed here", "closed there",
              "cross-province", "relation", "balance", "already bound", "too many members", "member elsewhere",
              "too many changes"]


@settings(max_examples=300, deadline=None)
@given(valid())
def test_a_binding_that_breaks_no_rule_is_accepted(f: BindFacts) -> None:
    assert check(f) is None


@settings(max_examples=600, deadline=None)
@given(valid(), st.sampled_from(sorted(BREAK)))
def test_each_rule_broken_alone_gives_its_own_code(f: BindFacts, rule: str) -> None:
    code, breaks = BREAK[rule]
    refusal = check(breaks(f))
    assert refusal is not None and refusal.code == code, (rule, refusal)


@settings(max_examples=400, deadline=None)
@given(valid(), st.lists(st.sampled_from(PRECEDENCE[4:]), min_size=2, max_size=5, unique=True))
def test_of_several_rules_broken_the_first_in_precedence_is_reported(f: BindFacts, rules: list[str]) -> None:
    # From the authorizer's account on (the party checks replace the facts the later rules need).
    for rule in sorted(rules, key=PRECEDENCE.index, reverse=True):
        f = BREAK[rule][1](f)
    first = min(rules, key=PRECEDENCE.index)
    refusal = check(f)
    assert refusal is not None and refusal.code == BREAK[first][0], (rules, refusal)


@given(valid())
def test_cross_province_allowed_by_both_regions_is_accepted(f: BindFacts) -> None:
    assert f.account is not None and f.member is not None
    assert check(replace(f, member=replace(f.member, region=_other_province(f.account.region)))) is None
