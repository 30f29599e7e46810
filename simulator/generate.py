"""The seeded population and traffic generator: N families of realistic shapes, their balances, bindings,
and a period of visits. Everything comes from `random.Random(seed)` (never the global random, never the
clock), so one scenario and one seed always give the same population and the same visits."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

from contracts.base import SHANGHAI
from contracts.money import from_fen, line_total, round_fen, to_fen

from .scenario.loader import LoadedScenario, scaled_families
from .scenario.model import BindingSpec, Facility, Generator, Item, MoneyDist, Person

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国玉兰红梅志强海燕小雨欣怡子涵浩然思远"

DEFAULT_BILLS: dict[str, MoneyDist] = {
    "pharmacy": MoneyDist(median=Decimal("80.00"), spread=Decimal("0.8"), min=Decimal("5.00"), max=Decimal("2000.00")),
    "online": MoneyDist(median=Decimal("150.00"), spread=Decimal("0.7"), min=Decimal("10.00"),
                        max=Decimal("3000.00")),
    "outpatient": MoneyDist(median=Decimal("300.00"), spread=Decimal("0.9"), min=Decimal("20.00"),
                            max=Decimal("8000.00")),
    "emergency": MoneyDist(median=Decimal("600.00"), spread=Decimal("0.8"), min=Decimal("50.00"),
                           max=Decimal("10000.00")),
    "chronic": MoneyDist(median=Decimal("500.00"), spread=Decimal("0.6"), min=Decimal("50.00"),
                         max=Decimal("5000.00")),
    "inpatient": MoneyDist(median=Decimal("12000.00"), spread=Decimal("0.8"), min=Decimal("1500.00"),
                           max=Decimal("300000.00")),
}
# (code, class, selfpay_prop, weight). XA01/XB02/XC03 are in the Hangzhou sample catalog; the others are
# declared by the POS (unknown_items: declared).
LINES: dict[str, list[tuple[str, str, str | None, int]]] = {
    "drug": [("XA01", "01", None, 5), ("XB02", "02", "0.05", 4), ("DRUG-B10", "02", "0.10", 2),
             ("XC03", "03", None, 1)],
    "clinic": [("EXAM", "01", None, 5), ("LAB", "01", None, 4), ("DRUG-B10", "02", "0.10", 3),
               ("SELF-PAY", "03", None, 1)],
    "ward": [("BED", "01", None, 3), ("SURG", "01", None, 3), ("DRUG-B10", "02", "0.10", 3),
             ("IMPORTED", "03", None, 1)],
}
FACILITY_LETTER = {"pharmacy": "P", "community": "C", "level2": "S", "level3": "T"}


@dataclass
class GenVisit:
    id: str
    family: str
    psn_no: str
    facility: str
    kind: str
    at: datetime
    items: list[Item] = field(default_factory=list)
    reverse_of: str | None = None  # a reversal of that generated visit


@dataclass
class Population:
    facilities: list[Facility] = field(default_factory=list)
    people: list[Person] = field(default_factory=list)
    families: dict[str, list[str]] = field(default_factory=dict)
    bindings: list[BindingSpec] = field(default_factory=list)
    visits: dict[str, list[GenVisit]] = field(default_factory=dict)  # family → its visits in time order

    @property
    def visit_count(self) -> int:
        return sum(1 for vs in self.visits.values() for v in vs if v.reverse_of is None)

    @property
    def reversal_count(self) -> int:
        return sum(1 for vs in self.visits.values() for v in vs if v.reverse_of is not None)


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    keys = sorted(k for k, w in weights.items() if w > 0)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def draw_fen(rng: random.Random, dist: MoneyDist) -> int:
    if dist.zero_share > 0 and rng.random() < float(dist.zero_share):
        return 0
    value = rng.lognormvariate(math.log(float(dist.median)), float(dist.spread))
    fen = round_fen(Decimal(repr(value)) * 100)
    fen = max(fen, to_fen(dist.min))
    if dist.max is not None:
        fen = min(fen, to_fen(dist.max))
    return fen


def _poisson(rng: random.Random, mean: float) -> int:
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _name(rng: random.Random, surname: str | None = None) -> str:
    return (surname or rng.choice(SURNAMES)) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))


def generate(loaded: LoadedScenario, policies: dict[str, Any] | None = None) -> Population:
    """policies (admdvs → RegionPolicy): generated bindings then follow each region's mutual-aid rules
    (relations, members per authorizer, one authorizer per member, minimum balance, cross-province)."""
    gen = loaded.scenario.generator
    pop = Population()
    if gen is None:
        return pop
    rng = random.Random(loaded.scenario.seed)
    regions = sorted(gen.regions)
    _facilities(gen, regions, pop)
    n = scaled_families(loaded)
    for f in range(1, n + 1):
        _family(rng, gen, regions, f, pop, policies or {})
    if gen.traffic is not None:
        _traffic(rng, gen, pop)
    return pop


def _facilities(gen: Generator, regions: list[str], pop: Population) -> None:
    for region in regions:
        for kind in ("pharmacy", "community", "level2", "level3"):
            for i in range(1, gen.facilities_per_region.get(kind, 0) + 1):  # type: ignore[call-overload]
                code = f"G{FACILITY_LETTER[kind]}{region}{i:04d}"
                pop.facilities.append(Facility(
                    code=code, name=f"{region} {'药房' if kind == 'pharmacy' else '医院'} {kind} {i}",
                    type="pharmacy" if kind == "pharmacy" else "hospital",
                    level="community" if kind == "pharmacy" else kind, region=region))  # type: ignore[arg-type]


def _family(rng: random.Random, gen: Generator, regions: list[str], f: int, pop: Population,
            policies: dict[str, Any]) -> None:
    shape = _pick(rng, gen.shapes)  # type: ignore[arg-type]
    region = _pick(rng, gen.regions)
    surname = rng.choice(SURNAMES)
    fam = f"F{f:06d}"
    members: list[Person] = []

    def add(psn_type: str, insutype: str = "310", *, account: bool = True, where: str | None = None,
            own_surname: bool = True, child: bool = False) -> Person:
        psn_no = f"G{f:06d}-{len(members) + 1}"
        bal = from_fen(draw_fen(rng, gen.balance[psn_type])) if account else None  # type: ignore[index]
        extra: dict[str, Any] = {}
        if insutype == "390":  # 居民医保: the benefit row, and whether 医疗救助 helps
            extra["resident_group"] = "child" if child else "elderly" if psn_type == "retired" else "adult"
            extra["low_income"] = rng.random() < float(gen.low_income_share)
        p = Person(psn_no=psn_no, name=_name(rng, surname if own_surname else None), region=where or region,
                   insutype=insutype, psn_type=psn_type, balance=bal, **extra)  # type: ignore[arg-type]
        members.append(p)
        return p

    def either(psn_type: str, **kw: Any) -> Person:
        """A member who may be employee- or resident-insured (resident_share), the latter without an account."""
        if rng.random() < float(gen.resident_share.get(psn_type, 0)):  # type: ignore[call-overload]
            return add(psn_type, "390", account=False, **kw)
        return add(psn_type, **kw)

    bindings: list[tuple[Person, Person, str]] = []
    if shape == "single":
        add("employed")
    elif shape == "couple":
        a, b = add("employed"), either("employed", own_surname=False)
        bindings.append((a, b, "spouse"))
    elif shape == "couple_with_child":
        a, b = add("employed"), either("employed", own_surname=False)
        c = add("employed", "390", account=False, child=True)
        bindings += [(a, c, "child"), (b, c, "child")]
    elif shape == "retirees":
        a, b = add("retired"), either("retired", own_surname=False)
        bindings.append((a, b, "spouse"))
    elif shape == "three_generations":
        a, b = add("employed"), either("employed", own_surname=False)
        c = add("employed", "390", account=False, child=True)
        d_insutype = "310" if rng.random() < 0.6 else "390"
        d = add("retired", d_insutype, account=d_insutype == "310")
        bindings += [(a, c, "child"), (b, c, "child"), (a, d, "parent")]
    else:  # relative_elsewhere: a couple, and a retired parent insured in another province (no direct sharing:
        # cross-province help goes through the 医保钱包 wallet, scripted with admin events where it exists)
        a, b = add("employed"), add("employed", own_surname=False)
        others = [r for r in regions if r != region] or [region]
        add("retired", where=rng.choice(others))
        bindings.append((a, b, "spouse"))
    pop.people += members
    pop.families[fam] = [m.psn_no for m in members]
    if bindings and rng.random() < float(gen.bind_share):
        rank: dict[str, int] = {}
        per_auth: dict[str, int] = {}
        for auth, member, relation in bindings:
            if auth.balance is None or not _allowed(auth, member, relation, policies, rank, per_auth):
                continue
            per_auth[auth.psn_no] = per_auth.get(auth.psn_no, 0) + 1
            rank[member.psn_no] = rank.get(member.psn_no, 0) + 1
            cap = rng.choice(gen.month_caps) if gen.month_caps else None
            pop.bindings.append(BindingSpec(authorizer=auth.psn_no, member=member.psn_no, relation=relation,
                                            rank=rank[member.psn_no], month_cap=cap))  # type: ignore[arg-type]


def _allowed(auth: Person, member: Person, relation: str, policies: dict[str, Any], bound: dict[str, int],
             per_auth: dict[str, int]) -> bool:
    """Would the accounts service accept this binding under the regions' rules? (no policy: yes)"""
    pa, pm = policies.get(auth.region), policies.get(member.region)
    if pa is None or pm is None:
        return True
    ra, rm = pa.accounts, pm.accounts
    if not (ra.mutual_aid_open and rm.mutual_aid_open) or relation not in ra.relations:
        return False
    if auth.region[:2] != member.region[:2] and not (ra.cross_province and rm.cross_province):
        return False
    if ra.min_authorizer_balance is not None and auth.balance is not None and auth.balance < ra.min_authorizer_balance:
        return False
    if per_auth.get(auth.psn_no, 0) >= min(ra.max_members, ra.max_binding_changes_per_year or 10**6):
        return False
    if (ra.member_single_authorizer or rm.member_single_authorizer) and bound.get(member.psn_no):
        return False
    return True


def _traffic(rng: random.Random, gen: Generator, pop: Population) -> None:
    traffic = gen.traffic
    assert traffic is not None
    bills = {**DEFAULT_BILLS, **traffic.bills}
    by_region: dict[tuple[str, str], list[Facility]] = {}
    for fac in pop.facilities:
        by_region.setdefault((fac.region, "pharmacy" if fac.type == "pharmacy" else fac.level), []).append(fac)
    used: set[tuple[str, int]] = set()  # (facility, epoch second): one visit message stream per second
    first = datetime.combine(traffic.start, time(0, 0), tzinfo=SHANGHAI)
    seq = 0
    mean = float(traffic.visits_per_person)
    person_of = {p.psn_no: p for p in pop.people}
    for fam, members in pop.families.items():
        people = [person_of[m] for m in members]
        out: list[GenVisit] = []
        for person in people:
            for _ in range(_poisson(rng, mean)):
                kind = _pick(rng, traffic.mix)  # type: ignore[arg-type]
                if kind == "online" and person.insutype == "390":
                    kind = "pharmacy"
                fac = _facility_for(rng, kind, person.region, by_region)
                if fac is None:
                    continue
                at = first + timedelta(days=rng.randrange(traffic.days), hours=8,
                                       seconds=rng.randrange(14 * 3600))
                at = _free_second(used, fac.code, at)
                seq += 1
                v = GenVisit(id=f"g{seq:07d}", family=fam, psn_no=person.psn_no, facility=fac.code, kind=kind, at=at,
                             items=_items(rng, kind, draw_fen(rng, bills[kind])))  # type: ignore[index]
                out.append(v)
                if traffic.reversal_share > 0 and rng.random() < float(traffic.reversal_share):
                    seq += 1
                    rat = _free_second(used, fac.code, at + timedelta(minutes=rng.randrange(5, 180)))
                    out.append(GenVisit(id=f"g{seq:07d}", family=fam, psn_no=person.psn_no, facility=fac.code,
                                        kind=kind, at=rat, reverse_of=v.id))
        if out:
            out.sort(key=lambda v: (v.at, v.id))
            pop.visits[fam] = out


def _free_second(used: set[tuple[str, int]], facility: str, at: datetime) -> datetime:
    while (facility, int(at.timestamp())) in used:
        at += timedelta(seconds=1)
    used.add((facility, int(at.timestamp())))
    return at


def _facility_for(rng: random.Random, kind: str, region: str,
                  by_region: dict[tuple[str, str], list[Facility]]) -> Facility | None:
    if kind in ("pharmacy", "online"):
        levels = {"pharmacy": 1}
    elif kind == "inpatient":
        levels = {"level2": 1, "level3": 1}
    else:
        levels = {"community": 5, "level2": 3, "level3": 2}
    levels = {k: w for k, w in levels.items() if by_region.get((region, k))}
    if not levels:
        return None
    return rng.choice(by_region[(region, _pick(rng, levels))])


def _items(rng: random.Random, kind: str, total_fen: int) -> list[Item]:
    pool = LINES["drug" if kind in ("pharmacy", "online") else "ward" if kind == "inpatient" else "clinic"]
    n = min(rng.choice((1, 1, 2, 2, 3)), max(1, total_fen))
    cuts = sorted(rng.sample(range(1, total_fen), n - 1)) if n > 1 and total_fen > n else []
    parts = [b - a for a, b in zip([0] + cuts, cuts + [total_fen])] if cuts else [total_fen]
    items = []
    for i, part in enumerate(parts):
        code, lv, prop, _ = rng.choices(pool, weights=[w for *_, w in pool])[0]
        items.append(Item(code=code, price=from_fen(part), lv=lv, prop=prop))  # type: ignore[arg-type]
    return items
