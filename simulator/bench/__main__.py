"""`python -m simulator.bench echo|inproc`."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from services.shared.entry import DEFAULT_AMQP_URL

from .inproc import run_inproc
from .raw import echo_server


def _module_main(argv: list[str]) -> int:
    """`python -m simulator.bench echo ...` (the raw ceiling's echo process, started by the bench) or
    `python -m simulator.bench inproc ...` (the workers' own code on an in-memory broker)."""
    p = argparse.ArgumentParser(prog="python -m simulator.bench")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", DEFAULT_AMQP_URL))
    e.add_argument("--namespace", required=True)
    e.add_argument("--prefetch", type=int, default=64)
    i = sub.add_parser("inproc")
    i.add_argument("--duration", type=float, default=10.0)
    i.add_argument("--concurrency", type=int, default=32)
    i.add_argument("--accounts", type=int, default=1000)
    i.add_argument("--warmup", type=float, default=None)
    i.add_argument("--seed", type=int, default=6)
    i.add_argument("--prefetch", type=int, default=64)
    i.add_argument("--visit-timeout", type=float, default=30.0)
    i.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.cmd == "echo":
        asyncio.run(echo_server(a.amqp_url, a.namespace, a.prefetch))
        return 0
    result = asyncio.run(run_inproc(a))
    text = json.dumps(result, indent=2, ensure_ascii=False, default=str)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_module_main(sys.argv[1:]))
