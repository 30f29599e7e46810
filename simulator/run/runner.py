"""Drives a scenario: loads the population, runs the generated traffic and the timeline on the virtual clock,
waits for every outcome, checks each step's expectations, then hands over to the auditor and the report.

Determinism: the timeline runs step by step (each outcome is awaited before the next step), except in
concurrent groups. Generated traffic runs families in parallel but each family's visits in order, and no two
generated visits share a facility and a second, so the POS's msgids (facility + second + sequence), and with
them the setl_ids, do not depend on timing. Client-side msgids (admin transactions) come from a counter."""
from __future__ import annotations

import array
import asyncio
import itertools
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from contracts.base import SHANGHAI
from contracts.envelope import Reply, make_msgid
from contracts.money import line_total, to_fen
from contracts.pos import ReverseVisit, SettleVisit
from contracts.settlement import FeeDetail
from services.shared.policy import MED_TYPE_CATEGORY, RegionPolicy

from ..generate import GenVisit, Population, generate
from ..scenario.loader import FlatStep, LoadedScenario
from ..scenario.model import KINDS, MONEY_FIELDS, BindingSpec, Item, Person
from ..scenario.references import UnresolvedReference, substitute
from ..stored import StoredOutcome
from ..terminal import Progress
from .expectations import Expectations
from .identities import Mapper
from .observations import ObservingClient, Obs, RunData


if TYPE_CHECKING:
    from .faults import FaultDriver

BATCH = 5000  # G003 / G103 limit per message


_DONE: Any = None  # stands for a generated visit that has been sent (see Runner.generated_traffic)

KNOWN_ADMIN = {"G001", "G002", "G003", "G101", "G102", "G103", "G111", "G121", "G199", "1101", "5206", "3201"}


# ---- the runner ----------------------------------------------------------------------------------------
class Runner(Expectations):
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
        if service == "bureau" and infno == "3201":
            service = "audit"  # the simulator reconciles the facilities it plays (a facility only its own day)
        sign_no = ""
        if service in ("bureau", "audit") and not infno.startswith("G") and infno != "9001":
            sign_no = await self.sign_no_for(when)
        req = self.client.envelope(infno, data, insuplc_admdvs=region, when=when,
                                   fixmedins_code=self.mapper.client_code, msgid=self.msgid(when))
        if sign_no:
            req = req.model_copy(update={"sign_no": sign_no})
        if service == "accounts":
            return await self.client.accounts_admin(req, timeout)
        if service == "registry":
            return await self.client.bureau_registry(req, timeout)
        if service == "audit":  # the region's bureau, through the registry exchange: 3201 for any facility
            return await self.client.call(self.client.names.registry_exchange, region, req, timeout)
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
