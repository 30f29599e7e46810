"""Issue 14, published contracts: `gongji schema DIR` writes a JSON Schema per contract model and per scenario
file and an AsyncAPI 3.0 document; real messages of each kind, captured from the broker during a scenario run,
and every shipped scenario validate against them; invalid ones do not."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from contracts.routing import REGISTRY_KEY, Names
from services.shared import batching
from services.shared.broker import Broker
from simulator.run.orchestration import RunOptions, run_loaded
from simulator.terminal import Progress
from simulator.scenario.loader import load_scenario

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = sorted([*(REPO / "scenarios").glob("*.yaml"), *(REPO / "scenarios" / "faults").glob("*.yaml")])


class _StringTimes(yaml.SafeLoader):
    """YAML as an editor's language server sees it: 2026-03-01 is a string, not a date object."""


_StringTimes.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
                                        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("schemas")
    done = subprocess.run([sys.executable, "-m", "simulator.cli", "schema", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


def _registry(d: Path) -> Registry:
    resources = []
    for f in sorted(d.rglob("*.json")):
        rel = f.relative_to(d).as_posix()
        resources.append((rel, Resource.from_contents(json.loads(f.read_text(encoding="utf-8")),
                                                      default_specification=DRAFT202012)))
    return Registry().with_resources(resources)


def _validator(d: Path, schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    # Formats checked too: a schema that said "date-time" for '2026-03-01 10:00:00' would fail here.
    return jsonschema.Draft202012Validator(schema, registry=_registry(d),
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_schema_command_writes_every_contract_scenario_and_asyncapi(schemas: Path) -> None:
    contracts = sorted(p.name for p in (schemas / "contracts").glob("*.schema.json"))
    assert len(contracts) >= 45
    for name in ("Request", "Reply", "SettleVisit", "ReverseVisit", "VisitOutcome", "SetlInfo", "AccountsRequest",
                 "AccountsReply", "BalanceChanged", "SettleInput", "Bind"):
        assert f"{name}.schema.json" in contracts
    for f in (schemas / "contracts").glob("*.json"):
        jsonschema.Draft202012Validator.check_schema(json.loads(f.read_text(encoding="utf-8")))
    api = json.loads((schemas / "asyncapi.json").read_text(encoding="utf-8"))
    assert api["asyncapi"] == "3.0.0"
    # Exchanges and routing keys as the workers declare them (namespace gongji).
    n = Names("gongji")
    ex = {cid: (ch["bindings"]["amqp"]["exchange"]["name"], ch["address"]) for cid, ch in api["channels"].items()}
    assert ex["pos"] == (n.pos_exchange, "command") and ex["pay"] == (n.pay_exchange, "pay")
    assert ex["bureau_registry"] == (n.bureau_exchange, REGISTRY_KEY)
    assert ex["outcome"] == (n.events_exchange, "outcome.{fixmedins_code}")
    assert api["channels"]["outcome"]["bindings"]["amqp"]["exchange"]["type"] == "topic"
    assert n.accounts_pay_queue in api["channels"]["pay"]["x-gongji-queues"]
    for op in api["operations"].values():  # every operation points at a channel that exists
        assert op["channel"]["$ref"].split("/")[-1] in api["channels"]
    # The shipped copy (schemas/, which editors and other teams use) is what the code generates today.
    shipped = REPO / "schemas"
    for f in sorted(schemas.rglob("*.json")):
        rel = f.relative_to(schemas)
        assert (shipped / rel).read_text(encoding="utf-8") == f.read_text(encoding="utf-8"), \
            f"schemas/{rel} is stale: run `gongji schema schemas`"


def test_every_shipped_scenario_validates_and_a_broken_one_does_not(schemas: Path) -> None:
    schema = json.loads((schemas / "scenario.schema.json").read_text(encoding="utf-8"))
    v = _validator(schemas, schema)
    assert len(SCENARIOS) >= 15
    for path in SCENARIOS:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StringTimes)  # noqa: S506 - SafeLoader
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(data)]
        assert errors == [], (path.name, errors[:5])
    good = yaml.load((REPO / "scenarios" / "child_paid_by_mother.yaml").read_text(encoding="utf-8"),
                     Loader=_StringTimes)  # noqa: S506
    for broken in ({**good, "peopel": []},  # a misspelt key
                   {**good, "seed": "many"},  # a wrong type
                   {**good, "people": [{**good["people"][0], "region": "3301"}]}):  # not an admdvs
        assert list(v.iter_errors(broken)), broken


# ---- real messages, captured from the broker during a run ------------------------------------------------------
async def _capture(amqp_url: str, ns: str) -> tuple[aio_pika.abc.AbstractConnection, dict[str, Any]]:
    """Declare the namespace's topology (as every worker does) and an exclusive queue per channel."""
    n = Names(ns)
    b = Broker(amqp_url, n, name="schema-capture")
    await b.connect()
    await b.declare_topology()
    await b.close()
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    keys = {"bureau": (n.bureau_exchange, ["330100", "110000", "310000", "420100", "460100", REGISTRY_KEY]),
            "pay": (n.pay_exchange, ["pay"]), "accounts_admin": (n.accounts_exchange, ["admin"]),
            "pos": (n.pos_exchange, ["command"]), "reply": (n.reply_exchange, ["pos", "bureau-all"]),
            "events": (n.events_exchange, ["#"])}
    if hasattr(n, "registry_exchange"):  # the bureau's G-codes travel on their own exchange
        keys["registry"] = (n.registry_exchange, ["330100", "110000", "310000", "420100", "460100", REGISTRY_KEY])
    queues = {}
    for cid, (exchange, routing) in keys.items():
        q = await ch.declare_queue(exclusive=True, auto_delete=True)
        for key in routing:
            await q.bind(exchange, key)
        queues[cid] = q
    return conn, queues


async def _drain(q: Any, batches: list[dict[str, Any]] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The messages of a queue, a batch's items each on its own (the batch itself goes to `batches`)."""
    out = []
    while True:
        m = await q.get(no_ack=True, fail=False)
        if m is None:
            return out
        if batching.is_batch(m.headers):
            if batches is not None:
                batches.append(json.loads(m.body))
            out.extend((m.routing_key or "", json.loads(b)) for b in batching.bodies(m.headers, m.body))
        else:
            out.append((m.routing_key or "", json.loads(m.body)))


@pytest.mark.asyncio(loop_scope="session")
async def test_real_messages_of_each_kind_validate(schemas: Path, amqp_url: str, tmp_path: Path) -> None:
    api = json.loads((schemas / "asyncapi.json").read_text(encoding="utf-8"))
    msgs = api["components"]["messages"]
    ns = f"sch{uuid.uuid4().hex[:8]}"
    conn, queues = await _capture(amqp_url, ns)
    try:
        loaded = load_scenario(REPO / "scenarios" / "reversal_restores.yaml")
        result = await run_loaded(loaded, RunOptions(amqp_url=amqp_url, namespace=ns, report_dir=tmp_path,
                                                     progress=False), Progress(enabled=False))
        assert result.ok
        batches: list[dict[str, Any]] = []
        captured = {cid: await _drain(q, batches) for cid, q in queues.items()}
    finally:
        await conn.close()

    def check(kind: str, body: dict[str, Any]) -> None:
        errors = list(_validator(schemas, msgs[kind]["payload"]).iter_errors(body))
        assert errors == [], (kind, [e.message for e in errors[:3]], body)

    seen: set[str] = set()
    for _key, body in [*captured["bureau"], *captured.get("registry", [])]:
        kind = f"bureau_{body['infno']}"
        check(kind, body)
        seen.add(kind)
    for _key, body in captured["accounts_admin"]:
        check(f"accounts_{body['infno']}", body)
        seen.add(f"accounts_{body['infno']}")
    for _key, body in captured["pay"]:
        check("accounts_request", body)
        seen.add("accounts_request")
    for _key, body in captured["pos"]:
        kind = "settle_visit" if body["cmd"] == "settle" else "reverse_visit"
        check(kind, body)
        seen.add(kind)
    for key, body in captured["reply"]:
        kind = "reply" if key == "pos" else "accounts_reply"
        check(kind, body)
        seen.add(kind)
    for key, body in captured["events"]:
        kind = "visit_outcome" if key.startswith("outcome.") else "balance_changed"
        check(kind, body)
        seen.add(kind)
    for body in batches:  # the envelope of gongji's own batches, where the run made any
        check("batch", body)
    one = {"message_id": "m1", "correlation_id": None, "reply_to": "pos", "headers": {}, "body": "{}"}
    check("batch", {"batch": [one, one]})
    for bad in ({"batch": []}, {"batch": [{**one, "body": {}}]}, {"batch": [{"headers": {}}]}, {"items": [one]}):
        assert list(_validator(schemas, msgs["batch"]["payload"]).iter_errors(bad)), bad
    # A real message of each kind the run exchanged: national, admin, money movement, commands, replies, events.
    for kind in ("bureau_9001", "bureau_G001", "bureau_G003", "accounts_G103", "accounts_G111", "accounts_request",
                 "settle_visit", "reverse_visit", "reply", "accounts_reply", "visit_outcome", "balance_changed"):
        assert kind in seen, (kind, sorted(seen))
    for codes in (("2101", "2206", "2303"), ("2102", "2207", "2304"), ("2103", "2208", "2305")):  # pre/settle/reverse
        assert any(f"bureau_{c}" in seen for c in codes), (codes, sorted(seen))

    # ... and an invalid one does not: money as a float, an unknown field, a missing field.
    settle = next(b for _k, b in captured["pos"] if b["cmd"] == "settle")
    for mutate in (lambda m: m["details"][0].__setitem__("det_item_fee_sumamt", 12.5),  # gongji money: "12.50"
                   lambda m: m["details"][0].__setitem__("pric", "12.5555555"),  # a unit price has ≤ 6 places
                   lambda m: m.__setitem__("surprise", 1),
                   lambda m: m.pop("psn_no")):
        bad = copy.deepcopy(settle)
        mutate(bad)
        assert list(_validator(schemas, msgs["settle_visit"]["payload"]).iter_errors(bad)), bad
    bad = copy.deepcopy(settle)
    bad["biz_time"] = "2026-03-01T10:00:00+08:00"  # RFC 3339 is not the national interface's time
    assert list(_validator(schemas, msgs["settle_visit"]["payload"]).iter_errors(bad))
    request = next(b for _k, b in captured["bureau"] if b["infno"] in ("2102", "2207", "2304"))
    bad = copy.deepcopy(request)
    bad["input"]["medfee_sumamt"] = "12.5"  # money needs exactly two decimals
    assert list(_validator(schemas, msgs[f"bureau_{request['infno']}"]["payload"]).iter_errors(bad))


def test_editors_find_the_scenario_schema() -> None:
    settings = json.loads((REPO / ".vscode" / "settings.json").read_text(encoding="utf-8"))
    (target, globs), = settings["yaml.schemas"].items()
    assert (REPO / target).resolve() == (REPO / "schemas" / "scenario.schema.json").resolve()
    assert "scenarios/*.yaml" in globs
    assert "# yaml-language-server: $schema=../schemas/scenario.schema.json" in \
        (REPO / "scenarios" / "README.md").read_text(encoding="utf-8")
