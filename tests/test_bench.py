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

    # The bench's own G199 audits: the run left both ledgers consistent.
    accounts, bureau = result["audit"]["accounts"], result["audit"]["bureau"]
    assert accounts["ledger_sum_fen"] == 0
    assert accounts["balance_mismatches"] == []
    assert bureau["accumulator_mismatches"] == []
