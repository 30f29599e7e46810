"""Drives a scenario: loads the population, runs the generated traffic and the timeline on the virtual clock,
waits for every outcome, checks each step's expectations, then hands over to the auditor and the report.

Determinism: the timeline runs step by step (each outcome is awaited before the next step), except in
concurrent groups. Generated traffic runs families in parallel but each family's visits in order, and no two
generated visits share a facility and a second, so the POS's msgids (facility + second + sequence), and with
them the setl_ids, do not depend on timing. Client-side msgids (admin transactions) come from a counter.
"""
from __future__ import annotations

import array
import asyncio
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from aio_pika.abc import AbstractIncomingMessage

from contracts.base import SHANGHAI
from contracts.envelope import Reply, make_msgid
from contracts.money import from_fen, line_total, round_fen, to_fen
from contracts.pos import ReverseVisit, SettleVisit, VisitOutcome
from contracts.settlement import FeeDetail
from services.shared.broker import Unroutable
from services.shared.policy import MED_TYPE_CATEGORY, RegionPolicy
from services.shared.store import OutMessage

from . import cluster_faults
from .client import Client
from .figures import totals  # noqa: F401 - runner.totals for its callers
from .stored import StoredOutcome
from .terminal import Progress, percentiles  # Progress: re-exported for runner.Progress callers
from .generate import GenVisit, Population, generate
from .scenario import (KINDS, MONEY_FIELDS, NEEDS_STACK, TRIGGERED_KINDS, BindingSpec, CumExpect, Expect,
                       Facility, FlatStep, Item, LoadedScenario, Person, UnresolvedReference, fault_threshold,
                       substitute)

SIM_FIXMEDINS = "GONGJISIM001"  # the fixmedins_code of the simulator's own admin messages
BATCH = 5000  # G003 / G103 limit per message


# ---- identities ---------------------------------------------------------------------------------------
class Mapper:
    """Scenario names → names on the wire. Identity for a fresh stack; with --external every person,
    facility and visit gets a per-run tag so that runs against long-lived workers never meet."""

    def __init__(self, tag: str | None = None):
        self.tag = tag
        self._fac: dict[str, str] = {}
        self._fac_back: dict[str, str] = {}
        self.client_code = SIM_FIXMEDINS if tag is None else f"GJ{tag}{'0' * (10 - len(tag))}"[:12]

    def add_facilities(self, codes: list[str]) -> None:
        for code in codes:
            if code in self._fac:
                continue
            mapped = code if self.tag is None else f"X{self.tag}{len(self._fac) + 1:06d}"
            self._fac[code], self._fac_back[mapped] = mapped, code

    def psn(self, psn_no: str) -> str:
        return psn_no if self.tag is None else f"{self.tag}-{psn_no}"

    def fac(self, code: str) -> str:
        return self._fac.get(code, code)

    def visit(self, name: str) -> str:
        return name if self.tag is None else f"{self.tag}-{name}"

    def unmap_text(self, text: str) -> str:
        if self.tag is None:
            return text
        text = text.replace(f"{self.tag}-", "")
        for mapped, code in self._fac_back.items():
            if mapped in text:
                text = text.replace(mapped, code)
        return text

    def unmap(self, obj: Any) -> Any:
        if self.tag is None:
            return obj
        if isinstance(obj, str):
            return self.unmap_text(obj)
        if isinstance(obj, dict):
            return {self.unmap_text(k) if isinstance(k, str) else k: self.unmap(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.unmap(v) for v in obj]
        return obj

    def map_values(self, obj: Any, people: set[str], facilities: set[str]) -> Any:
        """Admin inputs: any string that names a scenario person or facility is mapped."""
        if isinstance(obj, str):
            if obj in people:
                return self.psn(obj)
            if obj in facilities:
                return self.fac(obj)
            return obj
        if isinstance(obj, dict):
            return {k: self.map_values(v, people, facilities) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.map_values(v, people, facilities) for v in obj]
        return obj


class ObservingClient(Client):
    """A Client that keeps every outcome event it sees (the auditor checks there is exactly one per visit).

    With retry_window > 0 (fault scenarios) it survives the broker going away under it (a broker restart, dropped
    connections): a publish that fails is repeated, and a request or visit command whose answer does not come is
    sent again, until retry_window seconds have passed. Both are idempotent: the services answer a repeated
    msgid with the stored reply, and the POS repeats the outcome of a repeated visit_id (or, while the visit is
    open, ignores it)."""

    def __init__(self, *args: Any, retry_window: float = 0.0, resend_every: float = 30.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.events: dict[str, list[bytes]] = {}
        self.retry_window = retry_window
        self.resend_every = resend_every
        self.retries = 0  # publishes repeated after an error
        self.resends = 0  # requests and commands sent again for want of an answer

    async def _publish_retrying(self, msg: OutMessage, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        pause = 0.2
        while True:
            try:
                await asyncio.wait_for(self.broker.publish(msg), 30)
                return
            except Unroutable:
                raise
            except Exception:  # the connection or channel went away; the robust connection comes back
                if loop.time() >= deadline:
                    raise
                self.retries += 1
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def call_raw(self, exchange: str, routing_key: str, body: bytes, msgid: str,
                       timeout: float | None = None) -> Reply:
        if not self.retry_window:
            return await super().call_raw(exchange, routing_key, body, msgid, timeout)
        loop = asyncio.get_running_loop()
        timeout = timeout or self.timeout
        deadline = loop.time() + max(timeout, self.retry_window)
        fut: asyncio.Future[Reply] = loop.create_future()
        self._replies[msgid] = fut
        msg = OutMessage(exchange, routing_key, body, message_id=msgid, reply_to=self.key,
                         headers=self.signed.pop(msgid, None))
        try:
            while True:
                await self._publish_retrying(msg, deadline)
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), max(0.1, min(timeout, deadline - loop.time())))
                except asyncio.TimeoutError:
                    if loop.time() >= deadline:
                        raise
                    self.resends += 1
        finally:
            self._replies.pop(msgid, None)

    async def visit(self, cmd: SettleVisit | ReverseVisit, timeout: float | None = None) -> VisitOutcome:
        if not self.retry_window:
            return await super().visit(cmd, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout or self.timeout, self.retry_window)
        self._outcome_waiters.setdefault(cmd.visit_id, loop.create_future())
        msg = OutMessage(self.names.pos_exchange, "command", cmd.model_dump_json().encode(), message_id=cmd.visit_id)
        while True:
            await self._publish_retrying(msg, deadline)
            try:
                return await self.outcome(cmd.visit_id, max(0.1, min(self.resend_every, deadline - loop.time())))
            except asyncio.TimeoutError:
                if loop.time() >= deadline:
                    raise
                self.resends += 1

    async def _on_outcome(self, message: AbstractIncomingMessage) -> None:
        if not self.trusted_outcome(message):  # the auditor believes only the POS user
            await message.ack()
            return
        try:
            vid = VisitOutcome.model_validate_json(message.body).visit_id
            # A digest, not the body: the auditor only counts distinct outcomes (memory stays flat).
            self.events.setdefault(vid, []).append(hashlib.blake2b(message.body, digest_size=16).digest())
        except Exception:
            pass
        await super()._on_outcome(message)

    def forget(self, visit_id: str) -> None:
        """The runner has the outcome: the client need not keep it (nor its waiter)."""
        self.outcomes.pop(visit_id, None)
        self._outcome_waiters.pop(visit_id, None)


# ---- what a run observed ---------------------------------------------------------------------------------
@dataclass
class Obs:
    """One visit command (settle or reverse) and its outcome."""

    order: tuple[int, str, str]  # (phase, time, id): the order of the report
    step: str
    generated: bool
    family: str | None
    cmd: SettleVisit | ReverseVisit
    kind: str  # pharmacy / online / outpatient / emergency / chronic / inpatient / reverse
    category: str  # pharmacy / outpatient / inpatient (of the settlement or of the reversed one)
    outcome: VisitOutcome | None = None
    reverse_of: str | None = None  # step (or generated id) of the settlement it reverses
    note: str | None = None  # why it has no outcome (timed out, skipped)
    race: bool = False  # a timeout_race visit: compensated, refused E_TIMEOUT or settled are all allowed

    @property
    def setlinfo(self) -> dict[str, Any] | None:
        if isinstance(self.outcome, StoredOutcome):
            return self.outcome.setlinfo_dict()
        if self.outcome is None or self.outcome.setlinfo is None:
            return None
        return self.outcome.setlinfo.model_dump(mode="json")


@dataclass
class RunData:
    loaded: LoadedScenario
    policies: dict[str, RegionPolicy]
    mapper: Mapper
    population: Population  # generated part
    people: dict[str, Person]  # every person, explicit and generated (scenario names)
    facilities: dict[str, Facility]
    families: dict[str, list[str]]
    family_of: dict[str, str]
    bindings: list[tuple[str, BindingSpec, str | None]]  # (name, spec, auth_id)
    observations: list[Obs] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    passed: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)  # one row per explicit step, for the report
    deposits: dict[str, int] = field(default_factory=dict)  # psn → fen deposited (G102, observed)
    balance_points: list[tuple[str, str, str, int]] = field(default_factory=list)  # (time, order, psn, fen)
    untracked_people: set[str] = field(default_factory=set)  # named by admin events whose effect we don't model
    untracked_all: bool = False
    admin_counts: dict[str, int] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    end_time: datetime | None = None
    aborted: str | None = None
    faults: dict[str, Any] | None = None  # what the fault driver did and the workers counted (fault scenarios)
    figures: dict[str, Any] = field(default_factory=dict)  # the auditor's counts (double debits, cap overruns, ...)
    timings: dict[str, float] = field(default_factory=dict)  # wall clock: printed, never in report.json

    def initial_fen(self, psn: str) -> int | None:
        p = self.people.get(psn)
        return None if p is None or p.balance is None else to_fen(p.balance)


_DONE: Any = None  # stands for a generated visit that has been sent (see Runner.generated_traffic)

KNOWN_ADMIN = {"G001", "G002", "G003", "G101", "G102", "G103", "G111", "G121", "G199", "1101", "5206", "3201"}


# ---- the runner ----------------------------------------------------------------------------------------
class Runner:
    def __init__(self, loaded: LoadedScenario, client: ObservingClient, policies: dict[str, RegionPolicy], *,
                 mapper: Mapper | None = None, progress: Progress | None = None, concurrency: int = 64,
                 population: Population | None = None, faults: "FaultDriver | None" = None):
        self.loaded = loaded
        self.faults = faults
        self.sc = loaded.scenario
        self.client = client
        self.policies = policies
        self.mapper = mapper or Mapper()
        self.progress = progress or Progress(enabled=False)
        self.concurrency = concurrency
        pop = population if population is not None else generate(loaded, policies)
        people = {p.psn_no: p for p in [*self.sc.people, *pop.people]}
        facilities = {f.code: f for f in [*self.sc.facilities, *pop.facilities]}
        families = {f.name: list(f.members) for f in self.sc.families}
        families.update(pop.families)
        family_of = {m: name for name, ms in families.items() for m in ms}
        bindings: list[tuple[str, BindingSpec, str | None]] = [
            (b.name or f"binding{i + 1}", b, None) for i, b in enumerate(self.sc.bindings)]
        bindings += [(f"gb{i + 1}", b, None) for i, b in enumerate(pop.bindings)]
        self.mapper.add_facilities(sorted(facilities))
        self.data = RunData(loaded=loaded, policies=policies, mapper=self.mapper, population=pop, people=people,
                            facilities=facilities, families=families, family_of=family_of, bindings=bindings)
        self._seq = itertools.count()
        self._signins: dict[str, str] = {}
        self._sign_lock = asyncio.Lock()
        self._gen_obs: dict[str, Obs] = {}
        self._step_obs: dict[str, Obs] = {}
        self.regions = sorted({p.region for p in people.values()} | {f.region for f in facilities.values()}
                              | set(self.sc.regions)) or ["330100"]
        self.latencies = array.array("d")  # seconds from command to outcome, per visit (8 bytes each)
        self.export: Any = None  # a SettlementExport (simulator/export.py) when the run writes a report
        self.completed = 0  # visit commands that have finished (with or without an outcome): faults trigger on it
        self.planned = pop.visit_count + pop.reversal_count + sum(
            1 for fs in self.loaded.steps for m in (fs.members or [fs]) if m.step.event in ("visit", "reverse"))

    # ---- messages -------------------------------------------------------------------------------------
    def msgid(self, when: datetime) -> str:
        n = next(self._seq)
        stamp = (when + timedelta(seconds=n // 10000)).astimezone(SHANGHAI).strftime("%Y%m%d%H%M%S")
        return make_msgid(self.mapper.client_code, stamp, n % 10000)

    async def call(self, service: str, infno: str, data: dict[str, Any], when: datetime,
                   region: str | None = None, timeout: float = 60.0) -> Reply:
        """One transaction as the simulator itself (fixmedins_code = the simulator's own code, registered as
        a facility so that it can sign in: national transactions carry the sign_no of a 9001 that day)."""
        region = region or self.regions[0]
        sign_no = ""
        if service == "bureau" and not infno.startswith("G") and infno != "9001":
            sign_no = await self.sign_no_for(when)
        req = self.client.envelope(infno, data, insuplc_admdvs=region, when=when,
                                   fixmedins_code=self.mapper.client_code, msgid=self.msgid(when))
        if sign_no:
            req = req.model_copy(update={"sign_no": sign_no})
        if service == "accounts":
            return await self.client.accounts_admin(req, timeout)
        if service == "registry":
            return await self.client.bureau_registry(req, timeout)
        return await self.client.bureau(req, timeout)

    async def _face_token(self, data: dict[str, Any], when: datetime, region: str | None,
                          who: str = "authorizer_psn_no") -> dict[str, Any]:
        """A scenario's face check that passed ({method: face, passed: true}) is played as the device would:
        a G109 recorded by the accounts service, whose token the binding presents (a bare claim is refused)."""
        verify = data.get("verify")
        if not (isinstance(verify, dict) and verify.get("method") == "face" and verify.get("passed") is True
                and "token" not in verify):
            return data
        if who not in data:
            return data
        rep = await self.call("accounts", "G109", {"psn_no": data[who], "passed": True}, when, region)
        if rep.infcode != 0 or not rep.output:
            return data  # the binding then says why
        return {**data, "verify": {"method": "face", "token": rep.output["face_token"]}}

    async def sign_no_for(self, when: datetime) -> str:
        day = when.astimezone(SHANGHAI).strftime("%Y-%m-%d")
        async with self._sign_lock:
            if day not in self._signins:
                rep = await self.call("registry", "9001", {"opter_no": "gongji-sim"}, when)
                if rep.infcode != 0 or not rep.output:
                    raise SetupFailed(f"9001 sign-in of the simulator refused: {rep.err_code} {rep.err_msg}")
                self._signins[day] = str(rep.output["sign_no"])
            return self._signins[day]

    # ---- the whole run --------------------------------------------------------------------------------
    async def run(self) -> RunData:
        t0 = time.monotonic()
        try:
            await self.load_population()
            self.data.timings["load"] = time.monotonic() - t0
            driver = asyncio.create_task(self.faults.run(self)) if self.faults is not None else None
            try:
                t1 = time.monotonic()
                await self.generated_traffic()
                self.data.timings["traffic"] = time.monotonic() - t1
                t2 = time.monotonic()
                await self.timeline()
                self.data.timings["timeline"] = time.monotonic() - t2
            finally:
                if driver is not None:
                    assert self.faults is not None
                    self.faults.stop()
                    await driver  # a restart under way finishes before the audit
            await self.final_expectations()
        except SetupFailed as exc:
            self.data.aborted = str(exc)
            self.fail("setup", "setup", "population loaded", str(exc), str(self.loaded.path))
        self.progress.finish()
        return self.data

    def fail(self, step: str, fieldname: str, expected: Any, actual: Any, where: str) -> None:
        self.data.failures.append({"step": step, "field": fieldname, "expected": expected, "actual": actual,
                                   "where": where})

    # ---- population -------------------------------------------------------------------------------------
    async def load_population(self) -> None:
        d, m, when = self.data, self.mapper, self.sc.start
        rep = await self.call("registry", "G001", {  # the simulator itself, for its 9001 sign-ins and queries
            "fixmedins_code": m.client_code, "fixmedins_name": "gongji simulator", "fixmedins_type": "hospital",
            "hosp_lv": "community", "admdvs": self.regions[0]}, when)
        if rep.infcode != 0:
            raise SetupFailed(f"registering the simulator: {rep.err_code} {rep.err_msg}")
        self.progress.phase("facilities", len(d.facilities))
        for code in sorted(d.facilities):
            f = d.facilities[code]
            rep = await self.call("registry", "G001", {
                "fixmedins_code": m.fac(f.code), "fixmedins_name": (f.name or f.code)[:200],
                "fixmedins_type": f.type, "hosp_lv": f.level, "admdvs": f.region}, when, f.region)
            if rep.infcode != 0:
                raise SetupFailed(f"facility {code}: {rep.err_code} {rep.err_msg}")
            self.progress.advance()
        people = list(d.people.values())
        by_region: dict[str, list[Person]] = {}
        for p in people:
            by_region.setdefault(p.region, []).append(p)
        self.progress.phase("people", len(people))
        for region in sorted(by_region):
            group = by_region[region]
            for i in range(0, len(group), BATCH):
                batch = group[i:i + BATCH]
                rep = await self.call("bureau", "G003", {"persons": [
                    {"psn_no": m.psn(p.psn_no), "psn_name": (p.name or p.psn_no)[:200], "insutype": p.insutype,
                     "psn_type": p.psn_type, "insuplc_admdvs": p.region,
                     **({"resident_group": p.resident_group} if p.resident_group else {}),
                     **({"low_income": True} if p.low_income else {})} for p in batch]}, when, region)
                if rep.infcode != 0:
                    raise SetupFailed(f"registering people of {region}: {rep.err_code} {rep.err_msg}")
                self.progress.advance(len(batch))
        holders = [p for p in people if p.balance is not None]
        self.progress.phase("accounts", len(holders))
        for i in range(0, len(holders), BATCH):
            batch = holders[i:i + BATCH]
            rep = await self.call("accounts", "G103", {"accounts": [_open_account(m, p) for p in batch]},
                                  when, batch[0].region)
            if rep.infcode != 0:
                raise SetupFailed(f"opening accounts: {rep.err_code} {rep.err_msg}")
            opened = (rep.output or {}).get("opened")
            if opened != len(batch):
                raise SetupFailed(f"opening accounts: {opened} of {len(batch)} opened (some already exist: "
                                  f"is this namespace fresh?)")
            self.progress.advance(len(batch))
        for p in holders:
            d.balance_points.append((f"{when:%Y-%m-%d %H:%M:%S}", "0", p.psn_no,
                                     to_fen(p.balance) + to_fen(p.prior_balance or Decimal("0.00"))))  # type: ignore
        sem = asyncio.Semaphore(self.concurrency)
        others = [p for p in people if p.balance is None]
        self.progress.phase("people without account", len(others))

        async def holder(p: Person) -> None:  # G104: known to the accounts service, e.g. to be bound
            async with sem:
                rep = await self.call("accounts", "G104", {"psn_no": m.psn(p.psn_no), "insuplc_admdvs": p.region,
                                                           "insutype": p.insutype, "evoucher_active": p.evoucher},
                                      when, p.region)
                if rep.infcode != 0:
                    raise SetupFailed(f"registering {p.psn_no} with the accounts service: {rep.err_code} "
                                      f"{rep.err_msg}")
                self.progress.advance()
        await asyncio.gather(*(holder(p) for p in others))
        self.progress.phase("bindings", len(d.bindings))

        async def bind(i: int, name: str, b: BindingSpec) -> None:
            async with sem:
                rep = await self.call("accounts", "G111", await self._face_token(_bind_input(m, b), when,
                                                                                  d.people[b.member].region),
                                      when, d.people[b.member].region)
                if rep.infcode != 0:
                    raise SetupFailed(f"binding {name} ({b.authorizer} → {b.member}): {rep.err_code} {rep.err_msg}")
                auth_id = str((rep.output or {}).get("auth_id"))
                d.bindings[i] = (name, b, auth_id)
                d.results[name] = {"auth_id": auth_id, "infcode": 0}
                self.progress.advance()
        explicit = len(self.sc.bindings)
        for i in range(explicit):  # in file order: their auth_ids follow the msgid sequence
            await bind(i, d.bindings[i][0], d.bindings[i][1])
        await asyncio.gather(*(bind(i, d.bindings[i][0], d.bindings[i][1]) for i in range(explicit, len(d.bindings))))

    # ---- visits -------------------------------------------------------------------------------------------
    def settle_command(self, visit_id: str, psn_no: str, facility: str, med_type: str, channel: str,
                       at: datetime, items: list[Item], *, insutype: str | None = None, mdtrtarea: str | None = None,
                       acct_used: bool = True, cert_type: str = "01", presettle: bool = True,
                       timeout_ms: int = 30000, proxy: str | None = None, rx: bool = False,
                       flow: dict[str, Any] | None = None) -> SettleVisit:
        d, m = self.data, self.mapper
        person = d.people.get(psn_no)
        fac = d.facilities.get(facility)
        region = person.region if person else self.regions[0]
        def fee_details(its: list[Item]) -> list[FeeDetail]:
            return [FeeDetail.model_validate({
                "feedetl_sn": str(i + 1), "med_list_codg": it.code, "med_list_name": it.name, "cnt": it.cnt,
                "pric": it.price, "det_item_fee_sumamt": line_total(it.price, it.cnt),
                "chrgitm_lv": it.lv, "selfpay_prop": it.prop, "pric_uplmt_amt": it.limit,
                **({"item_scope": it.scope} if it.scope is not None else {})}) for i, it in enumerate(its)]
        details = fee_details(items)
        extra: dict[str, Any] = {"proxy_psn_no": m.psn(proxy)} if proxy is not None else {}
        if rx:
            extra["rx_circ_flag"] = "1"
        if flow:  # the national flow's shape: uploads, cancelled lines, abandon; or the flat shortcut
            extra.update({k: v for k, v in flow.items() if k != "cancel"}, cancel=fee_details(flow.get("cancel", [])))
        return SettleVisit.model_validate({
            "visit_id": m.visit(visit_id), "fixmedins_code": m.fac(facility), "insuplc_admdvs": region,
            "mdtrtarea_admvs": mdtrtarea or (fac.region if fac else region), "psn_no": m.psn(psn_no),
            "med_type": med_type, "insutype": insutype or (person.insutype if person else "310"),
            "mdtrt_cert_type": cert_type, "acct_used_flag": "1" if acct_used else "0", "setl_chnl": channel,
            "biz_time": at, "details": details, "presettle": presettle, "timeout_ms": timeout_ms, **extra})

    async def send_visit(self, obs: Obs) -> Obs:
        timeout = obs.cmd.timeout_ms / 1000 * 3 + 60
        t0 = time.monotonic()
        try:
            obs.outcome = await self.client.visit(obs.cmd, timeout=timeout)
            self.latencies.append(time.monotonic() - t0)  # wall clock: printed, never in report.json
        except asyncio.TimeoutError:
            obs.note = f"no outcome within {max(timeout, self.client.retry_window):.0f} s"
        if self.export is not None:  # settlements.csv / .ndjson, written as the run goes
            self.export.write(obs.outcome, step=obs.step, generated=obs.generated, family=obs.family, kind=obs.kind,
                              category=obs.category, reverse_of=obs.reverse_of, note=obs.note, cmd=obs.cmd,
                              unmap=self.mapper.unmap_text)
        if obs.outcome is not None:  # memory per visit: a compact outcome, the client forgets its copy
            self.client.forget(obs.cmd.visit_id)
            if obs.generated:  # timeline steps keep the model (expectations read it)
                obs.outcome = StoredOutcome(obs.outcome)  # type: ignore[assignment]
        self.data.observations.append(obs)
        self.completed += 1
        self._track_balances(obs)
        return obs

    def _track_balances(self, obs: Obs) -> None:
        s = obs.setlinfo
        if s is None:
            return
        m = self.mapper
        when = s["setl_time"]
        key = f"{obs.order[0]}:{obs.order[1]}:{obs.order[2]}"
        patient = m.unmap_text(s["psn_no"])
        if self.data.people.get(patient) is not None and self.data.people[patient].balance is not None:
            self.data.balance_points.append((when, key, patient, to_fen(Decimal(s["balc"]))))
        for part in s.get("mulaid_detail", []):
            self.data.balance_points.append((when, key, m.unmap_text(part["authorizer_psn_no"]),
                                             to_fen(Decimal(part["balc"]))))

    async def generated_traffic(self) -> None:
        pop = self.data.population
        if not pop.visits:
            return
        total = sum(len(v) for v in pop.visits.values())
        self.progress.phase("generated visits", total)
        sem = asyncio.Semaphore(self.concurrency)

        async def chain(visits: list[GenVisit]) -> None:
            for i, v in enumerate(visits):
                async with sem:
                    await self._generated_visit(v)
                visits[i] = _DONE  # its bill is in the command now: let the generated visit go (memory)
                self.progress.advance()

        await asyncio.gather(*(chain(vs) for _, vs in sorted(pop.visits.items())))

    async def _generated_visit(self, v: GenVisit) -> None:
        order = (0, f"{v.at:%Y-%m-%d %H:%M:%S}", v.id)
        if v.reverse_of is None:
            med, chnl = KINDS[v.kind]
            race = self.faults is not None and self.faults.in_race(v.id)
            if race:  # settle at once with a short POS timeout: 2601 冲正 races the settlement
                assert self.faults is not None and self.faults.race is not None
                cmd = self.settle_command(v.id, v.psn_no, v.facility, med, chnl, v.at, v.items,
                                          timeout_ms=self.faults.race.timeout_ms, presettle=False)
            else:
                # A hospital visit of several lines uploads them in two 2204 / 2301 batches, as a HIS does
                # (the bill, and so every figure, is the same).
                two = med != "41" and len(v.items) >= 2
                cmd = self.settle_command(v.id, v.psn_no, v.facility, med, chnl, v.at, v.items, timeout_ms=120000,
                                          flow={"uploads": 2} if two else None)
            obs = Obs(order=order, step=v.id, generated=True, family=v.family, cmd=cmd, kind=v.kind,
                      category=MED_TYPE_CATEGORY[med], race=race)
            self._gen_obs[v.id] = await self.send_visit(obs)
            return
        orig = self._gen_obs.get(v.reverse_of)
        s = orig.setlinfo if orig is not None else None
        if orig is None or s is None or orig.outcome is None or orig.outcome.status != "settled":
            return  # nothing to reverse: the visit was refused
        cmd = ReverseVisit(visit_id=self.mapper.visit(v.id), fixmedins_code=orig.cmd.fixmedins_code,
                           insuplc_admdvs=orig.cmd.insuplc_admdvs, mdtrtarea_admvs=orig.cmd.mdtrtarea_admvs,
                           psn_no=orig.cmd.psn_no, med_type=orig.cmd.med_type, setl_id=s["setl_id"],
                           biz_time=v.at, timeout_ms=120000)
        await self.send_visit(Obs(order=order, step=v.id, generated=True, family=v.family, cmd=cmd, kind="reverse",
                                  category=orig.category, reverse_of=v.reverse_of))

    # ---- the timeline ---------------------------------------------------------------------------------------
    async def timeline(self) -> None:
        steps = self.loaded.steps
        if not steps:
            return
        self.progress.phase("timeline", sum(max(1, len(s.members)) for s in steps))
        for fs in steps:
            if fs.members:
                results = await asyncio.gather(*(self.execute(m) for m in fs.members))
                for m, actual in zip(fs.members, results):
                    await self.judge(m, actual)
                self.progress.advance(len(fs.members))
            else:
                actual = await self.execute(fs)
                await self.judge(fs, actual)
                self.progress.advance()
            self.data.end_time = max(fs.at, *(m.at for m in fs.members)) if fs.members else fs.at

    async def execute(self, fs: FlatStep) -> dict[str, Any]:
        """Carry out one step's event; return what the expectations are checked against."""
        st, d, m = fs.step, self.data, self.mapper
        try:
            if st.visit is not None:
                ev = st.visit
                med, chnl = ev.med_type_and_channel()
                cmd = self.settle_command(fs.name, ev.person, ev.facility, med, chnl, fs.at, ev.items,
                                          insutype=ev.insutype, mdtrtarea=ev.mdtrtarea, acct_used=ev.acct_used,
                                          cert_type=ev.cert_type, presettle=ev.presettle, timeout_ms=ev.timeout_ms,
                                          proxy=ev.proxy, rx=ev.prescription,
                                          flow={"uploads": ev.uploads, "cancel": ev.cancel,
                                                "abandon": ev.abandon, "flow": ev.flow})
                obs = Obs(order=(1, f"{fs.index:06d}", fs.name), step=fs.name, generated=False,
                          family=d.family_of.get(ev.person), cmd=cmd, kind=ev.kind or med,
                          category=MED_TYPE_CATEGORY[med])
                self._step_obs[fs.name] = await self.send_visit(obs)
                return self._visit_actual(obs)
            if st.reverse is not None:
                orig = self._step_obs.get(st.reverse.of)
                s = orig.setlinfo if orig is not None else None
                if orig is None or s is None or orig.outcome is None or orig.outcome.status != "settled":
                    return {"error": f"cannot reverse {st.reverse.of}: it has no settlement"}
                cmd = ReverseVisit(visit_id=m.visit(fs.name), fixmedins_code=orig.cmd.fixmedins_code,
                                   insuplc_admdvs=orig.cmd.insuplc_admdvs, mdtrtarea_admvs=orig.cmd.mdtrtarea_admvs,
                                   psn_no=orig.cmd.psn_no, med_type=orig.cmd.med_type, setl_id=s["setl_id"],
                                   biz_time=fs.at, timeout_ms=st.reverse.timeout_ms)
                obs = Obs(order=(1, f"{fs.index:06d}", fs.name), step=fs.name, generated=False, family=orig.family,
                          cmd=cmd, kind="reverse", category=orig.category, reverse_of=st.reverse.of)
                self._step_obs[fs.name] = await self.send_visit(obs)
                return self._visit_actual(obs)
            if st.deposit is not None:
                ev = st.deposit
                region = d.people[ev.person].region if ev.person in d.people else self.regions[0]
                rep = await self.call("accounts", "G102", {"psn_no": m.psn(ev.person), "amount": f"{ev.amount:.2f}",
                                                           "ref": ev.ref}, fs.at, region)
                if rep.infcode == 0:
                    d.deposits[ev.person] = d.deposits.get(ev.person, 0) + to_fen(ev.amount)
                    d.balance_points.append((f"{fs.at:%Y-%m-%d %H:%M:%S}", f"1:{fs.index:06d}:{fs.name}",
                                             ev.person, to_fen(Decimal((rep.output or {})["balc"]))))
                return self._admin_actual(fs, "G102", rep)
            if st.bind is not None:
                b = st.bind
                region = d.people[b.member].region if b.member in d.people else self.regions[0]
                rep = await self.call("accounts", "G111", await self._face_token(_bind_input(m, b, d.results), fs.at,
                                                                                  region), fs.at, region)
                if rep.infcode == 0:
                    d.bindings.append((fs.name, BindingSpec(**b.model_dump()), str((rep.output or {})["auth_id"])))
                return self._admin_actual(fs, "G111", rep)
            if st.admin is not None:
                ev = st.admin
                people, facs = set(d.people), set(d.facilities)
                data = m.map_values(substitute(ev.input, d.results), people, facs)
                if ev.service == "accounts" and ev.infno in VERIFIED_BY:  # a face check that passed: its token
                    data = await self._face_token(data, fs.at, ev.region, VERIFIED_BY[ev.infno])
                rep = await self.call(ev.service, ev.infno, data, fs.at, ev.region)
                d.admin_counts[ev.infno] = d.admin_counts.get(ev.infno, 0) + 1
                if ev.infno not in KNOWN_ADMIN and rep.infcode == 0:
                    named = _strings(ev.input) & people
                    d.untracked_people |= named
                    if not named:
                        d.untracked_all = True
                    await self._snapshot_balances(fs)
                return self._admin_actual(fs, ev.infno, rep)
            return {}  # check: expectations only
        except UnresolvedReference as exc:
            return {"error": str(exc)}

    async def _snapshot_balances(self, fs: FlatStep) -> None:
        """After an admin transaction we do not model (wallet transfers, ...): read the explicit families'
        balances, so the balance chart stays exact."""
        holders = [p for p in self.sc.people if p.balance is not None]
        if len(holders) > 50:
            return
        for p in holders:
            rep = await self.call("accounts", "G121", {"psn_no": self.mapper.psn(p.psn_no)}, fs.at, p.region)
            if rep.infcode == 0 and rep.output:
                self.data.balance_points.append((f"{fs.at:%Y-%m-%d %H:%M:%S}", f"1:{fs.index:06d}:{fs.name}",
                                                 p.psn_no, to_fen(Decimal(rep.output["balc"]))))

    def _visit_actual(self, obs: Obs) -> dict[str, Any]:
        m = self.mapper
        if obs.outcome is None:
            return {"error": obs.note or "no outcome"}
        o = obs.outcome
        actual: dict[str, Any] = {"status": o.status, "infcode": o.infcode, "err_code": o.err_code,
                                  "err_msg": m.unmap_text(o.err_msg or "")}
        s = obs.setlinfo
        if s is not None:
            actual.update({f: s[f] for f in MONEY_FIELDS})
            actual["notes"] = [m.unmap_text(n) for n in s["notes"]]
            mulaid: dict[str, Decimal] = {}
            for part in s["mulaid_detail"]:
                who = m.unmap_text(part["authorizer_psn_no"])
                mulaid[who] = mulaid.get(who, Decimal("0.00")) + Decimal(part["amount"])
            actual["mulaid"] = {k: f"{v:.2f}" for k, v in mulaid.items()}
            actual["funds"] = {x["fund_pay_type"]: x["fund_payamt"] for x in s.get("setldetail", [])}
            actual["setl_id"] = m.unmap_text(s["setl_id"])
        self.data.results[obs.step] = {k: v for k, v in actual.items() if not isinstance(v, (list, dict))}
        if s is not None:
            self.data.results[obs.step]["setl_id"] = s["setl_id"]  # as on the wire: usable in admin inputs
        return actual

    def _admin_actual(self, fs: FlatStep, infno: str, rep: Reply) -> dict[str, Any]:
        actual = {"infcode": rep.infcode, "err_code": rep.err_code, "err_msg": self.mapper.unmap_text(rep.err_msg or ""),
                  "output": self.mapper.unmap(rep.output or {}), "infno": infno}
        self.data.results[fs.name] = {"infcode": rep.infcode, "err_code": rep.err_code,
                                      **{k: v for k, v in (rep.output or {}).items()
                                         if isinstance(v, (str, int, float, bool)) or v is None}}
        return actual

    # ---- expectations -----------------------------------------------------------------------------------
    async def judge(self, fs: FlatStep, actual: dict[str, Any]) -> None:
        st = fs.step
        where = self.loaded.where(fs.path)
        row: dict[str, Any] = {"step": fs.name, "at": f"{fs.at:%Y-%m-%d %H:%M:%S}", "event": st.event,
                               **{k: v for k, v in actual.items() if k not in ("notes", "err_msg", "output")}}
        if "output" in actual:
            row["output"] = actual["output"]
        failures_before = len(self.data.failures)
        if "error" in actual:
            self.fail(fs.name, "outcome", "an outcome", actual["error"], where)
        expects: list[Expect] = []
        if st.expect is not None:
            expects = [st.expect]
        elif st.expect_one_of is None and st.event in ("deposit", "bind", "admin"):
            expects = [Expect(infcode=0)]  # a setup-like step must succeed unless it says otherwise
        if "error" not in actual:
            if expects:
                exp = expects[0]
                path = (*fs.path, "expect")
                for fieldname, want, got in await self.compare(exp, actual, fs.at):
                    self.fail(fs.name, fieldname, want, got,
                              self.loaded.where((*path, *fieldname.split("."))) if st.expect else where)
                if not any(f["step"] == fs.name for f in self.data.failures[failures_before:]):
                    self.data.passed += 1
            elif st.expect_one_of is not None:
                tried = []
                for exp in st.expect_one_of:
                    diff = await self.compare(exp, actual, fs.at)
                    if not diff:
                        break
                    tried.append(diff)
                else:
                    keys = sorted({f for diff in tried for f, _, _ in diff})
                    self.fail(fs.name, "expect_one_of", [_expect_summary(e) for e in st.expect_one_of],
                              {k: _actual_value(actual, k) for k in keys},
                              self.loaded.where((*fs.path, "expect_one_of")))
                if len(self.data.failures) == failures_before:
                    self.data.passed += 1
        row["passed"] = len(self.data.failures) == failures_before
        row["expected"] = bool(expects or st.expect_one_of)
        self.data.steps.append(row)

    async def compare(self, exp: Expect, actual: dict[str, Any], at: datetime) -> list[tuple[str, Any, Any]]:
        diffs: list[tuple[str, Any, Any]] = []
        given = exp.model_fields_set
        for key in ("status", "infcode", "err_code"):
            if key in given and getattr(exp, key) != actual.get(key):
                diffs.append((key, getattr(exp, key), actual.get(key)))
        if "err_msg_contains" in given and self._subst(exp.err_msg_contains or "") not in (actual.get("err_msg") or ""):
            diffs.append(("err_msg_contains", exp.err_msg_contains, actual.get("err_msg")))
        for key in MONEY_FIELDS:
            if key in given:
                want = getattr(exp, key)
                got = actual.get(key)
                if got is None or Decimal(got) != want:
                    diffs.append((key, f"{want:.2f}", got if got is not None else f"no setlinfo ({actual.get('status')})"))
        if exp.notes_contain:
            notes = actual.get("notes") or []
            for text in self._subst(exp.notes_contain):
                if not any(text in n for n in notes):
                    diffs.append(("notes_contain", text, notes))
        if exp.mulaid is not None:
            want_m = {k: f"{v:.2f}" for k, v in exp.mulaid.items() if v != 0}
            got_m = {k: v for k, v in (actual.get("mulaid") or {}).items()}
            if want_m != got_m:
                diffs.append(("mulaid", want_m, got_m))
        if exp.funds is not None:
            want_f = {k: f"{v:.2f}" for k, v in exp.funds.items() if v != 0}
            if want_f != (actual.get("funds") or {}):
                diffs.append(("funds", want_f, actual.get("funds") or {}))
        if exp.output is not None:
            out = actual.get("output") or {}
            try:
                want_out = substitute(exp.output, self.data.results)
            except UnresolvedReference as exc:
                want_out = {k: str(exc) for k in exp.output}
            for k, v in want_out.items():
                if _norm(out.get(k)) != _norm(v):
                    diffs.append((f"output.{k}", v, out.get(k)))
        if exp.balances:
            for psn, want in exp.balances.items():
                got = await self.balance_of(psn, at)
                if got != f"{want:.2f}":
                    diffs.append((f"balances.{psn}", f"{want:.2f}", got))
        if exp.cumulative:
            for psn, cum in exp.cumulative.items():
                diffs += await self.cumulative_diffs(psn, cum, at, prefix="cumulative")
        return diffs

    def _subst(self, value: Any) -> Any:
        try:
            return substitute(value, self.data.results)
        except UnresolvedReference as exc:
            return str(exc)

    async def balance_of(self, psn: str, at: datetime) -> str:
        person = self.data.people.get(psn)
        rep = await self.call("accounts", "G121", {"psn_no": self.mapper.psn(psn)}, at,
                              person.region if person else None)
        if rep.infcode != 0:
            return f"{rep.err_code}: {self.mapper.unmap_text(rep.err_msg or '')}"
        return str((rep.output or {}).get("balc"))

    async def cumulative_of(self, psn: str, at: datetime, year: int | None) -> dict[str, Any]:
        person = self.data.people.get(psn)
        data: dict[str, Any] = {"psn_no": self.mapper.psn(psn)}
        if year is not None:
            data["cum_year"] = year
        rep = await self.call("bureau", "5206", data, at, person.region if person else None)
        if rep.infcode != 0:
            return {"error": f"{rep.err_code}: {self.mapper.unmap_text(rep.err_msg or '')}"}
        return rep.output or {}

    async def cumulative_diffs(self, psn: str, cum: CumExpect, at: datetime, prefix: str
                               ) -> list[tuple[str, Any, Any]]:
        got = await self.cumulative_of(psn, at, cum.cum_year)
        diffs = []
        for key in cum.model_fields_set - {"cum_year"}:
            want = getattr(cum, key)
            want_s = f"{want:.2f}" if isinstance(want, Decimal) else want
            if "error" in got or got.get(key) != want_s:
                diffs.append((f"{prefix}.{psn}.{key}", want_s, got.get(key, got.get("error"))))
        return diffs

    async def final_expectations(self) -> None:
        fin = self.sc.final
        if fin is None:
            return
        d = self.data
        at = d.end_time or self.sc.start
        where = lambda *k: self.loaded.where(("final", *k))  # noqa: E731
        diffs: list[tuple[str, Any, Any, str]] = []
        settles = [o for o in d.observations if isinstance(o.cmd, SettleVisit)]
        if fin.visits is not None and fin.visits != len(settles):
            diffs.append(("visits", fin.visits, len(settles), where("visits")))
        if fin.outcomes is not None:
            counts: dict[str, int] = {}
            for o in d.observations:
                if o.outcome is not None:
                    counts[o.outcome.status] = counts.get(o.outcome.status, 0) + 1
            for status, n in fin.outcomes.items():
                if counts.get(status, 0) != n:
                    diffs.append((f"outcomes.{status}", n, counts.get(status, 0), where("outcomes", status)))
        if fin.totals is not None:
            tot = totals(d.observations)
            for key, want in fin.totals.items():
                if tot[key] != to_fen(want):
                    diffs.append((f"totals.{key}", f"{want:.2f}", f"{from_fen(tot[key]):.2f}",
                                  where("totals", key)))
        for psn, want in (fin.balances or {}).items():
            got = await self.balance_of(psn, at)
            if got != f"{want:.2f}":
                diffs.append((f"balances.{psn}", f"{want:.2f}", got, where("balances", psn)))
        for psn, cum in (fin.cumulative or {}).items():
            for f, w, g in await self.cumulative_diffs(psn, cum, at, "cumulative"):
                diffs.append((f, w, g, where("cumulative", psn)))
        for fieldname, want, got, loc in diffs:
            self.fail("final", fieldname, want, got, loc)
        if not diffs:
            d.passed += 1


# admin transactions with an identity check → whose identity (the face check's token is that person's)
VERIFIED_BY = {"G111": "authorizer_psn_no", "G131": "from_psn_no", "G151": "proxy_psn_no"}


class SetupFailed(Exception):
    pass


def _open_account(m: Mapper, p: Person) -> dict[str, Any]:
    data: dict[str, Any] = {"psn_no": m.psn(p.psn_no), "insuplc_admdvs": p.region, "insutype": p.insutype,
                            "opening_balc": f"{p.balance:.2f}"}
    if p.prior_balance is not None:
        data["prior_balc"] = f"{p.prior_balance:.2f}"
    if not p.evoucher:
        data["evoucher_active"] = False
    return data


def _bind_input(m: Mapper, b: BindingSpec, results: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    verify = b.verify if b.verify is not None else {"method": "face", "passed": True}
    if results is not None:
        verify = substitute(verify, results)
    return {"authorizer_psn_no": m.psn(b.authorizer), "member_psn_no": m.psn(b.member), "relation": b.relation,
            "rank": b.rank, "verify": verify,
            **{k: f"{getattr(b, k):.2f}" for k in ("day_cap", "month_cap", "year_cap") if getattr(b, k) is not None}}


def _strings(obj: Any) -> set[str]:
    if isinstance(obj, str):
        return {obj}
    if isinstance(obj, dict):
        return set().union(*(_strings(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_strings(v) for v in obj)) if obj else set()
    return set()


def _norm(v: Any) -> Any:
    return v if isinstance(v, (dict, list)) or v is None else str(v)


def _expect_summary(exp: Expect) -> dict[str, Any]:
    return exp.model_dump(mode="json", exclude_unset=True)


def _actual_value(actual: dict[str, Any], key: str) -> Any:
    head = key.split(".", 1)[0]
    return actual.get(head)


# ---- faults ---------------------------------------------------------------------------------------------
# Poison: bytes that are no valid message of any service, sent round-robin to the service queues.
POISON_BODIES: tuple[bytes, ...] = (
    b"\x00\x01\x02 not a message \xff\xfe",  # not UTF-8, not JSON
    b'{"infno": "2102", "msgid": "H330100',  # JSON cut off
    b'["an", "array", "is", "no", "message"]',  # JSON, not an object
    b'{"hello": "world"}',  # an object, but none of ours
    b'{"infno": 2102, "input": null, "cmd": 7}',  # the right names, the wrong types
)
POISON_TARGETS = ("bureau", "accounts_admin", "accounts_pay", "pos")


def _ctl(*args: str, timeout: float = 180) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout


def _local_broker(url: str) -> bool:
    from urllib.parse import urlparse
    return (urlparse(url).hostname or "localhost") in ("localhost", "127.0.0.1", "::1")


def _broker_port(url: str) -> int:
    from urllib.parse import urlparse
    return urlparse(url).port or 5672


def tcp_ports_to(pids: list[int], remote_port: int) -> set[int]:
    """The local ports of the TCP connections that these processes hold to remote_port (from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[9] in inodes and int(cols[2].rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


class FaultDriver:
    """Injects a scenario's `faults:` while the traffic runs, and counts what it did.

    kill / broker_restart / drop_connections fire once each, when their trigger is reached (after N visit
    outcomes, × --scale for generated scenarios, or at_s seconds after the traffic began), one at a time;
    poison messages are spread evenly over the traffic; duplicate and delay become GONGJI_CHAOS for the workers;
    timeout_race picks its visits by the seed."""

    def __init__(self, loaded: LoadedScenario, progress: Progress | None = None):
        self.loaded = loaded
        self.faults = list(loaded.scenario.faults)
        self.progress = progress or Progress(enabled=False)
        self.stack: Any = None  # the WorkerStack (kill, drop_connections)
        self.amqp_url = ""
        self.injected: dict[str, int] = {f.kind: 0 for f in self.faults}
        self.restarts: dict[str, int] = {getattr(f, "service"): 0 for f in self.faults if f.kind == "kill"}
        self.connections_closed = 0
        self.poison_sent: dict[str, int] = {}
        self.not_fired: list[str] = []
        self.errors: list[str] = []
        self.race = next((f for f in self.faults if f.kind == "timeout_race"), None)
        self.poison = next((f for f in self.faults if f.kind == "poison"), None)
        self._stopping = asyncio.Event()

    # ---- before the run ---------------------------------------------------------------------------------
    @property
    def disrupts_connections(self) -> bool:
        return any(f.kind in TRIGGERED_KINDS for f in self.faults)

    def chaos(self) -> dict[str, Any] | None:
        """GONGJI_CHAOS for the workers, from the duplicate and delay faults."""
        cfg: dict[str, Any] = {}
        for f in self.faults:
            if f.kind == "duplicate":
                cfg["duplicate"] = float(f.fraction)  # type: ignore[union-attr]
            elif f.kind == "delay":
                cfg["delay"] = float(f.fraction)  # type: ignore[union-attr]
                cfg["delay_ms"] = f.max_ms  # type: ignore[union-attr]
        return {"seed": self.loaded.scenario.seed, **cfg} if cfg else None

    def check(self, *, external: bool, amqp_url: str) -> None:
        """What this machine and these options allow; a SystemExit naming the fault otherwise."""
        problems = []
        for i, f in enumerate(self.faults):
            where = f"{self.loaded.where(('faults', i))}: faults[{i}] ({f.kind})"
            if external and f.kind in NEEDS_STACK:
                problems.append(f"{where}: needs the workers that `gongji run` starts itself; not possible with "
                                f"--external")
            if f.kind == "broker_node_down" and (why := cluster_faults.check(amqp_url, f)):
                problems.append(f"{where}: {why}")
            if f.kind in ("broker_restart", "drop_connections"):
                if external and f.kind == "broker_restart":
                    continue
                if shutil.which("rabbitmqctl") is None:
                    problems.append(f"{where}: needs rabbitmqctl on this machine (the local RabbitMQ's CLI)")
                elif not _local_broker(amqp_url):
                    problems.append(f"{where}: needs the broker on this machine (rabbitmqctl acts on the local "
                                    f"RabbitMQ), but the run uses {amqp_url.split('@')[-1]}")
        if problems:
            raise SystemExit("\n".join(problems))

    def in_race(self, visit_id: str) -> bool:
        if self.race is None:
            return False
        chosen = random.Random(f"{self.loaded.scenario.seed}:race:{visit_id}").random() < float(self.race.share)
        if chosen:
            self.injected["timeout_race"] += 1
        return chosen

    # ---- during the traffic ---------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()

    async def run(self, runner: "Runner") -> None:
        t0 = time.monotonic()
        pending = [(i, f) for i, f in enumerate(self.faults) if f.kind in TRIGGERED_KINDS]
        n_poison = self.poison.count if self.poison is not None else 0  # type: ignore[union-attr]
        sent = 0
        while True:
            stopping = self._stopping.is_set()
            done, elapsed = runner.completed, time.monotonic() - t0
            for item in pending:
                i, f = item
                at_s, after = getattr(f, "at_s"), getattr(f, "after_settlements")
                if (at_s is not None and elapsed >= at_s) or \
                        (after is not None and done >= fault_threshold(self.loaded, after)):
                    pending.remove(item)
                    await self._fire(i, f, runner, done, elapsed)
                    break
            total = max(1, runner.planned)
            while sent < n_poison and (stopping or done >= total * (sent + 1) / (n_poison + 1)):
                await self._send_poison(sent, runner)
                sent += 1
            if stopping:
                break
            try:
                await asyncio.wait_for(self._stopping.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
        for i, f in pending:
            trig = (f"after {fault_threshold(self.loaded, f.after_settlements)} outcomes"  # type: ignore[union-attr]
                    if getattr(f, "after_settlements") is not None else f"at {getattr(f, 'at_s')} s")
            what = f"{f.kind} {f.service}" if getattr(f, "service", None) else f.kind
            self.not_fired.append(f"faults[{i}] ({what}, {trig}): the traffic ended first "
                                  f"({runner.completed} outcomes, {time.monotonic() - t0:.1f} s)")
            self.progress.message(f"fault not injected: {self.not_fired[-1]}")

    async def _fire(self, i: int, f: Any, runner: "Runner", done: int, elapsed: float) -> None:
        when = f"after {done} outcomes, {elapsed:.1f} s into the traffic"
        try:
            if f.kind == "kill":
                proc = self.stack.procs[f.service]
                self.progress.message(f"fault: SIGKILL the {f.service} worker (pid {proc.pid}) {when}; "
                                      f"restart in {f.down_s:g} s")
                await asyncio.to_thread(self.stack.kill, f.service, signal.SIGKILL)
                self.injected["kill"] += 1
                await asyncio.sleep(f.down_s)
                for attempt in range(3):
                    try:
                        await self.stack.start_worker(f.service)
                        break
                    except RuntimeError:
                        if attempt == 2:
                            raise
                        await asyncio.sleep(2)
                self.restarts[f.service] += 1
            elif f.kind == "broker_restart":
                self.progress.message(f"fault: broker restart (rabbitmqctl stop_app) {when}; "
                                      f"start_app in {f.down_s:g} s")
                await asyncio.to_thread(_ctl, "stop_app")
                self.injected["broker_restart"] += 1
                try:
                    await asyncio.sleep(f.down_s)
                finally:
                    await asyncio.to_thread(_ctl, "start_app")
                    await asyncio.to_thread(_ctl, "await_startup")
                self.progress.message("fault: broker is back")
            elif f.kind == "broker_node_down":
                await cluster_faults.node_down(self, f, when)
            elif f.kind == "drop_connections":
                closed = await self._drop_connections(f.scope)
                self.injected["drop_connections"] += 1
                self.connections_closed += closed
                self.progress.message(f"fault: the broker closed {closed} connection(s) ({f.scope}) {when}")
        except Exception as exc:
            self.errors.append(f"faults[{i}] ({f.kind}): {exc}")
            self.progress.message(f"fault injection failed: {self.errors[-1]}")

    async def _drop_connections(self, scope: str) -> int:
        if scope == "all":
            out = await asyncio.to_thread(_ctl, "-q", "list_connections", "pid", "--no-table-headers")
            await asyncio.to_thread(_ctl, "close_all_connections", "gongji-chaos")
            return len([line for line in out.splitlines() if line.strip()])
        pids = [os.getpid()]
        if self.stack is not None:
            pids += [p.pid for p in self.stack.procs.values() if p.poll() is None]
        ports = tcp_ports_to(pids, _broker_port(self.amqp_url))
        out = await asyncio.to_thread(_ctl, "-q", "list_connections", "pid", "peer_port", "--no-table-headers")
        ours = [cols[0] for cols in (line.split() for line in out.splitlines()) if len(cols) == 2
                and cols[1].isdigit() and int(cols[1]) in ports]
        await asyncio.gather(*(asyncio.to_thread(_ctl, "close_connection", pid, "gongji-chaos") for pid in ours))
        return len(ours)

    async def _send_poison(self, k: int, runner: "Runner") -> None:
        names = runner.client.names
        target = POISON_TARGETS[k % len(POISON_TARGETS)]
        exchange, key = {"bureau": (names.bureau_exchange, runner.regions[k % len(runner.regions)]),
                         "accounts_admin": (names.accounts_exchange, "admin"),
                         "accounts_pay": (names.pay_exchange, "pay"),
                         "pos": (names.pos_exchange, "command")}[target]
        body = POISON_BODIES[k % len(POISON_BODIES)]
        deadline = asyncio.get_running_loop().time() + max(60.0, runner.client.retry_window)
        try:
            await runner.client._publish_retrying(
                OutMessage(exchange, key, body, message_id=f"poison-{k:05d}", reply_to=runner.client.key), deadline)
        except Exception as exc:
            self.errors.append(f"poison {k} to {target}: {exc}")
            return
        self.injected["poison"] += 1
        self.poison_sent[target] = self.poison_sent.get(target, 0) + 1

    # ---- after the run ------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {"injected": dict(sorted(self.injected.items())), "worker_restarts": dict(sorted(self.restarts.items())),
                "connections_closed": self.connections_closed, "poison_sent": dict(sorted(self.poison_sent.items())),
                "not_injected": list(self.not_fired), "errors": list(self.errors)}


def sum_stats(directory: Path) -> dict[str, int]:
    """The workers' counters (<data_dir>/stats/<service>-<pid>.json, one per process that ran), summed."""
    total: dict[str, int] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for k, v in data.items():
            if k != "pid" and isinstance(v, int) and not isinstance(v, bool):
                total[k] = total.get(k, 0) + v
    return total


# ---- the run as a whole: stack, runner, auditor, report ----------------------------------------------------
FAULT_RETRY_WINDOW = 300.0  # seconds the runner keeps republishing and waiting in a fault scenario
@dataclass
class RunOptions:
    report_dir: Path | None = None
    seed: int | None = None
    scale: str | None = None
    external: bool = False
    amqp_url: str | None = None
    namespace: str | None = None
    policy_dir: Path | None = None
    concurrency: int = 64
    progress: bool = True
    keep_data: bool = False


@dataclass
class RunResult:
    data: RunData
    report: dict[str, Any]
    invariants: dict[str, str]
    ok: bool
    wall: dict[str, float]
    report_dir: Path | None


async def run_loaded(loaded: LoadedScenario, opts: RunOptions, progress: Progress | None = None,
                     on_stack: Callable[[Any], None] | None = None) -> RunResult:
    """Start what is needed (or use running workers with external), run, audit, write the report."""
    from services.shared.policy import load_policies, policy_dir

    from . import audit, report
    from .stack import WorkerStack, discover_broker, read_dead_letters

    progress = progress or Progress(enabled=opts.progress)
    pdir = opts.policy_dir or loaded.policy_dir or policy_dir()
    policies = load_policies(Path(pdir))
    missing = [r for r in _regions_of(loaded) if r not in policies]
    if missing:
        raise SystemExit(f"{loaded.path}: no policy file for region(s) {', '.join(missing)} in {pdir}")
    wall: dict[str, float] = {}
    t0 = time.monotonic()
    driver = FaultDriver(loaded, progress) if loaded.scenario.faults else None
    quiet = _QuietAmqpLogs(driver is not None and driver.disrupts_connections)
    broker = discover_broker(opts.amqp_url, allow_docker=not opts.external)
    stack = None
    namespace = ""
    dead: list[dict[str, str]] = []
    stats: dict[str, int] = {}
    data: RunData | None = None
    try:
        if driver is not None:
            driver.check(external=opts.external, amqp_url=broker.url)
            driver.amqp_url = broker.url
        from .errors import check_broker
        await check_broker(broker.url)  # one line and exit code 3 if it is not there or refuses us
        if opts.external:
            namespace = opts.namespace or "gongji"
            mapper = Mapper(uuid.uuid4().hex[:5])
        else:
            env = {"GONGJI_POLICY_DIR": str(pdir)}
            chaos = driver.chaos() if driver is not None else None
            if chaos is not None:
                env["GONGJI_CHAOS"] = json.dumps(chaos, sort_keys=True)
            stack = WorkerStack(broker.url, opts.namespace, env=env)
            if driver is not None:
                driver.stack = stack
            progress.message(f"starting workers (namespace {stack.ns}, broker {broker.origin})")
            await stack.start()
            if on_stack is not None:
                on_stack(stack)
            namespace = stack.ns
            mapper = Mapper()
        wall["start"] = time.monotonic() - t0
        # Fault scenarios: the runner outlives broker restarts and dropped connections (retries, generous waits).
        client = ObservingClient(broker.url, namespace, name="run", timeout=60,
                                 retry_window=FAULT_RETRY_WINDOW if driver is not None else 0.0)
        await client.connect()
        try:
            runner = Runner(loaded, client, policies, mapper=mapper, progress=progress,
                            concurrency=opts.concurrency, faults=driver)
            if opts.report_dir is not None:
                from .export import SettlementExport
                runner.export = SettlementExport(opts.report_dir)
            try:
                data = await runner.run()
            finally:
                if runner.export is not None:
                    runner.export.close()
            t1 = time.monotonic()
            progress.message("auditing")
            invariants = await audit.audit(runner, data)
            wall["audit"] = time.monotonic() - t1
        finally:
            await client.close()
    finally:
        if stack is not None:
            await stack.stop()
            if driver is not None:
                stats = sum_stats(stack.data_dir / "stats")
        if driver is not None and namespace:
            try:  # our own namespace: take them; a shared one (--external): only look
                dead = await read_dead_letters(broker.url, namespace, consume=stack is not None)
            except Exception as exc:
                driver.errors.append(f"reading {namespace}.dead: {exc}")
        if stack is not None:
            try:
                await stack.cleanup()
            except Exception:
                pass
            if not opts.keep_data:
                stack.remove_data()
        broker.close()
        quiet.restore()
    assert data is not None
    if driver is not None:
        data.faults = {**driver.summary(), "stats": stats, "dead": dead, "namespace": namespace,
                       "runner_retries": client.retries + client.resends}
    wall.update(data.timings)
    wall.update({f"latency_{k}": v for k, v in percentiles(runner.latencies).items()})
    wall["total"] = time.monotonic() - t0
    rep = report.build(data, invariants, scale=str(loaded.scale))
    ok = rep["expectations"]["failed"] == 0 and all(v == "ok" for v in invariants.values()) and report.faults_ok(rep)
    if opts.report_dir is not None:
        report.write(opts.report_dir, data, rep, invariants)
    return RunResult(data=data, report=rep, invariants=invariants, ok=ok, wall=wall, report_dir=opts.report_dir)


class _QuietAmqpLogs:
    """While a fault scenario closes connections on purpose, aio-pika's and aiormq's reconnection chatter
    (tracebacks of the forced close) is expected: keep it off stderr; the fault driver says what happened."""

    NAMES = ("aio_pika", "aiormq")

    def __init__(self, active: bool):
        import logging
        self.saved = {n: logging.getLogger(n).level for n in self.NAMES} if active else {}
        for n in self.saved:
            logging.getLogger(n).setLevel(logging.CRITICAL)

    def restore(self) -> None:
        import logging
        for n, level in self.saved.items():
            logging.getLogger(n).setLevel(level)
        self.saved = {}


def _regions_of(loaded: LoadedScenario) -> list[str]:
    from .scenario import all_regions
    return all_regions(loaded)


# ---- `gongji run` --------------------------------------------------------------------------------------
def add_arguments(p: Any) -> None:
    import os
    p.add_argument("scenario", help="a scenario file (YAML), e.g. scenarios/child_paid_by_mother.yaml")
    p.add_argument("--report-dir", default=None, help="where report.json and report.html go "
                                                      "(default reports/<scenario name>)")
    p.add_argument("--seed", type=int, default=None, help="replace the scenario's seed (the generator's only source "
                                                          "of randomness)")
    p.add_argument("--scale", default=os.environ.get("GONGJI_SCALE"),
                   help="multiply the generated population (generator.families) by this, e.g. 0.02 "
                        "(env GONGJI_SCALE; default 1)")
    p.add_argument("--external", action="store_true",
                   help="drive workers that are already running (e.g. docker compose up) instead of starting them; "
                        "people and facilities get a per-run tag so runs never meet")
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL"),
                   help="RabbitMQ URL (env AMQP_URL; default: localhost:5672, else a testcontainers RabbitMQ)")
    p.add_argument("--namespace", default=None,
                   help="with --external: the workers' namespace (env GONGJI_NAMESPACE, default gongji); "
                        "otherwise a fresh random one")
    p.add_argument("--policy", default=None, help="a directory of policy files (overrides the scenario's "
                                                  "`policies:` and GONGJI_POLICY_DIR)")
    p.add_argument("--concurrency", type=int, default=64, help="generated visits in flight at once (default 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--keep-data", action="store_true", help="keep the workers' temporary data directory")
    p.add_argument("--junit", default=None, metavar="FILE",
                   help="write JUnit XML for CI: one testcase per expectation and per invariant")


def options_from(args: Any) -> RunOptions:
    import os
    namespace = args.namespace
    if args.external and namespace is None:
        namespace = os.environ.get("GONGJI_NAMESPACE", "gongji")
    return RunOptions(report_dir=None, seed=args.seed, scale=args.scale, external=args.external,
                      amqp_url=args.amqp_url, namespace=namespace,
                      policy_dir=Path(args.policy) if args.policy else None, concurrency=args.concurrency,
                      progress=not args.quiet, keep_data=args.keep_data)


def main(args: Any) -> int:
    from . import junit
    from .errors import EXIT_FAILED, EXIT_INVALID, EXIT_OK, run_guarded
    from .scenario import ScenarioError, load_scenario
    name = Path(args.scenario).stem
    try:
        loaded = load_scenario(args.scenario, scale=args.scale, seed=args.seed)
    except ScenarioError as exc:
        print(f"invalid scenario:\n{exc}", file=sys.stderr)
        if args.junit:
            junit.write(args.junit, junit.error_suite(name, f"invalid scenario:\n{exc}"))
        return EXIT_INVALID
    opts = options_from(args)
    opts.report_dir = Path(args.report_dir) if args.report_dir else Path("reports") / loaded.scenario.name
    code, result, message = run_guarded(lambda: run_loaded(loaded, opts), opts.amqp_url)
    if result is None:
        print(f"gongji run: {message}", file=sys.stderr)
        if args.junit:
            junit.write(args.junit, junit.error_suite(name, message or "did not run"))
        return code
    print(summary(result))
    if args.junit:
        junit.write(args.junit, junit.build(result.report, has_final=loaded.scenario.final is not None))
    return EXIT_OK if result.ok else EXIT_FAILED


def summary(result: RunResult) -> str:
    from .published import yuan
    rep, lines = result.report, []
    ok_mark = "PASSED" if result.ok else "FAILED"
    lines.append(f"scenario {rep['scenario']} (seed {rep['seed']}, scale {rep['scale']}): {ok_mark}")
    pop = rep["population"]
    lines.append(f"  population: {pop['people']} people, {pop['families']} families, {pop['accounts']} accounts, "
                 f"{pop['bindings']} bindings, {pop['facilities']} facilities")
    steps = rep["steps"]
    if steps:
        lines.append("")
        rows = []
        for row in steps[:80]:
            result_txt = row.get("status") or ("infcode " + str(row.get("infcode")) if "infcode" in row else "-")
            check = ("ok" if row["passed"] else "FAIL") if row["expected"] or not row["passed"] else "-"
            rows.append((row["step"][:40], row["at"], row["event"], str(result_txt)[:14], yuan(row.get("acct_pay")),
                         yuan(row.get("acct_mulaid_pay")), yuan(row.get("psn_cash_pay")), check))
        from .terminal import table
        lines.append(table(("step", "at", "event", "result", "acct_pay", "mulaid", "cash", "check"), rows,
                           right={4, 5, 6}))
        if len(steps) > 80:
            lines.append(f"  ... and {len(steps) - 80} more steps (see report.json)")
    lines.append("")
    oc = rep["outcomes"]
    lines.append(f"  visits {rep['visits']}, reversals {rep['reversals']}; outcomes: "
                 + ", ".join(f"{k} {v}" for k, v in oc["by_status"].items())
                 + ("; errors: " + ", ".join(f"{k} {v}" for k, v in oc["by_err_code"].items()) if oc["by_err_code"]
                    else ""))
    t = rep["totals"]
    lines.append(f"  totals: bill {yuan(t['medfee_sumamt'])}, pooled fund {yuan(t['hifp_pay'])}, accounts "
                 f"{yuan(t['acct_pay'])} (family {yuan(t['acct_mulaid_pay'])}), cash {yuan(t['psn_cash_pay'])}")
    exp = rep["expectations"]
    if exp["passed"] + exp["failed"] == 0:
        lines.append("  expectations: none in this scenario (the invariants below check the run)")
    else:
        lines.append(f"  expectations: {exp['passed']} passed, {exp['failed']} failed")
    for f in exp["failures"]:
        lines.append(f"    FAIL step {f['step']} ({f['where']}): {f['field']}: expected "
                     f"{json.dumps(f['expected'], ensure_ascii=False)}, got {json.dumps(f['actual'], ensure_ascii=False)}")
    lines.append("  invariants:")
    for k, v in rep["invariants"].items():
        lines.append(f"    {'ok  ' if v == 'ok' else 'FAIL'} {k}" + ("" if v == "ok" else f": {v}"))
    f = rep.get("faults")
    if f is not None:
        from .report import faults_ok
        lines.append(f"  faults: {'clean' if faults_ok(rep) else 'NOT CLEAN'}; injected "
                     + ", ".join(f"{k} {v}" for k, v in f["injected"].items())
                     + (f"; restarted " + ", ".join(f"{k} {v}" for k, v in f["worker_restarts"].items())
                        if f["worker_restarts"] else ""))
        lines.append(f"    redelivered {f['redelivered']}, duplicates absorbed {f['duplicates_absorbed']}, "
                     f"runner retries {f['runner_retries']}; dead-lettered "
                     + (", ".join(f"{k} {v}" for k, v in f["dead_lettered"].items()) or "none"))
        lines.append(f"    visits without outcome {f['visits_without_outcome']}, double debits {f['double_debits']}, "
                     f"cap overruns {f['cap_overruns']}, negative balances {f['negative_balances']}, ledger balanced "
                     f"{f['ledger_balanced']}, reconciliation matches {f['reconciliation_matches']}")
        if "timeout_race" in f:
            lines.append("    timeout race: " + ", ".join(f"{k} {v}" for k, v in f["timeout_race"].items()))
        for text in f["not_injected"]:
            lines.append(f"    NOT INJECTED {text}")
        for text in f["errors"]:
            lines.append(f"    ERROR {text}")
    w = result.wall
    if "latency_p50" in w:
        lines.append(f"  latency per visit (command → outcome): p50 {w['latency_p50'] * 1000:.0f} ms, "
                     f"p95 {w['latency_p95'] * 1000:.0f} ms, p99 {w['latency_p99'] * 1000:.0f} ms, "
                     f"max {w['latency_max'] * 1000:.0f} ms")
    lines.append(f"  wall clock: total {w.get('total', 0):.1f} s (workers {w.get('start', 0):.1f}, "
                 f"load {w.get('load', 0):.1f}, generated traffic {w.get('traffic', 0):.1f}, "
                 f"timeline {w.get('timeline', 0):.1f}, audit {w.get('audit', 0):.1f})")
    if result.report_dir is not None:
        lines.append(f"  report: {result.report_dir}/report.json, {result.report_dir}/report.html")
    return "\n".join(lines)
