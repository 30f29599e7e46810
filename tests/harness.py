"""Starting worker processes (the same `gongji worker ...` commands docker-compose runs) and talking to them."""
from __future__ import annotations

import itertools
import os
import shutil
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from contracts.admin import Bind, OpenAccount, RegisterFacility, RegisterPerson
from contracts.envelope import Reply, Request
from contracts.money import line_total
from contracts.pos import SettleVisit, VisitOutcome
from contracts.routing import Names
from simulator.client import Client
from simulator.stack import WorkerStack, cleanup_namespace  # noqa: F401 (re-exported)

REPO = Path(__file__).resolve().parents[1]
WORKERS = ("bureau", "accounts", "pos")
HZ, BJ, SH, WH, HK = "330100", "110000", "310000", "420100", "460100"
CLOSED, NO_CROSS = "999901", "989901"  # test-only regions (tests/policies)
PHARMACY, HOSPITAL3, COMMUNITY = "PHZ000000001", "HHZ000000003", "HHZ000000001"
BJ_HOSPITAL3 = "HBJ000000003"
SH_HOSPITAL3, SH_PHARMACY = "HSH000000003", "PSH000000001"
WH_PHARMACY, HK_HOSPITAL2 = "PWH000000001", "HHK000000002"
_ids = itertools.count(1)


class Stack(WorkerStack):
    """The three workers (simulator.stack.WorkerStack) plus a client, with the test facilities registered."""

    def __init__(self, amqp_url: str, namespace: str, data_dir: Path, env: dict[str, str] | None = None):
        super().__init__(amqp_url, namespace, data_dir,
                         env={"GONGJI_POLICY_DIR": str(test_policy_dir(data_dir)), **(env or {})})
        self.names = Names(namespace)
        self.client: Client | None = None

    async def start(self) -> None:
        await super().start()
        self.client = Client(self.amqp_url, self.ns, name="test", timeout=30)
        await self.client.connect()
        await register_facilities(self.client)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        await super().stop()


def test_policy_dir(data_dir: Path) -> Path:
    """The shipped policies plus the test-only regions of tests/policies/."""
    target = Path(data_dir) / "policies"
    target.mkdir(parents=True, exist_ok=True)
    for source in (REPO / "policies", REPO / "tests" / "policies"):
        for f in source.glob("*.yaml"):
            shutil.copy(f, target / f.name)
    return target


# ---- population helpers ------------------------------------------------------------------------------
T0 = "2026-01-01 08:00:00"


async def ok(reply_coro: Any) -> dict[str, Any]:
    reply: Reply = await reply_coro
    assert reply.infcode == 0, f"{reply.err_code}: {reply.err_msg}"
    return reply.output or {}


async def register_facilities(client: Client) -> None:
    for code, kind, lv, region in ((PHARMACY, "pharmacy", "community", HZ), (HOSPITAL3, "hospital", "level3", HZ),
                                   (COMMUNITY, "hospital", "community", HZ),
                                   (BJ_HOSPITAL3, "hospital", "level3", BJ),
                                   (SH_HOSPITAL3, "hospital", "level3", SH), (SH_PHARMACY, "pharmacy", "community", SH),
                                   (WH_PHARMACY, "pharmacy", "community", WH),
                                   (HK_HOSPITAL2, "hospital", "level2", HK)):
        await register_facility(client, code, kind, lv, region)


async def register_facility(client: Client, code: str, kind: str = "pharmacy", lv: str = "community",
                            region: str = HZ) -> None:
    """G001 to the region's bureau: a designated facility of that region."""
    fac = RegisterFacility(fixmedins_code=code, fixmedins_name=code, fixmedins_type=kind, hosp_lv=lv,
                           admdvs=region)  # type: ignore[arg-type]
    await ok(client.bureau_registry(client.envelope("G001", fac.model_dump(mode="json"), insuplc_admdvs=region,
                                                    when=T0)))


def uid(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 1000}-{next(_ids)}"


async def person(client: Client, psn_no: str, *, region: str = HZ, psn_type: str = "employed",
                 insutype: str = "310", balance: str | None = "0.00", opened_at: str = T0,
                 **account_extra: Any) -> str:
    p = RegisterPerson(psn_no=psn_no, psn_name=psn_no, insutype=insutype, psn_type=psn_type,
                       insuplc_admdvs=region)  # type: ignore[arg-type]
    await ok(client.bureau(client.envelope("G002", p.model_dump(mode="json"), insuplc_admdvs=region, when=T0)))
    if balance is not None:
        a = OpenAccount(psn_no=psn_no, insuplc_admdvs=region, insutype=insutype, opening_balc=balance,
                        **account_extra)  # type: ignore
        await ok(client.accounts_admin(client.envelope("G101", a.model_dump(mode="json"), insuplc_admdvs=region,
                                                       when=opened_at)))
    else:  # no personal account (e.g. 居民医保), but known to the accounts service
        await ok(client.accounts_admin(client.envelope("G104", {"psn_no": psn_no, "insuplc_admdvs": region,
                                                                "insutype": insutype, **account_extra},
                                                       insuplc_admdvs=region, when=opened_at)))
    return psn_no


async def face(client: Client, psn_no: str, *, region: str = HZ, when: str = T0) -> dict[str, Any]:
    """A passed face check recorded by the accounts service (G109): the identity check a binding presents."""
    out = await ok(client.accounts_admin(client.envelope("G109", {"psn_no": psn_no, "passed": True},
                                                         insuplc_admdvs=region, when=when)))
    return {"method": "face", "token": out["face_token"]}


async def bind(client: Client, authorizer: str, member: str, *, rank: int = 1, region: str = HZ,
               relation: str = "child", when: str = T0, **caps: str) -> str:
    verify = await face(client, authorizer, region=region, when=when)
    out = await ok(client.accounts_admin(bind_request(client, authorizer, member, rank=rank, region=region,
                                                      relation=relation, when=when, verify=verify, **caps)))
    return str(out["auth_id"])


def bind_request(client: Client, authorizer: str, member: str, *, rank: int = 1, region: str = HZ,
                 relation: str = "child", when: str = T0, verify: dict[str, Any] | None = None,
                 **caps: str) -> Request:
    b = Bind(authorizer_psn_no=authorizer, member_psn_no=member, relation=relation, rank=rank,  # type: ignore
             verify=verify if verify is not None else {"method": "face", "passed": True}, **caps)  # type: ignore
    return client.envelope("G111", b.model_dump(mode="json", exclude_none=True), insuplc_admdvs=region, when=when)


async def admin_call(client: Client, infno: str, data: dict[str, Any], *, region: str = HZ,
                     when: str = T0) -> Reply:
    return await client.accounts_admin(client.envelope(infno, data, insuplc_admdvs=region, when=when))


async def account(client: Client, psn_no: str, region: str = HZ) -> dict[str, Any]:
    return await ok(client.accounts_admin(client.envelope("G121", {"psn_no": psn_no}, insuplc_admdvs=region)))


async def balance(client: Client, psn_no: str) -> Decimal:
    return Decimal((await account(client, psn_no))["balc"])


async def audit(client: Client, region: str = HZ) -> tuple[dict[str, Any], dict[str, Any]]:
    accounts = await ok(client.accounts_admin(client.envelope("G199", {}, insuplc_admdvs=region)))
    bureau = await ok(client.bureau(client.envelope("G199", {}, insuplc_admdvs=region)))
    return accounts, bureau


def line(code: str, price: str, cnt: str = "1", lv: str = "01", prop: str | None = None,
         limit: str | None = None) -> dict[str, Any]:
    total = line_total(Decimal(price), cnt)
    d: dict[str, Any] = {"feedetl_sn": code, "med_list_codg": code, "cnt": cnt, "pric": price,
                         "det_item_fee_sumamt": f"{total}", "chrgitm_lv": lv}
    if prop is not None:
        d["selfpay_prop"] = prop
    if limit is not None:
        d["pric_uplmt_amt"] = limit
    return d


def settle_input(psn_no: str, med_type: str, lines: list[dict[str, Any]], insutype: str = "310",
                 **extra: Any) -> dict[str, Any]:
    total = sum(Decimal(x["det_item_fee_sumamt"]) for x in lines)
    return {"psn_no": psn_no, "med_type": med_type, "insutype": insutype, "medfee_sumamt": f"{total:.2f}",
            "details": lines, **extra}


def visit(psn_no: str, facility: str, med_type: str, when: str, lines: list[dict[str, Any]], *,
          region: str = HZ, insutype: str = "310", **extra: Any) -> SettleVisit:
    return SettleVisit.model_validate({"visit_id": uid("v"), "fixmedins_code": facility, "insuplc_admdvs": region,
                                       "mdtrtarea_admvs": region, "psn_no": psn_no, "med_type": med_type,
                                       "insutype": insutype, "biz_time": when, "details": lines, **extra})


_sign_nos: dict[tuple[int, str, str], str] = {}


async def sign_no(client: Client, facility: str, when: str, region: str = HZ) -> str:
    """A sign_no valid for the facility on that business day (9001, cached per client)."""
    key = (id(client), facility, when[:10])
    if key not in _sign_nos:
        _sign_nos[key] = await client.sign_in(facility, f"{when[:10]} 00:00:01", region)
    return _sign_nos[key]


async def direct(client: Client, infno: str, data: dict[str, Any], *, when: str, facility: str = PHARMACY,
                 region: str = HZ, msgid: str | None = None) -> tuple[Request, Reply]:
    """Act as a POS ourselves (signed in): one national transaction straight to the bureau."""
    sn = await sign_no(client, facility, when, region)
    req = client.envelope(infno, data, insuplc_admdvs=region, when=when, fixmedins_code=facility, msgid=msgid,
                          sign_no=sn)
    return req, await client.bureau(req)


async def cumulative(client: Client, psn_no: str, when: str, region: str = HZ) -> dict[str, Any]:
    """5206 for a person, asked by a signed-in facility of the region."""
    facility = {HZ: HOSPITAL3, BJ: BJ_HOSPITAL3, SH: SH_HOSPITAL3, WH: WH_PHARMACY, HK: HK_HOSPITAL2}[region]
    _, reply = await direct(client, "5206", {"psn_no": psn_no}, when=when, facility=facility, region=region)
    assert reply.infcode == 0, f"{reply.err_code}: {reply.err_msg}"
    return reply.output or {}


def when(day: str, hhmmss: str = "10:00:00") -> str:
    datetime.strptime(f"{day} {hhmmss}", "%Y-%m-%d %H:%M:%S")
    return f"{day} {hhmmss}"


__all__ = ["VisitOutcome"]


async def item_differences(client: Client, regions: list[str] | None = None) -> list[dict[str, Any]]:
    """Bureau against accounts by setl_id (G199 scope=items on both sides, simulator.reconcile)."""
    from simulator.reconcile import fetch_items, reconcile

    def side(call: Any, region: str) -> Any:
        async def one(data: dict[str, Any]) -> dict[str, Any]:
            return await ok(call(client.envelope("G199", data, insuplc_admdvs=region)))
        return one
    regions = regions or [HZ]
    bureau: dict[str, Any] = {}
    for r in regions:
        bureau.update(await fetch_items(side(client.bureau, r), [r]))
    accounts = await fetch_items(side(client.accounts_admin, regions[0]), regions)
    return reconcile(bureau, accounts)
