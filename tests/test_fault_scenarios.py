"""Issue #5, items 1-2: fault events in scenarios, and fault scenarios under load.

Every fault scenario of scenarios/faults/ runs at its CI scale (--scale 0.1: 200 generated families, about 400
visits) through the code path of `gongji run` (run_loaded: the three workers as separate processes, the
generated traffic, the fault driver, the auditor, report.json), and its report.json must show the fault
happened and left nothing wrong: every visit an outcome, no double debit, no cap overrun, no negative balance, a
balanced ledger, a reconciliation that matches, every invariant "ok". The full sizes and their run times are in
scenarios/README.md.

The broker_restart and drop_connections runs act on the local RabbitMQ (rabbitmqctl): marked broker_restart,
so that conftest runs them last.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from simulator.run import faults
from simulator.run.faults import _local_broker
from simulator.run.orchestration import RunOptions, run_loaded
from simulator.scenario.loader import ScenarioError, load_scenario
from simulator.scenario.model import FAULT_KINDS
from simulator.terminal import Progress

REPO = Path(__file__).resolve().parents[1]
FAULTS = REPO / "scenarios" / "faults"
CI_SCALE = "0.1"  # the full size (× 1) is documented in scenarios/README.md
# SQLite at 0.1 (200 families, about 400 visits); PostgreSQL (tests/backends.py) at 0.04 (80 families, about 160
# visits). The faults come after as many outcomes × the scale, so each still happens mid-traffic with the run's
# 64 visits in flight, and the two backends' runs fit the CI budget together.
SCALE = {"sqlite": (CI_SCALE, 300, 500), "postgres": ("0.04", 110, 215)}
SCENARIO_KIND = {"kill_workers": "kill", "broker_restart": "broker_restart", "drop_connections": "drop_connections",
                 "duplicate_delivery": "duplicate", "delayed_replies": "delay", "timeout_race": "timeout_race",
                 "poison": "poison", "broker_node_down": "broker_node_down"}
ON_THE_BROKER = ("broker_restart", "drop_connections")  # need rabbitmqctl and the local broker
ON_THE_CLUSTER = ("broker_node_down",)  # needs a 3-node cluster: runs in tests/test_cluster.py


def test_every_fault_kind_has_a_scenario() -> None:
    found: dict[str, str] = {}
    for path in sorted(FAULTS.glob("*.yaml")):
        loaded = load_scenario(path, scale=CI_SCALE)
        sc = loaded.scenario
        assert sc.name == path.stem, f"{path}: name should match the file name"
        assert sc.generator is not None and sc.generator.traffic is not None, f"{path}: under load: a generator"
        assert sc.faults, f"{path}: no faults"
        for f in sc.faults:
            found.setdefault(f.kind, path.stem)
    assert set(found) == set(FAULT_KINDS), f"fault kinds without a scenario: {set(FAULT_KINDS) - set(found)}"
    assert {SCENARIO_KIND[name] for name in SCENARIO_KIND} == set(FAULT_KINDS)
    assert sorted(p.stem for p in FAULTS.glob("*.yaml")) == sorted(SCENARIO_KIND)


def test_a_fault_kind_registered_from_its_own_module_is_checked_fired_and_counted() -> None:
    """The fault registry (simulator/run/faults.py): one TRIGGERED entry is all the driver needs to check a new
    kind before the run, fire it once its trigger is reached, and count it."""
    fired: list[str] = []

    async def node_down(driver: Any, f: Any, when: str) -> None:
        driver.injected[f.kind] += 1
        fired.append(when)

    def needs_cluster(f: Any, external: bool, amqp_url: str) -> str | None:
        return "needs a cluster" if "single" in amqp_url else None

    faults.TRIGGERED["test_node_down"] = faults.TriggeredKind(node_down, needs_cluster, needs_stack=True)
    try:
        fault = SimpleNamespace(kind="test_node_down", at_s=None, after_settlements=3)
        loaded = SimpleNamespace(scenario=SimpleNamespace(faults=[fault], seed=7, generator=None),
                                 where=lambda path: "x.yaml:9")
        driver = faults.FaultDriver(loaded)  # type: ignore[arg-type]
        with pytest.raises(SystemExit, match="x.yaml:9: faults\\[0\\] \\(test_node_down\\): needs the workers"):
            driver.check(external=True, amqp_url="amqp://localhost")
        with pytest.raises(SystemExit, match="needs a cluster"):
            driver.check(external=False, amqp_url="amqp://single")
        driver.check(external=False, amqp_url="amqp://localhost")
        assert driver.disrupts_connections and driver.chaos() is None
        runner = SimpleNamespace(completed=2, planned=10)

        async def traffic() -> None:
            task = asyncio.create_task(driver.run(runner))  # type: ignore[arg-type]
            await asyncio.sleep(0.3)
            assert fired == []  # 2 outcomes: not yet
            runner.completed = 3
            for _ in range(200):
                if fired:
                    break
                await asyncio.sleep(0.05)
            driver.stop()
            await task

        asyncio.run(traffic())
        assert len(fired) == 1 and fired[0].startswith("after 3 outcomes")
        assert driver.summary()["injected"] == {"test_node_down": 1} and driver.summary()["not_injected"] == []
    finally:
        del faults.TRIGGERED["test_node_down"]


def test_fault_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad_faults.yaml"
    bad.write_text("""name: bad_faults
regions: ["330100"]
faults:
  - {kind: kill, service: accnts, after_settlements: 10}
  - {kind: kill, service: pos}
  - {kind: duplicate, fraction: 0.1}
  - {kind: explode}
""", encoding="utf-8")
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    problems = err.value.problems
    assert any(p.startswith(f"{bad}:4: faults[0].service:") for p in problems), problems
    assert any(p.startswith(f"{bad}:5: faults[1]: give exactly one of after_settlements") for p in problems), problems
    assert any(p.startswith(f"{bad}:6: faults[2].fraction:") and "float refused" in p for p in problems), problems
    assert any(p.startswith(f"{bad}:7: faults[3]:") and "'kill'" in p for p in problems), problems
    bad.write_text("""name: bad_faults
regions: ["330100"]
faults:
  - {kind: timeout_race, share: "0.1"}
""", encoding="utf-8")
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    assert err.value.problems[0].startswith(f"{bad}:4: faults[0].kind: timeout_race applies to generated visits")


def test_faults_that_need_own_workers_refuse_external(amqp_url: str) -> None:
    env = {**os.environ, "AMQP_URL": amqp_url}
    env.pop("GONGJI_SCALE", None)
    out = subprocess.run([sys.executable, "-m", "simulator.cli", "run", "scenarios/faults/broker_restart.yaml",
                          "--external", "--quiet"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr  # invalid input for this mode (exit codes: `gongji run --help`)
    assert "scenarios/faults/broker_restart.yaml:" in out.stderr and "not possible with --external" in out.stderr


@pytest.mark.asyncio(loop_scope="session")
async def test_broker_node_down_refuses_a_broker_that_is_no_cluster(amqp_url: str, tmp_path: Path) -> None:
    """On one broker URL (not the nodes of `gongji cluster up`) the fault cannot be injected: the run is refused
    before anything starts, naming the file, the fault and what it needs."""
    loaded = load_scenario(FAULTS / "broker_node_down.yaml", scale="0.01")
    with pytest.raises(SystemExit) as refused:
        await run_loaded(loaded, RunOptions(amqp_url=amqp_url, report_dir=tmp_path, progress=False),
                         Progress(enabled=False))
    said = str(refused.value.code)
    assert "broker_node_down.yaml:" in said and "faults[0] (broker_node_down)" in said, said
    assert "needs the run's broker to be a cluster" in said and "gongji cluster up" in said, said
    assert not (tmp_path / "report.json").exists()


def _params() -> list[Any]:
    out = []
    for name in SCENARIO_KIND:
        if name in ON_THE_CLUSTER:
            continue
        marks = [pytest.mark.broker_restart] if name in ON_THE_BROKER else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("name", _params())
async def test_fault_scenario_under_load(name: str, amqp_url: str, tmp_path: Path, backend: str,
                                         database_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    kind = SCENARIO_KIND[name]
    if name in ON_THE_BROKER and (shutil.which("rabbitmqctl") is None or not _local_broker(amqp_url)):
        pytest.skip(f"{kind} needs rabbitmqctl and the local RabbitMQ")
    for key, value in database_env.items():  # the workers run_loaded starts inherit it
        monkeypatch.setenv(key, value)
    scale, fewest, most = SCALE[backend]
    loaded = load_scenario(FAULTS / f"{name}.yaml", scale=scale)
    result = await run_loaded(loaded, RunOptions(amqp_url=amqp_url, report_dir=tmp_path, progress=False),
                              Progress(enabled=False))
    rep = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    f = rep["faults"]
    assert fewest <= rep["visits"] <= most, rep["visits"]  # the CI size of a fault scenario
    # The fault happened ...
    assert f["injected"][kind] > 0, f
    assert f["not_injected"] == [] and f["errors"] == [], f
    # ... and left nothing wrong.
    assert f["visits_without_outcome"] == 0, rep["invariants"]["one_final_outcome_per_visit"]
    assert f["double_debits"] == 0, rep["invariants"]["ledger_balanced"]
    assert f["cap_overruns"] == 0, rep["invariants"]["caps_respected"]
    assert f["negative_balances"] == 0, rep["invariants"]["no_negative_balance"]
    assert f["ledger_balanced"] is True, rep["invariants"]["ledger_balanced"]
    assert f["reconciliation_matches"] is True, rep["invariants"]["daily_reconciliation_3201"]
    assert all(v == "ok" for v in rep["invariants"].values()), rep["invariants"]
    assert rep["expectations"]["failed"] == 0
    assert result.ok
    statuses = rep["outcomes"]["by_status"]
    assert "none" not in statuses
    if kind == "duplicate":
        assert f["duplicates_absorbed"] > 0, f
    elif kind == "delay":
        assert f["messages"]["chaos_delays"] == f["injected"]["delay"]
    elif kind == "poison":
        poison = f["injected"]["poison"]
        assert poison == loaded.scenario.faults[0].count  # type: ignore[union-attr]
        assert sum(f["dead_lettered"].values()) >= poison, f["dead_lettered"]
        queues = {key.split(":")[0] for key in f["dead_lettered"]}
        assert queues >= {"bureau.all", "accounts.admin", "accounts.pay", "pos.commands"}, f["dead_lettered"]
        assert all(reason.split(": ", 1)[1] for reason in f["dead_lettered"])  # each with its reason
        assert set(statuses) <= {"settled", "reversed", "refused"}  # the workers kept serving
    elif kind == "kill":
        assert f["injected"]["kill"] == 3 and f["worker_restarts"] == {"accounts": 1, "bureau": 1, "pos": 1}, f
    elif kind == "broker_restart":
        assert f["injected"]["broker_restart"] == 1, f  # the restart, counted
    elif kind == "drop_connections":
        assert f["injected"]["drop_connections"] == 2 and f["connections_closed"] >= 2, f
    elif kind == "timeout_race":
        race = f["timeout_race"]
        assert race["without_outcome"] == 0
        assert race["compensated"] + race["refused"] + race["settled"] == f["injected"]["timeout_race"], race
        assert race["compensated"] > 0, race  # the 2601 did race settlements in flight
        assert race["undone_after_arrival"] > 0, race  # ... some already taken in by the bureau, then undone
    # Visits outside a timeout race never end by their POS timeout (one_final_outcome_per_visit checks it).
    if kind != "timeout_race":
        assert "compensated" not in statuses and "E_TIMEOUT" not in rep["outcomes"]["by_err_code"]


@pytest.mark.asyncio(loop_scope="session")
async def test_time_trigger_fires_and_a_fault_never_reached_fails_the_run(amqp_url: str, tmp_path: Path) -> None:
    """`at_s` injects by the clock of the traffic; a fault whose trigger the traffic never reaches is reported
    as not injected and fails the run (a fault scenario that injected nothing proves nothing)."""
    scenario = tmp_path / "triggers.yaml"
    scenario.write_text("""name: triggers
seed: 5
regions: ["330100"]
start: "2026-02-28 08:00:00"
generator:
  families: 40
  regions: {"330100": 1}
  traffic: {start: 2026-03-01, days: 2, visits_per_person: "1.5"}
faults:
  - {kind: kill, service: bureau, at_s: 0.3, down_s: 0.5}
  - {kind: kill, service: pos, after_settlements: 100000}
""", encoding="utf-8")
    loaded = load_scenario(scenario)
    result = await run_loaded(loaded, RunOptions(amqp_url=amqp_url, report_dir=tmp_path / "out", progress=False),
                              Progress(enabled=False))
    rep = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    f = rep["faults"]
    assert f["injected"]["kill"] == 1 and f["worker_restarts"] == {"bureau": 1, "pos": 0}, f
    assert f["all_injected"] is False
    assert len(f["not_injected"]) == 1 and "pos" in f["not_injected"][0] and "100000" in f["not_injected"][0], f
    assert f["visits_without_outcome"] == 0 and all(v == "ok" for v in rep["invariants"].values()), rep
    assert result.ok is False  # everything else was clean: the missing fault alone fails the run
