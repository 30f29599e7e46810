"""Issue 12, part 4: a 3-node RabbitMQ cluster on this machine (simulator/cluster.py, the code of
`gongji cluster up|down|status`), every queue a quorum queue on the three nodes, workers that fail over, and the
fault kind broker_node_down. Needs Debian's rabbitmq-server (its scripts in /usr/lib/rabbitmq/bin); the main
node (rabbit@localhost, 5672) is not touched. The cluster gets ports no one listens on and node names of its
own, so that a developer's `gongji cluster up` or another test run does not collide with it.
"""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from contracts.routing import Names
from services.shared.broker import Broker
from simulator.cluster import RABBIT_BIN, Cluster, _port_taken
from simulator.run.orchestration import RunOptions, run_loaded
from simulator.terminal import Progress
from simulator.scenario.loader import load_scenario
from simulator.stack import cleanup_namespace

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "faults" / "broker_node_down.yaml"
CI_SCALE = "0.075"  # about 300 visits (150 families); the full size is in the scenario's header

pytestmark = pytest.mark.skipif(not (RABBIT_BIN / "rabbitmq-server").exists(),
                                reason="needs Debian's rabbitmq-server (/usr/lib/rabbitmq/bin)")


def _free_first_port() -> int:
    """A first AMQP port such that the three AMQP ports and their distribution ports (+ 20000) are free."""
    for first in range(5691, 5991, 10):
        if not any(_port_taken(p) or _port_taken(p + 20000) for p in range(first, first + 3)):
            return first
    raise RuntimeError("no free ports for a test cluster")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"), first_port=_free_first_port(),
                prefix=f"gongji-t{uuid.uuid4().hex[:6]}-")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GONGJI_CLUSTER_DIR", str(c.dir))  # where the fault driver finds the nodes
        try:
            c.up()
            yield c
        finally:
            c.down()


def test_cluster_command_shows_three_running_nodes(cluster: Cluster) -> None:
    out = subprocess.run([sys.executable, "-m", "simulator.cli", "cluster", "status", "--dir", str(cluster.dir)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    names = sorted(n.name for n in cluster.nodes)
    assert len(set(names)) == 3 and len({n.amqp_port for n in cluster.nodes}) == 3
    for row in status["nodes"]:
        assert row["amqp"] is True and row["pid"], row
        assert row["running_nodes"] == names, row  # each node sees all three: one cluster
    urls = subprocess.run([sys.executable, "-m", "simulator.cli", "cluster", "urls", "--dir", str(cluster.dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert urls.stdout.strip().split(",") == [n.url for n in cluster.nodes]
    # The main node is another cluster of one: none of ours joined it.
    main = subprocess.run(["rabbitmqctl", "-q", "cluster_status", "--formatter", "json"], capture_output=True,
                          text=True, timeout=60)
    if main.returncode == 0:
        assert not set(json.loads(main.stdout).get("running_nodes", [])) & set(names)


@pytest.mark.asyncio(loop_scope="module")
async def test_every_queue_is_a_quorum_queue_on_the_three_nodes(cluster: Cluster) -> None:
    ns = f"q{uuid.uuid4().hex[:8]}"
    names = Names(ns)
    broker = Broker(cluster.urls, names, name="test-cluster", passive=False)
    await broker.connect()
    try:
        await broker.declare_topology()
        await broker.declare_bureau_queue(None, ["330100"])
        await broker.declare_client_queue(f"{ns}.observe.test", [(names.events_exchange, "outcome.#")])
        out = cluster.ctl(cluster.nodes[1], "list_queues", "name", "type", "members", "--formatter", "json")
    finally:
        await broker.close()
        await cleanup_namespace(cluster.urls, ns, [names.bureau_queue(None), names.accounts_pay_queue,
                                                   names.accounts_admin_queue, names.pos_command_queue,
                                                   names.reply_queue("pos"), names.reply_queue("bureau"),
                                                   names.events_archive_queue, names.dead_queue,
                                                   f"{ns}.observe.test"])
    ours = {q["name"]: q for q in json.loads(out) if q["name"].startswith(f"{ns}.")}
    assert len(ours) >= 8, sorted(ours)
    every_node = sorted(n.name for n in cluster.nodes)
    for name, q in ours.items():
        # the events archive is a stream (replicated the same way); everything else a quorum queue
        assert q["type"] == ("stream" if name == names.events_archive_queue else "quorum"), q
        assert sorted(q["members"]) == every_node, q


@pytest.mark.asyncio(loop_scope="module")
async def test_node_down_mid_run_every_visit_one_outcome_nothing_lost(cluster: Cluster, tmp_path: Path) -> None:
    """The scenario faults/broker_node_down through the code path of `gongji run`: the three workers on the three
    URLs, generated pharmacy and outpatient visits with mutual aid, node 1 (the one every client is connected to
    and the quorum leaders' node) stopped after 90 outcomes and started 5 s later; then the auditor."""
    loaded = load_scenario(SCENARIO, scale=CI_SCALE)
    said = io.StringIO()
    result = await run_loaded(loaded, RunOptions(amqp_url=cluster.urls, report_dir=tmp_path, progress=False),
                              Progress(stream=said, enabled=True))
    rep = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    f = rep["faults"]
    assert rep["visits"] >= 120, rep["visits"]
    assert rep["by_category"]["pharmacy"]["medfee_sumamt"] > 0 and rep["by_category"]["outpatient"]["medfee_sumamt"] > 0
    assert rep["totals"]["acct_mulaid_pay"] > 0  # family mutual aid paid for some of them
    # The node went down while visits were in flight ...
    assert f["injected"] == {"broker_node_down": 1} and f["not_injected"] == [] and f["errors"] == [], f
    stopped = re.search(r"broker node (\S+) down .* after (\d+) outcomes", said.getvalue())
    assert stopped is not None and stopped.group(1) == cluster.nodes[0].name, said.getvalue()
    assert int(stopped.group(2)) < rep["visits"], stopped.group(0)
    assert "is back" in said.getvalue()
    # ... and every worker lost its connection and failed over (each was on node 1).
    stats = result.data.faults["stats"] if result.data.faults else {}
    assert stats.get("broker_reconnects", 0) >= 3, stats
    # Every visit has exactly one outcome: none missing, none with two different ones, none ended by a timeout.
    assert f["visits_without_outcome"] == 0, rep["invariants"]["one_final_outcome_per_visit"]
    assert rep["invariants"]["one_final_outcome_per_visit"] == "ok"
    assert set(rep["outcomes"]["by_status"]) <= {"settled", "reversed"}, rep["outcomes"]
    # The books balance and the two services agree (the auditor, 3201/3202 reconciliation).
    assert all(v == "ok" for v in rep["invariants"].values()), rep["invariants"]
    assert f["double_debits"] == 0 and f["cap_overruns"] == 0 and f["negative_balances"] == 0, f
    assert f["ledger_balanced"] is True and f["reconciliation_matches"] is True, f
    # Nothing in the dead-letter queue: a lost node is infrastructure, never poison.
    assert f["dead_lettered"] == {} and f["messages"]["dead_lettered_by_workers"] == 0, f
    assert result.ok
