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
        yield {"urls": urls, "vhost": vhost}
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
        rep = await his.sign_in("2026-03-01 08:00:00")
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
    await _publish(restricted["urls"]["bureau"], "gongji.events", "probe.access")  # allowed
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
