"""gongji's own transactions (infno starting with G): loading facilities, people, accounts, bindings.

They travel in the same envelope as the national ones, so they share idempotency and error handling.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field

from .base import Admdvs, FixmedinsCode, PsnNo, ShortText, Strict
from .money import Money
from .settlement import Insutype

HospLv = Literal["community", "level1", "level2", "level3"]
PsnType = Literal["employed", "retired"]


class RegisterFacility(Strict):
    """G001 → every bureau: a designated pharmacy or hospital and its level."""

    fixmedins_code: FixmedinsCode
    fixmedins_name: ShortText
    fixmedins_type: Literal["pharmacy", "hospital"]
    hosp_lv: HospLv = "community"
    admdvs: Admdvs


class RegisterPerson(Strict):
    """G002 → the bureau of the person's insured region."""

    psn_no: PsnNo
    psn_name: ShortText
    insutype: Insutype
    psn_type: PsnType
    insuplc_admdvs: Admdvs
    # 居民医保 (390) benefit row: child (中小学生/婴幼儿), adult, elderly (老年居民); default from psn_type.
    resident_group: Literal["child", "adult", "elderly"] | None = None
    # 特困/低保 (national 人员类别 of assisted people): 医疗救助 (610100) pays where the region runs it.
    low_income: bool = False


class RegisterPersons(Strict):
    """G003 → the bureau of one region: many people at once (population loading)."""

    persons: list[RegisterPerson] = Field(min_length=1, max_length=5000)


Relation = Literal["spouse", "parent", "child", "sibling", "grandparent", "grandchild"]


class Verify(Strict):
    """Identity check: an SMS code from G110, or the token of a face check the accounts service recorded (G109).
    A bare claim ({"method": "face", "passed": true}) proves nothing and is refused for a binding (G111)."""

    method: Literal["sms", "face"]
    code: str | None = Field(default=None, max_length=12)
    passed: bool | None = None
    token: str | None = Field(default=None, max_length=64)


class FaceCheck(Strict):
    """G109 → accounts: the result of a face check of the person (人脸识别, simulated: the caller plays the
    device). A passed check is recorded and answered with a one-time token, valid 5 minutes, that a G111 of
    that person presents as its identity check."""

    psn_no: PsnNo
    passed: bool


class OpenAccount(Strict):
    """G101 → accounts: an employee personal account with its opening contribution."""

    psn_no: PsnNo
    insuplc_admdvs: Admdvs
    insutype: Insutype = "310"
    opening_balc: Money
    prior_balc: Money = Decimal("0.00")  # 历年账户 carried over, where the region keeps it apart
    evoucher_active: bool = True  # 医保电子凭证 activated


class RegisterHolder(Strict):
    """G104 → accounts: a person without a personal account (e.g. resident-insured), so that he or she can
    be a family member, receive wallet transfers, or be served through 亲情账户."""

    psn_no: PsnNo
    insuplc_admdvs: Admdvs
    insutype: Insutype = "390"
    evoucher_active: bool = True


class OpenAccounts(Strict):
    """G103 → accounts: many accounts at once (population loading); existing ones are left as they are."""

    accounts: list[OpenAccount] = Field(min_length=1, max_length=5000)


class Deposit(Strict):
    """G102 → accounts: a contribution credited to a personal account (划入)."""

    psn_no: PsnNo
    amount: Money
    ref: ShortText = ""


class AccountStatus(Strict):
    """G105 → accounts: an account's status (e.g. suspended when contributions stop: 暂停)."""

    psn_no: PsnNo
    status: Literal["normal", "suspended", "closed"]


class RequestCode(Strict):
    """G110 → accounts: send an SMS verification code (simulated: the reply carries it), valid 5 minutes."""

    psn_no: PsnNo


class Bind(Strict):
    """G111 → accounts: the authorizer lets the member spend the authorizer's account (家庭共济).
    `relation` is what the member is to the authorizer."""

    authorizer_psn_no: PsnNo
    member_psn_no: PsnNo
    relation: Relation
    rank: int = Field(default=1, ge=1, le=99)
    day_cap: Money | None = None
    month_cap: Money | None = None
    year_cap: Money | None = None
    verify: Verify | None = None


class Unbind(Strict):
    """G112: either party ends a binding; it takes effect at once."""

    auth_id: str = Field(min_length=1, max_length=40)
    requester_psn_no: PsnNo


class Freeze(Strict):
    """G113 freeze / G114 unfreeze: the authorizer stops (or resumes) sharing, one binding or all of them."""

    authorizer_psn_no: PsnNo
    auth_id: str | None = Field(default=None, max_length=40)


class Reorder(Strict):
    """G115: the member sets the order in which his or her authorizers pay."""

    member_psn_no: PsnNo
    auth_ids: list[str] = Field(min_length=1, max_length=20)


class ChangeCaps(Strict):
    """G116: the authorizer changes a binding's caps (null removes a cap)."""

    authorizer_psn_no: PsnNo
    auth_id: str = Field(min_length=1, max_length=40)
    day_cap: Money | None = None
    month_cap: Money | None = None
    year_cap: Money | None = None


class ListBindings(Strict):
    """G117: a person's bindings, as authorizer and as member."""

    psn_no: PsnNo


class MemberCosts(Strict):
    """G118: a member's medical costs and mutual-aid spending in an insurance year; the member or any of
    his or her authorizers may ask."""

    requester_psn_no: PsnNo
    member_psn_no: PsnNo
    year: int | None = Field(default=None, ge=1990, le=2200)


class TransactionRecords(Strict):
    """G119: a person's account movements (个人账户变动明细), oldest first."""

    psn_no: PsnNo
    limit: int = Field(default=200, ge=1, le=5000)


class WalletTransfer(Strict):
    """G131 跨省共济: the authorizer moves money to a near relative's 医保钱包 in another province."""

    from_psn_no: PsnNo
    to_psn_no: PsnNo
    relation: Relation
    amount: Money
    verify: Verify | None = None


class WalletClaim(Strict):
    """G132: the relative accepts a transfer before it returns (06:00 the next day)."""

    to_psn_no: PsnNo
    transfer_id: str = Field(min_length=1, max_length=40)


class ResidentContribution(Strict):
    """G141 共济缴费: an authorizer pays a bound member's resident-insurance (居民医保) contribution."""

    authorizer_psn_no: PsnNo
    member_psn_no: PsnNo
    amount: Money
    year: int = Field(ge=1990, le=2200)


class Proxy(Strict):
    """G151 add / G152 remove: 亲情账户 — the proxy may present the member's e-voucher; the member's own
    account pays, no money moves between people."""

    proxy_psn_no: PsnNo
    member_psn_no: PsnNo
    relation: Relation
    verify: Verify | None = None


class AccountQuery(Strict):
    """G121 → accounts: balance, ledger balance and bindings of one person."""

    psn_no: PsnNo


class AuditQuery(Strict):
    """G199 → a service: its own consistency figures (ledger sums, balances vs ledger, usage).

    scope "items": the detail for reconciliation item by item (like 3202 对明细账): the bureau's settlements
    or the accounts service's payments by setl_id, a page of at most `limit` after the setl_id `after`,
    only for the people insured in `regions` (all when empty)."""

    scope: Literal["all", "items"] = "all"
    after: str = Field(default="", max_length=64)
    limit: int = Field(default=5000, ge=1, le=5000)
    regions: list[str] = Field(default_factory=list, max_length=64)
