"""Nothing gets weaker on the batched path (issue 11): the bureau's requests to the accounts service and its
answers, the visit commands to the POS and the POS's outcome events travel packed, several items per AMQP
message (services/shared/batching.py).

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


async def parked_of_batch(broker: Broker, batch_id: str | None) -> tuple[list[Any], list[Any]]:
    """Everything in the namespace's dead-letter queue (read, not acked: it stays), and what came in this batch."""
    ch = await broker.connection.channel()  # type: ignore[union-attr]
    try:
        q = await ch.get_queue(broker.names.dead_queue, ensure=True)
        parked = []
        while (m := await q.get(no_ack=False, fail=False)) is not None:
            parked.append(m)
    finally:
        await ch.close()
    return parked, [m for m in parked if (m.headers or {}).get("x-gongji-batch-id") == batch_id]


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
        parked, ours = await parked_of_batch(broker, batch.message_id)
        assert sorted(m.message_id for m in ours) == [poison_id, poison_id]
        assert all(m.body == b"{not json" for m in ours)
        # its origin, for `gongji redrive`
        assert all((m.headers["x-gongji-exchange"], m.headers["x-gongji-routing-key"]) == (n.pay_exchange, "pay")
                   for m in ours)
        assert all("not an accounts request" in str(m.headers["x-gongji-reason"]) for m in ours)
        assert not [m for m in parked if m.message_id in (f"pay:S{tag}A", f"pay:S{tag}B")]
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
    batches_before = c.commands.batches
    await asyncio.gather(*(c.submit(cmd) for cmd in cmds))  # one loop pass: the commands go packed
    assert c.commands.batches - batches_before >= 200 // batching.MAX_ITEMS
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


async def test_command_batch_poison_item_alone_and_a_repeated_batch_settles_each_visit_once(stack: Stack) -> None:
    """A batch of visit commands: a command that is not one is parked alone while its neighbours settle; the
    whole batch again (a publisher retry) moves no money twice, and each repeat gets the original outcome."""
    c = stack.client
    assert c is not None
    n = stack.names
    a = await person(c, uid("ca"), balance="100.00")
    good = [visit(a, PHARMACY, "41", "2026-10-02 09:00:01", [line("XA01", "10.00")]),
            visit(a, PHARMACY, "41", "2026-10-02 09:00:02", [line("XA01", "20.00")])]
    poison_id = f"poison-cmd-{uuid.uuid4().hex[:8]}"
    rows = [(1, OutMessage(n.pos_exchange, "command", good[0].model_dump_json().encode(),
                           message_id=good[0].visit_id)),
            (2, OutMessage(n.pos_exchange, "command", b'{"cmd": "settle", "visit_id": 7}', message_id=poison_id)),
            (3, OutMessage(n.pos_exchange, "command", good[1].model_dump_json().encode(),
                           message_id=good[1].visit_id))]
    [(_, batch, items)] = batching.pack(rows, lambda m: True)
    assert len(items) == 3 and batching.is_batch(batch.headers)
    for cmd in good:
        c._outcome_waiters.setdefault(cmd.visit_id, asyncio.get_running_loop().create_future())
    await c.broker.publish(batch)
    first = [await c.outcome(cmd.visit_id, timeout=60) for cmd in good]
    assert [o.status for o in first] == ["settled", "settled"], first
    await c.broker.publish(batch)  # the whole batch again
    for _ in range(200):
        if all(sum(1 for e in c.outcome_events if e.visit_id == cmd.visit_id) >= 2 for cmd in good):
            break
        await asyncio.sleep(0.05)
    for cmd, o in zip(good, first):
        events = [e for e in c.outcome_events if e.visit_id == cmd.visit_id]
        assert len(events) == 2 and events[0] == events[1] == o  # the repeat: the original outcome
    # Money moved once per visit: the account paid what the two outcomes say, not twice that.
    paid = sum((o.setlinfo.acct_pay for o in first if o.setlinfo is not None), D("0.00"))
    assert paid > 0
    assert await balance(c, a) == D("100.00") - paid
    # The poison command was parked alone, once per delivery of its batch, with the batch it came in.
    _, ours = await parked_of_batch(c.broker, batch.message_id)
    assert sorted(m.message_id for m in ours) == [poison_id, poison_id]
    assert all((m.headers["x-gongji-exchange"], m.headers["x-gongji-routing-key"]) == (n.pos_exchange, "command")
               for m in ours)
    accounts, bureau = await audit(c)
    assert accounts["ledger_sum_fen"] == 0 and accounts["balance_mismatches"] == []
    assert bureau["accumulator_mismatches"] == []


async def test_outcome_events_of_one_pass_travel_packed_and_each_is_counted(stack: Stack) -> None:
    """Forty visits sent at once finish close together: the POS packs the outcomes of a pass per facility, and
    the client unpacks them, one outcome per visit."""
    c = stack.client
    assert c is not None
    people = [await person(c, uid("ob"), balance="50.00") for _ in range(8)]
    cmds = [visit(people[i % 8], PHARMACY, "41", f"2026-10-03 10:00:{i:02d}", [line("XA01", "3.00")])
            for i in range(40)]
    before = c.outcome_batches
    await asyncio.gather(*(c.submit(cmd) for cmd in cmds))
    outcomes = [await c.outcome(cmd.visit_id, timeout=120) for cmd in cmds]
    assert sorted(o.visit_id for o in outcomes) == sorted(cmd.visit_id for cmd in cmds)
    assert all(o.status == "settled" for o in outcomes)
    assert c.outcome_batches > before, "no outcome batch arrived: the POS sent each outcome alone"


async def test_coalescer_packs_one_pass_keeps_a_lone_message_plain_and_tells_every_sender_a_failure() -> None:
    """No broker: what the client-side packer hands to publish, and what each sender sees."""
    sent: list[OutMessage] = []
    fail = False

    async def publish(msg: OutMessage) -> None:
        await asyncio.sleep(0)
        if fail:
            raise ConnectionError("broker gone")
        sent.append(msg)

    co = batching.Coalescer(publish, lambda m: m.routing_key == "command")
    cmds = [OutMessage("x.pos", "command", json.dumps({"n": i}).encode(), message_id=f"v{i}") for i in range(3)]
    other = OutMessage("x.accounts", "admin", b"{}", message_id="a1")
    await asyncio.gather(*(co.publish(m) for m in [*cmds, other]))
    batch = next(m for m in sent if m.routing_key == "command")
    assert batching.is_batch(batch.headers) and batching.bodies(batch.headers, batch.body) == [m.body for m in cmds]
    assert [m for m in sent if m.routing_key == "admin"] == [other]  # not batchable: as it was
    assert (co.batches, co.items) == (1, 3)
    sent.clear()
    await co.publish(cmds[0])  # alone in its pass: a plain message
    assert sent == [cmds[0]]
    fail = True
    results = await asyncio.gather(*(co.publish(m) for m in cmds), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError] * 3
