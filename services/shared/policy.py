"""Region policies (policies/<admdvs>.yaml): what the pooled fund pays and what the accounts may pay.

Numbers come from public secondary sources; each file names its sources and the date of its numbers.
Amounts are strings with 2 decimals, ratios are decimal strings, exactly as on the wire.
"""
from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

import policies
from contracts.admin import HospLv, Relation
from contracts.base import Ratio
from contracts.money import Money
from contracts.settlement import ItemScope

Category = Literal["pharmacy", "outpatient", "inpatient"]
MED_TYPE_CATEGORY: dict[str, Category] = {"41": "pharmacy", "11": "outpatient", "13": "outpatient",
                                          "14": "outpatient", "21": "inpatient"}
# The `policies` package: the repository's policies/ in an editable install, its installed copy otherwise.
DEFAULT_POLICY_DIR = Path(policies.__file__).resolve().parent


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RatioTable(_Model):
    community: Ratio
    level1: Ratio
    level2: Ratio
    level3: Ratio

    def for_level(self, lv: HospLv) -> Ratio:
        return getattr(self, lv)


class AmountByLevel(_Model):
    community: Money
    level1: Money
    level2: Money
    level3: Money

    def for_level(self, lv: HospLv) -> Money:
        return getattr(self, lv)


# Whose row of a benefit table applies: employees by 在职/退休, residents (居民医保) by age group.
ResidentGroup = Literal["child", "adult", "elderly"]
BenefitKey = Literal["employed", "retired", "child", "adult", "elderly"]
EMPLOYEE_KEYS = {"employed", "retired"}
RESIDENT_KEYS = {"child", "adult", "elderly"}


class OutpatientBenefit(_Model):
    pooled: bool = True
    # Yearly deductible (起付线), consumed cumulatively over the year.
    deductible: dict[BenefitKey, Money] = {}
    ratio: dict[BenefitKey, RatioTable] = {}
    annual_cap: Money | None = None  # outpatient pooled-fund cap of its own, where the region has one
    # Pharmacy only: pool a purchase with an external prescription (外配处方, rx_circ_flag "1") like an
    # outpatient visit, with the outpatient tables, deductible and cap; without one it stays personal.
    pooled_with_prescription: bool = False

    def check_keys(self, keys: set[str], where: str) -> None:
        if self.pooled and not self.pooled_with_prescription:  # with a prescription: the outpatient tables
            for name, table in (("deductible", self.deductible), ("ratio", self.ratio)):
                missing = keys - set(table)
                if missing:
                    raise ValueError(f"{where}: a pooled benefit needs {name} for {sorted(missing)}")


class InpatientBenefit(_Model):
    pooled: bool = True
    # Per-stay deductible: the year's first stay, and each later stay.
    deductible_first: AmountByLevel
    deductible_later: AmountByLevel
    ratio: dict[BenefitKey, RatioTable]


class Benefits(_Model):
    pharmacy: OutpatientBenefit = OutpatientBenefit(pooled=False)
    outpatient: OutpatientBenefit
    # 门诊慢特病 (med_type 14, e.g. dialysis) where the scheme pays it apart from ordinary outpatient pooling:
    # its own deductible (counted with the outpatient one) and ratios; its payments count toward the annual cap,
    # not the outpatient cap. Absent: the outpatient table.
    chronic: OutpatientBenefit | None = None
    inpatient: InpatientBenefit
    annual_cap: Money | None = None  # this scheme's 封顶线 where it differs from the region's annual_cap

    def check_keys(self, keys: set[str], where: str) -> None:
        self.pharmacy.check_keys(keys, f"{where}.pharmacy")
        self.outpatient.check_keys(keys, f"{where}.outpatient")
        if self.chronic is not None:
            self.chronic.check_keys(keys, f"{where}.chronic")
        missing = keys - set(self.inpatient.ratio) if self.inpatient.pooled else set()
        if missing:
            raise ValueError(f"{where}.inpatient: a pooled benefit needs ratio for {sorted(missing)}")


class LargeAmountFund(_Model):
    """330100 大额医疗费用补助 (employees): above the basic fund's annual cap it pays `ratio` of the in-scope
    amount the basic fund no longer covers, up to its own yearly cap."""

    ratio: Ratio
    annual_cap: Money


class CriticalIllnessFund(_Model):
    """390200 大病保险 (residents): once the year's in-scope personal burden (合规个人负担: in-scope amount
    minus the basic fund's payment) passes `threshold`, it pays `ratio` of the burden above it."""

    threshold: Money
    ratio: Ratio
    annual_cap: Money | None = None
    categories: list[Category] = ["outpatient", "inpatient"]


class MedicalAssistanceFund(_Model):
    """610100 医疗救助 for people registered low-income (特困/低保): `ratio` of what is left of the in-scope
    personal burden after the insurance funds, up to a yearly cap."""

    ratio: Ratio
    annual_cap: Money
    categories: list[Category] = ["outpatient", "inpatient"]


class Funds(_Model):
    """The funds above the basic pooled fund, each a line of setldetail; absent: the region does not pay it."""

    large_amount: LargeAmountFund | None = None
    critical_illness: CriticalIllnessFund | None = None
    medical_assistance: MedicalAssistanceFund | None = None


class CatalogItem(_Model):
    code: str
    name: str = ""
    lv: Literal["01", "02", "03"]
    selfpay_prop: Ratio = Decimal("0")
    pric_uplmt_amt: Money | None = None
    scope: ItemScope = "medical"


class WalletRules(_Model):
    """医保钱包 (cross-province sharing through a relative's wallet)."""

    max_transfers_per_day: int = 3
    max_amount: Money = Decimal("2000.00")
    quiet_from: str = Field(default="22:00", pattern=r"^\d{2}:\d{2}$")  # no transfers from …
    quiet_to: str = Field(default="06:00", pattern=r"^\d{2}:\d{2}$")  # … until
    return_at: str = Field(default="06:00", pattern=r"^\d{2}:\d{2}$")  # unclaimed: back to the sender next day


class AccountRules(_Model):
    # May the personal account pay 全自费 and 超限价 amounts? (regions differ)
    pay_fulamt_ownpay: bool = True
    # Which settlements family mutual aid (共济) may pay.
    mutual_aid_scope: list[Category] = ["pharmacy", "outpatient", "inpatient"]
    # Daily limit of personal-account payment per person and channel (e.g. online drug purchase).
    channel_daily_limit: dict[Literal["offline", "online"], Money] = {}
    # --- family mutual aid (家庭共济) rules ---
    mutual_aid_open: bool = True  # the region runs the service
    relations: list[Relation] = ["spouse", "parent", "child"]  # 直系; 近亲属 adds sibling, grandparent, grandchild
    max_members: int = Field(default=5, ge=1)  # per authorizer
    member_single_authorizer: bool = False  # a member may be bound under one authorizer only
    max_binding_changes_per_year: int | None = None  # binds + unbinds by one authorizer in an insurance year
    min_authorizer_balance: Money | None = None
    cross_province: bool = True  # may an authorizer here share with a member insured in another province?
    reorder_allowed: bool = True
    mutual_aid_annual_cap: Money | None = None  # what one authorizer may share in an insurance year
    # Which pocket may be shared: everything, or only the prior-year account (历年账户, Shanghai). Where
    # it is "prior_year", the current-year account (当年账户) rolls over into it when the insurance year turns.
    shared_pocket: Literal["all", "prior_year"] = "all"
    pilots: list[Literal["vaccination", "health_check"]] = []  # pilot scopes the accounts may pay
    resident_contribution: bool = True  # 共济缴费: pay a bound member's 居民医保 contribution
    # Does a G141 contribution count toward the binding's year cap and the regional annual mutual-aid cap?
    contribution_counts_toward_caps: bool = False
    # Settlements where the patient's own current-year account (当年账户) pays before the prior-year one
    # (历年账户); elsewhere the prior-year account goes first (Shanghai: current-year first only in 门急诊).
    current_year_first: list[Category] = ["pharmacy", "outpatient", "inpatient"]
    proxy_max_members: int = Field(default=5, ge=1)  # 亲情账户
    wallet: WalletRules = WalletRules()


class RegionPolicy(_Model):
    admdvs: str = Field(pattern=r"^\d{6}$")
    name: str
    as_of: str
    sources: list[str] = Field(min_length=1)
    year_start_month: int = Field(default=1, ge=1, le=12)
    benefits: Benefits  # 职工医保 (310), rows employed / retired
    # 居民医保 (390), rows child / adult / elderly. Absent: residents get the employee tables (with a note).
    resident_benefits: Benefits | None = None
    annual_cap: Money  # 封顶线: all pooled-fund payments of one person in one year
    funds: Funds = Funds()
    accounts: AccountRules = AccountRules()
    catalog: list[CatalogItem] = []
    # A code not in the catalog: trust the line's declared class ("declared") or make it 全自费.
    unknown_items: Literal["declared", "full_selfpay"] = "declared"

    _index: dict[str, CatalogItem] = PrivateAttr(default_factory=dict)

    def model_post_init(self, __context: object) -> None:
        self.benefits.check_keys(EMPLOYEE_KEYS, "benefits")
        if self.resident_benefits is not None:
            self.resident_benefits.check_keys(RESIDENT_KEYS, "resident_benefits")
        self._index.update({item.code: item for item in self.catalog})

    def catalog_item(self, code: str) -> CatalogItem | None:
        return self._index.get(code)


def policy_dir() -> Path:
    return Path(os.environ.get("GONGJI_POLICY_DIR", DEFAULT_POLICY_DIR))


def load_policy(path: Path) -> RegionPolicy:
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    policy = RegionPolicy.model_validate(data)
    if path.stem != policy.admdvs:
        raise ValueError(f"{path}: file name must be <admdvs>.yaml, admdvs is {policy.admdvs}")
    return policy


def load_policies(directory: Path | None = None) -> dict[str, RegionPolicy]:
    directory = directory or policy_dir()
    return {p.stem: load_policy(p) for p in sorted(directory.glob("*.yaml"))}
