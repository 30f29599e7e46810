"""Nothing gets weaker on the batched path (issue 11): the bureau's requests to the accounts service and its
answers travel packed, several items per AMQP message (services/shared/batching.py).

- a whole batch delivered twice is absorbed item by item: one effect per item key, the repeat gets the
  original answers;
- a poison item inside a batch is dead-lettered (and its sender told) alone, while its neighbours settle;
- a SIGKILL of each worker with 200 visits in flight on batched traffic leaves every visit with exactly one
  outcome and a clean ledger.
"""
from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from contracts.internal import AccountsRequest
from services.shared import batching
from services.shared.broker import Broker
from services.shared.store import OutMessage
from tests.harness import HOSPITAL3, HZ, PHARMACY, Stack, audit, balance, bind, line, person, uid, visit

pytestmark = pytest.mark.asyncio(loop_scope="session")
D = Decimal


def stats_sum(data_dir: Path, key: str) -> int:
    total = 0
    for f in (data_dir / "stats").glob("*.json"):
        try:
            total += int(json.loads(f.read_text()).get(key) or 0)
        except (OSError, ValueError):
            pass
    return total


def pay(psn_no: str, setl_id: str, amount: str, reply_key: str) -> OutMessage:
    req = AccountsRequest(req_id=f"pay:{setl_id}", kind="pay", psn_no=psn_no, insuplc_admdvs=HZ,
                          biz_time="2026-10-01 10:00:00", fixmedins_code=PHARMACY, med_type="41", setl_id=setl_id,
                          psn_part_amt=D(amount), medfee_sumamt=D(amount), context={"setl_id": setl_id})
    return OutMessage("", "pay", req.model_dump_json().encode(), message_id=req.req_id, reply_to=reply_key)


async def test_duplicated_batch_absorbed_item_by_item_and_poison_item_refused_alone(stack: Stack) -> None:
    c = stack.client
    assert c is not None
    a = await person(c, uid("ba"), balance="100.00")
    b = await person(c, uid("bb"), balance="100.00")
    n = stack.names
    key = f"bureau-t{uuid.uuid4().hex[:8]}"  # answers to a "bureau-…" key travel in batches too
    broker = Broker(stack.amqp_url, n, name="test-batch")
    await broker.connect()
    replies: list[dict[str, Any]] = []

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        if batching.is_batch(message.headers):
            replies.extend(json.loads(item["body"]) for item in batching.unpack(message.body))
        else:
            replies.append(json.loads(message.body))

    try:
        await broker.declare_client_queue(n.reply_queue(key), [(n.reply_exchange, key)])
        await broker.consume(n.reply_queue(key), on_reply)
        tag = uuid.uuid4().hex[:8]
        poison_id = f"poison-{tag}"
        rows = [(1, pay(a, f"S{tag}A", "10.00", key)),
                (2, OutMessage("", "pay", b"{not json", message_id=poison_id, reply_to=key)),
                (3, pay(b, f"S{tag}B", "20.00", key))]
        [(ids, batch, items)] = batching.pack(rows, lambda m: True)
        assert ids == [1, 2, 3] and len(items) == 3 and batch.headers == {batching.HEADER: 3}
        batch = OutMessage(n.pay_exchange, "pay", batch.body, batch.message_id, headers=batch.headers)
        await broker.publish(batch)
        await broker.publish(batch)  # the whole batch again (a redelivery, a publisher retry)

        def answers(req_id: str) -> list[dict[str, Any]]:
            return [r for r in replies if r.get("req_id") == req_id]
        for _ in range(600):
            if len(answers(f"pay:S{tag}A")) >= 2 and len(answers(f"pay:S{tag}B")) >= 2 and \
                    sum(1 for r in replies if r.get("inf_refmsgid") == poison_id) >= 2:
                break
            await asyncio.sleep(0.05)
        # Each good item answered on both deliveries, the repeat with the original answer.
        for req_id, amount in ((f"pay:S{tag}A", "10.00"), (f"pay:S{tag}B", "20.00")):
            got = answers(req_id)
            assert len(got) == 2, (req_id, replies)
            assert got[0] == got[1]
            assert got[0]["ok"] is True and got[0]["acct_pay"] == amount
        # The poison item: its sender told (a refusal), on each delivery of the batch.
        refusals = [r for r in replies if r.get("inf_refmsgid") == poison_id]
        assert len(refusals) == 2 and all(r["infcode"] != 0 for r in refusals)
        # One effect per item key: 100.00 − 10.00 and 100.00 − 20.00, not twice.
        assert await balance(c, a) == D("90.00")
        assert await balance(c, b) == D("80.00")

        # The dead-letter queue holds the poison item alone (with the batch it came in), not its neighbours.
        ch = await broker.connection.channel()  # type: ignore[union-attr]
        try:
            q = await ch.get_queue(n.dead_queue, ensure=True)
            parked = []
            while (m := await q.get(no_ack=False, fail=False)) is not None:  # not acked: they stay
                parked.append(m)
            ours = [m for m in parked if (m.headers or {}).get("x-gongji-batch-id") == batch.message_id]
            assert sorted(m.message_id for m in ours) == [poison_id, poison_id]
            assert all(m.body == b"{not json" for m in ours)
            # its origin, for `gongji redrive`
            assert all((m.headers["x-gongji-exchange"], m.headers["x-gongji-routing-key"]) == (n.pay_exchange, "pay")
                       for m in ours)
            assert all("not an accounts request" in str(m.headers["x-gongji-reason"]) for m in ours)
            assert not [m for m in parked if m.message_id in (f"pay:S{tag}A", f"pay:S{tag}B")]
        finally:
            await ch.close()
    finally:
        await broker.close()
    accounts, _ = await audit(c)
    assert accounts["ledger_sum_fen"] == 0 and accounts["balance_mismatches"] == []


@pytest.mark.parametrize("victim", ["accounts", "bureau", "pos"])
async def test_sigkill_each_worker_with_200_visits_in_flight_on_batched_traffic(stack: Stack, victim: str) -> None:
    c = stack.client
    assert c is not None
    opening = D("300.00")
    families = []
    for _ in range(20):
        parent = await person(c, uid("kp"), balance=f"{opening}")
        kid = await person(c, uid("kk"), balance="5.00")
        await bind(c, parent, kid, day_cap="80.00")
        families.append((parent, kid))
    items_before = stats_sum(stack.data_dir, "batch_items_in")
    cmds = []
    for i in range(200):
        parent, kid = families[i % len(families)]
        who = kid if i % 2 else parent
        facility, med = (PHARMACY, "41") if i % 3 else (HOSPITAL3, "11")
        cmds.append(visit(who, facility, med, f"2026-10-{1 + i % 9:02d} 11:{i // 60:02d}:{i % 60:02d}",
                          [line("EXAM" if med == "11" else "XA01", f"{5 + i % 7}.00")], timeout_ms=90000))
    for cmd in cmds:
        await c.submit(cmd)
    await asyncio.sleep(0.5)
    stack.kill(victim, signal.SIGSTOP)  # freeze it mid-stream, then kill it for good
    unfinished = [cmd for cmd in cmds if cmd.visit_id not in c.outcomes]
    assert unfinished, "every visit finished before the kill: nothing was in flight"
    stack.kill(victim, signal.SIGKILL)
    await asyncio.sleep(1.0)
    await stack.start_worker(victim)
    outcomes = [await c.outcome(cmd.visit_id, timeout=180) for cmd in cmds]
    assert len({o.visit_id for o in outcomes}) == len(cmds)
    assert [(o.visit_id, o.status, o.err_code, o.err_msg) for o in outcomes if o.status != "settled"] == []
    taken: dict[str, Decimal] = defaultdict(lambda: D("0.00"))
    for o in outcomes:
        s = o.setlinfo
        assert s is not None
        assert s.fund_pay_sumamt + s.acct_pay + s.psn_cash_pay == s.medfee_sumamt
        taken[o.psn_no] += s.acct_pay - s.acct_mulaid_pay
        for part in s.mulaid_detail:
            taken[part.authorizer_psn_no] += part.amount
    for parent, kid in families:
        assert await balance(c, parent) == opening - taken[parent]
        assert await balance(c, kid) == D("5.00") - taken[kid]
    accounts, bureau = await audit(c)
    assert accounts["balance_mismatches"] == [] and accounts["ledger_sum_fen"] == 0
    assert accounts["unbalanced_txns"] == 0 and accounts["negative_balances"] == 0
    assert bureau["accumulator_mismatches"] == []
    await asyncio.sleep(1.2)  # the stats files are written every second
    assert stats_sum(stack.data_dir, "batch_items_in") > items_before, "no batch was carried: not the batched path"
