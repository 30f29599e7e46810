"""CI's broker checks, beyond "the port is open":

  python3 .ci/broker.py probe        exit 0 if an AMQP handshake with guest/guest succeeds within 10 s
  python3 .ci/broker.py sweep N      if the broker holds more than N queues, delete those nobody consumes

Why: a RabbitMQ node can accept TCP connections and still refuse every AMQP handshake (runs killed half-way
left thousands of test queues behind and the node ran out of file descriptors: stop 9's CI). The tests would
then fail by the hundred for a reason that is not theirs.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiormq

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def probe() -> int:
    try:
        conn = await asyncio.wait_for(aiormq.connect(URL), 10)
        await conn.close()
        return 0
    except Exception as exc:  # what failed goes to the log; the caller decides what to do
        print(f"[ci] AMQP handshake failed: {exc!r}", file=sys.stderr)
        return 1


async def sweep(limit: int) -> int:
    listing = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "consumers"], capture_output=True,
                             text=True, timeout=120)
    rows = [line.split("\t") for line in listing.stdout.splitlines() if "\t" in line]
    idle = [name for name, consumers in rows if consumers.strip() == "0"]
    if len(rows) <= limit:
        return 0
    print(f"[ci] the broker holds {len(rows)} queues (left by killed runs); deleting the {len(idle)} "
          "that nobody consumes", file=sys.stderr)
    conn = await asyncio.wait_for(aiormq.connect(URL), 10)
    try:
        channel = await conn.channel()
        for name in idle:
            try:
                await channel.queue_delete(name)
            except aiormq.exceptions.ChannelClosed:
                channel = await conn.channel()
    finally:
        await conn.close()
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "probe":
        sys.exit(asyncio.run(probe()))
    sys.exit(asyncio.run(sweep(int(sys.argv[2]))))
