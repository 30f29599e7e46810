"""Issue 12: `gongji run` and `gongji up` on PostgreSQL (GONGJI_DATABASE_URL / --database-url), end to end with
the real CLI: the workers keep their state in one schema per service, nothing in SQLite files."""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from services.shared.pg_admin import drop_database
from simulator.stack import cleanup_namespace

REPO = Path(__file__).resolve().parents[1]


def gongji(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    full.pop("GONGJI_DATABASE_URL", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=600, check=False)


def stored(url: str) -> dict[str, int]:
    """What the workers left in their schemas: a few counts that only a settled run produces."""
    queries = {"bureau settled": "SELECT COUNT(*) FROM bureau.settlements WHERE state='settled'",
               "accounts paid": "SELECT COUNT(*) FROM accounts.payments WHERE state='paid'",
               "pos done": "SELECT COUNT(*) FROM pos.visits WHERE state='done'",
               "versions": "SELECT COUNT(*) FROM accounts.schema_version"}
    with psycopg.connect(url) as conn:
        return {name: int(conn.execute(q).fetchone()[0]) for name, q in queries.items()}  # type: ignore[index]


def test_gongji_run_with_a_database_url(amqp_url: str, pg_server: str, tmp_path: Path) -> None:
    """`gongji run --database-url SERVER`: the workers it starts use a throwaway database on that server (kept
    here with --keep-data, to look inside), like the fresh SQLite data directory of a run."""
    out = gongji("run", str(REPO / "scenarios" / "child_paid_by_mother.yaml"), "--amqp-url", amqp_url,
                 "--report-dir", str(tmp_path / "report"), "--quiet", "--keep-data", "--database-url", pg_server,
                 cwd=REPO)
    kept = re.search(r"PostgreSQL database kept: (\S+)", out.stderr)
    assert out.returncode == 0 and kept, out.stdout[-2000:] + out.stderr[-2000:]
    url = kept.group(1)
    try:
        assert "gongji_run_" in url
        counts = stored(url)
        assert counts["bureau settled"] >= 1 and counts["accounts paid"] >= 1 and counts["pos done"] >= 1, counts
    finally:
        drop_database(url)


def test_gongji_up_with_gongji_database_url(amqp_url: str, pg_database: str, tmp_path: Path) -> None:
    """`gongji up --once` with GONGJI_DATABASE_URL: the three workers on that database, the main scenario passes,
    and the data directory holds logs and stats but no database file."""
    ns = f"up{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    out = gongji("up", "--once", "--amqp-url", amqp_url, "--namespace", ns, "--data-dir", str(data), cwd=tmp_path,
                 env={"GONGJI_DATABASE_URL": pg_database})
    try:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        counts = stored(pg_database)
        assert counts["bureau settled"] >= 1 and counts["accounts paid"] >= 1 and counts["pos done"] >= 1, counts
        assert counts["versions"] >= 1
        assert not list(data.rglob("*.db")) and list((data / "logs").glob("*.log"))
    finally:
        from simulator.stack import WorkerStack
        asyncio.run(cleanup_namespace(amqp_url, ns, WorkerStack(amqp_url, ns, data).queues_used()))


@pytest.mark.parametrize("flag", ["--database-url", "GONGJI_DATABASE_URL"])
def test_a_database_that_is_not_there_stops_the_worker_with_the_reason(flag: str, amqp_url: str, tmp_path: Path
                                                                      ) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/gongji_no_such_database"
    args = ["worker", "accounts", "--amqp-url", amqp_url, "--namespace", f"nd{uuid.uuid4().hex[:6]}",
            "--data-dir", str(tmp_path)]
    out = gongji(*(args + [flag, url] if flag.startswith("--") else args), cwd=REPO,
                 env={} if flag.startswith("--") else {"GONGJI_DATABASE_URL": url})
    assert out.returncode != 0
    assert "gongji_no_such_database" in out.stderr and "does not exist" in out.stderr


def test_gongji_compare_gives_each_policy_set_a_database_of_its_own(amqp_url: str, pg_server: str,
                                                                    tmp_path: Path) -> None:
    """`gongji compare` with GONGJI_DATABASE_URL: the two policy sets must not share state (the second set would
    otherwise start from the first set's yearly accumulators). Hand-computed as in test_scenarios: employed,
    deductible 300 instead of 600 and 0.80 instead of 0.76 at 三级 on the 1600.00 visit → (1600 - 300) × 0.80 =
    1040.00 instead of (1600 - 600) × 0.76 = 760.00: the fund pays 280.00 more, the family 280.00 less."""
    with psycopg.connect(pg_server, autocommit=True) as conn:
        before = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    out = gongji("compare", "scenarios/retiree_vs_employed.yaml", "--policy", "policies",
                 "--policy", "scenarios/whatif/hz_outpatient_deductible_300.yaml", "--report-dir", str(tmp_path),
                 "--quiet", "--amqp-url", amqp_url, cwd=REPO, env={"GONGJI_DATABASE_URL": pg_server})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    cmp = json.loads((tmp_path / "compare.json").read_text(encoding="utf-8"))
    assert cmp["metrics"]["pooled_fund"]["delta"] == 280.00
    assert cmp["metrics"]["family_out_of_pocket"]["delta"] == -280.00
    with psycopg.connect(pg_server, autocommit=True) as conn:
        after = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert not {d for d in after - before if d.startswith("gongji_compare_")}  # both dropped at the end
