"""`gongji bench` end to end: a short run against the real broker writes the figures and leaves consistent
ledgers. No speed is asserted here (targets are measured, see BENCHMARKS.md), only that the tool works."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import psycopg

# Kept short: the yardstick 1 s, and the relay publishes what bulk loading left in the outboxes after 1 s
# instead of 5 (what loading leaves is waited for before the visits start).
FAST = ["--raw-duration", "1"]
FAST_ENV = {**os.environ, "GONGJI_RELAY_GRACE_S": "1"}

NUMERIC_KEYS = ("settlements_per_s", "p50_ms", "p95_ms", "p99_ms", "raw_round_trips_per_s", "ratio", "accounts",
                "national_round_trips_per_settlement")


def test_bench_short_run_writes_figures_and_ledgers_stay_consistent(amqp_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "simulator.cli", "bench", "--duration", "4", "--concurrency", "8", *FAST,
           "--accounts", "200", "--json", str(out), "--amqp-url", amqp_url]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=FAST_ENV)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "ratio = settlements_per_s / (raw_round_trips_per_s / national_round_trips_per_settlement" in proc.stdout

    result = json.loads(out.read_text())
    for key in NUMERIC_KEYS:
        assert key in result, key
        value = result[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)
    assert result["accounts"] == 200
    assert result["settlements_per_s"] > 0
    assert result["raw_round_trips_per_s"] > 0
    # the ceiling measured again after the visits, and the ratio against the mean of both
    before, after = result["raw_round_trips_per_s"], result["raw_after_round_trips_per_s"]
    assert after > 0 and result["raw_drift"] == round(after / before, 3)
    assert result["ratio_bracketed"] == round(result["settlements_per_s"] / ((before + after) / 2
                                                                          / result["national_round_trips_per_settlement"]), 3)
    assert result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert result["statuses"].get("settled", 0) > 0
    # The national flow: pharmacy 2101 → 2102 takes 2 round trips, outpatient 2201 → 2203 → 2204 → 2206 → 2207
    # takes 5; the mix has both, so the mean lies strictly between.
    assert 2 < result["national_round_trips_per_settlement"] < 5
    assert set(result["cpu"]) >= {"bureau", "accounts", "pos", "bench_client"}
    for service in ("bureau", "accounts", "pos"):
        assert result["memory"][service]["peak_rss_kb"] > 0

    check_publish_and_cpu_figures(result)
    # With the pre-settle every visit takes at least 2 national round trips (a request and its answer each),
    # plus the POS command and the outcome event: at least 2 + 2 × 2 = 6 publishes per settlement.
    assert result["presettle"] is True
    assert result["publishes_per_settlement"] >= 6

    # The bench's own G199 audits: the run left both ledgers consistent.
    accounts, bureau = result["audit"]["accounts"], result["audit"]["bureau"]
    assert accounts["ledger_sum_fen"] == 0
    assert accounts["balance_mismatches"] == []
    assert bureau["accumulator_mismatches"] == []


def check_publish_and_cpu_figures(result: dict) -> None:
    """publishes_per_settlement is the processes' own counters over the settled visits; the CPU total is
    the sum of every process's CPU (broker included) over the settlements of the window."""
    pubs = result["publishes"]
    assert set(pubs["by_process"]) >= {"bureau", "accounts", "pos", "bench_client"}
    assert pubs["total"] == sum(pubs["by_process"].values())
    assert pubs["settlements"] >= result["settlements"] > 0  # the phase includes warm-up and drain
    assert result["publishes_per_settlement"] == round(pubs["total"] / pubs["settlements"], 3)
    # the bench client sends one command per visit, those of one loop pass packed in one message: as many
    # messages as commands less what the batches saved
    b = result["batching"]
    assert b["commands_sent"] >= pubs["settlements"]
    assert b["commands_in_batches"] >= 2 * b["command_batches"]
    assert pubs["by_process"]["bench_client"] >= b["commands_sent"] - b["commands_in_batches"] + b["command_batches"]
    if result.get("raw_broker_cpu_s") is not None:  # the broker runs on this machine: its CPU is counted
        assert "broker" in result["cpu"]
    total_s = sum(v["cpu_s"] for v in result["cpu"].values())
    assert result["cpu_ms_per_settlement_total"] == round(total_s / result["settlements"] * 1000, 3)
    per_process = sum(result["cpu_s_per_settlement_ms"].values())
    assert abs(per_process - result["cpu_ms_per_settlement_total"]) < 0.01 * len(result["cpu"]) + 1e-9


def test_bench_no_presettle_reports_settle_only_figures(amqp_url: str, tmp_path: Path) -> None:
    out = tmp_path / "np.json"
    cmd = [sys.executable, "-m", "simulator.cli", "bench", "--duration", "3", "--concurrency", "8", "--no-raw-after",
           *FAST, "--accounts", "200", "--no-presettle", "--json", str(out), "--amqp-url", amqp_url]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=FAST_ENV)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(out.read_text())
    assert result["presettle"] is False
    assert "(settle only: --no-presettle)" in proc.stdout
    assert result["statuses"].get("settled", 0) > 0
    # Settle straight away: a pharmacy visit is 2102 alone (1 round trip), an outpatient visit
    # 2201 → 2203 → 2204 → 2207 (4); the mix has both.
    assert 1 < result["national_round_trips_per_settlement"] < 4
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0
    check_publish_and_cpu_figures(result)
    # at least the command, one national request and its answer, and the outcome event
    assert result["publishes_per_settlement"] >= 4
    assert result["audit"]["accounts"]["ledger_sum_fen"] == 0


def test_bench_on_postgresql_with_two_replicas(amqp_url: str, pg_server: str, tmp_path: Path) -> None:
    """`gongji bench --database-url SERVER` (issue 12): the workers keep their state in a throwaway database on
    that server, two replicas of each service share it, the audits of the run are clean, and the database is
    gone afterwards. No speed is asserted (BENCHMARKS.md, "Issue 12: PostgreSQL beside SQLite")."""
    def databases() -> set[str]:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}

    before = databases()
    out = tmp_path / "pg.json"
    cmd = [sys.executable, "-m", "simulator.cli", "bench", "--duration", "3", "--concurrency", "8", "--no-raw-after",
           *FAST, "--accounts", "200", "--json", str(out), "--amqp-url", amqp_url, "--database-url", pg_server]
    env = {**FAST_ENV, "GONGJI_BENCH_REPLICAS": "2"}
    env.pop("GONGJI_DATABASE_URL", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(out.read_text())
    assert result["storage"] == "postgresql" and result["replicas"] == 2
    assert result["statuses"].get("settled", 0) > 0
    accounts, bureau = result["audit"]["accounts"], result["audit"]["bureau"]
    assert accounts["ledger_sum_fen"] == 0 and accounts["balance_mismatches"] == []
    assert bureau["accumulator_mismatches"] == []
    assert not {d for d in databases() - before if d.startswith("gongji_bench_")}


def test_benchmarks_compare_the_backends_replicas_and_project_per_host() -> None:
    """Issue 12's Done-when: BENCHMARKS.md gives SQLite vs PostgreSQL, 1 vs 2 replicas and the projection per
    host, each with figures."""
    text = (Path(__file__).resolve().parents[1] / "BENCHMARKS.md").read_text(encoding="utf-8")
    section = text[text.index("## Issue 12: PostgreSQL beside SQLite"):]
    section = section[:section.find("\n## ", 10)] if "\n## " in section[10:] else section
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert any("| SQLite |" in r for r in rows) and any("PostgreSQL, 1 replica" in r for r in rows)
    assert any("PostgreSQL, 2 replicas" in r for r in rows)
    assert "Projection per added host" in section and "PostgreSQL / SQLite" in section
