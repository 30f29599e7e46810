"""Issue "A national-interface HTTP gateway": every 'Done when' line, against a real RabbitMQ with the workers and
`gongji gateway` running as separate processes on ephemeral ports (127.0.0.1 only).

The HTTP clients here play a HIS: httpx and hashlib only, no gongji code (the signature is computed by hand; the
paasToken comes from the `gongji credentials` command, as a tester gets it). The tests use gongji's own AMQP
client (tests/harness.py) only to load records and to check what happened.
"""
from __future__ import annotations

import asyncio
import csv
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import pytest_asyncio

from simulator.stack import WorkerStack, die_with_parent
from tests.harness import HZ, PHARMACY, Stack, balance, bind, cleanup_namespace, line, person, uid, visit

pytestmark = pytest.mark.asyncio(loop_scope="module")
REPO = Path(__file__).resolve().parents[1]
D = Decimal
PATH = "/fsi/api/rsfComIfsService/callService"
MONEY = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt", "act_pay_dedc",
         "hifp_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay", "acct_mulaid_pay", "psn_cash_pay", "balc")


# ---- processes ------------------------------------------------------------------------------------------
def gongji(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "simulator.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, preexec_fn=die_with_parent)


async def wait_line(proc: subprocess.Popen[bytes], word: str, timeout: float = 60) -> list[str]:
    """Lines of stdout up to the one containing `word`."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
        if not raw:
            break
        lines.append(raw.decode(errors="replace").rstrip())
        if word in lines[-1]:
            return lines
    raise RuntimeError(f"no {word!r} from {proc.args}: {lines[-20:]}")


async def start_gateway(amqp_url: str, ns: str, *extra: str,
                        env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """docker-compose's `gateway` service command (["gateway"], tests/test_compose.py) with test flags."""
    proc = gongji("gateway", "--namespace", ns, "--amqp-url", amqp_url, "--host", "127.0.0.1", "--port", "0",
                  *extra, env=env)
    lines = await wait_line(proc, "ready")
    port = next(m.group(1) for text in lines if (m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", text)))
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Stack, str]]:
    """Bureau, accounts and POS workers (tests/harness.py Stack) and a gateway in front of them."""
    ns = f"gw{uuid.uuid4().hex[:8]}"
    stack = Stack(amqp_url, ns, tmp_path_factory.mktemp("gw"))
    await stack.start()
    proc, url = await start_gateway(amqp_url, ns, "--reply-timeout", "20", "--compensate-grace", "2")
    try:
        yield stack, url
    finally:
        stop(proc)
        await stack.stop()
        await cleanup_namespace(amqp_url, ns, stack.queues_used() + [f"{ns}.reply.gateway-1", f"{ns}.reply.gateway-2"])


# ---- a HIS: httpx and hashlib, nothing of gongji --------------------------------------------------------
def paas_token(paasid: str) -> str:
    """As a tester gets it: from `gongji credentials`."""
    out = subprocess.run([sys.executable, "-m", "simulator.cli", "credentials", paasid, "--json"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["paasToken"]


def x_tif(paasid: str, token: str, *, ts: int | None = None, nonce: str | None = None) -> dict[str, str]:
    ts_s = str(int(time.time()) if ts is None else ts)
    nonce = nonce or uuid.uuid4().hex
    sig = hashlib.sha256((ts_s + token + nonce + ts_s).encode()).hexdigest()
    return {"x-tif-paasid": paasid, "x-tif-timestamp": ts_s, "x-tif-nonce": nonce, "x-tif-signature": sig}


class His:
    """A HIS at one facility, as its vendor would write it."""

    _seq = itertools.count(1)

    def __init__(self, base: str, fixmedins_code: str, region: str, token: str | None = None):
        self.url = base + PATH
        self.fac = fixmedins_code
        self.region = region
        self.token = token or paas_token(fixmedins_code)
        self.sign_no = ""
        self.http = httpx.AsyncClient(timeout=60)

    def msgid(self, when: str) -> str:
        return self.fac + re.sub(r"\D", "", when) + f"{next(self._seq) % 10000:04d}"

    def envelope(self, infno: str, data: dict[str, Any], when: str, msgid: str | None = None) -> dict[str, Any]:
        return {"infno": infno, "msgid": msgid or self.msgid(when), "inf_time": when, "fixmedins_code": self.fac,
                "insuplc_admdvs": self.region, "mdtrtarea_admvs": self.region, "opter": "his01", "opter_type": "1",
                "sign_no": self.sign_no, "infver": "V1.0", "input": data}

    async def post(self, body: dict[str, Any], headers: dict[str, str] | None = None,
                   url: str | None = None) -> dict[str, Any]:
        resp = await self.http.post(url or self.url, json=body, headers=headers or x_tif(self.fac, self.token))
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def call(self, infno: str, data: dict[str, Any], when: str, **kw: Any) -> dict[str, Any]:
        return await self.post(self.envelope(infno, data, when, kw.pop("msgid", None)), **kw)

    async def sign_in(self, when: str) -> dict[str, Any]:
        rep = await self.call("9001", {"opter_no": "his01"}, when)
        if rep["infcode"] == 0:
            self.sign_no = rep["output"]["sign_no"]
        return rep

    async def close(self) -> None:
        await self.http.aclose()


def bill(psn_no: str, lines: list[tuple[str, str]], med_type: str = "41", insutype: str = "390") -> dict[str, Any]:
    details = [{"feedetl_sn": str(i), "med_list_codg": code, "cnt": "1", "pric": price, "det_item_fee_sumamt": price,
                "chrgitm_lv": "01"} for i, (code, price) in enumerate(lines, 1)]
    total = sum(D(p) for _, p in lines)
    return {"psn_no": psn_no, "mdtrt_cert_type": "01", "med_type": med_type, "insutype": insutype,
            "acct_used_flag": "1", "medfee_sumamt": f"{total:.2f}", "details": details}


def national_refusal(rep: dict[str, Any], code: str) -> None:
    """The national error shape: infcode -1 with err_msg, and the stable err_code."""
    assert rep["infcode"] == -1, rep
    assert rep["err_code"] == code, rep
    assert isinstance(rep["err_msg"], str) and rep["err_msg"], rep
    assert "inf_refmsgid" in rep and rep.get("output") is None


# ---- Done when 1: a HIS over HTTP --------------------------------------------------------------------------
async def test_his_over_http_matches_the_same_visit_over_amqp(gw: tuple[Stack, str]) -> None:
    stack, base = gw
    c = stack.client
    assert c is not None
    # Two identical families: one served over HTTP, one through gongji's POS over AMQP.
    families = []
    for _ in range(2):
        mother = await person(c, uid("gwmother"), balance="50.00")
        child = await person(c, uid("gwchild"), insutype="390", balance=None)  # 居民医保: no account of her own
        await bind(c, mother, child)
        families.append((mother, child))
    (mother, child), (mother2, child2) = families
    his = His(base, PHARMACY, HZ)
    try:
        day = "2026-03-02"
        signed = await his.sign_in(f"{day} 08:00:00")
        assert signed["infcode"] == 0 and signed["output"]["sign_no"], signed
        # The visit of tests/test_settlement_e2e.py: XB02 40.00 (乙类, selfpay_prop 0.05 in the Hangzhou catalog)
        # and XA01 20.00 (甲类) at a Hangzhou pharmacy, not pooled there (policies/330100.yaml).
        data = bill(child, [("XB02", "40.00"), ("XA01", "20.00")])
        pre = await his.call("2101", data, f"{day} 10:00:00")
        assert pre["infcode"] == 0, pre
        settle = await his.call("2102", data, f"{day} 10:00:05")
        assert settle["infcode"] == 0, settle
        s = settle["output"]
        assert settle["inf_refmsgid"] and s["setl_id"]
        # by hand: medfee 60.00; pre-self-pay 40.00 x 0.05 = 2.00; fund 0.00 (not pooled); the patient's 60.00 is
        # paid by the mother's 50.00 (all she has) through 共济, the other 10.00 in cash.
        assert (s["medfee_sumamt"], s["preselfpay_amt"], s["hifp_pay"], s["fund_pay_sumamt"]) == \
            ("60.00", "2.00", "0.00", "0.00")
        assert (s["acct_pay"], s["acct_mulaid_pay"], s["psn_cash_pay"]) == ("50.00", "50.00", "10.00")
        assert pre["output"]["acct_mulaid_pay"] == "50.00"  # the pre-settlement announced the same split
        assert await balance(c, mother) == D("0.00")

        # The same visit through gongji's POS over RabbitMQ: the same amounts.
        amqp = await c.visit(visit(child2, PHARMACY, "41", f"{day} 10:00:00",
                                   [line("XB02", "40.00"), line("XA01", "20.00")], insutype="390"))
        assert amqp.status == "settled" and amqp.setlinfo is not None
        twin = amqp.setlinfo.model_dump(mode="json")
        assert {k: s[k] for k in MONEY} == {k: twin[k] for k in MONEY}

        # 2103 reverses it over HTTP: negated amounts, the mother's 50.00 back.
        rev = await his.call("2103", {"psn_no": child, "setl_id": s["setl_id"]}, f"{day} 11:00:00")
        assert rev["infcode"] == 0, rev
        r = rev["output"]
        assert (r["medfee_sumamt"], r["acct_pay"], r["acct_mulaid_pay"], r["psn_cash_pay"]) == \
            ("-60.00", "-50.00", "-50.00", "-10.00")
        assert r["orig_setl_id"] == s["setl_id"]
        assert await balance(c, mother) == D("50.00")

        # A settle the HIS gave up on: it sends 2601 冲正 with the original msgid, and nothing remains.
        data2 = bill(child, [("XA01", "20.00")])
        assert (await his.call("2101", data2, f"{day} 12:00:00"))["infcode"] == 0
        second = await his.call("2102", data2, f"{day} 12:00:05")
        assert second["infcode"] == 0 and second["output"]["acct_mulaid_pay"] == "20.00"
        assert await balance(c, mother) == D("30.00")
        comp = await his.call("2601", {"psn_no": child, "omsgid": second["inf_refmsgid"], "oinfno": "2102"},
                              f"{day} 12:01:00")
        assert comp["infcode"] == 0, comp
        assert await balance(c, mother) == D("50.00")  # 30.00 + the 20.00 the 冲正 refunded
        # The infno in the URL, as some clients call it.
        again = await his.call("2101", data2, f"{day} 12:02:00", url=f"{his.url}/2101")
        assert again["infcode"] == 0 and again["output"]["acct_mulaid_pay"] == "20.00"
    finally:
        await his.close()


async def test_wrong_signature_old_timestamp_and_reused_nonce_are_refused(gw: tuple[Stack, str]) -> None:
    _, base = gw
    his = His(base, PHARMACY, HZ)
    try:
        when = "2026-03-05 08:00:00"
        body = his.envelope("9001", {"opter_no": "his01"}, when)
        wrong = x_tif(PHARMACY, "0" * 32)  # a token that is not this facility's
        national_refusal(await his.post(body, wrong), "E_SIGNATURE_INVALID")
        old = x_tif(PHARMACY, his.token, ts=int(time.time()) - 3600)  # an hour old: beyond the 300 s window
        national_refusal(await his.post(body, old), "E_SIGNATURE_EXPIRED")
        headers = x_tif(PHARMACY, his.token)
        first = await his.post(body, headers)
        assert first["infcode"] == 0, first
        replay = await his.post(his.envelope("9001", {"opter_no": "his01"}, when), headers)  # same nonce
        national_refusal(replay, "E_NONCE_REUSED")
        missing = await his.post(body, {"x-tif-paasid": PHARMACY})
        national_refusal(missing, "E_SIGNATURE_MISSING")
        # A correct signature of one facility does not speak for another.
        other = His(base, "HHZ000000003", HZ)
        body_other = other.envelope("9001", {"opter_no": "his01"}, when)
        national_refusal(await his.post(body_other, x_tif(PHARMACY, his.token)), "E_PAASID_MISMATCH")
        await other.close()
    finally:
        await his.close()


# ---- Done when 2: observe over gateway traffic, with a sloppy client's findings ---------------------------------
async def test_observe_reports_invariants_and_a_sloppy_clients_findings(gw: tuple[Stack, str], amqp_url: str,
                                                                         tmp_path: Path) -> None:
    stack, base = gw
    c = stack.client
    assert c is not None
    # A second gateway that gives up quickly, so that a settle can time out on purpose.
    quick, quick_url = await start_gateway(amqp_url, stack.ns, "--instance", "2", "--reply-timeout", "2",
                                           "--compensate-grace", "1")
    report = tmp_path / "observed"
    obs = gongji("observe", "--report-dir", str(report), "--namespace", stack.ns, "--amqp-url", amqp_url)
    await wait_line(obs, "ready")
    mother = await person(c, uid("slmother"), balance="200.00")
    child = await person(c, uid("slchild"), insutype="390", balance=None)
    await bind(c, mother, child)
    good = His(base, PHARMACY, HZ)
    sloppy = His(quick_url, PHARMACY, HZ, token=good.token)
    try:
        d1, d2 = "2026-06-01", "2026-06-02"
        # a well-behaved visit first
        assert (await good.sign_in(f"{d1} 08:00:00"))["infcode"] == 0
        data = bill(child, [("XA01", "20.00")])
        assert (await good.call("2101", data, f"{d1} 09:00:00"))["infcode"] == 0
        settled = await good.call("2102", data, f"{d1} 09:00:05")
        assert settled["infcode"] == 0
        assert (await good.call("2103", {"psn_no": child, "setl_id": settled["output"]["setl_id"]},
                                f"{d1} 09:30:00"))["infcode"] == 0

        # sloppy: no sign_no at all
        national_refusal(await sloppy.call("2101", data, f"{d1} 10:00:00"), "E_SIGN_NO_UNKNOWN")
        # sloppy: a msgid that is not 12 + 14 + 4
        national_refusal(await sloppy.call("2101", data, f"{d1} 10:00:01", msgid="HIS-0001"), "E_BAD_MESSAGE")
        sloppy.sign_no = good.sign_no  # yesterday's sign-in, used today: expired
        national_refusal(await sloppy.call("2101", data, f"{d2} 10:00:00"), "E_SIGN_NO_EXPIRED")
        assert (await sloppy.sign_in(f"{d2} 08:00:00"))["infcode"] == 0
        # sloppy: money with a binary float's digits (a HIS that adds prices in doubles)
        floaty = {**data, "medfee_sumamt": 12.3 * 3 - 16.9}  # 20.000000000000007
        national_refusal(await sloppy.call("2101", floaty, f"{d2} 10:01:00"), "E_BAD_INPUT")
        # sloppy: settle with no pre-settle (the bureau settles it; the finding is about the client)
        lone = bill(child, [("XA01", "11.00")])
        lone_settle = await sloppy.call("2102", lone, f"{d2} 10:02:00")
        assert lone_settle["infcode"] == 0, lone_settle
        # sloppy: reverse a setl_id nobody issued
        national_refusal(await sloppy.call("2103", {"psn_no": child, "setl_id": "NO-SUCH-SETL"}, f"{d2} 10:03:00"),
                         "E_SETTLEMENT_NOT_FOUND")
        # sloppy: a settle that times out (the accounts service is paused), and no 2601 afterwards
        late, gone = bill(child, [("XA01", "7.00")]), bill(child, [("XA01", "5.00")])
        assert (await sloppy.call("2101", late, f"{d2} 10:04:00"))["infcode"] == 0
        good.sign_no = sloppy.sign_no  # the same facility, today's sign-in
        assert (await good.call("2101", gone, f"{d2} 10:05:00"))["infcode"] == 0
        hang_up = good.envelope("2102", gone, f"{d2} 10:05:05")
        stack.kill("accounts", signal.SIGSTOP)
        try:
            # the gateway gives up (--reply-timeout 2) ...
            timed_out = await sloppy.call("2102", late, f"{d2} 10:04:05")
            # ... and a client that hangs up itself (through the other gateway, which would wait 20 s)
            with pytest.raises(httpx.TimeoutException):
                await good.http.post(good.url, json=hang_up, headers=x_tif(PHARMACY, good.token), timeout=3)
        finally:
            stack.kill("accounts", signal.SIGCONT)
        national_refusal(timed_out, "E_TIMEOUT")
        # Both settles complete by themselves; the gateways publish their outcomes when the replies come.
        for _ in range(100):
            if await balance(c, mother) == D("200.00") - D("11.00") - D("7.00") - D("5.00"):
                break
            await asyncio.sleep(0.2)
        assert await balance(c, mother) == D("177.00")
        await asyncio.sleep(4)  # beyond --compensate-grace (1 and 2 s): the missing 2601s are reported
        async with httpx.AsyncClient() as http:
            assert (await http.get(base + "/healthz")).json()["hung_up"] >= 1
    finally:
        await good.close()
        await sloppy.close()
        obs.send_signal(signal.SIGTERM)
        out = await asyncio.to_thread(obs.communicate, None, 120)
        stop(quick)
    assert (report / "report.html").exists()
    rep = json.loads((report / "report.json").read_text())
    assert rep["invariants"] and all(v == "ok" for v in rep["invariants"].values()), (rep["invariants"], out)
    # settled 20.00 then reversed (two visits), the lone 11.00 and the late 7.00 settled; refused ones too
    assert rep["outcomes"]["settled"] == 4 and rep["outcomes"]["reversed"] == 1, rep["outcomes"]
    assert rep["totals"]["acct_mulaid_pay"] == "23.00"  # 20 - 20 + 11 + 7 + 5
    kinds = rep["conformance"]["by_client"][PHARMACY]
    for kind in ("sign_no_missing", "malformed_msgid", "sign_no_expired", "float_money", "settle_without_presettle",
                 "reverse_unknown_setl_id", "missing_2601"):
        assert kinds.get(kind, 0) >= 1, (kind, kinds)
    listed = {f["kind"]: f for f in rep["conformance"]["list"]}
    assert {f["msgid"] for f in rep["conformance"]["list"] if f["kind"] == "missing_2601"} == \
        {timed_out["inf_refmsgid"], hang_up["msgid"]}
    assert listed["settle_without_presettle"]["msgid"] == lone_settle["inf_refmsgid"]
    with open(report / "settlements.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == rep["visits"]
    assert any(r["setl_id"] == lone_settle["output"]["setl_id"] and r["status"] == "settled" for r in rows)
    assert len((report / "settlements.ndjson").read_text(encoding="utf-8").splitlines()) == rep["visits"]


# ---- Done when 3: gongji's POS with --bureau-url against a gateway runs a shipped scenario to PASS ---------------
async def test_pos_over_http_runs_a_shipped_scenario(amqp_url: str, tmp_path: Path) -> None:
    ns = f"gh{uuid.uuid4().hex[:8]}"
    gateway, url = await start_gateway(amqp_url, ns)
    # The POS worker gets `--bureau-url` through its environment (GONGJI_POS_BUREAU_URL is the flag's env form).
    workers = WorkerStack(amqp_url, ns, tmp_path / "data", env={"GONGJI_POS_BUREAU_URL": url + PATH})
    try:
        await workers.start()
        run = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "simulator.cli", "run", "scenarios/child_paid_by_mother.yaml",
                             "--external", "--namespace", ns, "--amqp-url", amqp_url, "--report-dir",
                             str(tmp_path / "report"), "--quiet"], cwd=REPO, capture_output=True, text=True,
            timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "PASS" in run.stdout
        rep = json.loads((tmp_path / "report" / "report.json").read_text())
        assert rep["expectations"]["failed"] == 0 and rep["expectations"]["passed"] >= 2
        # ... and it really went over HTTP: the gateway forwarded the POS's sign-in, pre-settles and settles.
        async with httpx.AsyncClient() as http:
            health = (await http.get(url + "/healthz")).json()
        assert health["forwarded"] >= 5 and health["refused_signature"] == 0, health
    finally:
        await workers.stop()
        stop(gateway)
        await cleanup_namespace(amqp_url, ns, workers.queues_used() + [f"{ns}.reply.gateway-1"])


# ---- Done when 4: the README's curl example runs ------------------------------------------------------------------
async def test_readme_curl_example_runs(gw: tuple[Stack, str]) -> None:
    _, base = gw
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- gateway-curl -->\s*```sh\n(.*?)```", text, re.S)
    assert block, "README.md has no ```sh block after <!-- gateway-curl -->"
    env = {**os.environ, "GATEWAY": base, "GONGJI": f"{sys.executable} -m simulator.cli"}
    run = await asyncio.to_thread(subprocess.run, ["bash", "-euo", "pipefail", "-c", block.group(1)], cwd=REPO,
                                  env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    replies = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
    assert replies and all(r["infcode"] == 0 for r in replies), run.stdout
    assert replies[-1]["output"]["medfee_sumamt"] == "36.00"  # the pre-settlement the example asks for


# ---- the OpenAPI document carries each transaction's schema ------------------------------------------------------
async def test_openapi_has_the_schema_of_every_transaction(gw: tuple[Stack, str]) -> None:
    _, base = gw
    async with httpx.AsyncClient() as http:
        doc = (await http.get(base + "/openapi.json")).json()
    op = doc["paths"][f"{PATH}/2102"]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    forms = [x["$ref"].rsplit("/", 1)[1] for x in body["allOf"][1]["properties"]["input"]["anyOf"]]
    assert forms == ["InPharmacy", "SettleInput"]  # the national nodes (druginfo + drugdetail), then the flat form
    assert "drugdetail" in doc["components"]["schemas"]["InPharmacy"]["properties"]
    visit = doc["paths"][f"{PATH}/2204"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert visit["allOf"][1]["properties"]["input"]["$ref"].endswith("/In2204")  # national only
    out = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert out["allOf"][1]["properties"]["output"]["anyOf"][0]["$ref"].endswith("/SetlInfo")
    assert "medfee_sumamt" in doc["components"]["schemas"]["SettleInput"]["properties"]
    assert {p["name"] for p in op["parameters"]} >= {"x-tif-paasid", "x-tif-signature"}
    assert f"{PATH}/9001" in doc["paths"] and f"{PATH}/2601" in doc["paths"]


# ---- an outsider's probes: refused in the national shape, nothing changes, the gateway keeps serving ------------
async def test_hostile_requests_are_refused_and_the_gateway_keeps_serving(gw: tuple[Stack, str]) -> None:
    stack, base = gw
    c = stack.client
    assert c is not None
    his = His(base, PHARMACY, HZ)
    try:
        when = "2026-07-01 08:00:00"

        async def raw(content: bytes, headers: dict[str, str] | None = None, url: str | None = None) -> dict[str, Any]:
            resp = await his.http.post(url or his.url, content=content,
                                       headers={"content-type": "application/json",
                                                **(headers or x_tif(PHARMACY, his.token))})
            assert resp.status_code == 200, resp.text
            return resp.json()

        national_refusal(await raw(b"{not json"), "E_BAD_MESSAGE")
        national_refusal(await raw(b"[1, 2, 3]"), "E_BAD_MESSAGE")
        national_refusal(await raw(b"{" + b" " * 1_100_000 + b"}"), "E_BAD_MESSAGE")  # larger than 1 MB
        for depth in (600, 200_000):  # a few KB nested deep: the national refusal, not an HTTP 500
            deep = b'{"infno":"2102","input":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
            national_refusal(await raw(deep), "E_BAD_MESSAGE")

        async def chunked() -> Any:  # no content-length: refused while reading, not after buffering it all
            for _ in range(40):
                yield b" " * 100_000
        national_refusal(await raw(chunked()), "E_BAD_MESSAGE")  # type: ignore[arg-type]
        wrong_method = await his.http.get(his.url)
        assert wrong_method.status_code == 405
        national_refusal(wrong_method.json(), "E_BAD_MESSAGE")
        bad_ts = {**x_tif(PHARMACY, his.token), "x-tif-timestamp": "yesterday"}
        national_refusal(await raw(b"{}", bad_ts), "E_SIGNATURE_INVALID")
        national_refusal(await his.call("9999", {}, when), "E_UNKNOWN_INFNO")
        # gongji's admin channel (loading people and money) is not open to a facility's credentials
        mint = {"psn_no": "MINT1", "insuplc_admdvs": HZ, "insutype": "310", "opening_balc": "99999.00"}
        national_refusal(await his.call("G101", mint, when), "E_PAASID_MISMATCH")
        # the URL's infno and the envelope's must agree
        national_refusal(await his.call("9001", {"opter_no": "x"}, when, url=f"{his.url}/2102"), "E_BAD_MESSAGE")
        # one msgid, two different contents: the bureau's inbox says so
        assert (await his.sign_in(when))["infcode"] == 0
        msgid = his.msgid(when)
        first = await his.call("2103", {"psn_no": "NOBODY1", "setl_id": "NO-SUCH-1"}, when, msgid=msgid)
        assert first["infcode"] == -1 and first["err_code"] == "E_SETTLEMENT_NOT_FOUND", first
        again = await his.call("2103", {"psn_no": "NOBODY1", "setl_id": "NO-SUCH-1"}, when, msgid=msgid)
        assert again == first  # the same msgid and content: the original reply
        national_refusal(await his.call("2103", {"psn_no": "NOBODY1", "setl_id": "NO-SUCH-2"}, when, msgid=msgid),
                         "E_MSGID_CONFLICT")
        # still serving, and no account was minted
        assert (await his.sign_in("2026-07-02 08:00:00"))["infcode"] == 0
        missing = await c.accounts_admin(c.envelope("G121", {"psn_no": "MINT1"}, insuplc_admdvs=HZ))
        assert missing.infcode == -1
    finally:
        await his.close()


async def test_pos_over_http_compensates_when_the_gateway_does_not_know_the_outcome(amqp_url: str,
                                                                                     tmp_path: Path) -> None:
    """The gateway's E_TIMEOUT means "outcome unknown", not "refused": gongji's POS on HTTP must 冲正 (2601) at its
    own deadline, as over AMQP, and nothing may remain of the settlement."""
    from contracts.pos import SettleVisit
    from simulator.client import Client
    from tests.harness import register_facilities
    ns = f"gt{uuid.uuid4().hex[:8]}"
    gateway, url = await start_gateway(amqp_url, ns, "--reply-timeout", "3")
    workers = WorkerStack(amqp_url, ns, tmp_path / "data", env={"GONGJI_POS_BUREAU_URL": url + PATH})
    client = Client(amqp_url, ns, name="gwt", timeout=60)
    try:
        await workers.start()
        await client.connect()
        await register_facilities(client)
        psn = await person(client, uid("gwt"), balance="100.00")
        # signed in beforehand, so that the visit is only the settle (no pre-settle: presettle=False)
        warm = await client.visit(visit(psn, PHARMACY, "41", "2026-08-01 09:00:00", [line("XA01", "1.00")]))
        assert warm.status == "settled"
        cmd = SettleVisit.model_validate({**visit(psn, PHARMACY, "41", "2026-08-01 10:00:00",
                                                  [line("XA01", "30.00")]).model_dump(mode="json"),
                                          "presettle": False, "timeout_ms": 10000})
        workers.kill("accounts", signal.SIGSTOP)  # the bureau cannot finish the settlement: the gateway gives up
        try:
            await client.submit(cmd)
            await asyncio.sleep(6)  # the gateway's 3 s are over; the POS's 10 s are not
        finally:
            workers.kill("accounts", signal.SIGCONT)
        out = await client.outcome(cmd.visit_id, timeout=90)
        assert out.status == "compensated", (out.status, out.err_code, out.err_msg)
        assert await balance(client, psn) == D("99.00")  # 100.00 - the 1.00 of the first visit; the 30.00 undone
        async with httpx.AsyncClient() as http:
            assert (await http.get(url + "/healthz")).json()["timeouts"] >= 1
    finally:
        await client.close()
        await workers.stop()
        stop(gateway)
        await cleanup_namespace(amqp_url, ns, workers.queues_used() + [f"{ns}.reply.gateway-1"])


# ---- `gongji bench --via-gateway` works (speed is measured in BENCHMARKS.md, never asserted) ----------------------
async def test_bench_via_gateway_short_run(amqp_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "simulator.cli", "bench", "--via-gateway", "--duration", "3",
                           "--concurrency", "8", "--accounts", "200", "--raw-duration", "1", "--no-raw-after",
                           "--json", str(out), "--amqp-url", amqp_url],
                          capture_output=True, text=True, cwd=REPO, timeout=900,
                          env={**os.environ, "GONGJI_RELAY_GRACE_S": "1"})  # what loading leaves goes out sooner
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "via the HTTP gateway" in proc.stdout
    result = json.loads(out.read_text())
    assert result["via"] == "gateway" and result["statuses"].get("settled", 0) > 0
    assert set(result["statuses"]) == {"settled"}, result["statuses"]  # none refused on the way through HTTP
    assert result["cpu"]["gateway"]["cpu_s"] > 0 and result["cpu"]["pos"]["cpu_s"] < result["cpu"]["gateway"]["cpu_s"]
    accounts, bureau = result["audit"]["accounts"], result["audit"]["bureau"]
    assert accounts["ledger_sum_fen"] == 0 and accounts["balance_mismatches"] == []
    assert bureau["accumulator_mismatches"] == []
    # every settlement went through the gateway: the bureau's settled count is the HTTP client's
    assert bureau["states"] == {"settled": sum(result["statuses"].values())}


async def test_the_clients_x_tif_headers_travel_to_the_bureau_as_amqp_headers(gw: tuple[Stack, str],
                                                                              amqp_url: str, tmp_path: Path) -> None:
    """The bureau checks 9001's credentials itself (rights are checked where the money is): the gateway forwards
    the client's four x-tif headers with the request. A listener bound like a bureau sees them."""
    import aio_pika
    stack, base = gw
    names = stack.names
    conn = await aio_pika.connect(amqp_url)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(f"{names.ns}.observe.xtif-{uuid.uuid4().hex[:6]}", exclusive=True)
        await q.bind(names.bureau_exchange, "registry")  # 9001 goes to every bureau
        his = His(base, PHARMACY, HZ)
        headers = x_tif(PHARMACY, his.token)
        try:
            rep = await his.post(his.envelope("9001", {"opter_no": "his01"}, "2026-09-01 08:00:00"), headers)
            assert rep["infcode"] == 0, rep
        finally:
            await his.close()
        seen = None
        for _ in range(50):
            msg = await q.get(no_ack=True, fail=False)
            if msg is not None and msg.message_id == rep["inf_refmsgid"]:
                seen = msg
                break
            if msg is None:
                await asyncio.sleep(0.1)
        assert seen is not None
        assert {k: seen.headers.get(k) for k in headers} == headers
    finally:
        await conn.close()
    # `gongji observe --until 1s` stops by itself and writes its report (nothing observed: nothing wrong)
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "simulator.cli", "observe", "--report-dir",
                                                    str(tmp_path / "r"), "--until", "1s", "--namespace", stack.ns,
                                                    "--amqp-url", amqp_url], cwd=REPO, capture_output=True,
                                   text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((tmp_path / "r" / "report.json").read_text())["ok"] is True
