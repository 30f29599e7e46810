"""Loading a scenario file: errors that name the file, the line and the field; the timeline flattened;
the checks across fields that the model alone cannot make."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .model import FAULT_KINDS, Scenario, Step


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
