"""`gongji schema DIR`: the published contracts.

    DIR/contracts/<Model>.schema.json   one JSON Schema (2020-12) per pydantic model in contracts/
    DIR/scenario.schema.json            the scenario file (scenarios/*.yaml)
    DIR/asyncapi.json                   AsyncAPI 3.0: exchanges, routing keys, which service sends and receives
                                        which message, built from the declarations the workers use
                                        (contracts.routing.Names, services.shared.definitions, contracts.infno)

Everything is generated, nothing written by hand, so it cannot drift from the code; the shipped copy in
schemas/ is checked against a fresh one by tests/test_schema.py.
"""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

import contracts

SCHEMA_BASE = "https://gongji.invalid/schemas/"  # $id prefix; files refer to each other by relative path


def contract_models() -> dict[str, type[BaseModel]]:
    """Every pydantic model defined in contracts/ (by class name), bases excluded."""
    found: dict[str, type[BaseModel]] = {}
    for mod in sorted(m.name for m in pkgutil.iter_modules(contracts.__path__)):
        module = importlib.import_module(f"contracts.{mod}")
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseModel) and obj.__module__ == module.__name__ and not name.startswith("_") \
                    and obj.model_fields:
                if name in found and found[name] is not obj:
                    raise RuntimeError(f"two contract models named {name}")
                found[name] = obj
    return dict(sorted(found.items()))


BIZ_TIME = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$",
            "description": "business time, Asia/Shanghai, 'yyyy-MM-dd HH:mm:ss' (no zone suffix)"}


def _biz_times(node: Any) -> Any:
    """On the wire every time is contracts.base.BizTime ('2026-03-01 10:00:00'), not RFC 3339: say so."""
    if isinstance(node, dict):
        if node.get("format") == "date-time" and node.get("type") == "string":
            return {**{k: v for k, v in node.items() if k not in ("format", "type")}, **BIZ_TIME}
        return {k: _biz_times(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_biz_times(v) for v in node]
    return node


def contract_path(name: str) -> str:
    return f"contracts/{name}.schema.json"


def model_schema(model: type[BaseModel] | Any, rel: str, title: str | None = None) -> dict[str, Any]:
    schema = (model.model_json_schema() if isinstance(model, type) and issubclass(model, BaseModel)
              else TypeAdapter(model).json_schema())
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_BASE + rel, **schema}
    if title:
        out["title"] = title
    return out


def scenario_schema() -> dict[str, Any]:
    from .scenario.model import Scenario
    s = model_schema(Scenario, "scenario.schema.json", "gongji scenario file")
    s["description"] = ("A gongji scenario (scenarios/*.yaml): people, families, bindings, a generator, a timeline "
                        "of events with expectations, final checks, faults. See scenarios/README.md.")
    return s


# ---- AsyncAPI -----------------------------------------------------------------------------------------------
def _ref(name: str) -> dict[str, str]:
    return {"$ref": contract_path(name)}


def _envelope(infno: str, *input_models: str) -> dict[str, Any]:
    """A national/admin request of one infno: the envelope with that infno and its input (one of the models:
    gongji's own form, or the national interface's node where the bureau takes both)."""
    inp = _ref(input_models[0]) if len(input_models) == 1 else {"anyOf": [_ref(m) for m in input_models]}
    return {"allOf": [_ref("Request"), {"type": "object", "properties": {"infno": {"const": infno},
                                                                         "input": inp}}]}


def asyncapi(ns: str = "gongji") -> dict[str, Any]:
    from contracts.infno import ACCOUNTS_ADMIN_INPUTS, BUREAU_INPUTS
    from contracts.routing import REGISTRY_KEY, Names
    from services.shared.definitions import build

    n = Names(ns)
    defs = build(ns)
    kinds = {e["name"]: e["type"] for e in defs["exchanges"]}
    bound: dict[tuple[str, str], list[str]] = {}
    for b in defs["bindings"]:
        bound.setdefault((b["source"], b["routing_key"]), []).append(b["destination"])

    messages: dict[str, Any] = {}

    def msg(key: str, payload: dict[str, Any], summary: str) -> dict[str, str]:
        messages[key] = {"name": key, "contentType": "application/json", "summary": summary, "payload": payload}
        return {"$ref": f"#/components/messages/{key}"}

    try:
        from contracts.infno import NATIONAL_INPUTS
    except ImportError:  # before the national visit flow
        NATIONAL_INPUTS = {}
    bureau_models: dict[str, list[str]] = {}
    for table in (BUREAU_INPUTS, NATIONAL_INPUTS):
        for code, model in table.items():
            bureau_models.setdefault(code, []).append(model.__name__)
    bureau_msgs = {f"bureau_{code}": msg(f"bureau_{code}", _envelope(code, *names),
                                         f"{code} to the bureau (input {' or '.join(names)})")
                   for code, names in sorted(bureau_models.items())}
    admin_msgs = {f"accounts_{code}": msg(f"accounts_{code}", _envelope(code, model.__name__),
                                          f"{code} to the accounts service (input {model.__name__})")
                  for code, model in sorted(ACCOUNTS_ADMIN_INPUTS.items())}
    reply_msgs = {"reply": msg("reply", _ref("Reply"), "the answer to a request, by inf_refmsgid"),
                  "accounts_reply": msg("accounts_reply", _ref("AccountsReply"),
                                        "the accounts service's answer to the bureau, by req_id")}
    # gongji's own hops may carry several items in one message (services/shared/batching.py): the header
    # x-gongji-batch gives the count; each item is a message of the same channel, as JSON text in "body".
    batch = msg("batch", {
        "type": "object", "required": ["batch"], "additionalProperties": False,
        "properties": {"batch": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {
            "type": "object", "required": ["body"],
            "properties": {"message_id": {"type": ["string", "null"]}, "correlation_id": {"type": ["string", "null"]},
                           "reply_to": {"type": ["string", "null"]}, "headers": {"type": "object"},
                           "body": {"type": "string", "description": "one message of this channel, as JSON text"}}}}}},
        "several items of this channel in one message (header x-gongji-batch: their count); each item keeps "
        "its own key, reply and refusal")
    channels: dict[str, Any] = {}

    def channel(cid: str, exchange: str, address: str, msgs: dict[str, Any], description: str,
                params: dict[str, str] | None = None) -> None:
        queues = sorted({q for (src, key), qs in bound.items() if src == exchange
                         and (key == address or "{" in address or key == "#") for q in qs})
        ch: dict[str, Any] = {
            "address": address, "description": description, "messages": msgs,
            "bindings": {"amqp": {"is": "routingKey", "bindingVersion": "0.3.0",
                                  "exchange": {"name": exchange, "type": kinds[exchange], "durable": True,
                                               "autoDelete": False, "vhost": "/"}}},
        }
        if queues:
            ch["x-gongji-queues"] = queues
        if params:
            ch["parameters"] = {k: {"description": v} for k, v in params.items()}
        channels[cid] = ch

    registry = getattr(n, "registry_exchange", None)  # the bureau's G-codes come from there only
    national = {k: v for k, v in bureau_msgs.items() if registry is None or not k.startswith("bureau_G")}
    channel("bureau", n.bureau_exchange, "{insuplc_admdvs}", national,
            "national transactions to the bureau of the insured region (参保地)",
            {"insuplc_admdvs": "the insured region, e.g. 330100"})
    channel("bureau_registry", n.bureau_exchange, REGISTRY_KEY,
            {k: v for k, v in national.items() if k in ("bureau_9001", "bureau_G001")},
            "9001 sign-in, to every bureau")
    if registry is not None:
        admin_g = {k: v for k, v in bureau_msgs.items() if k.startswith("bureau_G")}
        channel("registry", registry, "{insuplc_admdvs}", admin_g,
                "the bureau's registry and audit transactions (G0xx, G199): the admin/simulator user only",
                {"insuplc_admdvs": "the insured region, e.g. 330100"})
        channel("registry_broadcast", registry, REGISTRY_KEY,
                {k: v for k, v in admin_g.items() if k == "bureau_G001"}, "facility registration, to every bureau")
    channel("pay", n.pay_exchange, "pay", {"accounts_request": msg("accounts_request", _ref("AccountsRequest"),
                                                                   "money movement, only the bureau may send"),
                                           "batch": batch},
            "bureau → accounts: pay, preview, refund, balance")
    channel("accounts_admin", n.accounts_exchange, "admin", admin_msgs, "G1xx admin transactions to the accounts")
    channel("pos", n.pos_exchange, "command",
            {"settle_visit": msg("settle_visit", _ref("SettleVisit"), "settle one visit"),
             "reverse_visit": msg("reverse_visit", _ref("ReverseVisit"), "reverse a settlement"), "batch": batch},
            "commands to the POS (the pharmacies and hospitals gongji plays)")
    channel("reply", n.reply_exchange, "{reply_key}", {**reply_msgs, "batch": batch},
            "answers, to the durable reply queue the requester named in reply_to",
            {"reply_key": "the requester's reply key (reply_to): pos, bureau-<regions>, client-<id>"})
    channel("outcome", n.events_exchange, "outcome.{fixmedins_code}",
            {"visit_outcome": msg("visit_outcome", _ref("VisitOutcome"), "exactly one per visit"), "batch": batch},
            "what finally happened to a visit", {"fixmedins_code": "the facility"})
    channel("balance", n.events_exchange, "balance.{psn_no}",
            {"balance_changed": msg("balance_changed", _ref("BalanceChanged"), "个人账户变动提醒")},
            "every balance movement", {"psn_no": "the account holder"})
    channel("dead", n.dlx, "", {"dead_letter": msg("dead_letter", {"description": "any message a queue gave up"},
                                                   "dead-lettered message")},
            "every work queue dead-letters here")

    def op(action: str, ch: str, summary: str, who: str, only: list[str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"action": action, "channel": {"$ref": f"#/channels/{ch}"}, "summary": summary,
                               "x-gongji-service": who}
        if only is not None:
            out["messages"] = [{"$ref": f"#/channels/{ch}/messages/{m}"} for m in only]
        return out

    operations = {
        "bureau_receives": op("receive", "bureau", "the bureau adjudicates and settles", "bureau"),
        "bureau_receives_registry": op("receive", "bureau_registry", "every bureau signs in", "bureau"),
        **({"bureau_receives_admin": op("receive", "registry", "registry and audit", "bureau"),
            "simulator_sends_registry": op("send", "registry", "the simulator registers people", "simulator"),
            "bureau_receives_facilities": op("receive", "registry_broadcast", "every bureau registers a facility",
                                             "bureau")} if registry is not None else {}),
        "pos_sends_to_bureau": op("send", "bureau", "the POS sends national transactions", "pos"),
        "bureau_sends_pay": op("send", "pay", "the bureau asks the accounts to move money", "bureau"),
        "accounts_receives_pay": op("receive", "pay", "the accounts move money", "accounts"),
        "accounts_receives_admin": op("receive", "accounts_admin", "G1xx administration", "accounts"),
        "simulator_sends_admin": op("send", "accounts_admin", "the simulator administers accounts", "simulator"),
        "simulator_sends_pos": op("send", "pos", "visit commands", "simulator"),
        "pos_receives": op("receive", "pos", "the POS plays the visit", "pos"),
        "services_reply": op("send", "reply", "bureau and accounts answer", "bureau, accounts"),
        "pos_publishes_outcome": op("send", "outcome", "one outcome per visit", "pos"),
        "accounts_publishes_balance": op("send", "balance", "balance reminders", "accounts"),
        "simulator_observes_outcomes": op("receive", "outcome", "the simulator's auditor", "simulator"),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "gongji", "version": _version(),
                 "description": "Settlement of China's basic medical insurance with family mutual aid: the "
                                f"messages between the POS, the bureau and the accounts service (namespace {ns}). "
                                "Every work queue is a durable quorum queue dead-lettering to <ns>.dlx; messages "
                                "are persistent and JSON; money is a string with two decimals."},
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "localhost:5672", "protocol": "amqp", "protocolVersion": "0.9.1"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("gongji")
    except Exception:  # noqa: BLE001 - not installed
        return "0"


def write(directory: Path | str, ns: str = "gongji") -> list[Path]:
    d = Path(directory)
    (d / "contracts").mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in contract_models().items():
        rel = contract_path(name)
        written.append(_dump(d / rel, _biz_times(model_schema(model, rel))))
    written.append(_dump(d / "scenario.schema.json", _biz_times(scenario_schema())))
    written.append(_dump(d / "asyncapi.json", asyncapi(ns)))
    return written


def _dump(path: Path, obj: dict[str, Any]) -> Path:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    return path


def main(args: Any) -> int:
    written = write(args.directory, args.namespace)
    print(f"wrote {len(written)} files to {args.directory}: {len(written) - 2} contract schemas, "
          f"scenario.schema.json, asyncapi.json")
    return 0
