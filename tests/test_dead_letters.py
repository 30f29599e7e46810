"""<ns>.dead is bounded by length and age, and parked bodies are cut to a limit (issue 13, attack 9)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import pytest

from services.shared.topology import dead_queue_args
from tests.harness import Stack

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_dead_letter_queue_is_bounded_and_bodies_truncated(amqp_url: str, run_id: str,
                                                                 tmp_path_factory: pytest.TempPathFactory,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"GONGJI_DEAD_MAX_LENGTH": "5", "GONGJI_DEAD_BODY_KB": "4", "GONGJI_DEAD_TTL_DAYS": "1"}
    s = Stack(amqp_url, f"dl{run_id}", Path(tmp_path_factory.mktemp("dead")))
    s.env.update(limits)
    for k, v in limits.items():  # every process declaring the queue must agree on its arguments
        monkeypatch.setenv(k, v)
    await s.start()
    try:
        c = s.client
        assert c is not None
        # Eight 600 KB junk commands (not JSON): each is parked with its reason, at most 4 KB of it kept,
        # and only the newest 5 stay.
        for i in range(8):
            await c.send_raw(s.names.pos_exchange, "command", b"\x01" * 600_000, msgid=f"junk-{i}")
        conn = await aio_pika.connect(amqp_url)
        try:
            ch = await conn.channel()
            q = await ch.get_queue(s.names.dead_queue, ensure=True)
            for _ in range(300):  # until the POS worker has parked all eight (its stats file says so)
                if _parked(s.data_dir) >= 8:
                    break
                await asyncio.sleep(0.2)
            assert _parked(s.data_dir) == 8
            kept = []
            while (msg := await q.get(no_ack=True, fail=False)) is not None:
                kept.append(msg)
            assert len(kept) == 5 and {m.message_id for m in kept} <= {f"junk-{i}" for i in range(8)}
            for m in kept:
                h = dict(m.headers or {})
                assert len(m.body) == 4096 and h["x-gongji-truncated"] is True and h["x-gongji-body-bytes"] == 600000
                assert "not JSON" in str(h["x-gongji-reason"])
            # The queue's bounds are what the configuration says (redeclaring with other arguments would fail).
            args = dead_queue_args()
            assert args["x-max-length"] == 5 and args["x-message-ttl"] == 86400 * 1000
            ch2 = await conn.channel()
            await ch2.declare_queue(s.names.dead_queue, durable=True, arguments=args)  # same arguments: accepted
        finally:
            await conn.close()
    finally:
        await s.stop()
        await s.cleanup()


def _parked(data_dir: Path) -> int:
    import json
    total = 0
    for p in (data_dir / "stats").glob("pos-*.json"):
        try:
            total += json.loads(p.read_text())["dead_lettered"]
        except (OSError, ValueError):
            pass
    return total
