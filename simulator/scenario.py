"""Scenario files (YAML): the models, and a loader whose errors name the file, the line and the field.

A scenario is: a seed; the regions it uses and, optionally, a directory of policy files; a population
(explicit facilities, people, families and bindings, and/or a seeded generator); a timeline of steps on a
virtual (business) clock; expectations per step and for the end. `docs` in scenarios/README.md.

    name: child_paid_by_mother
    seed: 1
    regions: ["330100"]
    facilities:
      - {code: PHZ000000001, type: pharmacy, level: community, region: "330100"}
    people:
      - {psn_no: HZ-MOTHER, region: "330100", balance: "50.00"}
      - {psn_no: HZ-CHILD, region: "330100", insutype: "390", balance: null}     # no account of her own
    families:
      - {name: wang, members: [HZ-MOTHER, HZ-CHILD]}
    bindings:
      - {name: mother_child, authorizer: HZ-MOTHER, member: HZ-CHILD, relation: child, day_cap: "200.00"}
    timeline:
      - name: buy
        at: "2026-03-02 10:00:00"
        visit: {person: HZ-CHILD, facility: PHZ000000001, kind: pharmacy,
                items: [{code: XB02, price: "40.00"}, {code: XA01, price: "20.00"}]}
        expect: {status: settled, acct_mulaid_pay: "50.00", psn_cash_pay: "10.00"}

Money is a string with exactly two decimals ("12.30"), ratios are decimal strings ("0.05"): a YAML float
is refused, as on the wire. Business times are 'yyyy-MM-dd HH:mm:ss', Asia/Shanghai.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

from contracts.admin import HospLv, PsnType
from contracts.base import BizTime, FixmedinsCode, PsnNo, Quantity, Ratio
from contracts.money import Money
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
REF = re.compile(r"\$\{([A-Za-z0-9_.-]+?)\.([A-Za-z0-9_]+)\}")


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
    balance: Money | None = None  # null: no personal account (e.g. resident-insured 居民医保)
    prior_balance: Money | None = None  # 历年账户 carried over, where the region keeps it apart (Shanghai)
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
    day_cap: Money | None = None
    month_cap: Money | None = None
    year_cap: Money | None = None
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
    price: Money
    cnt: Quantity = Decimal("1")
    lv: ChrgitmLv | None = "01"  # declared class; the region catalog overrides it when it lists the code
    prop: Ratio | None = None  # declared selfpay_prop (乙类)
    limit: Money | None = None  # declared price limit
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
TRIGGERED_KINDS = ("kill", "broker_restart", "drop_connections", "broker_node_down")
NEEDS_STACK = ("kill", "broker_restart", "duplicate", "delay")  # not possible with --external


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


# ---- loading -------------------------------------------------------------------------------------------
class ScenarioError(Exception):
    """Every problem found, each as 'file:line: field: message'."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


Path_ = tuple[Any, ...]


@dataclass
class LoadedScenario:
    scenario: Scenario
    path: Path
    lines: dict[Path_, int]  # field path → 1-based line
    steps: list["FlatStep"] = field(default_factory=list)
    scale: Decimal = Decimal("1")

    def line_of(self, path: Path_) -> int:
        return _nearest_line(self.lines, path)

    def where(self, path: Path_) -> str:
        return f"{self.path}:{self.line_of(path)}"

    @property
    def policy_dir(self) -> Path | None:
        if self.scenario.policies is None:
            return None
        return (self.path.parent / self.scenario.policies).resolve()


@dataclass
class FlatStep:
    """A step with its resolved name and time; a concurrent group holds its members."""

    index: int
    name: str
    at: datetime
    step: Step
    path: Path_  # where it is in the file
    members: list["FlatStep"] = field(default_factory=list)


def _line_map(node: yaml.Node, path: Path_ = (), out: dict[Path_, int] | None = None) -> dict[Path_, int]:
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value
            out[(*path, k)] = key.start_mark.line + 1
            _line_map(value, (*path, k), out)
            out[(*path, k)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), out)
    return out


def _nearest_line(lines: dict[Path_, int], loc: Path_) -> int:
    """The line of the deepest part of `loc` that exists in the file (pydantic adds model names to locs)."""
    best: Path_ = ()
    cur: Path_ = ()
    for part in loc:
        cand = (*cur, part)
        if cand in lines:
            cur = cand
            best = cur
        elif isinstance(part, str) and part.isdigit() and (*cur, int(part)) in lines:
            cur = (*cur, int(part))
            best = cur
    return lines.get(best, 1)


def _fmt_loc(loc: Path_) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top)"


def load_scenario(path: str | Path, *, scale: Decimal | str | None = None, seed: int | None = None
                  ) -> LoadedScenario:
    """Parse, validate and cross-check a scenario file. `scale` multiplies generator.families (the env
    GONGJI_SCALE is the default); `seed` replaces the file's seed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ScenarioError([f"{path}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict) or node is None:
        raise ScenarioError([f"{path}:1: a scenario is a YAML mapping (name:, seed:, people:, timeline:, ...)"])
    lines = _line_map(node)
    if seed is not None:
        data["seed"] = seed
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if len(loc) > 2 and loc[0] == "faults" and loc[2] in FAULT_KINDS:
                loc = loc[:2] + loc[3:]  # the union's tag (the fault's kind) is no field of the file
            shown = tuple(p for p in loc if (isinstance(p, int) or not p[:1].isupper()) and "[" not in str(p))
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{path}:{_nearest_line(lines, loc)}: {_fmt_loc(shown)}: {msg}")
        raise ScenarioError(problems) from None
    if scale is None:
        scale = os.environ.get("GONGJI_SCALE") or "1"
    try:
        scale_dec = Decimal(str(scale))
        assert scale_dec.is_finite() and scale_dec > 0
    except Exception:
        raise ScenarioError([f"scale must be a number > 0, got {scale!r}"]) from None
    loaded = LoadedScenario(scenario=scenario, path=path, lines=lines, scale=scale_dec)
    problems = _cross_check(loaded)
    if problems:
        raise ScenarioError(problems)
    return loaded


def scaled_families(loaded: LoadedScenario) -> int:
    gen = loaded.scenario.generator
    if gen is None or gen.families == 0:
        return 0
    return max(1, int((Decimal(gen.families) * loaded.scale).to_integral_value()))


def _cross_check(loaded: LoadedScenario) -> list[str]:
    """References between parts: people, facilities, step names, times."""
    sc = loaded.scenario
    problems: list[str] = []

    def bad(path: Path_, msg: str) -> None:
        problems.append(f"{loaded.path}:{loaded.line_of(path)}: {_fmt_loc(path)}: {msg}")

    people = {}
    for i, p in enumerate(sc.people):
        if p.psn_no in people:
            bad(("people", i, "psn_no"), f"{p.psn_no} is listed twice")
        people[p.psn_no] = p
    facilities = {}
    for i, f in enumerate(sc.facilities):
        if f.code in facilities:
            bad(("facilities", i, "code"), f"{f.code} is listed twice")
        facilities[f.code] = f
    regions = set(sc.regions)
    if regions:
        for kind, items in (("people", sc.people), ("facilities", sc.facilities)):
            for i, it in enumerate(items):
                if it.region not in regions:
                    bad((kind, i, "region"), f"region {it.region} is not in regions {sorted(regions)}")
    seen_family: dict[str, str] = {}
    for i, fam in enumerate(sc.families):
        for j, m in enumerate(fam.members):
            if m not in people:
                bad(("families", i, "members", j), f"unknown person {m}")
            elif m in seen_family:
                bad(("families", i, "members", j), f"{m} is already in family {seen_family[m]}")
            seen_family[m] = fam.name
    names: dict[str, str] = {}
    for i, b in enumerate(sc.bindings):
        for role in ("authorizer", "member"):
            if getattr(b, role) not in people:
                bad(("bindings", i, role), f"unknown person {getattr(b, role)}")
        if b.authorizer in people and people[b.authorizer].balance is None:
            bad(("bindings", i, "authorizer"), f"authorizer {b.authorizer} has no personal account (balance: null)")
        if b.name:
            if b.name in names:
                bad(("bindings", i, "name"), f"name {b.name} is used twice")
            names[b.name] = "binding"

    prev = sc.start
    flat: list[FlatStep] = []
    index = 0

    def person_ok(path: Path_, psn: str) -> None:
        if loaded.scenario.generator is None and psn not in people:
            bad(path, f"unknown person {psn}")

    def check_step(step: Step, path: Path_, at: datetime) -> None:
        if step.visit is not None:
            person_ok((*path, "visit", "person"), step.visit.person)
            fac = facilities.get(step.visit.facility)
            if fac is None and loaded.scenario.generator is None:
                bad((*path, "visit", "facility"), f"unknown facility {step.visit.facility}")
            med, _ = step.visit.med_type_and_channel()
            if fac is not None and (fac.type == "pharmacy") != (med == "41"):
                # Allowed on purpose (the bureau refuses it), but most likely a typo: say so unless expected.
                exp = step.expect
                if exp is None or exp.status != "refused":
                    bad((*path, "visit", "facility"), f"a {fac.type} cannot settle med_type {med} "
                                                      f"(expect status: refused if that is the point)")
        if step.deposit is not None:
            person_ok((*path, "deposit", "person"), step.deposit.person)
        if step.bind is not None:
            person_ok((*path, "bind", "authorizer"), step.bind.authorizer)
            person_ok((*path, "bind", "member"), step.bind.member)
        if step.reverse is not None:
            target = names.get(step.reverse.of)
            if target is None:
                bad((*path, "reverse", "of"), f"no earlier step named {step.reverse.of}")
            elif target != "visit":
                bad((*path, "reverse", "of"), f"step {step.reverse.of} is a {target}, not a visit")
        for key in ("expect",):
            exp = getattr(step, key)
            if exp is not None:
                for psn in list(exp.balances or {}) + list(exp.cumulative or {}):
                    person_ok((*path, key), psn)
        for k, exp in enumerate(step.expect_one_of or []):
            for psn in list(exp.balances or {}) + list(exp.cumulative or {}):
                person_ok((*path, "expect_one_of", k), psn)

    for i, step in enumerate(sc.timeline):
        at = step.at or prev + timedelta(minutes=1)
        if at < prev:
            bad(("timeline", i, "at"), f"time goes backwards ({at:%Y-%m-%d %H:%M:%S} is before "
                                       f"{prev:%Y-%m-%d %H:%M:%S}); the virtual clock only moves forward")
        name = step.name or f"step{i + 1}"
        fs = FlatStep(index=index, name=name, at=at, step=step, path=("timeline", i))
        index += 1
        if step.concurrent is not None:
            member_names = []
            for j, sub in enumerate(step.concurrent):
                spath = ("timeline", i, "concurrent", j)
                if sub.concurrent is not None:
                    bad(spath, "concurrent groups do not nest")
                    continue
                if sub.reverse is not None and sub.reverse.of in member_names:
                    bad((*spath, "reverse", "of"), "a step cannot reverse a visit of its own concurrent group")
                sub_at = sub.at or at
                if sub_at < prev:
                    bad((*spath, "at"), "time goes backwards")
                check_step(sub, spath, sub_at)
                sname = sub.name or f"{name}.{j + 1}"
                fs.members.append(FlatStep(index=index, name=sname, at=sub_at, step=sub, path=spath))
                index += 1
                member_names.append(sname)
            for m in fs.members:
                if m.name in names:
                    bad((*m.path, "name"), f"step name {m.name} is used twice")
                names[m.name] = m.step.event
            at = max([at] + [m.at for m in fs.members])
        else:
            check_step(step, ("timeline", i), at)
        if name in names:
            bad(("timeline", i, "name"), f"step name {name} is used twice")
        names[name] = step.event
        prev = at
        flat.append(fs)
    if sc.final is not None:
        for psn in list(sc.final.balances or {}) + list(sc.final.cumulative or {}):
            person_ok(("final",), psn)
    gen = sc.generator
    if gen is not None and regions:
        for r in gen.regions:
            if r not in regions:
                bad(("generator", "regions"), f"region {r} is not in regions {sorted(regions)}")
    if gen is not None and any(p.psn_no.startswith("G") and p.psn_no[1:6].isdigit() for p in sc.people):
        bad(("people",), "psn_no values like G00001-1 are reserved for generated people")
    seen_kinds: dict[str, int] = {}
    for i, fault in enumerate(sc.faults):
        if fault.kind in ("duplicate", "delay", "timeout_race", "poison") and fault.kind in seen_kinds:
            bad(("faults", i, "kind"), f"a second {fault.kind} fault (faults[{seen_kinds[fault.kind]}] is one): "
                                       f"give it once")
        seen_kinds.setdefault(fault.kind, i)
        if fault.kind == "timeout_race" and (gen is None or gen.traffic is None):
            bad(("faults", i, "kind"), "timeout_race applies to generated visits: the scenario needs "
                                       "generator.traffic (a timeline visit can set its own timeout_ms)")
    loaded.steps = flat
    return problems


def fault_threshold(loaded: LoadedScenario, after_settlements: int) -> int:
    """after_settlements of a fault, × --scale when the scenario has a generator (the traffic shrinks with it)."""
    if loaded.scenario.generator is None:
        return after_settlements
    return max(1, int((Decimal(after_settlements) * loaded.scale).to_integral_value()))


def all_regions(loaded: LoadedScenario) -> list[str]:
    sc = loaded.scenario
    found = set(sc.regions) | {p.region for p in sc.people} | {f.region for f in sc.facilities}
    if sc.generator is not None:
        found |= set(sc.generator.regions)
    return sorted(found)


def references(value: Any) -> list[tuple[str, str]]:
    """The ${step.field} references inside a value (strings, lists, dicts)."""
    if isinstance(value, str):
        return REF.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def substitute(value: Any, results: dict[str, dict[str, Any]]) -> Any:
    """Replace ${step.field} by that step's result field. A string that is exactly one reference takes the
    value as it is (a number stays a number)."""
    if isinstance(value, str):
        whole = REF.fullmatch(value)
        if whole:
            return _lookup(results, whole.group(1), whole.group(2))
        return REF.sub(lambda m: str(_lookup(results, m.group(1), m.group(2))), value)
    if isinstance(value, dict):
        return {k: substitute(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, results) for v in value]
    return value


class UnresolvedReference(Exception):
    pass


def _lookup(results: dict[str, dict[str, Any]], step: str, fieldname: str) -> Any:
    if step not in results:
        raise UnresolvedReference(f"${{{step}.{fieldname}}}: no result of a step or binding named {step} (yet)")
    if fieldname not in results[step]:
        raise UnresolvedReference(f"${{{step}.{fieldname}}}: {step} has no field {fieldname} "
                                  f"(it has {', '.join(sorted(results[step])) or 'nothing'})")
    return results[step][fieldname]
