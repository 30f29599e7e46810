"""`gongji bench` end to end: a short run against the real broker writes the figures and leaves consistent
ledgers. No speed is asserted here (targets are measured, see BENCHMARKS.md), only that the tool works."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

NUMERIC_KEYS = ("settlements_per_s", "p50_ms", "p95_ms", "p99_ms", "raw_round_trips_per_s", "ratio", "accounts",
                "national_round_trips_per_settlement")


def test_bench_short_run_writes_figures_and_ledgers_stay_consistent(amqp_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "simulator.cli", "bench", "--duration", "5", "--concurrency", "8",
           "--accounts", "200", "--json", str(out), "--amqp-url", amqp_url]
    proc = subprocess.run(cmd, capture_output=True, text=True)
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
    # the bench client publishes one command per visit it sends
    assert pubs["by_process"]["bench_client"] >= pubs["settlements"]
    if result.get("raw_broker_cpu_s") is not None:  # the broker runs on this machine: its CPU is counted
        assert "broker" in result["cpu"]
    total_s = sum(v["cpu_s"] for v in result["cpu"].values())
    assert result["cpu_ms_per_settlement_total"] == round(total_s / result["settlements"] * 1000, 3)
    per_process = sum(result["cpu_s_per_settlement_ms"].values())
    assert abs(per_process - result["cpu_ms_per_settlement_total"]) < 0.01 * len(result["cpu"]) + 1e-9


def test_bench_no_presettle_reports_settle_only_figures(amqp_url: str, tmp_path: Path) -> None:
    out = tmp_path / "np.json"
    cmd = [sys.executable, "-m", "simulator.cli", "bench", "--duration", "4", "--concurrency", "8",
           "--accounts", "200", "--no-presettle", "--json", str(out), "--amqp-url", amqp_url]
    proc = subprocess.run(cmd, capture_output=True, text=True)
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
