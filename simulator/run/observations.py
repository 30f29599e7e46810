"""What a run observes: the client that keeps every outcome event, one Obs per visit command, and RunData
(everything the auditor and the report read)."""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from contracts.envelope import Reply
from contracts.money import to_fen
from contracts.pos import ReverseVisit, SettleVisit, VisitOutcome
from services.shared import batching
from services.shared.broker import Unroutable
from services.shared.policy import RegionPolicy
from services.shared.store import OutMessage

from ..client import Client
from ..generate import Population
from ..scenario.loader import LoadedScenario
from ..scenario.model import BindingSpec, Facility, Person
from ..stored import StoredOutcome
from .identities import Mapper


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
            for body in batching.bodies(message.headers, message.body):  # the POS batches its outcomes
                vid = VisitOutcome.model_validate_json(body).visit_id
                # A digest, not the body: the auditor only counts distinct outcomes (memory stays flat).
                self.events.setdefault(vid, []).append(hashlib.blake2b(body, digest_size=16).digest())
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
