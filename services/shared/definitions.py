"""The RabbitMQ definitions file for a deployment (docker-compose loads deploy/rabbitmq/definitions.json at
broker start): the topology, and one user per service with only the permissions it needs.

    bureau    reads its own queues; writes to pay (moves money), reply, dlx
    accounts  reads accounts.pay and accounts.admin; writes to reply, events, dlx
    pos       reads pos.commands and its replies; writes to bureau (settlements), events, dlx
    gateway   the HTTP front of the bureau: writes to bureau, registry (G-codes of the admin paasid only),
              accounts (admin), events (outcomes, conformance findings); reads its own reply queues
    simulator declares its own reply/observer queues; writes to bureau, registry, accounts (admin), pos;
              never to pay, reply or events; binds only client-… reply keys (topic permissions)
    admin     the management UI (administrator)

Only the bureau may write to <ns>.pay, so only the bureau can ask the accounts service to move money.
Passwords are the documented local defaults (README); change them for anything but a local run.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from contracts.routing import Names

from .topology import exchanges, queues

LOCAL_PASSWORDS = {"bureau": "bureau-local", "accounts": "accounts-local", "pos": "pos-local",
                   "simulator": "simulator-local", "gateway": "gateway-local", "admin": "admin-local"}


def password_hash(user: str, password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password)). The salt is derived
    from the user name so that the file is reproducible."""
    salt = hashlib.sha256(f"gongji:{user}".encode()).digest()[:4]
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def permissions(ns: str) -> dict[str, dict[str, str]]:
    n = re.escape(ns)
    return {
        "bureau": {"configure": "^$", "write": rf"^{n}\.(pay|reply|dlx)$",
                   "read": rf"^{n}\.(bureau\..+|reply\.bureau-.+)$"},
        "accounts": {"configure": "^$", "write": rf"^{n}\.(reply|events|dlx)$",
                     "read": rf"^{n}\.accounts\.(pay|admin)$"},
        "pos": {"configure": "^$", "write": rf"^{n}\.(bureau|events|dlx)$",
                "read": rf"^{n}\.(pos\.commands|reply\.pos)$"},
        "simulator": {"configure": rf"^{n}\.(reply\.client-.+|observe\..+)$",
                      "write": rf"^{n}\.(bureau|registry|accounts|pos|reply\.client-.+|observe\..+)$",
                      "read": rf"^{n}\.(reply|events|dead|reply\.client-.+|observe\..+)$"},
        # the HTTP gateway (services/gateway): publishes national requests as the POS does, G-codes of the
        # admin paasid to the accounts, outcome and conformance events; reads its own reply queues
        "gateway": {"configure": "^$", "write": rf"^{n}\.(bureau|registry|accounts|events)$",
                    "read": rf"^{n}\.reply\.gateway-.+$"},
        "admin": {"configure": ".*", "write": ".*", "read": ".*"},
    }


def topic_permissions(ns: str) -> dict[str, dict[str, dict[str, str]]]:
    """Routing keys per user on the topic exchanges: who may bind which reply key (a client only its own
    kind, so nobody reads the POS's or the bureau's answers), and who may publish which events (outcomes
    only the POS, balance changes only the accounts service)."""
    n = Names(ns)
    return {
        "bureau": {n.reply_exchange: {"write": ".*", "read": "^bureau-.+$"}},
        "accounts": {n.reply_exchange: {"write": ".*", "read": "^$"},
                     n.events_exchange: {"write": r"^balance\..+$", "read": "^$"}},
        "pos": {n.reply_exchange: {"write": "^$", "read": "^pos$"},
                n.events_exchange: {"write": r"^outcome\..+$", "read": "^$"}},
        "gateway": {n.reply_exchange: {"write": "^$", "read": "^gateway-.+$"},
                    n.events_exchange: {"write": r"^(outcome|conformance)\..+$", "read": "^$"}},
        "simulator": {n.reply_exchange: {"write": "^$", "read": "^client-.+$"},
                      n.events_exchange: {"write": "^$", "read": ".*"}},
    }


def build(ns: str = "gongji", regions: list[str] | None = None, vhost: str = "/",
          users: dict[str, str] | None = None, prefix: str = "") -> dict[str, Any]:
    """users: name → password (default: the local defaults); prefix: prepended to user names (tests)."""
    from .policy import load_policies
    n = Names(ns)
    regions = sorted(regions if regions is not None else load_policies())
    users = users or LOCAL_PASSWORDS
    deployed = [q for q in queues(n, regions) if q.deployed]  # the topology, as the workers declare it
    perms = permissions(ns)
    return {
        "users": [{"name": prefix + u, "password_hash": password_hash(prefix + u, pw),
                   "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": ["administrator"] if u == "admin" else []} for u, pw in users.items()],
        "vhosts": [{"name": vhost}],
        "permissions": [{"user": prefix + u, "vhost": vhost, **perms[u]} for u in users],
        "topic_permissions": [{"user": prefix + u, "vhost": vhost, "exchange": exchange, **tp}
                              for u in users for exchange, tp in topic_permissions(ns).get(u, {}).items()],
        "exchanges": [{"name": name, "vhost": vhost, "type": kind, "durable": True, "auto_delete": False,
                       "internal": False, "arguments": {}} for name, kind in exchanges(n).items()],
        "queues": [{"name": q.name, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": q.arguments}
                   for q in deployed],
        "bindings": [{"source": src, "vhost": vhost, "destination": q.name, "destination_type": "queue",
                      "routing_key": key, "arguments": {}} for q in deployed for src, key in q.bindings],
    }


def render(definitions: dict[str, Any]) -> str:
    return json.dumps(definitions, indent=2, ensure_ascii=False) + "\n"
