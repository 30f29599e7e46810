"""The gateway's pure parts: replay memory and the conformance rules (no broker, no processes)."""
from __future__ import annotations

from contracts.envelope import Reply, Request
from services.gateway.conformance import Tracker, msgid_problem, raw_findings
from services.gateway.nonces import NonceCache

FAC = "PHZ000000001"


def test_a_nonce_is_accepted_once_per_paasid_within_its_window() -> None:
    cache = NonceCache(ttl_s=660)
    assert cache.first_use(FAC, "n1", now=1000)
    assert not cache.first_use(FAC, "n1", now=1001)  # replay
    assert cache.first_use("HHZ000000003", "n1", now=1001)  # another facility's nonce space
    # after the ttl (2 x 300 s skew + 60 s) the timestamp check refuses the old call anyway: forgotten
    assert cache.first_use(FAC, "n1", now=1000 + 661)


def test_the_nonce_memory_is_bounded() -> None:
    cache = NonceCache(ttl_s=660, max_entries=3)
    for i in range(10):
        assert cache.first_use(FAC, f"n{i}", now=1000)
    assert len(cache._seen) <= 4


def test_msgid_rules() -> None:
    assert msgid_problem(f"{FAC}202603021000000001", FAC) is None
    assert "12 fixmedins_code" in (msgid_problem("HIS-0001", FAC) or "")
    assert "does not start" in (msgid_problem(f"HHZ000000003202603021000000001", FAC) or "")
    assert "not a time" in (msgid_problem(f"{FAC}202613451000000001", FAC) or "")  # month 13


def test_float_money_is_found_anywhere_in_the_input() -> None:
    env = {"infno": "2101", "msgid": f"{FAC}202603021000000001", "fixmedins_code": FAC,
           "input": {"medfee_sumamt": "12.30", "details": [{"pric": 12.3, "cnt": "1"}]}}
    kinds = {f.kind: f for f in raw_findings(env, FAC)}
    assert set(kinds) == {"float_money"} and "input.details[0].pric" in kinds["float_money"].detail


def _req(infno: str, msgid_seq: int, **inp: object) -> Request:
    return Request.model_validate({"infno": infno, "msgid": f"{FAC}20260302100000{msgid_seq:04d}",
                                   "inf_time": "2026-03-02 10:00:00", "fixmedins_code": FAC, "insuplc_admdvs": "330100",
                                   "mdtrtarea_admvs": "330100", "input": {"psn_no": "P1", "med_type": "41",
                                                                          "medfee_sumamt": "10.00", **inp}})


def test_settle_without_presettle_and_missing_2601() -> None:
    t = Tracker(grace_s=60)
    settle = _req("2102", 1)
    assert [f.kind for f in t.before(settle)] == ["settle_without_presettle"]
    pre = _req("2101", 2)
    assert t.before(pre) == []
    t.after(pre, Reply.ok(pre.msgid, {"x": 1}))
    settle2 = _req("2102", 3)
    assert t.before(settle2) == []  # the same bill was pre-settled
    t.gave_up(settle2, at=100)
    assert t.due(now=150) == []  # still within the grace
    assert [f.kind for f in t.due(now=161)] == ["missing_2601"]
    # a 2601 within the grace clears it
    settle3 = _req("2102", 4)
    t.gave_up(settle3, at=200)
    t.before(_req("2601", 5, omsgid=settle3.msgid, oinfno="2102"))
    assert t.due(now=1000) == []


def test_bureau_refusals_become_findings() -> None:
    t = Tracker()
    rev = _req("2103", 6)
    assert [f.kind for f in t.after(rev, Reply.fail(rev.msgid, "E_SETTLEMENT_NOT_FOUND", "no"))] == \
        ["reverse_unknown_setl_id"]
    assert [f.kind for f in t.after(rev, Reply.fail(rev.msgid, "E_SIGN_NO_EXPIRED", "old"))] == ["sign_no_expired"]
    assert [f.kind for f in t.after(rev, Reply.fail(rev.msgid, "E_SIGN_NO_UNKNOWN", "none"))] == ["sign_no_missing"]


def test_observe_invariants_catch_broken_identities_and_double_reversals() -> None:
    from contracts.pos import VisitOutcome
    from simulator.observe import Observed, invariants, parse_until

    def outcome(visit: str, status: str, setl_id: str, amounts: dict[str, str], orig: str | None = None
                ) -> VisitOutcome:
        s = {"setl_id": setl_id, "psn_no": "P1", "insuplc_admdvs": "330100", "mdtrtarea_admvs": "330100",
             "med_type": "41", "setl_time": "2026-03-02 10:00:00", "fulamt_ownpay_amt": "0.00",
             "overlmt_selfpay": "0.00", "preselfpay_amt": "0.00", "inscp_scp_amt": amounts["medfee_sumamt"],
             "act_pay_dedc": "0.00", "hifp_pay": "0.00", "fund_pay_sumamt": "0.00", "acct_mulaid_pay": "0.00",
             "balc": "0.00", "orig_setl_id": orig, **amounts}
        return VisitOutcome.model_validate({"visit_id": visit, "cmd": "settle" if status == "settled" else "reverse",
                                            "status": status, "fixmedins_code": FAC, "psn_no": "P1", "msgid": visit,
                                            "infcode": 0, "setlinfo": s, "biz_time": "2026-03-02 10:00:00"})

    clean = {"ledger_sum_fen": 0, "negative_balances": 0, "cap_overruns": []}
    obs = Observed()
    # 60.00 = fund 0.00 + account 50.00 + cash 10.00; the reversal negates it
    obs.add_outcome(outcome("v1", "settled", "S1", {"medfee_sumamt": "60.00", "psn_part_amt": "60.00",
                                                    "acct_pay": "50.00", "psn_cash_pay": "10.00"}))
    obs.add_outcome(outcome("v2", "reversed", "R1", {"medfee_sumamt": "-60.00", "psn_part_amt": "-60.00",
                                                     "acct_pay": "-50.00", "psn_cash_pay": "-10.00"}, orig="S1"))
    assert set(invariants(obs, clean, {"330100": {}}).values()) == {"ok"}
    # 40.00 != 0.00 + 30.00 + 5.00; and S1 reversed a second time
    obs.add_outcome(outcome("v3", "settled", "S3", {"medfee_sumamt": "40.00", "psn_part_amt": "35.00",
                                                    "acct_pay": "30.00", "psn_cash_pay": "5.00"}))
    obs.add_outcome(outcome("v4", "reversed", "R2", {"medfee_sumamt": "-60.00", "psn_part_amt": "-60.00",
                                                     "acct_pay": "-50.00", "psn_cash_pay": "-10.00"}, orig="S1"))
    inv = invariants(obs, {**clean, "ledger_sum_fen": 5}, {"330100": None})
    assert "v3" in inv["settlement_identities"] and "S1 reversed 2 times" in inv["reversals_undo_settlements"]
    assert "0.05" in inv["ledger_balanced"] and inv["accumulators_match_settlements"] != "ok"
    assert parse_until("25") == (25, None) and parse_until("30s") == (None, 30.0)
