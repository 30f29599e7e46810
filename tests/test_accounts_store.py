"""AccountsService against a real SQLite Store (no broker): pay, refund, idempotency, region rules, limits,
and a hypothesis sequence test of the ledger and usage invariants.

Requests go straight to `handle_request` / `handle_admin` inside `Store.run_sync`, with reply_to None (no reply
row). The replies are read back from the inbox, the state with plain SQL.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import tempfile
from contextlib import contextmanager
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from contracts.envelope import Reply, Request
from contracts.internal import AccountsReply, AccountsRequest
from contracts.money import from_fen, to_fen
from contracts.routing import Names
from services.accounts.service import AccountsService
from services.accounts.store import SCHEMA, audit
from services.shared.policy import RegionPolicy, load_policies
from services.shared.store import Store

HZ, BJ = "330100", "110000"
PHARMACY = "PHZ000000001"
FACILITY = "TESTFACILITY"
POLICIES = load_policies()
HZ_ONLINE_LIMIT = to_fen(POLICIES[HZ].accounts.channel_daily_limit["online"])  # 2000.00
BJ_ONLINE_LIMIT = to_fen(POLICIES[BJ].accounts.channel_daily_limit["online"])  # 1000.00


def money(fen: int) -> str:
    return f"{from_fen(fen):.2f}"


class Harness:
    """One accounts service on one SQLite file."""

    def __init__(self, path: Path, policies: dict[str, RegionPolicy] = POLICIES):
        self.store = Store(path, SCHEMA)
        self.service = AccountsService(Names("test"), policies)
        self._seq = itertools.count(1)

    def close(self) -> None:
        asyncio.run(self.store.close())

    def sql(self, query: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self.store.run_sync(lambda conn: conn.execute(query, args).fetchall())

    # ---- admin (G-codes) ---------------------------------------------------------------------
    def admin(self, infno: str, inp: dict[str, Any], region: str = HZ) -> Reply:
        seq = next(self._seq)
        assert seq <= 9999
        msgid = f"{FACILITY}20260101080000{seq:04d}"
        req = Request(infno=infno, msgid=msgid, inf_time="2026-01-01 08:00:00", fixmedins_code=FACILITY,
                      insuplc_admdvs=region, mdtrtarea_admvs=region, input=inp)
        self.store.run_sync(lambda conn: self.service.handle_admin(conn, req, None))
        row = self.sql("SELECT reply FROM inbox WHERE msgid=?", (msgid,))[0]
        return Reply.model_validate_json(row["reply"])

    def open(self, psn_no: str, fen: int, region: str = HZ) -> None:
        reply = self.admin("G101", {"psn_no": psn_no, "insuplc_admdvs": region, "opening_balc": money(fen)}, region)
        assert reply.infcode == 0, reply

    def bind(self, authorizer: str, member: str, rank: int = 1, *, day: int | None = None,
             month: int | None = None, year: int | None = None, region: str = HZ) -> str:
        token = self.admin("G109", {"psn_no": authorizer, "passed": True}, region).output["face_token"]  # type: ignore
        inp: dict[str, Any] = {"authorizer_psn_no": authorizer, "member_psn_no": member, "relation": "parent",
                               "rank": rank, "verify": {"method": "face", "token": token}}
        for name, cap in (("day_cap", day), ("month_cap", month), ("year_cap", year)):
            if cap is not None:
                inp[name] = money(cap)
        reply = self.admin("G111", inp, region)
        assert reply.infcode == 0, reply
        return reply.output["auth_id"]  # type: ignore[index]

    # ---- bureau requests -------------------------------------------------------------------------
    def request(self, **fields: Any) -> AccountsReply:
        req = AccountsRequest.model_validate(fields)
        self.store.run_sync(lambda conn: self.service.handle_request(conn, req, None))
        row = self.sql("SELECT reply FROM inbox WHERE msgid=?", (req.req_id,))[0]
        return AccountsReply.model_validate_json(row["reply"])

    def pay(self, setl_id: str, psn_no: str, psn_part: int, *, region: str = HZ, day: str = "2026-03-02",
            chnl: str = "offline", fulamt: int | None = None, overlmt: int | None = None, acct_used_flag: str = "1",
            med_type: str = "41", req_id: str | None = None) -> AccountsReply:
        fields: dict[str, Any] = dict(req_id=req_id or f"pay:{setl_id}", kind="pay", psn_no=psn_no,
                                      insuplc_admdvs=region, biz_time=f"{day} 10:15:00", fixmedins_code=PHARMACY,
                                      med_type=med_type, setl_chnl=chnl, setl_id=setl_id,
                                      acct_used_flag=acct_used_flag, psn_part_amt=money(psn_part))
        if fulamt is not None:
            fields["fulamt_ownpay_amt"] = money(fulamt)
        if overlmt is not None:
            fields["overlmt_selfpay"] = money(overlmt)
        return self.request(**fields)

    def refund(self, setl_id: str, psn_no: str, *, region: str = HZ, day: str = "2026-03-02",
               req_id: str | None = None) -> AccountsReply:
        return self.request(req_id=req_id or f"refund:{setl_id}", kind="refund", psn_no=psn_no, insuplc_admdvs=region,
                            biz_time=f"{day} 11:00:00", setl_id=setl_id)

    # ---- state -------------------------------------------------------------------------------
    def balances(self) -> dict[str, int]:
        return {r["psn_no"]: r["balance_fen"] for r in self.sql("SELECT psn_no, balance_fen FROM accounts")}

    def usage(self) -> dict[str, int]:
        return {r["key"]: r["used_fen"] for r in self.sql("SELECT key, used_fen FROM usage")}

    def audit(self) -> dict[str, Any]:
        return self.store.run_sync(audit)

    def assert_consistent(self) -> None:
        a = self.audit()
        assert a["ledger_sum_fen"] == 0, a
        assert a["unbalanced_txns"] == 0, a
        assert a["balance_mismatches"] == [], a
        assert a["negative_balances"] == 0, a
        assert a["negative_usage"] == 0, a
        assert a.get("cap_overruns", []) == [], a
        ledger = {r["account"]: r["s"] for r in self.sql(
            "SELECT account, SUM(amount_fen) AS s FROM ledger WHERE account LIKE 'psn:%' GROUP BY account")}
        for psn_no, fen in self.balances().items():
            assert fen >= 0
            assert ledger.get(f"psn:{psn_no}", 0) == fen


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "a.db")
    try:
        yield harness
    finally:
        harness.close()


@contextmanager
def fresh_harness(policies: dict[str, RegionPolicy] = POLICIES) -> Iterator[Harness]:
    with tempfile.TemporaryDirectory() as tmp:
        harness = Harness(Path(tmp) / "a.db", policies)
        try:
            yield harness
        finally:
            harness.close()


def fen(value: Decimal | None) -> int:
    assert value is not None
    return to_fen(value)


# ---- pay and refund -------------------------------------------------------------------------------

def family(h: Harness, region: str = HZ) -> dict[str, str]:
    """M1 (own 5.00) is helped by A1 (rank 1, 3.00, day cap 2.50) and A2 (rank 2, 100.00, month cap 50.00)."""
    h.open("M1", 500, region)
    h.open("A1", 300, region)
    h.open("A2", 10_000, region)
    b1 = h.bind("A1", "M1", 1, day=250, region=region)
    b2 = h.bind("A2", "M1", 2, month=5_000, region=region)
    return {"A1": b1, "A2": b2}


def test_pay_then_refund_restores_balances_and_usage_exactly(h: Harness) -> None:
    binds = family(h)
    day_key, month_key = f"auth:{binds['A1']}:day:2026-03-02", f"auth:{binds['A2']}:month:2026-03"
    # An earlier payment, kept: own 5.00, A1 1.00 (day usage 1.00 of 2.50).
    s0 = h.pay("S0", "M1", 600)
    assert (fen(s0.acct_pay), fen(s0.acct_mulaid_pay)) == (600, 100)
    before_bal, before_usage = h.balances(), h.usage()
    assert before_bal == {"M1": 0, "A1": 200, "A2": 10_000}
    # Hangzhou also counts each authorizer's sharing against Zhejiang's 5000-a-year cap.
    year_a1, year_a2 = "mulaid:A1:year:2026", "mulaid:A2:year:2026"
    assert before_usage == {day_key: 100, year_a1: 100}
    h.assert_consistent()

    reply = h.pay("S1", "M1", 1230)  # 12.30: own 0.00, A1 1.50 (the rest of its day cap), A2 10.80
    assert reply.ok, reply
    assert (fen(reply.acct_pay), fen(reply.acct_mulaid_pay), fen(reply.psn_cash_pay)) == (1230, 1230, 0)
    assert [(p.authorizer_psn_no, p.auth_id, fen(p.amount), fen(p.balc)) for p in reply.mulaid_detail] == [
        ("A1", binds["A1"], 150, 50), ("A2", binds["A2"], 1080, 8_920)]
    assert fen(reply.balc) == 0
    assert h.balances() == {"M1": 0, "A1": 50, "A2": 8_920}
    assert h.usage() == {day_key: 250, month_key: 1080, year_a1: 250, year_a2: 1080}
    payment = h.sql("SELECT * FROM payments WHERE setl_id='S1'")[0]
    assert (payment["state"], payment["own_fen"], payment["cash_fen"]) == ("paid", 0, 0)
    assert h.sql("SELECT SUM(amount_fen) FROM ledger WHERE account=?", (f"fixmedins:{PHARMACY}",))[0][0] == 1830
    h.assert_consistent()

    refund = h.refund("S1", "M1")
    assert refund.ok, refund
    assert (fen(refund.acct_pay), fen(refund.acct_mulaid_pay)) == (-1230, -1230)
    assert h.balances() == before_bal
    assert h.usage() == {**before_usage, month_key: 0, year_a2: 0}
    assert h.sql("SELECT state FROM payments WHERE setl_id='S1'")[0]["state"] == "refunded"
    assert h.sql("SELECT SUM(amount_fen) FROM ledger WHERE account=?", (f"fixmedins:{PHARMACY}",))[0][0] == 600
    h.assert_consistent()
    # And refunding S0 too brings everything back to the opening state.
    h.refund("S0", "M1")
    assert h.balances() == {"M1": 500, "A1": 300, "A2": 10_000}
    assert all(v == 0 for v in h.usage().values())
    h.assert_consistent()


def test_same_pay_twice_debits_once_and_refund_twice_refunds_once(h: Harness) -> None:
    family(h)
    first = h.pay("S1", "M1", 1230)
    after_pay = (h.balances(), h.usage(), h.sql("SELECT COUNT(*) FROM ledger")[0][0])
    again = h.pay("S1", "M1", 1230)  # the same req_id "pay:S1": the stored reply, no second debit
    assert again == first
    assert (h.balances(), h.usage(), h.sql("SELECT COUNT(*) FROM ledger")[0][0]) == after_pay
    assert h.sql("SELECT COUNT(*) FROM inbox WHERE msgid='pay:S1'")[0][0] == 1

    r1 = h.refund("S1", "M1")
    after_refund = (h.balances(), h.usage(), h.sql("SELECT COUNT(*) FROM ledger")[0][0])
    r2 = h.refund("S1", "M1")  # the same req_id "refund:S1"
    assert r2 == r1
    assert (h.balances(), h.usage(), h.sql("SELECT COUNT(*) FROM ledger")[0][0]) == after_refund
    # A refund of the same settlement under another req_id is a no-op answered with zeros.
    r3 = h.refund("S1", "M1", req_id="refund:S1:retry")
    assert r3.ok and fen(r3.acct_pay) == 0 and r3.notes == ["nothing to refund"]
    assert (h.balances(), h.usage(), h.sql("SELECT COUNT(*) FROM ledger")[0][0]) == after_refund
    assert h.balances() == {"M1": 500, "A1": 300, "A2": 10_000}
    h.assert_consistent()


def test_refund_of_unknown_settlement_changes_nothing(h: Harness) -> None:
    family(h)
    reply = h.refund("NOPE", "M1")
    assert reply.ok and fen(reply.acct_pay) == 0
    assert h.balances() == {"M1": 500, "A1": 300, "A2": 10_000}
    h.assert_consistent()


def test_beijing_leaves_full_selfpay_and_overlimit_to_cash(h: Harness) -> None:
    h.open("BM1", 100_000, BJ)
    reply = h.pay("SBJ1", "BM1", 10_000, region=BJ, fulamt=3_000, overlmt=1_000, med_type="11")
    assert reply.ok, reply
    assert (fen(reply.acct_pay), fen(reply.psn_cash_pay)) == (6_000, 4_000)
    assert any("accounts may pay 60.00 of the share 100.00" in n for n in reply.notes)
    assert h.balances() == {"BM1": 94_000}
    # Hangzhou lets the account pay them.
    h.open("HM1", 100_000, HZ)
    reply = h.pay("SHZ1", "HM1", 10_000, region=HZ, fulamt=3_000, overlmt=1_000, med_type="11")
    assert (fen(reply.acct_pay), fen(reply.psn_cash_pay)) == (10_000, 0)
    h.assert_consistent()


def test_beijing_full_selfpay_not_paid_by_authorizers_either(h: Harness) -> None:
    h.open("BM1", 0, BJ)
    h.open("BA1", 100_000, BJ)
    h.bind("BA1", "BM1", region=BJ)
    reply = h.pay("SBJ1", "BM1", 5_000, region=BJ, fulamt=5_000)
    assert (fen(reply.acct_pay), fen(reply.acct_mulaid_pay), fen(reply.psn_cash_pay)) == (0, 0, 5_000)
    assert h.balances() == {"BM1": 0, "BA1": 100_000}
    h.assert_consistent()


def test_online_daily_limit_holds_across_payments_and_resets_next_day(h: Harness) -> None:
    h.open("M1", 100_000, HZ)
    h.open("A1", 1_000_000, HZ)
    h.bind("A1", "M1")
    h.open("M2", 0, HZ)
    h.open("A2", 1_000_000, HZ)
    h.bind("A2", "M2")
    assert HZ_ONLINE_LIMIT == 200_000 and BJ_ONLINE_LIMIT == 100_000

    # Day 1: 1500.00 then 1500.00 online: the second may use only 500.00 of the 2000.00 limit.
    r1 = h.pay("S1", "M1", 150_000, chnl="online", day="2026-03-02")
    assert (fen(r1.acct_pay), fen(r1.psn_cash_pay)) == (150_000, 0)
    r2 = h.pay("S2", "M1", 150_000, chnl="online", day="2026-03-02")
    assert (fen(r2.acct_pay), fen(r2.psn_cash_pay)) == (50_000, 100_000)
    # The limit is shared by own account and authorizer: M1 had 1000.00, so A1 paid the rest of S1 and S2.
    assert h.usage()["chnl:M1:online:day:2026-03-02"] == HZ_ONLINE_LIMIT
    r3 = h.pay("S3", "M1", 100, chnl="online", day="2026-03-02")
    assert (fen(r3.acct_pay), fen(r3.psn_cash_pay)) == (0, 100)
    # Offline is not limited, and the limit is per person.
    r4 = h.pay("S4", "M1", 10_000, chnl="offline", day="2026-03-02")
    assert fen(r4.acct_pay) == 10_000
    r5 = h.pay("S5", "M2", 150_000, chnl="online", day="2026-03-02")
    assert fen(r5.acct_pay) == 150_000
    # Day 2 (a business day in Asia/Shanghai): a fresh limit.
    r6 = h.pay("S6", "M1", 150_000, chnl="online", day="2026-03-03")
    assert (fen(r6.acct_pay), fen(r6.psn_cash_pay)) == (150_000, 0)
    assert h.usage()["chnl:M1:online:day:2026-03-03"] == 150_000
    assert h.usage()["chnl:M1:online:day:2026-03-02"] == HZ_ONLINE_LIMIT
    # A refund of a day-1 payment frees day-1 room only.
    h.refund("S2", "M1")
    assert h.usage()["chnl:M1:online:day:2026-03-02"] == 150_000
    assert h.usage()["chnl:M1:online:day:2026-03-03"] == 150_000
    h.assert_consistent()


def test_online_limit_at_the_day_boundary_uses_shanghai_time(h: Harness) -> None:
    h.open("M1", 400_000, HZ)
    req = dict(kind="pay", psn_no="M1", insuplc_admdvs=HZ, fixmedins_code=PHARMACY, med_type="41",
               setl_chnl="online", psn_part_amt=money(150_000))
    a = h.request(req_id="pay:SA", setl_id="SA", biz_time="2026-03-02 23:59:59", **req)
    b = h.request(req_id="pay:SB", setl_id="SB", biz_time="2026-03-03 00:00:00", **req)
    assert fen(a.acct_pay) == 150_000 and fen(b.acct_pay) == 150_000
    assert h.usage() == {"chnl:M1:online:day:2026-03-02": 150_000, "chnl:M1:online:day:2026-03-03": 150_000}


def test_acct_used_flag_0_pays_nothing_from_accounts(h: Harness) -> None:
    binds = family(h)
    reply = h.pay("S1", "M1", 1230, acct_used_flag="0")
    assert reply.ok, reply
    assert (fen(reply.acct_pay), fen(reply.acct_mulaid_pay), fen(reply.psn_cash_pay)) == (0, 0, 1230)
    assert reply.mulaid_detail == []
    assert h.balances() == {"M1": 500, "A1": 300, "A2": 10_000}
    assert h.usage() == {}
    assert h.sql("SELECT COUNT(*) FROM ledger WHERE txn_id='pay:S1'")[0][0] == 0
    payment = h.sql("SELECT own_fen, cash_fen, mulaid FROM payments WHERE setl_id='S1'")[0]
    assert (payment["own_fen"], payment["cash_fen"], json.loads(payment["mulaid"])) == (0, 1230, [])
    assert binds  # the bindings exist and were not used
    h.refund("S1", "M1")
    assert h.balances() == {"M1": 500, "A1": 300, "A2": 10_000}
    h.assert_consistent()


def test_binding_ids_are_unique_across_months(h: Harness) -> None:
    """Two G111 with msgids that differ only in the month get the same auth_id (B + last 12 msgid chars)."""
    h.open("A1", 1000)
    h.open("M1", 0)
    h.open("M2", 0)
    ids = []
    for stamp, member in (("20260101080000", "M1"), ("20260201080000", "M2")):
        msgid = f"BINDFACILITY{stamp}0001"  # not a msgid Harness.admin uses
        req = Request(infno="G111", msgid=msgid, inf_time="2026-01-01 08:00:00", fixmedins_code="BINDFACILITY",
                      insuplc_admdvs=HZ, mdtrtarea_admvs=HZ,
                      input={"authorizer_psn_no": "A1", "member_psn_no": member, "relation": "child",
                             "verify": {"method": "face", "token": h.admin("G109", {"psn_no": "A1", "passed": True}
                                                                           ).output["face_token"]}})  # type: ignore
        h.store.run_sync(lambda conn: h.service.handle_admin(conn, req, None))
        reply = Reply.model_validate_json(h.sql("SELECT reply FROM inbox WHERE msgid=?", (msgid,))[0]["reply"])
        assert reply.infcode == 0, reply
        ids.append(reply.output["auth_id"])  # type: ignore[index]
    assert ids[0] != ids[1]


# ---- sequences of pays and refunds ----------------------------------------------------------------

@st.composite
def world(draw: st.DrawFn) -> dict[str, Any]:
    n_members = draw(st.integers(2, 3))
    n_auth = draw(st.integers(1, 2))
    members = {f"M{i}": draw(st.one_of(st.just(0), st.integers(0, 5_000), st.integers(0, 30_000)))
               for i in range(1, n_members + 1)}
    authorizers = {f"A{i}": draw(st.integers(0, 60_000)) for i in range(1, n_auth + 1)}
    bindings = []
    for m in members:
        for rank, a in enumerate(draw(st.permutations(list(authorizers))), start=1):
            if draw(st.booleans()) or rank == 1:
                day = draw(st.one_of(st.none(), st.integers(0, 5_000), st.integers(0, 20_000)))
                month = draw(st.one_of(st.none(), st.integers(0, 10_000), st.integers(0, 40_000)))
                year = draw(st.one_of(st.none(), st.none(), st.integers(0, 60_000)))
                bindings.append((a, m, rank, day, month, year))
    # Few business days make the day caps and the online limit bind often; 28 spreads them over the month.
    days = draw(st.sampled_from([1, 3, 28]))
    # Hangzhou's real online limit (2000.00) or a lower one, so the shared limit is reached in a short run.
    online_limit = draw(st.sampled_from([HZ_ONLINE_LIMIT, 50_000, 10_000, 5_000, 0]))
    steps = draw(st.lists(st.one_of(
        st.tuples(st.just("pay"), st.sampled_from(list(members)), st.integers(0, 60_000), st.integers(1, days),
                  st.sampled_from(["offline", "online"])),
        st.tuples(st.just("refund"), st.integers(0, 10**6))), min_size=1, max_size=25))
    return {"members": members, "authorizers": authorizers, "bindings": bindings, "steps": steps,
            "online_limit": online_limit}


def hangzhou_with_online_limit(fen_: int) -> dict[str, RegionPolicy]:
    hz = POLICIES[HZ]
    # This model follows binding caps and the channel limit; Zhejiang's annual mutual-aid cap is tested elsewhere.
    accounts = hz.accounts.model_copy(update={"channel_daily_limit": {"online": from_fen(fen_)},
                                              "mutual_aid_annual_cap": None})
    return {**POLICIES, HZ: hz.model_copy(update={"accounts": accounts})}


def check_invariants(h: Harness, caps: dict[str, dict[str, int | None]], online_limit: int) -> None:
    h.assert_consistent()
    for key, used in h.usage().items():
        assert used >= 0, key
        parts = key.split(":")
        if parts[0] == "auth":
            _, auth_id, period, _window = parts
            cap = caps[auth_id][period]
            assert cap is not None, f"usage {key} for a binding without a {period} cap"
            assert used <= cap, f"{key}: used {used} > cap {cap}"
        else:
            assert parts[0] == "chnl" and parts[2] == "online" and parts[3] == "day", key
            assert used <= online_limit, f"{key}: used {used} > {online_limit}"


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(world())
def test_random_pays_and_refunds_keep_the_books(w: dict[str, Any]) -> None:
    limit = w["online_limit"]
    with fresh_harness(hangzhou_with_online_limit(limit)) as h:
        for psn_no, fen_ in {**w["members"], **w["authorizers"]}.items():
            h.open(psn_no, fen_)
        caps: dict[str, dict[str, int | None]] = {}
        for a, m, rank, day, month, year in w["bindings"]:
            auth_id = h.bind(a, m, rank, day=day, month=month, year=year)
            caps[auth_id] = {"day": day, "month": month, "year": year}
        opening = h.balances()
        check_invariants(h, caps, limit)

        paid: list[tuple[str, str]] = []  # (setl_id, psn_no) not yet refunded
        # The model: what each unrefunded payment must hold in each window, from the amounts actually paid.
        held: dict[str, dict[str, int]] = {}

        def check_model() -> None:
            expected: dict[str, int] = {}
            for per_key in held.values():
                for key, amount in per_key.items():
                    expected[key] = expected.get(key, 0) + amount
            assert {k: v for k, v in h.usage().items() if v} == {k: v for k, v in expected.items() if v}
            for key, amount in expected.items():  # independent of the usage rows: what was paid is within caps
                parts = key.split(":")
                cap = caps[parts[1]][parts[2]] if parts[0] == "auth" else limit
                assert cap is not None and amount <= cap, (key, amount, cap)

        for n, step in enumerate(w["steps"]):
            if step[0] == "pay":
                _, member, amount, day, chnl = step
                setl_id = f"S{n}"
                biz_day = date(2026, 3, 1) + timedelta(days=day - 1)
                before = h.balances()
                reply = h.pay(setl_id, member, amount, day=biz_day.isoformat(), chnl=chnl)
                assert reply.ok, reply
                acct, mulaid, cash = fen(reply.acct_pay), fen(reply.acct_mulaid_pay), fen(reply.psn_cash_pay)
                assert acct + cash == amount and 0 <= mulaid <= acct and cash >= 0
                assert sum(fen(p.amount) for p in reply.mulaid_detail) == mulaid
                after = h.balances()
                assert sum(before.values()) - sum(after.values()) == acct
                assert before[member] - after[member] == acct - mulaid
                per_key: dict[str, int] = {}
                for part in reply.mulaid_detail:
                    assert before[part.authorizer_psn_no] - after[part.authorizer_psn_no] >= fen(part.amount)
                    for period, window in (("day", biz_day.isoformat()), ("month", biz_day.strftime("%Y-%m")),
                                           ("year", biz_day.strftime("%Y"))):
                        if caps[part.auth_id][period] is not None:
                            key = f"auth:{part.auth_id}:{period}:{window}"
                            per_key[key] = per_key.get(key, 0) + fen(part.amount)
                if chnl == "online" and acct:
                    per_key[f"chnl:{member}:online:day:{biz_day.isoformat()}"] = acct
                held[setl_id] = per_key
                paid.append((setl_id, member))
                event(f"pay: mutual aid {'paid' if mulaid else 'none'}, cash {'left' if cash else 'none'}")
                if any("cap" in note and "bound by" in note or "cap" in note and "reached" in note
                       for note in reply.notes):
                    event("pay: an authorizer cap bound")
                if chnl == "online" and any("online daily limit" in note for note in reply.notes):
                    event("pay: the online daily limit bound")
            elif paid:
                setl_id, member = paid.pop(step[1] % len(paid))
                before = h.balances()
                reply = h.refund(setl_id, member)
                assert reply.ok, reply
                assert sum(h.balances().values()) - sum(before.values()) == -fen(reply.acct_pay)
                del held[setl_id]
            check_invariants(h, caps, limit)
            check_model()

        event(f"payments still open at the end: {len(paid) if len(paid) < 3 else '3 or more'}")
        for setl_id, member in paid:
            assert h.refund(setl_id, member).ok
            del held[setl_id]
            check_invariants(h, caps, limit)
            check_model()
        assert h.balances() == opening
        assert all(used == 0 for used in h.usage().values()), h.usage()
        assert h.sql("SELECT COUNT(*) FROM payments WHERE state='paid'")[0][0] == 0
