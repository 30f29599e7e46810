"""The scenario file's model (pydantic): population, generator, timeline, expectations, faults."""
from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from contracts.admin import HospLv, PsnType
from contracts.base import BizTime, FixmedinsCode, PsnNo, Quantity, Ratio
from contracts.money import Money

Amount = Annotated[Money, Field(ge=0)]  # a balance, cap or price: never negative (refused with the file's line)
from contracts.pos import OutcomeStatus
from contracts.settlement import CertType, ChrgitmLv, Insutype, MedType, SetlChannel

VisitKind = Literal["pharmacy", "online", "outpatient", "emergency", "chronic", "inpatient"]
# kind → (med_type, channel). Online drug purchase is a pharmacy purchase (41) on the "online" channel.
KINDS: dict[str, tuple[str, str]] = {"pharmacy": ("41", "offline"), "online": ("41", "online"),
                                     "outpatient": ("11", "offline"), "emergency": ("13", "offline"),
                                     "chronic": ("14", "offline"), "inpatient": ("21", "offline")}
MONEY_FIELDS = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
                "act_pay_dedc", "hifp_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay", "acct_mulaid_pay",
                "psn_cash_pay", "balc")
TOTAL_FIELDS = ("medfee_sumamt", "hifp_pay", "fund_pay_sumamt", "acct_pay", "acct_mulaid_pay", "psn_cash_pay")
CUMULATIVE_FIELDS = {"outpatient_dedc": "money", "inpatient_dedc": "money", "hifp_pay": "money",
                     "outpatient_hifp_pay": "money", "inpatient_stays": "int", "settlements": "int",
                     "large_amount_pay": "money", "crit_burden": "money", "crit_pay": "money", "assist_pay": "money"}
STEP_NAME = r"^[A-Za-z0-9_.-]{1,60}$"


def _admdvs(value: Any) -> Any:
    """YAML reads 330100 (unquoted) as an int: accept it as the 6-digit code it obviously is."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:06d}"
    if not isinstance(value, str) or not re.fullmatch(r"\d{6}", value):
        raise ValueError(f"a region code (admdvs) is 6 digits, e.g. \"330100\"; got {value!r}")
    return value


Admdvs = Annotated[str, BeforeValidator(_admdvs), WithJsonSchema(  # published: schemas/scenario.schema.json
    {"anyOf": [{"type": "string", "pattern": r"^\d{6}$"}, {"type": "integer", "minimum": 0, "maximum": 999999}],
     "description": "region code (admdvs), 6 digits, e.g. \"330100\""})]


def _decimal(value: Any) -> Decimal:
    if isinstance(value, (float, bool)):
        raise ValueError("write numbers that are not counts as decimal strings, e.g. \"0.85\" (float refused)")
    try:
        dec = Decimal(str(value))
    except Exception:
        raise ValueError(f"not a decimal number: {value!r}") from None
    if not dec.is_finite() or dec < 0:
        raise ValueError("must be a finite number >= 0")
    return dec


Dec = Annotated[Decimal, BeforeValidator(_decimal)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- population -----------------------------------------------------------------------------------
class Facility(Model):
    code: FixmedinsCode
    name: str = ""
    type: Literal["pharmacy", "hospital"]
    level: HospLv = "community"
    region: Admdvs


class Person(Model):
    psn_no: PsnNo
    name: str = ""
    region: Admdvs
    insutype: Insutype = "310"
    psn_type: PsnType = "employed"
    balance: Amount | None = None  # null: no personal account (e.g. resident-insured 居民医保)
    prior_balance: Amount | None = None  # 历年账户 carried over, where the region keeps it apart (Shanghai)
    evoucher: bool = True  # 医保电子凭证 activated
    resident_group: Literal["child", "adult", "elderly"] | None = None  # 居民医保 benefit row (default from psn_type)
    low_income: bool = False  # 特困/低保: 医疗救助 (610100) where the region pays it


class Family(Model):
    name: str = Field(pattern=STEP_NAME)
    members: list[PsnNo] = Field(min_length=1)


Relation = Literal["spouse", "parent", "child", "sibling", "grandparent", "grandchild"]


class BindingSpec(Model):
    name: str | None = Field(default=None, pattern=STEP_NAME)
    authorizer: PsnNo
    member: PsnNo
    relation: Relation = "child"
    rank: int = Field(default=1, ge=1, le=99)
    day_cap: Amount | None = None
    month_cap: Amount | None = None
    year_cap: Amount | None = None
    verify: dict[str, Any] | None = None  # identity check; default {method: face, passed: true}


# ---- generator -------------------------------------------------------------------------------------
class MoneyDist(Model):
    """A lognormal amount: median, spread (sigma of the log), clipped to [min, max]; zero_share of draws is 0."""

    median: Money
    spread: Dec = Decimal("0.8")
    min: Money = Decimal("0.00")
    max: Money | None = None
    zero_share: Dec = Decimal("0")


Shape = Literal["single", "couple", "couple_with_child", "retirees", "three_generations", "relative_elsewhere"]


class Traffic(Model):
    start: date
    days: int = Field(default=30, ge=1, le=366)
    visits_per_person: Dec = Decimal("1.0")  # mean visits per person over the period (Poisson)
    mix: dict[VisitKind, int] = {"pharmacy": 45, "outpatient": 32, "online": 10, "emergency": 4, "chronic": 6,
                                 "inpatient": 3}
    bills: dict[VisitKind, MoneyDist] = {}
    reversal_share: Dec = Decimal("0.02")


class Generator(Model):
    families: int = Field(ge=0, le=1_000_000)
    regions: dict[Admdvs, int] = Field(min_length=1)  # weights
    shapes: dict[Shape, int] = {"single": 15, "couple": 20, "couple_with_child": 30, "retirees": 15,
                                "three_generations": 12, "relative_elsewhere": 8}
    balance: dict[PsnType, MoneyDist] = {
        "employed": MoneyDist(median=Decimal("1800.00"), spread=Decimal("0.9"), max=Decimal("60000.00"),
                              zero_share=Decimal("0.05")),
        "retired": MoneyDist(median=Decimal("4000.00"), spread=Decimal("0.7"), max=Decimal("80000.00"),
                             zero_share=Decimal("0.02"))}
    bind_share: Dec = Decimal("0.85")  # families that set up mutual aid
    # Resident-insured (居民医保) members among the working-age and retired ones who could be either; children
    # are always residents. Nationally ~70% of the insured are residents (rural people weigh in), in Beijing and
    # Hangzhou about 20-30% (secondary figures, to verify): these defaults give ~27% of the generated people.
    # low_income_share: residents registered 特困/低保 (医疗救助), ~1% of the generated people.
    resident_share: dict[PsnType, Dec] = {"employed": Decimal("0.25"), "retired": Decimal("0.35")}
    low_income_share: Dec = Decimal("0.04")
    month_caps: list[Money | None] = [None, None, Decimal("500.00"), Decimal("1000.00")]
    facilities_per_region: dict[Literal["pharmacy", "community", "level2", "level3"], int] = {
        "pharmacy": 4, "community": 2, "level2": 1, "level3": 1}
    traffic: Traffic | None = None

    @model_validator(mode="after")
    def _weights(self) -> "Generator":
        for name, weights in (("regions", self.regions), ("shapes", self.shapes)):
            if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError(f"{name}: weights must be >= 0 with a positive sum")
        return self


# ---- timeline ----------------------------------------------------------------------------------------
class Item(Model):
    code: str = Field(min_length=1, max_length=50)
    name: str = ""
    price: Amount
    cnt: Quantity = Decimal("1")
    lv: ChrgitmLv | None = "01"  # declared class; the region catalog overrides it when it lists the code
    prop: Ratio | None = None  # declared selfpay_prop (乙类)
    limit: Amount | None = None  # declared price limit
    scope: str | None = None  # item_scope for unlisted items (medical, vaccination, cosmetic, ...)


class VisitEvent(Model):
    person: PsnNo
    facility: FixmedinsCode
    kind: VisitKind | None = None  # or med_type (+ channel)
    med_type: MedType | None = None
    channel: SetlChannel | None = None
    insutype: Insutype | None = None  # default: the person's
    mdtrtarea: Admdvs | None = None  # 就医地; default: the facility's region
    acct_used: bool = True
    cert_type: CertType = "01"
    presettle: bool = True
    proxy: PsnNo | None = None  # 亲情账户: who presents the patient's e-voucher
    prescription: bool = False  # 外配处方 (rx_circ_flag 1): a pharmacy purchase on a hospital's prescription
    timeout_ms: int = Field(default=30000, ge=1, le=600000)
    items: list[Item] = Field(min_length=1, max_length=500)
    # The national flow a HIS speaks (contracts/pos.py SettleVisit): details over several uploads (2204 / 2301),
    # lines uploaded and then cancelled (2205 / 2302), a visit abandoned after its uploads; `flow: flat` is
    # gongji's one-message shortcut.
    uploads: int = Field(default=1, ge=1, le=20)
    cancel: list[Item] = Field(default=[], max_length=50)
    abandon: bool = False
    flow: Literal["national", "flat"] = "national"

    @model_validator(mode="after")
    def _kind(self) -> "VisitEvent":
        if (self.kind is None) == (self.med_type is None):
            raise ValueError("give exactly one of kind (pharmacy, online, outpatient, emergency, chronic, "
                             "inpatient) or med_type")
        return self

    def med_type_and_channel(self) -> tuple[str, str]:
        if self.kind is not None:
            med, chnl = KINDS[self.kind]
            return med, self.channel or chnl
        assert self.med_type is not None
        return self.med_type, self.channel or "offline"


class ReverseEvent(Model):
    of: str = Field(pattern=STEP_NAME)  # the step whose settlement is reversed
    timeout_ms: int = Field(default=30000, ge=1, le=600000)


class DepositEvent(Model):
    person: PsnNo
    amount: Money
    ref: str = ""


class BindEvent(BindingSpec):
    pass


class AdminEvent(Model):
    """Any G-transaction, so new ones (unbind G112, freeze G113, ...) can be scripted without code changes.
    String values may hold references to earlier results: "${bind_step.auth_id}"."""

    service: Literal["accounts", "bureau", "registry"]
    infno: str = Field(pattern=r"^[0-9A-Z]{4}$")
    input: dict[str, Any] = {}
    region: Admdvs | None = None  # insuplc_admdvs of the envelope; default: the scenario's first region


class CumExpect(Model):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cum_year: int | None = None
    outpatient_dedc: Money | None = None
    inpatient_dedc: Money | None = None
    hifp_pay: Money | None = None
    outpatient_hifp_pay: Money | None = None
    inpatient_stays: int | None = None
    settlements: int | None = None
    large_amount_pay: Money | None = None  # 330100 大额
    crit_burden: Money | None = None  # burden counted toward the 大病 threshold
    crit_pay: Money | None = None  # 390200 大病
    assist_pay: Money | None = None  # 610100 医疗救助


class Expect(Model):
    """What a step must give. Only the keys written are checked. Money as "12.30"."""

    status: OutcomeStatus | None = None
    infcode: Literal[0, -1] | None = None
    err_code: str | None = None
    err_msg_contains: str | None = None
    notes_contain: list[str] | None = None
    mulaid: dict[PsnNo, Money] | None = None  # authorizer → amount of mulaid_detail
    funds: dict[str, Money] | None = None  # fund_pay_type → fund_payamt of setldetail (310100, 330100, ...)
    balances: dict[PsnNo, Money] | None = None  # personal-account balances after the step (G121)
    cumulative: dict[PsnNo, CumExpect] | None = None  # yearly accumulators after the step (5206)
    output: dict[str, Any] | None = None  # admin steps: fields of the reply's output
    medfee_sumamt: Money | None = None
    fulamt_ownpay_amt: Money | None = None
    overlmt_selfpay: Money | None = None
    preselfpay_amt: Money | None = None
    inscp_scp_amt: Money | None = None
    act_pay_dedc: Money | None = None
    hifp_pay: Money | None = None
    fund_pay_sumamt: Money | None = None
    psn_part_amt: Money | None = None
    acct_pay: Money | None = None
    acct_mulaid_pay: Money | None = None
    psn_cash_pay: Money | None = None
    balc: Money | None = None


EVENT_KEYS = ("visit", "reverse", "deposit", "bind", "admin", "check")


class Step(Model):
    name: str | None = Field(default=None, pattern=STEP_NAME)
    at: BizTime | None = None  # default: the previous step's time + 1 minute
    visit: VisitEvent | None = None
    reverse: ReverseEvent | None = None
    deposit: DepositEvent | None = None
    bind: BindEvent | None = None
    admin: AdminEvent | None = None
    check: bool | None = None  # no event: only the expectations (balances, cumulative)
    concurrent: list["Step"] | None = None  # sent together; expect sets of allowed outcomes (expect_one_of)
    expect: Expect | None = None
    expect_one_of: list[Expect] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_event(self) -> "Step":
        given = [k for k in (*EVENT_KEYS, "concurrent") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a step has exactly one of {', '.join((*EVENT_KEYS, 'concurrent'))}; got "
                             f"{', '.join(given) or 'none'}")
        if self.expect is not None and self.expect_one_of is not None:
            raise ValueError("give expect or expect_one_of, not both")
        if self.concurrent is not None and (self.expect is not None or self.expect_one_of is not None):
            raise ValueError("a concurrent group has no expectations of its own: put them on its steps")
        return self

    @property
    def event(self) -> str:
        return next(k for k in (*EVENT_KEYS, "concurrent") if getattr(self, k) is not None)


Step.model_rebuild()


class Final(Model):
    """Global expectations, checked after the whole timeline."""

    visits: int | None = None
    outcomes: dict[OutcomeStatus, int] | None = None
    totals: dict[Literal["medfee_sumamt", "hifp_pay", "fund_pay_sumamt", "acct_pay", "acct_mulaid_pay",
                         "psn_cash_pay"], Money] | None = None
    balances: dict[PsnNo, Money] | None = None
    cumulative: dict[PsnNo, CumExpect] | None = None


# ---- faults ------------------------------------------------------------------------------------------
FaultKind = Literal["kill", "broker_restart", "drop_connections", "duplicate", "delay", "timeout_race", "poison",
                    "broker_node_down"]
FAULT_KINDS: tuple[str, ...] = ("kill", "broker_restart", "drop_connections", "duplicate", "delay", "timeout_race",
                                "poison", "broker_node_down")
Seconds = Annotated[float, Field(ge=0, le=3600)]


class _Triggered(Model):
    """A fault that happens once, during the traffic: after N visit outcomes (× --scale when the scenario has a
    generator, so that it lands at the same point of a reduced run) or at_s seconds after the traffic began."""

    after_settlements: int | None = Field(default=None, ge=1)
    at_s: Seconds | None = None

    @model_validator(mode="after")
    def _one_trigger(self) -> "_Triggered":
        if (self.after_settlements is None) == (self.at_s is None):
            raise ValueError("give exactly one of after_settlements (a count of visit outcomes) or at_s "
                             "(seconds after the traffic began)")
        return self


class KillFault(_Triggered):
    """SIGKILL a worker process, then start it again with the same command after down_s seconds."""

    kind: Literal["kill"]
    service: Literal["bureau", "accounts", "pos"]
    down_s: Seconds = 1.0


class BrokerRestartFault(_Triggered):
    """rabbitmqctl stop_app, down_s seconds, start_app, await_startup (the local broker; not with --external)."""

    kind: Literal["broker_restart"]
    down_s: Seconds = 1.0


class DropConnectionsFault(_Triggered):
    """The broker closes connections (rabbitmqctl): scope run = this run's (the workers' and the runner's),
    all = every connection of the broker (rabbitmqctl close_all_connections)."""

    kind: Literal["drop_connections"]
    scope: Literal["run", "all"] = "run"


class BrokerNodeDownFault(_Triggered):
    """One node of the RabbitMQ cluster the run uses (`gongji cluster up`; its URLs as --amqp-url) stops
    (rabbitmqctl stop_app) for down_s seconds, then starts again. node: which one, 1-based in the order of the
    run's URLs; 1, the default, is the node every client connects to first. The workers fail over to the other
    nodes, the quorum queues elect new leaders there; nothing may be lost."""

    kind: Literal["broker_node_down"]
    node: int = Field(default=1, ge=1, le=9)
    down_s: Seconds = 5.0


class DuplicateFault(Model):
    """Every worker publishes this fraction of its messages twice (GONGJI_CHAOS): consumers must absorb them."""

    kind: Literal["duplicate"]
    fraction: Dec

    @model_validator(mode="after")
    def _fraction(self) -> "DuplicateFault":
        if not 0 < self.fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        return self


class DelayFault(Model):
    """Every worker delays this fraction of its messages by a random 0..max_ms (GONGJI_CHAOS), which reorders
    replies."""

    kind: Literal["delay"]
    fraction: Dec
    max_ms: int = Field(default=400, ge=1, le=60000)

    @model_validator(mode="after")
    def _fraction(self) -> "DelayFault":
        if not 0 < self.fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        return self


class TimeoutRaceFault(Model):
    """This share of the generated visits (chosen by the seed) settle without pre-settlement and with a POS
    timeout of timeout_ms, so that the POS sends 2601 冲正 while the settlement is still in flight. Each ends
    compensated, refused (E_TIMEOUT) or settled; a compensated one leaves nothing behind."""

    kind: Literal["timeout_race"]
    share: Dec
    timeout_ms: int = Field(default=300, ge=1, le=60000)

    @model_validator(mode="after")
    def _share(self) -> "TimeoutRaceFault":
        if not 0 < self.share <= 1:
            raise ValueError("share must be in (0, 1]")
        return self


class PoisonFault(Model):
    """count messages that are no valid message, published straight to the service queues (bureau, accounts
    admin, accounts pay, POS commands in turn), spread over the traffic: each must be dead-lettered with a
    reason, and the workers keep serving."""

    kind: Literal["poison"]
    count: int = Field(ge=1, le=10000)


Fault = Annotated[KillFault | BrokerRestartFault | DropConnectionsFault | DuplicateFault | DelayFault
                  | TimeoutRaceFault | PoisonFault | BrokerNodeDownFault, Field(discriminator="kind")]


class Scenario(Model):
    name: str = Field(pattern=STEP_NAME)
    description: str = ""
    seed: int = 0
    regions: list[Admdvs] = []
    policies: str | None = None  # a directory of policy files, relative to the scenario file
    start: BizTime = Field(default="2026-01-01 08:00:00", validate_default=True)  # population loading time
    facilities: list[Facility] = []
    people: list[Person] = []
    families: list[Family] = []
    bindings: list[BindingSpec] = []
    generator: Generator | None = None
    timeline: list[Step] = []
    final: Final | None = None
    faults: list[Fault] = []  # fault injection during the run (scenarios/faults/)
