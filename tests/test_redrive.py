"""`gongji redrive`: work the broker dead-lettered (a handler that kept failing: a bug) goes back after the fix,
and completes exactly once."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from simulator.stack import read_dead_letters
from tests.harness import PHARMACY, REPO, Stack, audit, balance, line, person, uid, visit

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal


async def test_redrive_puts_dead_lettered_payments_back_after_a_fix(amqp_url: str, run_id: str,
                                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    s = Stack(amqp_url, f"rd{run_id}", Path(tmp_path_factory.mktemp("redrive")))
    # The accounts service's pay handler has a bug: every payment request fails, is redelivered, and after the
    # quorum queue's delivery limit the broker dead-letters it.
    s.env["GONGJI_CHAOS"] = json.dumps({"bug": ["accounts.pay"]})
    await s.start()
    try:
        c = s.client
        assert c is not None
        people = [await person(c, uid("p"), balance="100.00") for _ in range(3)]
        cmds = [visit(p, PHARMACY, "41", f"2026-06-01 10:0{i}:00", [line("XA01", f"{10 * (i + 1)}.00")],
                      presettle=False, timeout_ms=600000) for i, p in enumerate(people)]
        for cmd in cmds:
            await c.submit(cmd)
        dead: list[dict[str, str]] = []
        for _ in range(600):  # 20 deliveries, half a second apart, for each payment
            dead = await read_dead_letters(amqp_url, s.ns, consume=False)
            if len(dead) >= 3:
                break
            await asyncio.sleep(0.2)
        assert sorted(d["message_id"] for d in dead) == sorted(f"pay:S{m}" for m in await _settle_msgids(s, cmds))
        # One by one the broker dead-letters them at the delivery limit; payments that travelled in one batch
        # (issue 11) are each refused alone by the worker after its in-process tries, the batch's others going on.
        assert all(d["reason"] == "delivery_limit" or d["reason"].startswith("handler failed") for d in dead)
        assert not any(cmd.visit_id in c.outcomes for cmd in cmds)
        assert [await balance(c, p) for p in people] == [D("100.00")] * 3  # nothing paid yet

        # The fix: the accounts worker restarted without the bug. Then the redrive.
        s.kill("accounts", signal.SIGTERM)
        del s.env["GONGJI_CHAOS"]
        await s.start_worker("accounts")
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "simulator.cli", "redrive",
                                                        "--namespace", s.ns, "--amqp-url", amqp_url],
                                       cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("redriven 3, kept 0"), done.stdout

        outcomes = [await c.outcome(cmd.visit_id, timeout=60) for cmd in cmds]
        assert [o.status for o in outcomes] == ["settled"] * 3
        # Paid exactly once each: 10.00, 20.00, 30.00 (pharmacy purchases are paid from the account).
        assert [await balance(c, p) for p in people] == [D("90.00"), D("80.00"), D("70.00")]
        assert await read_dead_letters(amqp_url, s.ns, consume=False) == []
        accounts, bureau = await audit(c)
        assert accounts["double_debits"] == 0 and accounts["balance_mismatches"] == []
        assert bureau["states"] == {"settled": 3} and bureau["accumulator_mismatches"] == []

        # A second redrive finds nothing; redriving is idempotent anyway (the inbox answers repeats).
        again = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "simulator.cli", "redrive",
                                                         "--namespace", s.ns, "--amqp-url", amqp_url],
                                        cwd=REPO, capture_output=True, text=True, timeout=120)
        assert again.stdout.startswith("redriven 0, kept 0")
    finally:
        await s.stop()
        await s.cleanup()


async def _settle_msgids(s: Stack, cmds: list) -> list[str]:
    import sqlite3
    db = sqlite3.connect(s.data_dir / "pos.db", timeout=30)
    try:
        return [db.execute("SELECT settle_msgid FROM visits WHERE visit_id=?", (cmd.visit_id,)).fetchone()[0]
                for cmd in cmds]
    finally:
        db.close()
