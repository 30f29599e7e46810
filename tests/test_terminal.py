"""Issue 14, the terminal: CJK-aware tables, a progress bar with rate and ETA, latency percentiles in the
`run` summary, `gongji up` keeping the workers' logs in files and showing only human lines."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from pathlib import Path

from rich.cells import cell_len

from simulator.terminal import Progress, percentiles, table

REPO = Path(__file__).resolve().parents[1]


def test_table_lines_up_chinese_labels() -> None:
    text = table(("", "yuan"), [("bill 医疗费总额", "100.00"), ("pooled fund 统筹基金", "1234.50"), ("cash", "0.00")],
                 right={1})
    rows = text.splitlines()[2:]  # header, rule, rows
    assert len(rows) == 3
    # Right-aligned numbers end in the same terminal column although the labels hold 2-column CJK characters.
    ends = {cell_len(r) for r in rows}
    assert len(ends) == 1, rows
    # ... and the number starts where the label's padding ends: the label column has the same display width.
    widths = {cell_len(r[:r.rindex(" ") + 1]) for r in rows}
    assert len(widths) == 3 and max(widths) - min(widths) <= 4  # numbers of different lengths, same end


def test_percentiles_by_hand() -> None:
    samples = [i / 100 for i in range(1, 101)]  # 0.01 .. 1.00 s
    p = percentiles(samples)
    # inclusive quantiles of 1..100: the k-th percentile is 1 + (100 - 1) * k / 100 → p50 50.5, p95 95.05, p99 99.01
    assert round(p["p50"], 4) == 0.505 and round(p["p95"], 4) == 0.9505 and round(p["p99"], 4) == 0.9901
    assert p["max"] == 1.0 and percentiles([0.1]) == {}


def test_progress_shows_rate_and_eta_without_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress(stream=out)
    bar.phase("generated visits", 1000)
    for _ in range(1000):
        bar.advance()
    bar.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "generated visits: 0/1000 (0%)"
    assert any("/s" in line and "ETA" in line for line in lines[1:-1]), lines
    assert lines[-1].startswith("generated visits: 1000/1000 (100%, ") and lines[-1].endswith("/s)")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_rich_bar_with_rate_and_eta() -> None:
    out = _Tty()
    bar = Progress(stream=out)
    bar.phase("generated visits", 50)
    for _ in range(50):
        bar.advance()
    bar.finish()
    text = out.getvalue()
    assert "generated visits" in text and "50/50" in text and "/s" in text and "ETA" in text


def test_up_once_shows_human_lines_and_keeps_worker_logs_in_files(amqp_url: str, tmp_path: Path) -> None:
    ns = f"up{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "AMQP_URL": amqp_url, "PYTHONPATH": str(REPO)}  # this checkout, from another directory
    env.pop("GONGJI_LOG_FORMAT", None)
    out = subprocess.run([sys.executable, "-m", "simulator.cli", "up", "--once", "--namespace", ns,
                          "--data-dir", str(tmp_path / "data")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert not [line for line in text.splitlines() if line.lstrip().startswith("{")], text  # no JSON log lines
    for name in ("bureau", "accounts", "pos"):
        log = tmp_path / "data" / "logs" / f"{name}.log"
        assert text.count(f"gongji {name} worker ready") == 1, text  # once, not twice
        assert f"(log: {log})" in out.stdout
        assert '"worker ready"' in log.read_text(encoding="utf-8")  # the JSON log went to the file
    assert "latency per visit" in out.stdout and "p95" in out.stdout and "p99" in out.stdout
    assert (tmp_path / "reports" / "settlements.csv").exists()
