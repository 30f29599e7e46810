"""`gongji bench --via-gateway`: the same visits as the AMQP bench, sent by an HTTP client playing the HISes
(httpx, keep-alive connections) through `gongji gateway` → bureau → accounts, instead of through the POS worker.

Each visit is what a HIS does: 2101 pre-settle, then 2102/2207 settle, each signed with the facility's x-tif
headers; each facility signs in (9001) once per business day first. The figures (settlements/s, latency
from the first POST to the settle reply) are comparable to the AMQP path's, which ends at the POS's outcome.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from contracts import credentials, wire
from contracts import infno as codes

PATH = "/fsi/api/rsfComIfsService/callService"


async def start_gateway(amqp_url: str, ns: str, logs: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`gongji gateway` on an ephemeral port of 127.0.0.1; returns the process and its callService URL."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "gateway.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "simulator.cli", "gateway", "--namespace", ns, "--amqp-url",
                                 amqp_url, "--host", "127.0.0.1", "--port", "0", "--reply-timeout", "120"],
                                stdout=subprocess.PIPE, stderr=log, env={**os.environ, "GONGJI_LOG_FORMAT": "json"},
                                cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    url = None
    for _ in range(20):
        line = (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 120)).decode(errors="replace")
        if "listening on " in line:
            url = line.split("listening on ", 1)[1].strip()
        if "ready" in line and url:
            return proc, url + PATH
        if not line:
            break
    proc.kill()
    raise RuntimeError(f"the gateway did not start; see {logs / 'gateway.log'}")


class HttpVisits:
    """Stands in for BenchClient in simulator.bench.drive: submit(body, visit_id) → future of (status, mulaid)."""

    def __init__(self, url: str, max_connections: int = 256):
        self.url = url
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(180.0, pool=None),
                                      limits=httpx.Limits(max_connections=max_connections,
                                                          max_keepalive_connections=max_connections))
        self.tokens: dict[str, str] = {}
        self.sign_nos: dict[tuple[str, str], asyncio.Future[str]] = {}
        self.waiters: dict[str, asyncio.Future[tuple[str, bool, int]]] = {}
        self._seq = itertools.count()
        self.refusals: dict[str, int] = {}

    async def close(self) -> None:
        await self.http.aclose()

    async def _post(self, env: dict[str, Any]) -> dict[str, Any]:
        fac = env["fixmedins_code"]
        token = self.tokens.get(fac) or self.tokens.setdefault(fac, credentials.paas_token(fac))
        headers = {**credentials.sign(fac, token), "content-type": "application/json"}
        resp = await self.http.post(self.url, content=wire.dumps(env).encode(), headers=headers)
        return wire.loads(resp.content)

    def _envelope(self, cmd: dict[str, Any], infno: str, data: dict[str, Any], sign_no: str) -> dict[str, Any]:
        stamp = "".join(ch for ch in cmd["biz_time"] if ch.isdigit())
        msgid = f"{cmd['fixmedins_code']}{stamp}{next(self._seq) % 10000:04d}"
        return {"infno": infno, "msgid": msgid, "inf_time": cmd["biz_time"], "fixmedins_code": cmd["fixmedins_code"],
                "insuplc_admdvs": cmd["insuplc_admdvs"], "mdtrtarea_admvs": cmd["mdtrtarea_admvs"], "opter": "bench",
                "sign_no": sign_no, "input": data}

    async def _sign_no(self, cmd: dict[str, Any]) -> str:
        key = (cmd["fixmedins_code"], cmd["biz_time"][:10])
        fut = self.sign_nos.get(key)
        if fut is None:
            fut = self.sign_nos[key] = asyncio.get_running_loop().create_future()
            signin = {**cmd, "biz_time": f"{cmd['biz_time'][:10]} 00:00:01"}
            try:
                rep = await self._post(self._envelope(signin, codes.SIGN_IN, {"opter_no": "bench"}, ""))
                if rep.get("infcode") != 0:
                    raise RuntimeError(f"9001 refused: {rep.get('err_code')} {rep.get('err_msg')}")
                fut.set_result(rep["output"]["sign_no"])
            except BaseException as exc:
                del self.sign_nos[key]
                fut.set_exception(exc)
                raise
        return await asyncio.shield(fut)

    async def _visit(self, cmd: dict[str, Any]) -> tuple[str, bool, int]:
        pre, settle, _ = codes.triple_for(cmd["med_type"])
        data = {"psn_no": cmd["psn_no"], "mdtrt_cert_type": "01", "med_type": cmd["med_type"],
                "insutype": cmd["insutype"], "acct_used_flag": "1",
                "medfee_sumamt": f"{sum(Decimal(d['det_item_fee_sumamt']) for d in cmd['details']):.2f}",
                "details": cmd["details"]}
        sign_no = await self._sign_no(cmd)
        for trips, infno in enumerate((pre, settle), 1):  # national round trips of this visit
            rep = await self._post(self._envelope(cmd, infno, data, sign_no))
            if rep.get("infcode") != 0:
                code = str(rep.get("err_code"))
                self.refusals[code] = self.refusals.get(code, 0) + 1
                return ("refused", False, trips)
        out = rep.get("output") or {}
        return ("settled", Decimal(str(out.get("acct_mulaid_pay", "0"))) != 0, 2)

    async def submit(self, body: bytes, visit_id: str) -> asyncio.Future[tuple[str, bool, int]]:
        fut = asyncio.ensure_future(self._visit(wire.loads(body)))
        self.waiters[visit_id] = fut
        fut.add_done_callback(lambda _: self.waiters.pop(visit_id, None))
        return fut
