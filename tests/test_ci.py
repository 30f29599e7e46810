"""Issue 14, CI integration and clear errors: --junit, --version, exit codes (0 pass, 1 failed, 2 invalid input,
3 infrastructure) listed in --help, one-line broker errors, friendly `settle` and `compare` mistakes, and
`gongji health` (the compose healthcheck) against real workers."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.harness import Stack

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, amqp_url: str | None = None, timeout: float = 900, namespace: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("GONGJI_SCALE", None)
    if amqp_url is not None:
        env["AMQP_URL"] = amqp_url
    if namespace is not None:
        env["GONGJI_NAMESPACE"] = namespace
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_version_and_exit_codes_in_help() -> None:
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("gongji "), out.stdout + out.stderr
    for args in (("--help",), ("run", "--help"), ("compare", "--help")):
        text = cli(*args).stdout
        assert "exit codes:" in text, args
        for code, word in (("0", "passed"), ("1", "failed"), ("2", "invalid input"), ("3", "infrastructure")):
            assert f"  {code}  {word}" in text, (args, code)


def _with(url: str, *, port: int | None = None, password: str | None = None) -> str:
    u = urlparse(url)
    netloc = f"{u.username or 'guest'}:{password if password is not None else (u.password or 'guest')}@" \
             f"{u.hostname}:{port if port is not None else (u.port or 5672)}"
    return u._replace(netloc=netloc).geturl()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when we return: nobody listens there


@pytest.mark.parametrize("what", ["wrong_port", "wrong_password"])
def test_broker_problems_exit_3_fast_in_one_line(what: str, amqp_url: str, tmp_path: Path) -> None:
    url = _with(amqp_url, port=_free_port()) if what == "wrong_port" else _with(amqp_url, password="not-it")
    t0 = time.monotonic()
    out = cli("run", "scenarios/child_paid_by_mother.yaml", "--amqp-url", url, "--report-dir", str(tmp_path),
              "--quiet", "--junit", str(tmp_path / "junit.xml"))
    elapsed = time.monotonic() - t0
    assert out.returncode == 3, out.stdout + out.stderr
    assert elapsed < 5.0, f"{what}: {elapsed:.1f} s"  # the user-facing contract: within 5 s
    (line,) = lines(out.stderr)  # one line, no traceback, no retry chatter
    assert "Traceback" not in out.stderr and "not-it" not in out.stderr  # never print the password
    if what == "wrong_port":
        assert "connection refused" in line and "AMQP_URL" in line, line
    else:
        assert "ACCESS_REFUSED" in line and "password" in line, line
    # CI still gets a JUnit file, with the run as one errored testcase.
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.get("errors") == "1" and root.find(".//error") is not None


def test_junit_counts_expectations_and_invariants(amqp_url: str, tmp_path: Path) -> None:
    junit = tmp_path / "out" / "junit.xml"
    out = cli("run", "tests/scenarios/wrong_expectation.yaml", "--report-dir", str(tmp_path), "--quiet",
              "--junit", str(junit), amqp_url=amqp_url)
    assert out.returncode == 1, out.stdout + out.stderr
    import json
    rep = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    root = ET.parse(junit).getroot()
    exp, inv = root.findall("testsuite")
    cases = exp.findall("testcase")
    # wrong_expectation.yaml: one step whose expectation holds, one ("buy") whose acct_mulaid_pay does not.
    assert len(cases) == rep["expectations"]["passed"] + rep["expectations"]["failed"] == 2
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["expectation: buy"]
    assert "acct_mulaid_pay" in (failed[0].find("failure").text or "")  # type: ignore[union-attr]
    assert exp.get("tests") == "2" and exp.get("failures") == "1"
    assert len(inv.findall("testcase")) == len(rep["invariants"]) and inv.get("failures") == "0"
    assert root.get("tests") == str(2 + len(rep["invariants"])) and root.get("failures") == "1"
    # The invariants are the auditor's list of named functions, every one of them here (the scenario's balances
    # are all followed), in its order, in report.json and in the JUnit file alike.
    from simulator.audit import INVARIANTS
    names = [f.__name__ for f in INVARIANTS]
    assert len(names) == len(set(names)) >= 12
    assert list(rep["invariants"]) == sorted(names)  # report.json is written with sorted keys
    assert [c.get("name") for c in inv.findall("testcase")] == [f"invariant: {n}" for n in names]


def test_settle_mistakes_are_one_clear_line(amqp_url: str) -> None:
    base = ("settle", "--psn", "A", "--facility", "PHARM0000001", "--insuplc", "330100")
    out = cli(*base, "--item", "XA01:abc", amqp_url=amqp_url)
    assert out.returncode == 2 and lines(out.stderr) == [
        "gongji settle: --item 'XA01:abc': PRICE 'abc' is not a number (e.g. 12.50)"], out.stderr
    out = cli(*base, "--item", "XA01:12.5555555", amqp_url=amqp_url)  # a unit price has at most 6 places
    assert out.returncode == 2 and "more than 6 decimals" in out.stderr and "http" not in out.stderr
    out = cli(*base, "--item", "XA01:12.50", "--time", "yesterday", amqp_url=amqp_url)
    assert out.returncode == 2 and lines(out.stderr)[0].startswith("gongji settle: invalid visit: --time:")
    assert "http" not in out.stderr and "Traceback" not in out.stderr
    # 12.5 is a price a person writes: accepted; with no workers in this namespace the answer is clear and fast.
    out = cli(*base, "--item", "XA01:12.5", "--namespace", f"nobody{uuid.uuid4().hex[:6]}", amqp_url=amqp_url,
              timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    (line,) = lines(out.stderr)
    assert "start the workers" in line and "TimeoutError" not in line, line


def test_compare_checks_every_input_before_running(amqp_url: str, tmp_path: Path) -> None:
    out = cli("compare", "scenarios/retiree_vs_employed.yaml", "--policy", "policies", "--policy", "nope.yaml",
              "--report-dir", str(tmp_path / "cmp"), amqp_url=amqp_url, timeout=120)
    assert out.returncode == 2
    assert "nope.yaml" in out.stderr and "starting workers" not in out.stderr
    assert not (tmp_path / "cmp").exists()  # nothing ran


@pytest.mark.asyncio(loop_scope="session")
async def test_health_asks_the_broker_whether_the_worker_consumes(stack: Stack, amqp_url: str) -> None:
    # Exactly docker-compose's healthcheck command (`gongji health <worker>`), broker and namespace from the env.
    for service in ("bureau", "accounts", "pos"):
        out = await asyncio.to_thread(cli, "health", service, amqp_url=amqp_url, namespace=stack.ns)
        assert out.returncode == 0, out.stderr
        assert "healthy" in out.stdout and "consumer" in out.stdout
    out = await asyncio.to_thread(cli, "health", "pos", amqp_url=amqp_url, namespace=f"none{uuid.uuid4().hex[:6]}")
    assert out.returncode == 1 and "no queue" in out.stderr
    # The queue exists but its worker is gone: unhealthy.
    stack.kill("pos")
    try:
        out = await asyncio.to_thread(cli, "health", "pos", amqp_url=amqp_url, namespace=stack.ns)
        assert out.returncode == 1 and "nobody is consuming" in out.stderr, out.stdout + out.stderr
    finally:
        await stack.start_worker("pos")


from tests.test_access import restricted  # noqa: E402,F401 - the workers as their own broker users


@pytest.mark.asyncio(loop_scope="session")
async def test_health_works_as_each_workers_own_broker_user(restricted: dict) -> None:  # noqa: F811
    """In compose the healthcheck runs with the worker's own user (no configure permission): passive checks only."""
    for service in ("bureau", "accounts", "pos"):
        out = await asyncio.to_thread(cli, "health", service, amqp_url=restricted["urls"][service], namespace="gongji")
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.asyncio(loop_scope="session")
async def test_settle_prints_an_aligned_split(stack: Stack, amqp_url: str) -> None:
    """`gongji settle` end to end: a price written 12.5 settles as 12.50, paid by the own account."""
    from tests.harness import HZ, PHARMACY, T0, ok
    assert stack.client is not None
    psn = f"CLI-{uuid.uuid4().hex[:8]}"
    await ok(stack.client.bureau(stack.client.envelope("G002", {"psn_no": psn, "psn_name": "c", "insutype": "310",
                                                                "psn_type": "employed", "insuplc_admdvs": HZ},
                                                       insuplc_admdvs=HZ, when=T0)))
    await ok(stack.client.accounts_admin(stack.client.envelope("G101", {"psn_no": psn, "insuplc_admdvs": HZ,
                                                                       "opening_balc": "100.00"},
                                                               insuplc_admdvs=HZ, when=T0)))
    out = await asyncio.to_thread(cli, "settle", "--psn", psn, "--facility", PHARMACY, "--insuplc", HZ,
                                  "--item", "XA01:12.5:2", "--time", "2026-03-01 10:00:00",
                                  amqp_url=amqp_url, namespace=stack.ns, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {line.split()[-1]: line for line in out.stdout.splitlines() if line.strip()}
    # 12.50 x 2 = 25.00 at a pharmacy (甲类, no pooled fund for pharmacy purchases here): the account pays it.
    assert "25.00" in rows["medfee_sumamt"] and "25.00" in rows["acct_pay"] and "0.00" in rows["psn_cash_pay"]
    # The amounts end in one column whatever the width of the Chinese labels before them.
    from rich.cells import cell_len
    money = [rows[k] for k in ("medfee_sumamt", "hifp_pay", "acct_pay", "psn_cash_pay", "balc")]
    ends = {cell_len(line[:line.rindex(line.split()[-2]) + len(line.split()[-2])]) for line in money}
    assert len(ends) == 1, money
