"""Access: one RabbitMQ user per service with only the permissions it needs (deploy/rabbitmq/definitions.json,
loaded at broker start in docker-compose). Here the same definitions, generated for a throwaway vhost and
prefixed user names, are imported into the real broker with rabbitmqctl; the three workers run as their own
users with passive declarations, a visit settles end to end, and forbidden operations are refused."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import sys
import urllib.parse
from pathlib import Path
from typing import AsyncIterator

import aio_pika
import aiormq
import pytest
import pytest_asyncio

from contracts.routing import Names
from services.shared.definitions import LOCAL_PASSWORDS, build, password_hash, permissions, render
from simulator.client import Client
from simulator.stack import die_with_parent
from tests.harness import HZ, PHARMACY, T0, line, ok, register_facilities, visit

# asyncio_mode=auto with session loop scope (pyproject.toml) runs the async tests here.
REPO = Path(__file__).resolve().parents[1]


def test_committed_definitions_are_the_generated_ones() -> None:
    committed = (REPO / "deploy" / "rabbitmq" / "definitions.json").read_text()
    assert committed == render(build()), "regenerate with `gongji broker-definitions > deploy/rabbitmq/definitions.json`"


def test_only_the_bureau_may_write_to_the_pay_exchange() -> None:
    import re
    perms = permissions("gongji")
    writers = [u for u, p in perms.items() if u != "admin" and re.search(p["write"], Names().pay_exchange)]
    assert writers == ["bureau"]
    assert all(p["configure"] == "^$" for u, p in perms.items() if u in ("bureau", "accounts", "pos"))


def test_password_hash_is_rabbitmq_sha256() -> None:
    import base64
    import hashlib
    raw = base64.b64decode(password_hash("pos", LOCAL_PASSWORDS["pos"]))
    salt, digest = raw[:4], raw[4:]
    assert digest == hashlib.sha256(salt + b"pos-local").digest()


def _rabbitmqctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120, input=stdin)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def restricted(amqp_url: str, run_id: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict]:
    if shutil.which("rabbitmqctl") is None or os.environ.get("AMQP_URL"):
        pytest.skip("needs rabbitmqctl on the machine of the broker under test (local RabbitMQ)")
    vhost, prefix = f"gongji-access-{run_id}", f"t{run_id}-"
    passwords = {u: secrets.token_hex(8) for u in LOCAL_PASSWORDS}
    tmp = tmp_path_factory.mktemp("access")
    # rabbitmqctl runs as the broker's user, which cannot read pytest's private tmp dir: a readable file
    # of its own (throwaway passwords), removed at once.
    fd, path = tempfile.mkstemp(prefix="gongji-defs-", suffix=".json")
    try:
        os.write(fd, render(build(vhost=vhost, users=passwords, prefix=prefix)).encode())
        os.close(fd)
        os.chmod(path, 0o644)
        imported = _rabbitmqctl("import_definitions", path)
    finally:
        os.unlink(path)
    assert imported.returncode == 0, imported.stderr
    urls = {u: f"amqp://{prefix}{u}:{pw}@127.0.0.1:5672/{urllib.parse.quote(vhost, safe='')}"
            for u, pw in passwords.items()}
    procs = []
    try:
        for service in ("bureau", "accounts", "pos"):
            env = {**os.environ, "GONGJI_DECLARE": "passive", "GONGJI_LOG_FORMAT": "json",
                   "GONGJI_LOG_LEVEL": "WARNING"}
            proc = subprocess.Popen([sys.executable, "-m", "simulator.cli", "worker", service, "--namespace", "gongji",
                                     "--data-dir", str(tmp / "data"), "--amqp-url", urls[service]],
                                    stdout=subprocess.PIPE, stderr=open(tmp / f"{service}.log", "wb"), env=env,
                                    cwd=REPO, preexec_fn=die_with_parent)
            procs.append(proc)
            assert proc.stdout is not None
            line_ = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
            assert b"ready" in line_, (tmp / f"{service}.log").read_text()
        yield {"urls": urls, "vhost": vhost, "prefix": prefix}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)
        _rabbitmqctl("delete_vhost", vhost)
        for u in passwords:
            _rabbitmqctl("delete_user", prefix + u)


async def test_each_service_runs_with_its_own_user_and_a_visit_settles(restricted: dict) -> None:
    client = Client(restricted["urls"]["simulator"], "gongji", name="access")
    client.broker.passive = True
    await client.connect()
    try:
        await register_facilities(client)
        for infno, data in (("G002", {"psn_no": "ACC-1", "psn_name": "a", "insutype": "310", "psn_type": "employed",
                                      "insuplc_admdvs": HZ}),):
            await ok(client.bureau(client.envelope(infno, data, insuplc_admdvs=HZ, when=T0)))
        await ok(client.accounts_admin(client.envelope("G101", {"psn_no": "ACC-1", "insuplc_admdvs": HZ,
                                                                "opening_balc": "100.00"}, insuplc_admdvs=HZ,
                                                       when=T0)))
        out = await client.visit(visit("ACC-1", PHARMACY, "41", "2026-03-01 10:00:00", [line("XA01", "30.00")]),
                                 timeout=60)
        assert out.status == "settled", (out.err_code, out.err_msg)
        assert out.setlinfo is not None and out.setlinfo.acct_pay.to_eng_string() == "30.00"
    finally:
        await client.close()


async def test_the_compose_main_job_runs_as_the_simulator_user(restricted: dict, tmp_path: Path) -> None:
    """docker-compose's `scenario` service: `gongji run <scenario> --external`, as the simulator user, passive."""
    from simulator.cli import MAIN_JOB
    args = [a if a != "reports" else str(tmp_path / "reports") for a in MAIN_JOB]
    env = {**os.environ, "GONGJI_DECLARE": "passive", "AMQP_URL": restricted["urls"]["simulator"],
           "GONGJI_NAMESPACE": "gongji"}
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "simulator.cli", *args], env=env,
                                   cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert report["expectations"]["failed"] == 0
    assert all(v == "ok" for v in report["invariants"].values()), report["invariants"]


async def _publish(url: str, exchange: str, key: str) -> None:
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(exchange, ensure=False)
        await ex.publish(aio_pika.Message(b"{}", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), key)
        await asyncio.sleep(0.2)
        await ch.close()
    finally:
        await conn.close()


async def test_the_gateway_runs_as_its_own_user(restricted: dict) -> None:
    """docker-compose's `gateway` service: its own user, passive, and a signed HTTP sign-in goes through."""
    import httpx

    from tests.test_gateway import His, start_gateway, stop
    client = Client(restricted["urls"]["simulator"], "gongji", name="access-gw")
    client.broker.passive = True
    await client.connect()
    try:
        await register_facilities(client)
    finally:
        await client.close()
    proc, base = await start_gateway(restricted["urls"]["gateway"], "gongji", env={"GONGJI_DECLARE": "passive"})
    his = His(base, PHARMACY, HZ)
    try:
        rep = await his.sign_in("2026-03-01 11:00:00")  # after ACC-1 (10:00): the deployment keeps each facility's clock
        assert rep["infcode"] == 0, rep
        async with httpx.AsyncClient() as http:
            assert (await http.get(base + "/healthz")).json()["forwarded"] == 1
    finally:
        await his.close()
        stop(proc)


@pytest.mark.parametrize("user", ["pos", "simulator", "accounts", "gateway"])
async def test_nobody_but_the_bureau_may_move_money(restricted: dict, user: str) -> None:
    with pytest.raises((aiormq.exceptions.ChannelAccessRefused, aio_pika.exceptions.ChannelClosed,
                        aiormq.exceptions.ChannelInvalidStateError)):
        await _publish(restricted["urls"][user], "gongji.pay", "pay")


async def test_the_bureau_may_and_others_cannot_read_foreign_queues(restricted: dict) -> None:
    await _publish(restricted["urls"]["bureau"], "gongji.reply", "bureau-probe")  # allowed (it answers)
    for user, queue in (("pos", "gongji.accounts.pay"), ("accounts", "gongji.bureau.all"),
                        ("simulator", "gongji.pos.commands")):
        conn = await aio_pika.connect(restricted["urls"][user])
        try:
            ch = await conn.channel()
            q = await ch.get_queue(queue, ensure=True)
            with pytest.raises((aiormq.exceptions.ChannelAccessRefused, aio_pika.exceptions.ChannelClosed)):
                await q.get(no_ack=False, fail=False)
        finally:
            await conn.close()



# ---- issue 13: each forbidden act tried as the user who would try it, refused, nothing changes --------------
async def _publish_as(url: str, exchange: str, key: str, body: bytes, **props: object) -> None:
    """Publish with confirms; raises when the broker refuses (access, or a user_id that is not ours)."""
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(exchange, ensure=False)
        await ex.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **props), key)
        await asyncio.sleep(0.2)
        await ch.close()
    finally:
        await conn.close()


REFUSED = (aiormq.exceptions.ChannelAccessRefused, aio_pika.exceptions.ChannelClosed,
           aiormq.exceptions.ChannelInvalidStateError, aiormq.exceptions.ChannelPreconditionFailed)


async def _user_client(restricted: dict, name: str) -> Client:
    client = Client(restricted["urls"]["simulator"], "gongji", name=name)
    client.broker.passive = True
    await client.connect()
    return client


async def _parked(restricted: dict, message_id: str) -> dict[str, str]:
    """Wait until the message is in gongji.dead (read as the simulator user) and return its entry."""
    from simulator.stack import read_dead_letters
    for _ in range(150):
        for d in await read_dead_letters(restricted["urls"]["simulator"], "gongji", consume=False):
            if d["message_id"] == message_id:
                return d
        await asyncio.sleep(0.2)
    raise AssertionError(f"{message_id} was not parked")


async def test_only_the_admin_side_may_write_the_registry(restricted: dict) -> None:
    """Attack 5: the pos user re-registers a person as retired and a pharmacy as a hospital."""
    from tests.harness import direct
    client = await _user_client(restricted, "reg")
    try:
        await register_facilities(client)
        psn = "ACC-REG-1"
        await ok(client.bureau(client.envelope("G002", {"psn_no": psn, "psn_name": "r", "insutype": "310",
                                                        "psn_type": "employed", "insuplc_admdvs": HZ},
                                               insuplc_admdvs=HZ, when=T0)))
        retired = client.envelope("G002", {"psn_no": psn, "psn_name": "r", "insutype": "310", "psn_type": "retired",
                                           "insuplc_admdvs": HZ}, insuplc_admdvs=HZ, when=T0)
        hospital = client.envelope("G001", {"fixmedins_code": PHARMACY, "fixmedins_name": "x",
                                            "fixmedins_type": "hospital", "hosp_lv": "level3", "admdvs": HZ},
                                   insuplc_admdvs=HZ, when=T0)
        pos = restricted["urls"]["pos"]
        # The registry exchange refuses the pos user outright ...
        with pytest.raises(REFUSED):
            await _publish_as(pos, "gongji.registry", HZ, retired.model_dump_json().encode(), message_id=retired.msgid)
        # ... and the same transactions through the national exchange (which the pos user may write) are parked.
        for req, key in ((retired, HZ), (hospital, "registry")):
            await _publish_as(pos, "gongji.bureau", key, req.model_dump_json().encode(), message_id=req.msgid,
                              reply_to="pos", user_id=f"{restricted['prefix']}pos")
            d = await _parked(restricted, req.msgid)
            assert "accepted from gongji.registry only" in d["reason"]
        # Nothing changed: still employed, and the pharmacy is still a pharmacy (it settles 41, not 11).
        _, info = await direct(client, "1101", {"psn_no": psn}, when="2026-03-02 10:00:00", facility=PHARMACY)
        assert info.infcode == 0 and info.output is not None and info.output["psn_type"] == "employed"
        _, rep = await direct(client, "2207", {"psn_no": psn, "med_type": "11", "insutype": "310",
                                               "medfee_sumamt": "10.00", "details": [line("EXAM", "10.00")]},
                              when="2026-03-02 10:00:00", facility=PHARMACY)
        assert rep.err_code == "E_FACILITY_TYPE_MISMATCH"
    finally:
        await client.close()


async def test_replies_go_only_to_the_senders_own_reply_queue(restricted: dict) -> None:
    """Attack 6: a request aimed at the POS's reply queue (a refusal with a guessed in-flight msgid)."""
    client = await _user_client(restricted, "rt")
    try:
        req = client.envelope("2102", {"psn_no": "NOBODY"}, insuplc_admdvs=HZ, when="2026-03-02 10:00:00",
                              fixmedins_code=PHARMACY)
        sim = restricted["urls"]["simulator"]
        await _publish_as(sim, "gongji.bureau", HZ, req.model_dump_json().encode(), message_id=req.msgid,
                          reply_to="pos", user_id=f"{restricted['prefix']}simulator")
        d = await _parked(restricted, req.msgid)
        assert "is not a reply queue of user" in d["reason"]
        # Without a user_id the sender is unknown: no answer goes anywhere either.
        req2 = req.model_copy(update={"msgid": req.msgid[:-4] + "9999"})
        await _publish_as(sim, "gongji.bureau", HZ, req2.model_dump_json().encode(), message_id=req2.msgid,
                          reply_to="pos")
        assert "is not a reply queue of user None" in (await _parked(restricted, req2.msgid))["reason"]
        # Claiming to be the pos user is refused by the broker itself.
        with pytest.raises(REFUSED):
            await _publish_as(sim, "gongji.bureau", HZ, b"{}", user_id=f"{restricted['prefix']}pos")
    finally:
        await client.close()


async def test_nobody_reads_replies_meant_for_others(restricted: dict) -> None:
    """Attack 6: the simulator user binds a queue of its own to the reply exchange with the POS's key."""
    conn = await aio_pika.connect(restricted["urls"]["simulator"])
    try:
        ch = await conn.channel()
        q = await ch.declare_queue("gongji.reply.client-spy", durable=True, arguments={"x-expires": 60000})
        with pytest.raises(REFUSED):
            await q.bind("gongji.reply", "pos")
        ch = await conn.channel()
        q = await ch.get_queue("gongji.reply.client-spy", ensure=False)
        await q.bind("gongji.reply", "client-spy")  # its own kind of key: allowed
    finally:
        await conn.close()


@pytest.mark.parametrize("user,key", [("simulator", "outcome.PHZ000000001"), ("pos", "balance.X"),
                                      ("accounts", "outcome.PHZ000000001"), ("bureau", "outcome.PHZ000000001")])
async def test_events_only_from_their_publisher(restricted: dict, user: str, key: str) -> None:
    """Attack 6: outcome events only from the pos user, balance events only from the accounts user."""
    with pytest.raises(REFUSED):
        await _publish_as(restricted["urls"][user], "gongji.events", key, b"{}")


async def test_the_auditor_believes_only_outcomes_the_pos_user_published(restricted: dict) -> None:
    """Even a user the broker lets write events (admin) does not make the auditor believe an outcome."""
    from contracts.pos import VisitOutcome
    client = await _user_client(restricted, "aud")
    try:
        fake = VisitOutcome(visit_id="FAKE-1", cmd="settle", status="refused", fixmedins_code=PHARMACY, psn_no="X",
                            msgid="PHZ00000000120260302100000" + "0001", infcode=-1, err_code="E_TIMEOUT",
                            err_msg="planted", biz_time="2026-03-02 10:00:00")  # type: ignore[arg-type]
        await _publish_as(restricted["urls"]["admin"], "gongji.events", f"outcome.{PHARMACY}",
                          fake.model_dump_json().encode(), user_id=f"{restricted['prefix']}admin")
        for _ in range(50):
            if client.untrusted_outcomes:
                break
            await asyncio.sleep(0.1)
        assert client.untrusted_outcomes == 1 and "FAKE-1" not in client.outcomes
    finally:
        await client.close()
