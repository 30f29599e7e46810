"""Issue "Scenario simulator, invariant auditor and reports": every 'Done when' line.

Every shipped scenario runs against the real broker with the three workers as separate processes (each run
starts its own, as `gongji run` does; the generated month at a reduced size); a deliberately wrong
expectation fails naming the step and the field; the same scenario and seed give byte-identical
report.json; report.html opens in headless Chromium and its script runs without error.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest

from simulator.generate import generate
from simulator.run.orchestration import RunOptions, run_loaded
from simulator.terminal import Progress
from simulator.scenario.loader import ScenarioError, load_scenario
from tests.harness import Stack

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((REPO / "scenarios").glob("*.yaml"))
CI_SCALE = {"generated_month": "0.02"}  # the full size is documented in scenarios/README.md
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def cli(*args: str, amqp_url: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMQP_URL": amqp_url}
    env.pop("GONGJI_SCALE", None)
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def dump_dom(page: Path) -> str:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                              "--disable-component-update", "--disable-sync", "--no-first-run",
                              f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
                             capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


# ---- scenario files: validation, with file:line:field errors ---------------------------------------------
def test_every_shipped_scenario_is_valid() -> None:
    assert len(SCENARIOS) >= 12
    for path in SCENARIOS:
        loaded = load_scenario(path)
        assert loaded.scenario.name == path.stem, f"{path}: name should match the file name"


def test_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("""name: bad
seed: 1
facilities:
  - {code: PHZ000000001, type: pharmacy, region: "330100"}
people:
  - {psn_no: A, region: "330100", balance: "10.00"}
timeline:
  - name: buy
    visit:
      person: A
      facility: PHZ000000001
      kind: pharmacy
      items:
        - {code: XA01, price: 12.5}
    expect: {acct_pay: "1.00", acct_paid: "2.00"}
  - name: who
    visit: {person: NOBODY, facility: PHZ000000001, kind: pharmacy, items: [{code: XA01, price: "1.00"}]}
""", encoding="utf-8")
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    problems = err.value.problems
    # A float where money belongs: line 14, with the full field path.
    assert any(p.startswith(f"{bad}:14: timeline[0].visit.items[0].price:") and "float refused" in p
               for p in problems), problems
    # A misspelt expectation key: line 15.
    assert any(p.startswith(f"{bad}:15: timeline[0].expect.acct_paid:") for p in problems), problems
    fixed = bad.read_text().replace("price: 12.5}", 'price: "12.50"}').replace(', acct_paid: "2.00"', "")
    bad.write_text(fixed, encoding="utf-8")
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    assert err.value.problems == [f"{bad}:17: timeline[1].visit.person: unknown person NOBODY"]


def test_time_only_moves_forward(tmp_path: Path) -> None:
    bad = tmp_path / "backwards.yaml"
    bad.write_text("""name: backwards
people: [{psn_no: A, region: "330100", balance: "1.00"}]
timeline:
  - {name: a, at: "2026-03-02 10:00:00", check: true}
  - {name: b, at: "2026-03-01 10:00:00", check: true}
""", encoding="utf-8")
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    assert err.value.problems[0].startswith(f"{bad}:5: timeline[1].at: time goes backwards")


def test_generator_is_seeded_and_scaled() -> None:
    path = REPO / "scenarios" / "generated_month.yaml"
    a, b = generate(load_scenario(path, scale="0.01")), generate(load_scenario(path, scale="0.01"))
    other = generate(load_scenario(path, scale="0.01", seed=7))
    assert len(a.families) == 100
    assert [p.model_dump() for p in a.people] == [p.model_dump() for p in b.people]
    assert [(v.id, v.psn_no, v.facility, v.at, v.items) for vs in a.visits.values() for v in vs] == \
        [(v.id, v.psn_no, v.facility, v.at, v.items) for vs in b.visits.values() for v in vs]
    assert [p.model_dump() for p in a.people] != [p.model_dump() for p in other.people]
    # Realistic shapes: children without accounts, retirees, people insured in the other region.
    assert any(p.insutype == "390" and p.balance is None for p in a.people)
    assert any(p.psn_type == "retired" for p in a.people)
    assert {p.region for p in a.people} == {"330100", "110000"}
    # No two generated messages of one facility share a second (so msgids do not depend on timing).
    stamps = [(v.facility, v.at) for vs in a.visits.values() for v in vs]
    assert len(stamps) == len(set(stamps))


# ---- every shipped scenario passes, against the real broker and worker processes --------------------------
@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
async def test_shipped_scenario_passes(path: Path, amqp_url: str, tmp_path: Path) -> None:
    loaded = load_scenario(path, scale=CI_SCALE.get(path.stem, "1"))
    result = await run_loaded(loaded, RunOptions(amqp_url=amqp_url, report_dir=tmp_path, progress=False),
                              Progress(enabled=False))
    rep = result.report
    assert rep["expectations"]["failures"] == [], rep["expectations"]["failures"]
    assert rep["invariants"] and all(v == "ok" for v in rep["invariants"].values()), rep["invariants"]
    assert result.ok
    assert rep["visits"] > 0 and rep["outcomes"]["by_status"].get("settled", 0) > 0
    assert rep["reconciliation"]["facility_days"] == rep["reconciliation"]["matched"] > 0
    if loaded.scenario.generator is None:
        assert rep["expectations"]["passed"] >= 1
    saved = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert saved == rep


@pytest.mark.asyncio(loop_scope="session")
async def test_admin_events_with_references(amqp_url: str, tmp_path: Path) -> None:
    """The generic admin event drives transactions the runner has no name for (freeze, unfreeze, unbind)."""
    loaded = load_scenario(REPO / "tests" / "scenarios" / "admin_events.yaml")
    result = await run_loaded(loaded, RunOptions(amqp_url=amqp_url, report_dir=tmp_path, progress=False),
                              Progress(enabled=False))
    rep = result.report
    assert rep["expectations"]["failures"] == [], rep["expectations"]["failures"]
    assert rep["admin"] == {"G112": 2, "G113": 1, "G114": 1}
    assert all(v == "ok" for v in rep["invariants"].values()), rep["invariants"]
    freeze = next(r for r in rep["steps"] if r["step"] == "freeze")
    bind = next(r for r in rep["steps"] if r["step"] == "bind")
    assert freeze["output"]["auth_id"] == bind["output"]["auth_id"]


@pytest.mark.asyncio(loop_scope="session")
async def test_external_mode_runs_twice_on_long_lived_workers(stack: Stack, amqp_url: str) -> None:
    """--external drives workers that are already running; each run's people are its own."""
    loaded = load_scenario(REPO / "scenarios" / "child_paid_by_mother.yaml")
    reports = []
    for _ in range(2):
        result = await run_loaded(loaded, RunOptions(amqp_url=amqp_url, external=True, namespace=stack.ns,
                                                     progress=False), Progress(enabled=False))
        assert result.ok, (result.report["expectations"], result.invariants)
        reports.append(result.report)
    assert reports[0]["totals"] == reports[1]["totals"]
    assert reports[0]["steps"][0]["setl_id"].startswith("SPHZ000000001")  # names as in the scenario


# ---- the CLI: a wrong expectation fails; reports are byte-identical; the HTML renders ---------------------
def test_wrong_expectation_fails_naming_step_and_field(amqp_url: str, tmp_path: Path) -> None:
    out = cli("run", "tests/scenarios/wrong_expectation.yaml", "--report-dir", str(tmp_path), "--quiet",
              amqp_url=amqp_url)
    assert out.returncode == 1, out.stdout + out.stderr
    assert 'FAIL step buy (tests/scenarios/wrong_expectation.yaml:20): acct_mulaid_pay: expected "55.00", ' \
           'got "50.00"' in out.stdout, out.stdout
    rep = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert rep["expectations"]["failed"] == 1 and rep["expectations"]["passed"] == 1
    (failure,) = rep["expectations"]["failures"]
    assert failure["step"] == "buy" and failure["field"] == "acct_mulaid_pay"
    assert failure["expected"] == "55.00" and failure["actual"] == "50.00"
    assert all(v == "ok" for v in rep["invariants"].values())  # the services were right; the scenario was not


@pytest.mark.parametrize("old,new,line,field", [
    ('balance: "50.00"}', 'balance: "-300.00"}', 12, "people[0].balance"),
    ('relation: child}', 'relation: child, day_cap: "-200.00"}', 17, "bindings[0].day_cap"),
    ('{code: XA01, price: "20.00"}', '{code: XA01, price: "-500.00"}', 27, "timeline[0].visit.items[1].price")])
def test_negative_money_in_a_scenario_is_invalid_input(amqp_url: str, tmp_path: Path, old: str, new: str, line: int,
                                                      field: str) -> None:
    # An outside probe: a negative price ended in a traceback (exit 1), a negative balance or cap failed the
    # run at setup (exit 1, with a false invariant failure). They are invalid input: exit 2, file and line.
    text = (REPO / "scenarios" / "child_paid_by_mother.yaml").read_text(encoding="utf-8")
    assert old in text
    bad = tmp_path / "negative.yaml"
    bad.write_text(text.replace(old, new, 1), encoding="utf-8")
    out = cli("run", str(bad), amqp_url=amqp_url)
    assert out.returncode == 2, out.stderr
    assert f"{bad}:{line}: {field}:" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_invalid_scenario_exits_2_with_the_line(amqp_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('name: bad\npeople:\n  - {psn_no: A, region: "3301", balance: "1.00"}\n', encoding="utf-8")
    out = cli("run", str(bad), amqp_url=amqp_url)
    assert out.returncode == 2
    assert f"{bad}:3: people[0].region:" in out.stderr


@pytest.fixture(scope="module")
def twice(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """generated_month (50 families) twice with one seed, once with another; plus a timeline scenario twice."""
    base = tmp_path_factory.mktemp("twice")
    runs = []
    for name, extra in (("a", ["--seed", "11"]), ("b", ["--seed", "11"]), ("c", ["--seed", "12"])):
        out = cli("run", "scenarios/generated_month.yaml", "--scale", "0.005", "--report-dir", str(base / name),
                  "--quiet", *extra, amqp_url=amqp_url)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        runs.append(base / name)
    yield runs[0], runs[1], runs[2]


def test_same_scenario_and_seed_give_byte_identical_report_json(twice: tuple[Path, Path, Path],
                                                               amqp_url: str, tmp_path: Path) -> None:
    a, b, c = twice
    ra, rb, rc = ((d / "report.json").read_bytes() for d in (a, b, c))
    assert ra == rb
    assert ra != rc  # the seed matters
    rep = json.loads(ra)
    for key in ("visits", "outcomes", "totals", "expectations", "invariants"):
        assert key in rep
    assert rep["visits"] > 50 and rep["reversals"] >= 0
    for value in rep["totals"].values():  # published money: a number in yuan, whole fen
        assert isinstance(value, (int, float)) and abs(round(value * 100) - value * 100) < 1e-6
    # A timeline scenario (POS msgids, setl_ids, auth_ids in the steps) is as deterministic.
    for d in ("x", "y"):
        out = cli("run", "scenarios/reversal_restores.yaml", "--report-dir", str(tmp_path / d), "--quiet",
                  amqp_url=amqp_url)
        assert out.returncode == 0, out.stdout
    assert (tmp_path / "x" / "report.json").read_bytes() == (tmp_path / "y" / "report.json").read_bytes()
    assert "setl_id" in json.loads((tmp_path / "x" / "report.json").read_text())["steps"][0]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_html_opens_in_headless_chromium(twice: tuple[Path, Path, Path]) -> None:
    page = twice[0] / "report.html"
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    dom = dump_dom(page)
    assert 'data-report-ready="ok"' in dom, dom[:2000]
    assert 'data-report-error="' not in dom  # set on <body> only when the script failed
    assert dom.count('class="chart-rendered"') == 3  # where each yuan came from, family balances, limits
    assert "Why: each visit explained" in dom


def test_compare_two_policy_sets(amqp_url: str, tmp_path: Path) -> None:
    out = cli("compare", "scenarios/retiree_vs_employed.yaml", "--policy", "policies",
              "--policy", "scenarios/whatif/hz_outpatient_deductible_300.yaml", "--report-dir", str(tmp_path),
              "--quiet", amqp_url=amqp_url)
    assert out.returncode == 0, out.stdout + out.stderr
    cmp = json.loads((tmp_path / "compare.json").read_text(encoding="utf-8"))
    pooled = cmp["metrics"]["pooled_fund"]
    oop = cmp["metrics"]["family_out_of_pocket"]
    # Employed: deductible 300 instead of 600 and 0.80 instead of 0.76 at 三级 on the 1600.00 visit:
    # (1600 - 300) x 0.80 = 1040.00 instead of 760.00 → the fund pays 280.00 more, the family 280.00 less.
    assert pooled["delta"] == 280.00 and pooled["label"] == "pooled fund 统筹基金 (hifp_pay)"
    assert oop["delta"] == -280.00
    assert cmp["families"]["pay_less_under_b"] == 1
    assert "family out-of-pocket" in out.stdout
    for label in ("policies", "hz_outpatient_deductible_300"):
        assert json.loads((tmp_path / label / "report.json").read_text())["invariants"]
        assert (tmp_path / label / "settlements.csv").read_text(encoding="utf-8").count("\n") > 1  # per visit
    if CHROMIUM is not None:
        assert 'data-report-ready="ok"' in dump_dom(tmp_path / "compare.html")
