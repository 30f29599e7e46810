"""The run as a whole: start the stack (or use running workers), run, audit, write the report."""
from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from services.shared.policy import load_policies, policy_dir

from .. import audit, cluster_faults, report  # noqa: F401 - cluster_faults registers broker_node_down
from ..errors import check_broker
from ..export import SettlementExport
from ..scenario.loader import LoadedScenario, all_regions
from ..stack import WorkerStack, discover_broker, read_dead_letters
from ..terminal import Progress, percentiles
from .faults import FaultDriver
from .identities import Mapper
from .observations import ObservingClient, RunData
from .runner import Runner


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


def keep_worker_logs(source: Path, target: Path) -> None:
    """The workers' own logs (warnings and errors: a reconnect, a publish that failed, a handler that crashed)
    go next to the report when there is anything in them, so that a run that went wrong can be read after its
    temporary data directory is gone."""
    for log_file in sorted(source.glob("*.log")) if source.is_dir() else []:
        if log_file.stat().st_size:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_file, target / log_file.name)


async def run_loaded(loaded: LoadedScenario, opts: RunOptions, progress: Progress | None = None,
                     on_stack: Callable[[Any], None] | None = None) -> RunResult:
    """Start what is needed (or use running workers with external), run, audit, write the report."""

    progress = progress or Progress(enabled=opts.progress)
    pdir = opts.policy_dir or loaded.policy_dir or policy_dir()
    policies = load_policies(Path(pdir))
    missing = [r for r in all_regions(loaded) if r not in policies]
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
            if opts.report_dir is not None:
                keep_worker_logs(stack.logs, opts.report_dir / "logs")
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
        self.saved = {n: logging.getLogger(n).level for n in self.NAMES} if active else {}
        for n in self.saved:
            logging.getLogger(n).setLevel(logging.CRITICAL)

    def restore(self) -> None:
        for n, level in self.saved.items():
            logging.getLogger(n).setLevel(level)
        self.saved = {}

