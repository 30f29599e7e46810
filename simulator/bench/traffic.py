"""Loading the population and driving visits (closed or open loop)."""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from contracts import infno
from contracts.admin import Bind, OpenAccount, RegisterPerson
from contracts.routing import REGISTRY_KEY

from .client import BenchClient
from .metrics import Record
from .population import BJ, BULK, FACILITIES, HZ, Population, VisitMix


# ---- loading --------------------------------------------------------------------------------------------
async def load_population(client: BenchClient, pop: Population, window: int = 4,
                          throttle: Any = None) -> dict[str, Any]:
    """Facilities, persons (G003) and accounts (G103) in bulk, then holders (G104) and bindings (G111).
    `throttle`, if given, is awaited before each G103 message (see --load-max-outbox)."""
    n = client.names
    t0 = time.perf_counter()
    for code, name, kind, lv, region in FACILITIES:
        await client.call(n.bureau_exchange, REGISTRY_KEY, "G001",
                          {"fixmedins_code": code, "fixmedins_name": name, "fixmedins_type": kind, "hosp_lv": lv,
                           "admdvs": region}, region)
    persons = pop.persons()
    accounts = pop.accounts_rows()
    # The models check a sample: what we send in bulk is what the contracts accept.
    for p in persons[HZ][:3] + persons[HZ][-3:] + persons[BJ][:3]:
        RegisterPerson.model_validate(p)
    for a in accounts[:5]:
        OpenAccount.model_validate(a)
    t_gen = time.perf_counter() - t0

    async def bulk(jobs: list[tuple[str, str, str, dict[str, Any], str]], window: int = window) -> float:
        t = time.perf_counter()
        sem = asyncio.Semaphore(window)

        async def one(job: tuple[str, str, str, dict[str, Any], str]) -> None:
            async with sem:
                if throttle is not None and job[2] == "G103":
                    await throttle()
                await client.call(*job)
        await asyncio.gather(*(one(j) for j in jobs))
        return time.perf_counter() - t

    person_jobs = [(n.bureau_exchange, region, "G003", {"persons": rows[k:k + BULK]}, region)
                   for region, rows in persons.items() for k in range(0, len(rows), BULK)]
    account_jobs = [(n.accounts_exchange, "admin", "G103", {"accounts": accounts[k:k + BULK]}, HZ)
                    for k in range(0, len(accounts), BULK)]
    t1 = time.perf_counter()
    t_persons, t_accounts = await asyncio.gather(bulk(person_jobs), bulk(account_jobs))
    bindings = pop.bindings()
    for b in bindings[:3]:
        Bind.model_validate(b)
    t_bind = 0.0
    if "G104" in infno.ACCOUNTS_ADMIN_INPUTS:  # members without an account must be known to the accounts service
        t_bind += await bulk([(n.accounts_exchange, "admin", "G104", h, HZ) for h in pop.holders()], window=32)
    sem = asyncio.Semaphore(32)

    async def bind_one(b: dict[str, Any]) -> None:
        async with sem:
            if "G109" in infno.ACCOUNTS_ADMIN_INPUTS:  # the identity check is a recorded face check's token
                out = await client.call(n.accounts_exchange, "admin", "G109",
                                        {"psn_no": b["authorizer_psn_no"], "passed": True}, HZ)
                b = {**b, "verify": {"method": "face", "token": out["face_token"]}}
            await client.call(n.accounts_exchange, "admin", "G111", b, HZ)
    t = time.perf_counter()
    await asyncio.gather(*(bind_one(b) for b in bindings))
    t_bind += time.perf_counter() - t
    total = time.perf_counter() - t0
    return {"load_s": round(total, 2), "load_persons_s": round(t_persons, 2), "load_accounts_s": round(t_accounts, 2),
            "load_bulk_wall_s": round(time.perf_counter() - t1 - t_bind, 2), "load_bindings_s": round(t_bind, 2),
            "load_generate_s": round(t_gen, 2), "persons": sum(len(v) for v in persons.values()),
            "bindings": len(bindings), "bulk_messages": len(person_jobs) + len(account_jobs)}


async def drive(client: BenchClient, mix: VisitMix, records: list[Record], *, concurrency: int | None,
                rate: float | None, warmup: float, duration: float, seed: int, on_window: Any, drain_timeout: float,
                max_outstanding: int) -> tuple[float, float, int]:
    """Sends visits until warm-up + duration is over, then waits for the stragglers; appends to `records`."""
    loop = asyncio.get_running_loop()
    counter = iter(range(10 ** 12))
    t_start = loop.time()
    t_measure, t_end = t_start + warmup, t_start + warmup + duration
    pending: set[asyncio.Future[Any]] = set()
    failures = Counter[str]()

    async def one(t_sched: float | None) -> None:
        body, visit_id = mix.command(next(counter))
        t0 = loop.time() if t_sched is None else t_sched
        try:
            fut = await client.submit(body, visit_id)
            status, mulaid, trips = await asyncio.wait_for(fut, mix.timeout_ms / 1000 * 3 + 30)
        except Exception as exc:  # a lost outcome is a result too, not a crash of the bench
            failures[type(exc).__name__] += 1
            client.waiters.pop(visit_id, None)
            status, mulaid, trips = f"error:{type(exc).__name__}", False, 0
        records.append(Record(t0, loop.time(), status, mulaid, trips))

    window_task = asyncio.create_task(on_window(t_measure, t_end))
    if concurrency is not None:
        async def closed() -> None:
            while loop.time() < t_end:
                await one(None)
        await asyncio.gather(*(closed() for _ in range(concurrency)))
    else:
        assert rate is not None
        rng = random.Random(seed * 1_000_003 + 5)
        t_next = t_start
        sem = asyncio.Semaphore(max_outstanding)

        async def opened(t_sched: float) -> None:
            try:
                await one(t_sched)
            finally:
                sem.release()

        while t_next < t_end:
            delay = t_next - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await sem.acquire()
            task = asyncio.ensure_future(opened(t_next))
            pending.add(task)
            task.add_done_callback(pending.discard)
            t_next += rng.expovariate(rate)
        if pending:
            await asyncio.wait(pending, timeout=drain_timeout)
    await window_task
    return t_measure, t_end, len(pending)
