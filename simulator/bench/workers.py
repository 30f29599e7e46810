"""The workers as processes for the bench, and what their data directories say (outbox, counters)."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aio_pika

from contracts.routing import Names
from services.shared.topology import queues

from ..stack import cleanup_namespace as cleanup_standard

WORKERS = ("bureau", "accounts", "pos")


# ---- worker processes -----------------------------------------------------------------------------------
async def _wait_ready(proc: subprocess.Popen[bytes], what: str, timeout: float = 120.0) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
    if b"ready" not in line:
        raise RuntimeError(f"{what} did not start: {line!r}")


class Workers:
    def __init__(self, amqp_url: str, ns: str, data_dir: Path, prefetch: int):
        self.amqp_url, self.ns, self.data_dir, self.prefetch = amqp_url, ns, data_dir, prefetch
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    async def start(self) -> None:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GONGJI_LOG_FORMAT": "json"}
        replicas = int(os.environ.get("GONGJI_BENCH_REPLICAS", "1"))  # processes per service (issue 12)
        for service in [s if r == 1 else f"{s}#{r}" for r in range(1, replicas + 1) for s in WORKERS]:
            cmd = [sys.executable, "-m", "simulator.cli", "worker", service.split("#")[0], "--namespace", self.ns,
                   "--data-dir", str(self.data_dir), "--amqp-url", self.amqp_url, "--prefetch", str(self.prefetch)]
            with open(logs / f"{service}.log", "ab") as log:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
            self.procs[service] = proc
            try:
                await _wait_ready(proc, f"{service} worker")
            except Exception as exc:
                tail = (logs / f"{service}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{exc}; its log ends with:\n{tail}") from None

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())


async def cleanup_namespace(amqp_url: str, ns: str, extra_queues: list[str], extra_exchanges: list[str]) -> None:
    """Delete this run's queues and exchanges: the shared cleanup (simulator.stack), plus the bench's own."""
    n = Names(ns)
    await cleanup_standard(amqp_url, ns, [*(q.name for q in queues(n, [])), *extra_queues])
    if extra_exchanges:
        conn = await aio_pika.connect(amqp_url)
        try:
            for ex in extra_exchanges:
                try:
                    await (await conn.channel()).exchange_delete(ex)
                except Exception:
                    pass
        finally:
            await conn.close()


def outbox_rows(data_dir: Path) -> dict[str, int]:
    """Rows waiting in each worker's outbox (read-only; WAL lets us read while the worker writes)."""
    if os.environ.get("GONGJI_DATABASE_URL"):  # the workers are on PostgreSQL (issue 12)
        from services.shared.pg_admin import outbox_rows as pg_outbox_rows
        return pg_outbox_rows(os.environ["GONGJI_DATABASE_URL"])
    out = {}
    for db in sorted(data_dir.glob("*.db")):
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                out[db.stem] = int(con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            finally:
                con.close()
        except sqlite3.Error:
            pass
    return out


def worker_publishes(data_dir: Path) -> dict[str, int]:
    """Messages each worker's broker confirmed so far, from the counters in their stats files (one file per
    process; a restarted worker's files add up)."""
    out: dict[str, int] = {}
    for f in sorted((data_dir / "stats").glob("*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        out[d.get("service", f.stem)] = out.get(d.get("service", f.stem), 0) + int(d.get("broker_publishes") or 0)
    return out


def sum_stat(data_dir: Path, key: str) -> int:
    """A counter summed over every worker's stats files (whole run)."""
    total = 0
    for f in (data_dir / "stats").glob("*.json"):
        try:
            total += int(json.loads(f.read_text()).get(key) or 0)
        except (OSError, ValueError):
            pass
    return total


async def publish_mark(data_dir: Path, client: Any, timeout: float) -> dict[str, int]:
    """Every publish so far, once the outboxes are empty and the stats files (written each second) caught up."""
    await quiesce(data_dir, timeout)
    await asyncio.sleep(1.5)
    return {**worker_publishes(data_dir), "bench_client": client.broker.published}


async def quiesce(data_dir: Path, timeout: float) -> dict[str, Any]:
    """Wait until every outbox is empty, so that what loading left for the relay (e.g. one balance event per
    bulk-opened account) is not measured as settlement work."""
    t0 = time.perf_counter()
    first = rows = await asyncio.to_thread(outbox_rows, data_dir)
    while sum(rows.values()) and time.perf_counter() - t0 < timeout:
        await asyncio.sleep(1.0)
        rows = await asyncio.to_thread(outbox_rows, data_dir)
    return {"outbox_rows_after_load": first, "quiesce_s": round(time.perf_counter() - t0, 1),
            "outbox_rows_left": rows}
