"""Fault injection while the traffic runs: the FaultDriver, and the registry of fault kinds it knows.

A fault kind that fires once at its trigger (after N outcomes or at_s seconds) is an entry of TRIGGERED; one
that the workers play themselves (GONGJI_CHAOS) an entry of CHAOS. poison and timeout_race are woven into the
traffic and live in the driver. A new triggered kind is registered from its own module with one line:

    TRIGGERED["broker_node_down"] = TriggeredKind(fire=node_down, check=needs_cluster, needs_stack=True)

where `async def node_down(driver, fault, when)` injects it (and counts driver.injected[fault.kind] += 1) and
`def needs_cluster(fault, external, amqp_url)` says what this machine lacks for it, or None. That module must be
imported before a run (an import in simulator/run/orchestration.py), and the scenario file needs the kind's
model: a _Triggered subclass in simulator/scenario/model.py, in the Fault union and FAULT_KINDS."""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import urlparse

import psutil

from services.shared.store import OutMessage

from ..scenario.loader import LoadedScenario, fault_threshold
from ..terminal import Progress


if TYPE_CHECKING:
    from .runner import Runner

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
    return (urlparse(url).hostname or "localhost") in ("localhost", "127.0.0.1", "::1")


def _broker_port(url: str) -> int:
    return urlparse(url).port or 5672


def tcp_ports_to(pids: list[int], remote_port: int) -> set[int]:
    """The local ports of the TCP connections that these processes hold to remote_port."""
    ports: set[int] = set()
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        ports.update(c.laddr.port for c in conns if c.raddr and c.raddr.port == remote_port)
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
        return any(f.kind in TRIGGERED for f in self.faults)

    def chaos(self) -> dict[str, Any] | None:
        """GONGJI_CHAOS for the workers, from the duplicate and delay faults."""
        cfg: dict[str, Any] = {}
        for f in self.faults:
            if f.kind in CHAOS:
                cfg.update(CHAOS[f.kind](f))
        return {"seed": self.loaded.scenario.seed, **cfg} if cfg else None

    def check(self, *, external: bool, amqp_url: str) -> None:
        """What this machine and these options allow; a SystemExit naming the fault otherwise."""
        problems = []
        for i, f in enumerate(self.faults):
            where = f"{self.loaded.where(('faults', i))}: faults[{i}] ({f.kind})"
            kind = TRIGGERED.get(f.kind)
            needs_stack = f.kind in CHAOS or (kind is not None and kind.needs_stack)
            if external and needs_stack:
                problems.append(f"{where}: needs the workers that `gongji run` starts itself; not possible with "
                                f"--external")
            elif kind is not None and kind.check is not None and (problem := kind.check(f, external, amqp_url)):
                problems.append(f"{where}: {problem}")
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
        pending = [(i, f) for i, f in enumerate(self.faults) if f.kind in TRIGGERED]
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
            await TRIGGERED[f.kind].fire(self, f, when)
        except Exception as exc:
            self.errors.append(f"faults[{i}] ({f.kind}): {exc}")
            self.progress.message(f"fault injection failed: {self.errors[-1]}")

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


# ---- the fault kinds ------------------------------------------------------------------------------------
async def kill(driver: FaultDriver, f: Any, when: str) -> None:
    proc = driver.stack.procs[f.service]
    driver.progress.message(f"fault: SIGKILL the {f.service} worker (pid {proc.pid}) {when}; "
                            f"restart in {f.down_s:g} s")
    await asyncio.to_thread(driver.stack.kill, f.service, signal.SIGKILL)
    driver.injected["kill"] += 1
    await asyncio.sleep(f.down_s)
    for attempt in range(3):
        try:
            await driver.stack.start_worker(f.service)
            break
        except RuntimeError:
            if attempt == 2:
                raise
            await asyncio.sleep(2)
    driver.restarts[f.service] += 1


async def broker_restart(driver: FaultDriver, f: Any, when: str) -> None:
    driver.progress.message(f"fault: broker restart (rabbitmqctl stop_app) {when}; start_app in {f.down_s:g} s")
    await asyncio.to_thread(_ctl, "stop_app")
    driver.injected["broker_restart"] += 1
    try:
        await asyncio.sleep(f.down_s)
    finally:
        await asyncio.to_thread(_ctl, "start_app")
        await asyncio.to_thread(_ctl, "await_startup")
    driver.progress.message("fault: broker is back")


async def drop_connections(driver: FaultDriver, f: Any, when: str) -> None:
    closed = await _drop_connections(driver, f.scope)
    driver.injected["drop_connections"] += 1
    driver.connections_closed += closed
    driver.progress.message(f"fault: the broker closed {closed} connection(s) ({f.scope}) {when}")


async def _drop_connections(driver: FaultDriver, scope: str) -> int:
    if scope == "all":
        out = await asyncio.to_thread(_ctl, "-q", "list_connections", "pid", "--no-table-headers")
        await asyncio.to_thread(_ctl, "close_all_connections", "gongji-chaos")
        return len([line for line in out.splitlines() if line.strip()])
    pids = [os.getpid()]
    if driver.stack is not None:
        pids += [p.pid for p in driver.stack.procs.values() if p.poll() is None]
    ports = tcp_ports_to(pids, _broker_port(driver.amqp_url))
    out = await asyncio.to_thread(_ctl, "-q", "list_connections", "pid", "peer_port", "--no-table-headers")
    ours = [cols[0] for cols in (line.split() for line in out.splitlines()) if len(cols) == 2
            and cols[1].isdigit() and int(cols[1]) in ports]
    await asyncio.gather(*(asyncio.to_thread(_ctl, "close_connection", pid, "gongji-chaos") for pid in ours))
    return len(ours)


def needs_local_rabbitmqctl(f: Any, external: bool, amqp_url: str) -> str | None:
    if shutil.which("rabbitmqctl") is None:
        return "needs rabbitmqctl on this machine (the local RabbitMQ's CLI)"
    if not _local_broker(amqp_url):
        return (f"needs the broker on this machine (rabbitmqctl acts on the local RabbitMQ), but the run uses "
                f"{amqp_url.split('@')[-1]}")
    return None


@dataclass(frozen=True)
class TriggeredKind:
    """A fault that fires once, at its trigger."""

    fire: Callable[[FaultDriver, Any, str], Awaitable[None]]  # (driver, the scenario's fault, "after N outcomes…")
    check: Callable[[Any, bool, str], str | None] | None = None  # (fault, external, amqp_url) → what is missing
    needs_stack: bool = False  # needs the workers `gongji run` starts (not possible with --external)


TRIGGERED: dict[str, TriggeredKind] = {
    "kill": TriggeredKind(kill, needs_stack=True),
    "broker_restart": TriggeredKind(broker_restart, needs_local_rabbitmqctl, needs_stack=True),
    "drop_connections": TriggeredKind(drop_connections, needs_local_rabbitmqctl),
}
# kinds the workers play themselves: the fault → its part of GONGJI_CHAOS (they need the workers we start)
CHAOS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "duplicate": lambda f: {"duplicate": float(f.fraction)},
    "delay": lambda f: {"delay": float(f.fraction), "delay_ms": f.max_ms},
}
