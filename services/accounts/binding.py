"""The rules of a family mutual-aid binding (G111), pure: the facts in, the first rule broken out.

The handler (lifecycle.bind) gathers the facts through the repositories, asks `check`, and only then checks
the identity (last, so that a binding refused for a rule does not use up the SMS code or face token).
Precedence, as the refusals are documented (README, 家庭共济): who the parties are first (self-binding, an
unknown account or person), then the authorizer (employee-insured, account normal), both e-vouchers, the
regions (service open, cross-province), then the binding itself (relation, balance, already bound, member
count, member under another authorizer, changes this year).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from contracts.errors import ErrorCode
from contracts.money import to_fen
from services.shared.policy import AccountRules

EMPLOYEE = "310"  # 职工医保: only an employee's personal account can be shared


@dataclass(frozen=True)
class Party:
    region: str  # insuplc_admdvs
    evoucher_active: bool


@dataclass(frozen=True)
class AuthorizerAccount:
    region: str
    insutype: str
    status: str
    balance_fen: int


@dataclass(frozen=True)
class BindFacts:
    authorizer_psn_no: str
    member_psn_no: str
    relation: str
    account: AuthorizerAccount | None      # the authorizer's personal account
    authorizer: Party | None
    member: Party | None
    rules: AccountRules | None = None         # the authorizer's region's
    member_rules: AccountRules | None = None  # the member's region's
    already_bound: bool = False   # an active binding of these two exists
    members: int = 0              # the authorizer's active bindings
    member_bound: bool = False    # the member has an active binding under anyone
    changes: int = 0              # binds + unbinds by the authorizer in the insurance year
    year: int = 0


class Refusal(NamedTuple):
    code: str
    message: str


def check(f: BindFacts) -> Refusal | None:
    """The first binding rule `f` breaks (its code and why), or None when the binding may be made."""
    a, m = f.authorizer_psn_no, f.member_psn_no
    if a == m:
        return Refusal(ErrorCode.BINDING_INVALID, "an authorizer cannot bind himself or herself")
    if f.account is None:
        return Refusal(ErrorCode.UNKNOWN_ACCOUNT, f"authorizer {a} has no personal account")
    if f.authorizer is None:
        return Refusal(ErrorCode.UNKNOWN_PERSON, f"authorizer {a} is not known to the accounts service")
    if f.member is None:
        return Refusal(ErrorCode.UNKNOWN_PERSON, f"member {m} is not known to the accounts service")
    acct, rules, mrules = f.account, f.rules or AccountRules(), f.member_rules or AccountRules()
    if acct.insutype != EMPLOYEE:
        return Refusal(ErrorCode.AUTHORIZER_NOT_EMPLOYEE, f"{a} is not employee-insured (职工医保)")
    if acct.status != "normal":
        return Refusal(ErrorCode.ACCOUNT_NOT_NORMAL, f"{a}'s account is {acct.status}")
    if not f.authorizer.evoucher_active or not f.member.evoucher_active:
        who = a if not f.authorizer.evoucher_active else m
        return Refusal(ErrorCode.EVOUCHER_INACTIVE, f"{who} has not activated the 医保电子凭证")
    if not rules.mutual_aid_open or not mrules.mutual_aid_open:
        closed = acct.region if not rules.mutual_aid_open else f.member.region
        return Refusal(ErrorCode.SERVICE_NOT_OPEN, f"family mutual aid is not open in region {closed}")
    if acct.region[:2] != f.member.region[:2] and not (rules.cross_province and mrules.cross_province):
        return Refusal(ErrorCode.CROSS_PROVINCE_NOT_ALLOWED,
                       f"sharing between {acct.region} and {f.member.region} (another province) is not allowed")
    if f.relation not in rules.relations:
        return Refusal(ErrorCode.RELATION_NOT_ALLOWED, f"relation {f.relation} is not allowed in {acct.region} "
                                                       f"(allowed: {', '.join(rules.relations)})")
    if rules.min_authorizer_balance is not None and acct.balance_fen < to_fen(rules.min_authorizer_balance):
        return Refusal(ErrorCode.BALANCE_TOO_LOW, f"the authorizer's balance is below {rules.min_authorizer_balance}")
    if f.already_bound:
        return Refusal(ErrorCode.ALREADY_BOUND, f"{m} is already bound to {a}")
    if f.members >= rules.max_members:
        return Refusal(ErrorCode.TOO_MANY_MEMBERS, f"{a} already shares with {f.members} members "
                                                   f"(at most {rules.max_members})")
    if (rules.member_single_authorizer or mrules.member_single_authorizer) and f.member_bound:
        return Refusal(ErrorCode.MEMBER_ALREADY_BOUND, f"{m} is already bound under another authorizer")
    if rules.max_binding_changes_per_year is not None and f.changes >= rules.max_binding_changes_per_year:
        return Refusal(ErrorCode.TOO_MANY_CHANGES, f"{a} made {f.changes} binding changes in {f.year} "
                                                   f"(at most {rules.max_binding_changes_per_year})")
    return None
