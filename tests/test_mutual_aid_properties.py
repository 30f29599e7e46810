"""Hypothesis: binds, unbinds, freezes and cap changes interleaved with settlements and refunds never let an
unbound, frozen or capped authorizer pay, and no window's usage ever exceeds its cap (the accounts service
on a real SQLite store, without the broker)."""
from __future__ import annotations

import asyncio
import itertools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.envelope import Reply, Request
from contracts.internal import AccountsReply, AccountsRequest
from contracts.money import from_fen
from contracts.routing import Names
from services.accounts.service import AccountsService
from services.accounts.store import SCHEMA, audit
from services.shared.policy import load_policies
from services.shared.store import Store

HZ = "330100"
POLICIES = load_policies()
AUTHORIZERS = ("A1", "A2", "A3")
MEMBERS = ("M1", "M2")


@dataclass
class Model:
    active: dict[str, tuple[str, str]] = field(default_factory=dict)  # auth_id → (authorizer, member)
    frozen_bindings: set[str] = field(default_factory=set)
    frozen_authorizers: set[str] = field(default_factory=set)
    caps: dict[str, dict[str, int | None]] = field(default_factory=dict)
    paid: list[str] = field(default_factory=list)


class World:
    def __init__(self, root: Path):
        self.store = Store(root / "accounts.db", SCHEMA)
        self.svc = AccountsService(Names("prop"), POLICIES)
        self.seq = itertools.count(1)

    def admin(self, infno: str, data: dict[str, Any], day: int) -> Reply:
        n = next(self.seq)
        msgid = f"PROPTEST0001202603{day:02d}08{n // 100 % 60:02d}{n % 60:02d}{n % 10000:04d}"
        req = Request(infno=infno, msgid=msgid, inf_time=f"2026-03-{day:02d} 08:00:00", fixmedins_code="PROPTEST0001",
                      insuplc_admdvs=HZ, mdtrtarea_admvs=HZ, input=data)
        self.store.run_sync(lambda c: self.svc.handle_admin(c, req, None))
        return Reply.model_validate_json(self.sql("SELECT reply FROM inbox WHERE msgid=?", (msgid,))[0][0])

    def pay(self, setl_id: str, member: str, fen: int, day: int) -> AccountsReply:
        req = AccountsRequest(req_id=f"pay:{setl_id}", kind="pay", psn_no=member, insuplc_admdvs=HZ,
                              biz_time=f"2026-03-{day:02d} 10:00:00", fixmedins_code="PHZ000000001", med_type="41",
                              setl_id=setl_id, psn_part_amt=from_fen(fen))
        self.store.run_sync(lambda c: self.svc.handle_request(c, req, None))
        return AccountsReply.model_validate_json(self.sql("SELECT reply FROM inbox WHERE msgid=?",
                                                          (req.req_id,))[0][0])

    def refund(self, setl_id: str, member: str, day: int) -> None:
        req = AccountsRequest(req_id=f"refund:{setl_id}", kind="refund", psn_no=member, insuplc_admdvs=HZ,
                              biz_time=f"2026-03-{day:02d} 12:00:00", setl_id=setl_id)
        self.store.run_sync(lambda c: self.svc.handle_request(c, req, None))

    def sql(self, query: str, args: tuple = ()) -> list[Any]:
        return self.store.run_sync(lambda c: c.execute(query, args).fetchall())


caps = st.one_of(st.none(), st.integers(0, 30_000))
ops = st.lists(st.one_of(
    st.tuples(st.just("bind"), st.sampled_from(AUTHORIZERS), st.sampled_from(MEMBERS), caps, caps),
    st.tuples(st.just("unbind"), st.integers(0, 20)),
    st.tuples(st.just("freeze"), st.integers(0, 20), st.booleans()),
    st.tuples(st.just("unfreeze"), st.integers(0, 20), st.booleans()),
    st.tuples(st.just("caps"), st.integers(0, 20), caps, caps),
    st.tuples(st.just("pay"), st.sampled_from(MEMBERS), st.integers(1, 40_000)),
    st.tuples(st.just("refund"), st.integers(0, 20)),
), min_size=5, max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, balances=st.tuples(*[st.integers(0, 100_000)] * 3))
def test_no_payment_by_unbound_frozen_or_capped_authorizer(ops: list[tuple], balances: tuple[int, ...]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = World(Path(tmp))
        m = Model()
        day = 1
        for psn, fen in zip(AUTHORIZERS, balances):
            assert w.admin("G101", {"psn_no": psn, "insuplc_admdvs": HZ, "opening_balc": f"{from_fen(fen)}"},
                           day).infcode == 0
        for psn in MEMBERS:
            assert w.admin("G104", {"psn_no": psn, "insuplc_admdvs": HZ}, day).infcode == 0
        for i, op in enumerate(ops):
            day = 1 + i // 4  # a few operations a day, across days
            kind = op[0]
            ids = sorted(m.active)
            if kind == "bind":
                _, a, mem, day_cap, month_cap = op
                token = w.admin("G109", {"psn_no": a, "passed": True}, day).output["face_token"]  # type: ignore
                data = {"authorizer_psn_no": a, "member_psn_no": mem, "relation": "child",
                        "verify": {"method": "face", "token": token}}
                if day_cap is not None:
                    data["day_cap"] = f"{from_fen(day_cap)}"
                if month_cap is not None:
                    data["month_cap"] = f"{from_fen(month_cap)}"
                r = w.admin("G111", data, day)
                if r.infcode == 0:
                    auth_id = r.output["auth_id"]  # type: ignore[index]
                    m.active[auth_id] = (a, mem)
                    m.caps[auth_id] = {"day": day_cap, "month": month_cap}
                else:
                    assert r.err_code in ("E_ALREADY_BOUND", "E_TOO_MANY_MEMBERS"), r
            elif kind in ("unbind", "freeze", "unfreeze", "caps") and ids:
                auth_id = ids[op[1] % len(ids)]
                a, mem = m.active[auth_id]
                if kind == "unbind":
                    assert w.admin("G112", {"auth_id": auth_id, "requester_psn_no": a}, day).infcode == 0
                    del m.active[auth_id]
                    m.frozen_bindings.discard(auth_id)
                elif kind in ("freeze", "unfreeze"):
                    whole = op[2]
                    data = {"authorizer_psn_no": a} if whole else {"authorizer_psn_no": a, "auth_id": auth_id}
                    assert w.admin("G113" if kind == "freeze" else "G114", data, day).infcode == 0
                    target = m.frozen_authorizers if whole else m.frozen_bindings
                    (target.add if kind == "freeze" else target.discard)(a if whole else auth_id)
                else:
                    data = {"authorizer_psn_no": a, "auth_id": auth_id}
                    if op[2] is not None:
                        data["day_cap"] = f"{from_fen(op[2])}"
                    if op[3] is not None:
                        data["month_cap"] = f"{from_fen(op[3])}"
                    assert w.admin("G116", data, day).infcode == 0
                    m.caps[auth_id] = {"day": op[2], "month": op[3]}
            elif kind == "pay":
                _, mem, fen = op
                setl_id = f"S{i}"
                rep = w.pay(setl_id, mem, fen, day)
                assert rep.ok
                m.paid.append(setl_id)
                for part in rep.mulaid_detail:
                    auth_id = part.auth_id
                    # Only an active, unfrozen binding of an authorizer who has not frozen sharing pays.
                    assert auth_id in m.active, f"unbound {auth_id} paid"
                    assert m.active[auth_id] == (part.authorizer_psn_no, mem)
                    assert auth_id not in m.frozen_bindings, f"frozen binding {auth_id} paid"
                    assert part.authorizer_psn_no not in m.frozen_authorizers, "frozen authorizer paid"
                    for period, window in (("day", f"2026-03-{day:02d}"), ("month", "2026-03")):
                        cap = m.caps[auth_id][period]
                        used = w.sql("SELECT used_fen FROM usage WHERE key=?",
                                     (f"auth:{auth_id}:{period}:{window}",))
                        if cap is not None:
                            assert used and used[0][0] <= cap, f"{period} cap {cap} of {auth_id} exceeded"
            elif kind == "refund" and m.paid:
                setl_id = m.paid.pop(op[1] % len(m.paid))
                mem = w.sql("SELECT psn_no FROM payments WHERE setl_id=?", (setl_id,))[0][0]
                w.refund(setl_id, mem, day)
        report = w.store.run_sync(audit)
        assert report["ledger_sum_fen"] == 0 and report["unbalanced_txns"] == 0
        assert report["balance_mismatches"] == [] and report["negative_balances"] == 0
        assert report["cap_overruns"] == []
        assert w.sql("SELECT COUNT(*) FROM usage WHERE used_fen < 0")[0][0] == 0
        asyncio.run(w.store.close())
