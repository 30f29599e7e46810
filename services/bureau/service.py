"""Handlers of the bureau: national transactions from the POS, answers from the accounts service, and the
registry (facilities, people). Each handler is one transaction; replies that depend on the accounts
service are sent when its answer arrives."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from datetime import datetime, time
from decimal import Decimal
from typing import Any

from contracts import admin, credentials, infno, national
from contracts.base import SHANGHAI, format_biz_time
from contracts.envelope import Reply, Request
from contracts.errors import ErrorCode, GongjiError
from contracts.internal import AccountsKind, AccountsReply, AccountsRequest
from contracts.money import from_fen, to_fen
from contracts.routing import Names
from contracts.settlement import (CompensateInput, Cumulative, CumulativeInput, PersonInfo, PersonInfoInput,
                                  ReconcileInput, ReverseInput, SetlInfo, SettleInput, SignInInput,
                                  SignInOutput)
from services.shared.inbox import decode_input, envelope_refusal, handle_idempotent
from services.shared.policy import RegionPolicy
from services.shared.runtime import inbox_counters
from services.shared.sql import Tx
from services.shared.store import OutMessage

from . import settlement as life
from . import store as db
from .domain import Adjudication, adjudicate
from .repository import BureauUnitOfWork
from .visits import PRESETTLE as NATIONAL_PRESETTLE
from .visits import VisitDesk, national_output

# What a refused reversal says, by the code the settlement's life cycle gives (settlement.reverse).
REVERSE_REFUSALS = {
    ErrorCode.ALREADY_REVERSED: "settlement {setl_id} is already reversed",
    ErrorCode.COMPENSATED: "settlement {setl_id} was undone by 冲正",
    ErrorCode.SETTLEMENT_PENDING: "settlement {setl_id} is still being paid",
    ErrorCode.SETTLEMENT_NOT_FOUND: "settlement {setl_id} failed and has nothing to undo",
}

MONEY_FIELDS = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
                "act_pay_dedc", "hifp_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay", "acct_mulaid_pay",
                "psn_cash_pay", "wallet_pay")


DEFAULT_TIME_BACK_S = 3600  # a facility's messages may arrive out of order by up to an hour of business time
DEFAULT_TIME_AHEAD_S = 31 * 86400  # and resume after a closure of up to a month


def insurance_year(policy: RegionPolicy, when: datetime) -> int:
    """The insurance year a business time falls in (Shanghai's starts on 1 July, most on 1 January), on
    Asia/Shanghai business time as the accounts' windows are; a naive time is Shanghai time already."""
    if when.tzinfo is not None:
        when = when.astimezone(SHANGHAI)
    return when.year if when.month >= policy.year_start_month else when.year - 1


class BureauService:
    def __init__(self, names: Names, policies: dict[str, RegionPolicy], served: list[str], reply_key: str):
        self.names = names
        self.policies = policies
        self.served = set(served)
        self.reply_key = reply_key
        self.visits = VisitDesk(self)
        # Business-time tolerances per facility (seconds; 0 = no bound). Scenarios keep their virtual clock:
        # the simulator's own workers run with both off.
        self.time_back_s = float(os.environ.get("GONGJI_BIZ_TIME_BACK_S", str(DEFAULT_TIME_BACK_S)))
        self.time_ahead_s = float(os.environ.get("GONGJI_BIZ_TIME_AHEAD_S", str(DEFAULT_TIME_AHEAD_S)))

    # ---- national transactions ----------------------------------------------------------------
    def handle_request(self, tx: Tx, req: Request, reply_to: str | None,
                       headers: dict[str, Any] | None = None, via_registry: bool = False) -> list[int]:
        """via_registry: the broker delivered it from the registry exchange, which only the admin and the
        simulator may write to (their audits reconcile every facility's day: 3201 for any fixmedins_code)."""
        uow = BureauUnitOfWork(tx)
        nonce = None
        facility_tx = req.infno == infno.SIGN_IN or infno.needs_sign_in(req.infno)
        if facility_tx and not req.msgid.startswith(req.fixmedins_code):
            # A facility numbers only its own messages: another's prefix would take that facility's msgid (its
            # own message later refused as a conflict, its 2601 of it refused as not its own).
            refusal = Reply.fail(req.msgid, ErrorCode.NOT_YOUR_MSGID,
                                 f"msgid {req.msgid} does not begin with the sender's fixmedins_code "
                                 f"{req.fixmedins_code} (12 fixmedins_code + yyyyMMddHHmmss + 4-digit sequence)")
        elif req.infno == infno.SIGN_IN:
            refusal, nonce = self._check_credential(uow, req, reply_to, headers or {})
        elif infno.needs_sign_in(req.infno):
            refusal = self._check_sign_no(uow, req)
        else:
            refusal = None
        if refusal is None:  # only once the sender is who it says (else anyone could move a facility's clock)
            refusal = self._check_clock(uow, req)
        if refusal is not None:
            # Not a business answer: nothing is recorded, so the same msgid may come again once signed in.
            if not reply_to:
                return []
            with uow.transaction():
                return [self._reply(uow, reply_to, req.msgid, refusal)]
        if national.is_national(req.infno, req.input):  # the national visit flow (services/bureau/visits.py)
            if req.infno in NATIONAL_PRESETTLE:
                return self._read_only(uow, req, reply_to, national=True)
            return handle_idempotent(uow, key=req.msgid, kind=req.infno, content_hash=req.content_hash(),
                                     reply_to=reply_to, reply_exchange=self.names.reply_exchange,
                                     effect=lambda outbox: self.visits.effect(uow, req, reply_to, outbox),
                                     refusal=envelope_refusal(req.msgid))
        if req.infno in infno.PRESETTLE or req.infno == infno.PERSON_INFO:
            return self._read_only(uow, req, reply_to)
        if nonce is not None:  # remembered in the sign-in's own transaction: a replay is refused
            with uow.transaction():
                uow.registry.remember_nonce(req.fixmedins_code, nonce)
                return self._idempotent(uow, req, reply_to)
        return self._idempotent(uow, req, reply_to, via_registry)

    def _idempotent(self, uow: BureauUnitOfWork, req: Request, reply_to: str | None,
                    via_registry: bool = False) -> list[int]:
        return handle_idempotent(uow, key=req.msgid, kind=req.infno, content_hash=req.content_hash(),
                                 reply_to=reply_to, reply_exchange=self.names.reply_exchange,
                                 effect=lambda outbox: self._effect(uow, req, reply_to, outbox, via_registry),
                                 refusal=envelope_refusal(req.msgid))

    def _check_clock(self, uow: BureauUnitOfWork, req: Request) -> Reply | None:
        """Business time per facility: never more than `time_back_s` behind the latest time the facility had
        accepted, never more than `time_ahead_s` ahead of it (0: no bound). Back-dating would reopen closed
        day/month windows (a 50.00 day cap spent again on "yesterday"); running ahead would open future ones.
        A repeat of a message already handled is not checked (the inbox answers it as before)."""
        if not infno.needs_sign_in(req.infno) and req.infno != infno.SIGN_IN:
            return None  # gongji's own G-transactions: the registry's business, not a facility's
        if not (self.time_back_s or self.time_ahead_s) or uow.inbox.get(req.msgid) is not None:
            return None
        when = req.inf_time.astimezone(SHANGHAI).replace(tzinfo=None)
        clock = uow.registry.clock(req.fixmedins_code)
        if clock is not None:
            latest = datetime.strptime(clock, "%Y-%m-%d %H:%M:%S")
            behind, ahead = (latest - when).total_seconds(), (when - latest).total_seconds()
            if self.time_back_s and behind > self.time_back_s:
                return Reply.fail(req.msgid, ErrorCode.BIZ_TIME_REFUSED,
                                  f"inf_time {format_biz_time(req.inf_time)} is {behind:.0f} s behind the latest time "
                                  f"{clock} of {req.fixmedins_code} (tolerance {self.time_back_s:.0f} s)")
            if self.time_ahead_s and ahead > self.time_ahead_s:
                return Reply.fail(req.msgid, ErrorCode.BIZ_TIME_REFUSED,
                                  f"inf_time {format_biz_time(req.inf_time)} is {ahead:.0f} s ahead of the latest time "
                                  f"{clock} of {req.fixmedins_code} (tolerance {self.time_ahead_s:.0f} s)")
            if ahead <= 0:
                return None
        with uow.transaction():
            uow.registry.advance_clock(req.fixmedins_code, format_biz_time(req.inf_time))
        return None

    def _check_person_clock(self, uow: BureauUnitOfWork, req: Request, psn_no: str) -> None:
        """A settlement is never more than `time_back_s` behind the person's latest one at any facility: the
        facility clocks above are each facility's own, so a facility new to the bureau (or one whose clock is
        far behind) could otherwise date a bill into a day or month whose caps the person has already used."""
        latest = uow.settlements.latest_time(psn_no) if self.time_back_s else None
        if latest is None:
            return
        when = req.inf_time.astimezone(SHANGHAI).replace(tzinfo=None)
        behind = (datetime.strptime(latest, "%Y-%m-%d %H:%M:%S") - when).total_seconds()
        if behind > self.time_back_s:
            raise GongjiError(ErrorCode.BIZ_TIME_REFUSED,
                              f"inf_time {format_biz_time(req.inf_time)} is {behind:.0f} s behind {psn_no}'s latest "
                              f"settlement ({latest}; tolerance {self.time_back_s:.0f} s)")

    def _check_credential(self, uow: BureauUnitOfWork, req: Request, reply_to: str | None,
                          headers: dict[str, Any]) -> tuple[Reply | None, str | None]:
        """9001 needs the facility's credential (x-tif headers, contracts.credentials) as AMQP headers: a
        signature by the facility's paasToken, fresh, with a nonce not seen before. A redelivery of the very
        same message (same msgid, same reply queue) is replayed by the inbox; the same msgid to another reply
        queue is a replay by someone else, refused (it would hand them the sign_no)."""
        entry = uow.inbox.get(req.msgid)
        if entry is not None:
            if entry.reply_to != reply_to:
                return Reply.fail(req.msgid, ErrorCode.NONCE_REUSED, f"9001 {req.msgid} was already signed in "
                                                                    "from elsewhere; a replay is refused"), None
            return None, None
        h = {str(k).lower(): v.decode(errors="replace") if isinstance(v, bytes) else str(v)
             for k, v in headers.items()}
        code, message = credentials.check(h)
        if code is None and h.get(credentials.PAASID) != req.fixmedins_code:
            code, message = ErrorCode.SIGNATURE_INVALID, (f"{credentials.PAASID} {h.get(credentials.PAASID)} "
                                                          f"is not {req.fixmedins_code}")
        if code is None and uow.registry.nonce_seen(req.fixmedins_code, h[credentials.NONCE]):
            code, message = ErrorCode.NONCE_REUSED, f"nonce {h[credentials.NONCE]} was already used"
        if code is not None:
            return Reply.fail(req.msgid, code, f"9001 of {req.fixmedins_code}: {message}"), None
        return None, h[credentials.NONCE]

    def _check_sign_no(self, uow: BureauUnitOfWork, req: Request) -> Reply | None:
        row = uow.registry.signin(req.sign_no) if req.sign_no else None
        if row is None or row["fixmedins_code"] != req.fixmedins_code:
            return Reply.fail(req.msgid, ErrorCode.SIGN_NO_UNKNOWN,
                              f"sign_no {req.sign_no or '(none)'} is not a sign-in of {req.fixmedins_code}; sign in "
                              "with 9001 first")
        when = format_biz_time(req.inf_time)
        if row["valid_until"] < when:
            return Reply.fail(req.msgid, ErrorCode.SIGN_NO_EXPIRED,
                              f"sign_no {req.sign_no} expired at {row['valid_until']}; sign in again with 9001")
        if row["valid_until"][:10] != when[:10]:  # valid the one business day it was issued for, not before
            return Reply.fail(req.msgid, ErrorCode.SIGN_NO_WRONG_DAY,
                              f"sign_no {req.sign_no} is valid on {row['valid_until'][:10]} only, not on {when[:10]}")
        return None

    def _sign_in(self, uow: BureauUnitOfWork, req: Request, inp: SignInInput) -> dict[str, Any]:
        if uow.registry.facility(req.fixmedins_code) is None:
            raise GongjiError(ErrorCode.UNKNOWN_FACILITY, f"facility {req.fixmedins_code} is not a designated one")
        # Deterministic from the msgid, so that every bureau (9001 is broadcast to all) issues the same one.
        sign_no = "SN" + hashlib.sha256(req.msgid.encode()).hexdigest()[:20].upper()
        local = req.inf_time.astimezone(SHANGHAI)
        valid_until = format_biz_time(datetime.combine(local.date(), time(23, 59, 59), tzinfo=SHANGHAI))
        uow.registry.put_signin(sign_no, req.fixmedins_code, inp.opter_no, format_biz_time(req.inf_time), valid_until)
        return SignInOutput(sign_no=sign_no, sign_time=req.inf_time, valid_until=valid_until).model_dump(mode="json")

    def _effect(self, uow: BureauUnitOfWork, req: Request, reply_to: str | None, outbox: list[int],
                via_registry: bool = False) -> bytes | None:
        inp = decode_input(req, infno.BUREAU_INPUTS)
        if isinstance(inp, SignInInput):
            return Reply.ok(req.msgid, self._sign_in(uow, req, inp)).model_dump_json().encode()
        if req.infno in ("G001", "G002", "G003", "G199"):
            return Reply.ok(req.msgid, self._registry(uow, inp)).model_dump_json().encode()
        if isinstance(inp, SettleInput):
            return self._settle(uow, req, inp, reply_to, outbox)
        if isinstance(inp, ReverseInput):
            return self._reverse(uow, req, inp, reply_to, outbox)
        if isinstance(inp, CompensateInput):
            return self._compensate(uow, req, inp, reply_to, outbox)
        if isinstance(inp, CumulativeInput):
            return Reply.ok(req.msgid, self._cumulative(uow, req, inp)).model_dump_json().encode()
        if isinstance(inp, ReconcileInput):
            return Reply.ok(req.msgid, self._reconcile(uow, req, inp, via_registry)).model_dump_json().encode()
        raise GongjiError(ErrorCode.UNKNOWN_INFNO, f"infno {req.infno} is not served here")

    def _read_only(self, uow: BureauUnitOfWork, req: Request, reply_to: str | None,
                   national: bool = False) -> list[int]:
        """Pre-settlement and person info change nothing: no inbox, the accounts service fills in balances."""
        outbox: list[int] = []
        with uow.transaction():
            try:
                inp = None if national else decode_input(req, infno.BUREAU_INPUTS)
                if national:
                    self.visits.presettle(uow, req, reply_to, outbox)
                elif isinstance(inp, SettleInput):
                    person, policy, facility = self._check_settle(uow, req, inp)
                    adj = self._adjudicate(uow, req, inp, person, policy, facility)
                    context = {"msgid": req.msgid, "reply_to": reply_to, "infno": req.infno,
                               "setlinfo": self._base_setlinfo(f"PRE{req.msgid}", req, inp.psn_no, inp.med_type, adj)}
                    self._ask_accounts(uow, outbox, "preview", f"pre:{req.msgid}", req, inp, adj, context)
                else:
                    assert isinstance(inp, PersonInfoInput)
                    self._region(req)
                    person = self._person(uow, inp.psn_no, req.insuplc_admdvs)
                    context = {"msgid": req.msgid, "reply_to": reply_to, "person": dict(person)}
                    self._send_accounts(uow, outbox, AccountsRequest(
                        req_id=f"bal:{req.msgid}", kind="balance", psn_no=inp.psn_no,
                        insuplc_admdvs=req.insuplc_admdvs, biz_time=req.inf_time, context=context))
            except GongjiError as exc:
                if reply_to:
                    outbox.append(self._reply(uow, reply_to, req.msgid, Reply.fail(req.msgid, exc.code, exc.message)))
        return outbox

    # ---- checks ---------------------------------------------------------------------------------
    def _region(self, req: Request) -> RegionPolicy:
        if req.insuplc_admdvs not in self.served:
            raise GongjiError(ErrorCode.REGION_NOT_SERVED, f"this bureau does not serve {req.insuplc_admdvs}")
        policy = self.policies.get(req.insuplc_admdvs)
        if policy is None:
            raise GongjiError(ErrorCode.NO_POLICY, f"no policy file for region {req.insuplc_admdvs}")
        return policy

    def _person(self, uow: BureauUnitOfWork, psn_no: str, region: str) -> Any:
        person = uow.registry.person(psn_no)
        if person is None or person["insuplc_admdvs"] != region:
            raise GongjiError(ErrorCode.UNKNOWN_PERSON, f"person {psn_no} is not insured in {region}")
        return person

    def _check_settle(self, uow: BureauUnitOfWork, req: Request, inp: SettleInput
                      ) -> tuple[Any, RegionPolicy, Any]:
        policy = self._region(req)
        triple = infno.TRIPLES[inp.med_type]
        if req.infno not in triple:
            raise GongjiError(ErrorCode.MED_TYPE_MISMATCH,
                              f"med_type {inp.med_type} is settled with {triple[0]}/{triple[1]}, not {req.infno}")
        person = self._person(uow, inp.psn_no, req.insuplc_admdvs)
        if person["insutype"] != inp.insutype:
            raise GongjiError(ErrorCode.WRONG_INSUTYPE, f"{inp.psn_no} is insured under {person['insutype']}, "
                                                        f"not {inp.insutype}")
        facility = uow.registry.facility(req.fixmedins_code)
        if facility is None:
            raise GongjiError(ErrorCode.UNKNOWN_FACILITY, f"facility {req.fixmedins_code} is not a designated one")
        if (facility["type"] == "pharmacy") != (inp.med_type == "41"):
            raise GongjiError(ErrorCode.FACILITY_TYPE_MISMATCH,
                              f"a {facility['type']} cannot settle med_type {inp.med_type}")
        return person, policy, facility

    def _adjudicate(self, uow: BureauUnitOfWork, req: Request, inp: SettleInput, person: Any,
                    policy: RegionPolicy, facility: Any) -> Adjudication:
        # 就医地目录, 参保地政策: the catalog of the place of treatment, the insured region's money rules. The place
        # of treatment is where the facility is registered (G001), not what its request claims: a facility
        # must not pick a laxer catalog (one that takes its declared classes) by naming another mdtrtarea_admvs.
        catalog = self.policies.get(facility["admdvs"], policy)
        acc = uow.accumulators.get(inp.psn_no, insurance_year(policy, req.inf_time))
        return adjudicate(policy=policy, catalog=catalog, med_type=inp.med_type, psn_type=person["psn_type"],
                          hosp_lv=facility["hosp_lv"], lines=list(inp.details), acc=acc, insutype=person["insutype"],
                          resident_group=person["resident_group"], low_income=bool(person["low_income"]),
                          rx_flag=inp.rx_circ_flag == "1")

    # ---- settle, reverse, 冲正 --------------------------------------------------------------------
    def _settle(self, uow: BureauUnitOfWork, req: Request, inp: SettleInput, reply_to: str | None,
                outbox: list[int]) -> None:
        person, policy, facility = self._check_settle(uow, req, inp)
        self._check_person_clock(uow, req, inp.psn_no)
        adj = self._adjudicate(uow, req, inp, person, policy, facility)
        year = insurance_year(policy, req.inf_time)
        uow.accumulators.add(inp.psn_no, year, adj.delta)
        setl_id = f"S{req.msgid}"
        base = self._base_setlinfo(setl_id, req, inp.psn_no, inp.med_type, adj)
        uow.settlements.add(setl_id, req.msgid, req.infno, inp.psn_no, req.fixmedins_code, inp.med_type, year,
                            format_biz_time(req.inf_time),
                            json.dumps({"base": base, "delta": asdict(adj.delta),
                                  "fulamt": adj.fulamt_ownpay, "overlmt": adj.overlmt_selfpay,
                                  "acct_used_flag": inp.acct_used_flag, "setl_chnl": inp.setl_chnl,
                                  "insuplc_admdvs": req.insuplc_admdvs}),
                            reply_to)
        self._ask_accounts(uow, outbox, "pay", f"pay:{setl_id}", req, inp, adj, {"setl_id": setl_id},
                           setl_id=setl_id)
        return None  # the reply follows the accounts' answer

    def _reverse(self, uow: BureauUnitOfWork, req: Request, inp: ReverseInput, reply_to: str | None,
                 outbox: list[int]) -> None:
        self._region(req)
        row = uow.settlements.by_setl_id(inp.setl_id)
        if row is None or json.loads(row["adjudication"])["insuplc_admdvs"] != req.insuplc_admdvs:
            raise GongjiError(ErrorCode.SETTLEMENT_NOT_FOUND, f"no settlement {inp.setl_id} in {req.insuplc_admdvs}")
        if row["psn_no"] != inp.psn_no:
            raise GongjiError(ErrorCode.NOT_YOUR_SETTLEMENT, f"settlement {inp.setl_id} is not {inp.psn_no}'s")
        if row["fixmedins_code"] != req.fixmedins_code:  # only the facility that settled may reverse it
            raise GongjiError(ErrorCode.NOT_YOUR_SETTLEMENT,
                              f"settlement {inp.setl_id} was not made by {req.fixmedins_code}")
        if req.infno != infno.TRIPLES[row["med_type"]][2]:
            raise GongjiError(ErrorCode.MED_TYPE_MISMATCH, f"settlement {inp.setl_id} (med_type {row['med_type']}) "
                                                           f"is reversed with {infno.TRIPLES[row['med_type']][2]}")
        step = life.reverse(row["state"])
        if step.error is not None:
            raise GongjiError(step.error, REVERSE_REFUSALS[step.error].format(setl_id=inp.setl_id))
        self._undo(uow, row, step.state, outbox, req.inf_time)
        uow.settlements.mark_reversal(row["setl_id"], req.msgid, reply_to, format_biz_time(req.inf_time))
        return None

    def _undo(self, uow: BureauUnitOfWork, row: Any, state: str | None, outbox: list[int],
              when: datetime) -> None:
        """Give the accumulators back and ask the accounts service to refund exactly what it took."""
        assert state is not None
        uow.accumulators.give_back(row["psn_no"], row["year"], db.delta_of(row))
        uow.settlements.set_state(row["setl_id"], state)
        adj = json.loads(row["adjudication"])
        self._send_accounts(uow, outbox, AccountsRequest(
            req_id=f"refund:{row['setl_id']}", kind="refund", psn_no=row["psn_no"],
            insuplc_admdvs=adj["insuplc_admdvs"], biz_time=when, fixmedins_code=row["fixmedins_code"],
            med_type=row["med_type"], setl_id=row["setl_id"], context={"setl_id": row["setl_id"]}))

    def _compensate(self, uow: BureauUnitOfWork, req: Request, inp: CompensateInput, reply_to: str | None,
                    outbox: list[int]) -> bytes | None:
        # A facility cancels only what it sent: a settlement records who made it, and any other msgid (one not
        # received yet: a tombstone) must begin with the sender's fixmedins_code, so B can neither undo A's
        # settlement nor tombstone A's future msgids.
        made = uow.settlements.by_msgid(inp.omsgid)
        mine = made["fixmedins_code"] == req.fixmedins_code if made is not None \
            else inp.omsgid.startswith(req.fixmedins_code)
        if not mine:
            raise GongjiError(ErrorCode.NOT_YOUR_MSGID, f"msgid {inp.omsgid} was not sent by {req.fixmedins_code}")
        original = uow.inbox.get(inp.omsgid)
        if original is not None and original.kind.isdigit() and original.kind != inp.oinfno:
            # The national 2601 names the original's transaction code: a mismatch is a HIS's mistake to see.
            raise GongjiError(ErrorCode.BAD_INPUT, f"oinfno {inp.oinfno} does not match msgid {inp.omsgid}, "
                                                   f"which was a {original.kind}")
        if original is None:
            # Never arrived (yet): leave a tombstone so that, if it does arrive, it is refused and does nothing.
            tomb = Reply.fail(inp.omsgid, ErrorCode.COMPENSATED,
                              f"msgid {inp.omsgid} was cancelled by 2601 {req.msgid} before it arrived")
            # The inbox holds it (kind "tombstone"): the msgid's later settle is answered E_COMPENSATED there,
            # as life.settle(TOMBSTONE) says, before any effect runs.
            uow.inbox.put(inp.omsgid, str(life.cancel(None).state), "-", tomb.model_dump_json(), None)
            return self._ok(req, {"omsgid": inp.omsgid, "result": "not received; it will be refused if it arrives"})
        row = made
        if row is not None and json.loads(row["adjudication"])["insuplc_admdvs"] != req.insuplc_admdvs:
            raise GongjiError(ErrorCode.SETTLEMENT_NOT_FOUND, f"msgid {inp.omsgid} is no settlement in "
                                                              f"{req.insuplc_admdvs}")
        if row is None:
            if original.kind in infno.REVERSE:
                raise GongjiError(ErrorCode.BAD_INPUT, "冲正 of a reversal is not supported; settle again instead")
            return self._ok(req, {"omsgid": inp.omsgid, "result": "the original changed nothing"})
        if row["psn_no"] != inp.psn_no:
            raise GongjiError(ErrorCode.NOT_YOUR_SETTLEMENT, f"msgid {inp.omsgid} is not {inp.psn_no}'s")
        step = life.cancel(row["state"])
        if step.wait or step.undo:
            if step.undo:
                self._undo(uow, row, step.state, outbox, req.inf_time)
            uow.settlements.mark_cancel(row["setl_id"], req.msgid, reply_to)
            return None  # answered once the refund (or, still pending, the payment) is answered
        return self._ok(req, {"omsgid": inp.omsgid, "result": f"nothing left to undo ({row['state']})"})

    @staticmethod
    def _ok(req: Request, output: dict[str, Any]) -> bytes:
        return Reply.ok(req.msgid, output).model_dump_json().encode()

    # ---- answers from the accounts service ------------------------------------------------------
    def handle_accounts_reply(self, tx: Tx, rep: AccountsReply) -> list[int]:
        outbox: list[int] = []
        uow = BureauUnitOfWork(tx)
        with uow.transaction():
            uow.awaiting.done(rep.req_id)
            if rep.kind == "preview":
                ctx = rep.context
                reply = (Reply.ok(ctx["msgid"], national_output(ctx, self._final_setlinfo(ctx["setlinfo"], rep)))
                         if rep.ok
                         else Reply.fail(ctx["msgid"], rep.err_code or ErrorCode.INTERNAL, rep.err_msg or ""))
                if ctx.get("reply_to"):
                    outbox.append(self._reply(uow, ctx["reply_to"], ctx["msgid"], reply))
            elif rep.kind == "balance":
                ctx = rep.context
                p = ctx["person"]
                info = PersonInfo(psn_no=p["psn_no"], psn_name=p["name"], insutype=p["insutype"],
                                  psn_type=p["psn_type"], insuplc_admdvs=p["insuplc_admdvs"],
                                  balc=rep.balc if rep.ok and rep.balc is not None else Decimal("0.00"))
                if ctx.get("reply_to"):
                    outbox.append(self._reply(uow, ctx["reply_to"], ctx["msgid"],
                                              Reply.ok(ctx["msgid"], info.model_dump(mode="json"))))
            else:
                row = uow.settlements.by_setl_id(rep.context["setl_id"])
                if row is not None:
                    (self._paid if rep.kind == "pay" else self._refunded)(uow, row, rep, outbox)
        return outbox

    def _paid(self, uow: BureauUnitOfWork, row: Any, rep: AccountsReply, outbox: list[int]) -> None:
        step = life.paid(row["state"], rep.ok, cancelled=bool(row["cancel_msgid"]))
        if step.duplicate:
            inbox_counters["duplicates_absorbed"] += 1
            return  # a duplicate answer
        adj = json.loads(row["adjudication"])
        if step.state == life.FAILED:
            uow.accumulators.give_back(row["psn_no"], row["year"], db.delta_of(row))
            uow.settlements.set_state(row["setl_id"], life.FAILED)
            reply = Reply.fail(row["msgid"], rep.err_code or ErrorCode.INTERNAL, f"accounts: {rep.err_msg}")
            uow.inbox.set_reply(row["msgid"], reply.model_dump_json())
            if row["cancel_msgid"]:
                self._answer_cancel(uow, row, outbox, "the original failed; nothing to undo")
            elif row["reply_to"]:
                outbox.append(self._reply(uow, row["reply_to"], row["msgid"], reply))
            return
        info = self._final_setlinfo(adj["base"], rep)
        uow.settlements.set_state(row["setl_id"], life.SETTLED, setlinfo=json.dumps(info))
        reply = Reply.ok(row["msgid"], national_output(adj, info))
        uow.inbox.set_reply(row["msgid"], reply.model_dump_json())
        if step.undo:
            # 冲正 arrived while we waited for the payment: undo at once; the POS gave up on this reply.
            fresh = uow.settlements.by_setl_id(row["setl_id"])
            assert fresh is not None
            self._undo(uow, fresh, step.state, outbox, datetime.strptime(
                row["setl_time"], "%Y-%m-%d %H:%M:%S"))
        elif row["reply_to"]:
            outbox.append(self._reply(uow, row["reply_to"], row["msgid"], reply))

    def _refunded(self, uow: BureauUnitOfWork, row: Any, rep: AccountsReply, outbox: list[int]) -> None:
        if not rep.ok:
            raise RuntimeError(f"refund of {row['setl_id']} refused: {rep.err_code} {rep.err_msg}")
        step = life.refunded(row["state"])
        if step.state == life.REVERSED and not step.duplicate:
            info = json.loads(row["setlinfo"])
            negated = {**info, **{f: f"{-Decimal(info[f]):.2f}" for f in MONEY_FIELDS}}
            negated["setldetail"] = [{**d, "fund_payamt": f"{-Decimal(d['fund_payamt']):.2f}"}
                                     for d in info.get("setldetail", [])]
            negated.update(setl_id=f"R{row['rev_msgid']}", orig_setl_id=row["setl_id"], setl_time=row["rev_time"],
                           balc=f"{rep.balc:.2f}", notes=[f"reversal of {row['setl_id']}"] + rep.notes,
                           mulaid_detail=[p.model_dump(mode="json") for p in rep.mulaid_detail])
            SetlInfo.model_validate(negated)  # the reversal answer must be as valid as any settlement
            uow.settlements.set_state(row["setl_id"], life.REVERSED)
            reply = Reply.ok(row["rev_msgid"], national_output(json.loads(row["adjudication"]), negated))
            uow.inbox.set_reply(row["rev_msgid"], reply.model_dump_json())
            if row["rev_reply_to"]:
                outbox.append(self._reply(uow, row["rev_reply_to"], row["rev_msgid"], reply))
        elif step.duplicate:
            inbox_counters["duplicates_absorbed"] += 1  # a duplicate answer
        else:
            uow.settlements.set_state(row["setl_id"], life.COMPENSATED)
            uow.inbox.set_reply(row["msgid"], Reply.fail(
                row["msgid"], ErrorCode.COMPENSATED,
                f"settlement {row['setl_id']} was undone by 2601 {row['cancel_msgid']}").model_dump_json())
            self._answer_cancel(uow, row, outbox, f"settlement {row['setl_id']} undone; "
                                                   f"refunded {rep.acct_pay} to the accounts")

    def _answer_cancel(self, uow: BureauUnitOfWork, row: Any, outbox: list[int], result: str) -> None:
        reply = Reply.ok(row["cancel_msgid"], {"omsgid": row["msgid"], "result": result})
        uow.inbox.set_reply(row["cancel_msgid"], reply.model_dump_json())
        if row["cancel_reply_to"]:
            outbox.append(self._reply(uow, row["cancel_reply_to"], row["cancel_msgid"], reply))

    # ---- building replies ------------------------------------------------------------------------
    @staticmethod
    def _base_setlinfo(setl_id: str, req: Request, psn_no: str, med_type: str, adj: Adjudication) -> dict[str, Any]:
        f = from_fen
        return {"setl_id": setl_id, "psn_no": psn_no, "insuplc_admdvs": req.insuplc_admdvs,
                "mdtrtarea_admvs": req.mdtrtarea_admvs, "med_type": med_type,
                "setl_time": format_biz_time(req.inf_time), "medfee_sumamt": f"{f(adj.medfee)}",
                "fulamt_ownpay_amt": f"{f(adj.fulamt_ownpay)}", "overlmt_selfpay": f"{f(adj.overlmt_selfpay)}",
                "preselfpay_amt": f"{f(adj.preselfpay)}", "inscp_scp_amt": f"{f(adj.inscp)}",
                "act_pay_dedc": f"{f(adj.act_pay_dedc)}", "hifp_pay": f"{f(adj.hifp_pay)}",
                "fund_pay_sumamt": f"{f(adj.fund_pay_sumamt)}", "psn_part_amt": f"{f(adj.psn_part)}",
                "setldetail": [{"fund_pay_type": x.fund_pay_type, "fund_pay_type_name": x.name,
                                "inscp_scp_amt": f"{f(x.base)}", "fund_payamt": f"{f(x.pay)}",
                                "crt_payb_lmt_amt": None if x.limit_left is None else f"{f(x.limit_left)}",
                                "setl_proc_info": x.info} for x in adj.funds],
                "notes": list(adj.notes)}

    @staticmethod
    def _final_setlinfo(base: dict[str, Any], rep: AccountsReply) -> dict[str, Any]:
        info = {**base, "acct_pay": f"{rep.acct_pay:.2f}", "acct_mulaid_pay": f"{rep.acct_mulaid_pay:.2f}",
                "psn_cash_pay": f"{rep.psn_cash_pay:.2f}", "balc": f"{rep.balc:.2f}",
                "wallet_pay": f"{rep.wallet_pay or Decimal('0.00'):.2f}",
                "mulaid_detail": [p.model_dump(mode="json") for p in rep.mulaid_detail],
                "notes": base["notes"] + rep.notes}
        return SetlInfo.model_validate(info).model_dump(mode="json")

    def _ask_accounts(self, uow: BureauUnitOfWork, outbox: list[int], kind: AccountsKind, req_id: str,
                      req: Request, inp: SettleInput, adj: Adjudication, context: dict[str, Any],
                      setl_id: str | None = None) -> None:
        self._send_accounts(uow, outbox, AccountsRequest(
            req_id=req_id, kind=kind, psn_no=inp.psn_no, insuplc_admdvs=req.insuplc_admdvs, biz_time=req.inf_time,
            fixmedins_code=req.fixmedins_code, med_type=inp.med_type, setl_chnl=inp.setl_chnl, setl_id=setl_id,
            acct_used_flag=inp.acct_used_flag, psn_part_amt=from_fen(adj.psn_part),
            fulamt_ownpay_amt=from_fen(adj.fulamt_ownpay), overlmt_selfpay=from_fen(adj.overlmt_selfpay),
            scope_amounts={k: from_fen(v) for k, v in adj.scope_amounts},  # type: ignore[misc]
            medfee_sumamt=from_fen(adj.medfee), proxy_psn_no=inp.proxy_psn_no, context=context))

    def _send_accounts(self, uow: BureauUnitOfWork, outbox: list[int], request: AccountsRequest) -> None:
        body = request.model_dump_json().encode()
        outbox.append(uow.outbox.add(OutMessage(self.names.pay_exchange, "pay", body, message_id=request.req_id,
                                                reply_to=self.reply_key)))
        if request.kind in ("pay", "refund"):  # money in flight: the sweep asks again until it is answered
            uow.awaiting.add(request.req_id, request.setl_id or "", body)

    def sweep_pending(self, tx: Tx, older_than_s: float) -> list[int]:
        """Reconciliation sweep: a payment or refund the accounts service has not answered within `older_than_s`
        (wall-clock transport time) is asked again, with the same req_id: its inbox answers a repeat with the
        stored reply, so a lost request or a lost answer ends the same way (settled, failed, or, after a 2601,
        compensated), and nothing is paid twice."""
        outbox: list[int] = []
        uow = BureauUnitOfWork(tx)
        with uow.transaction():
            for req_id, body in uow.awaiting.due(older_than_s):
                outbox.append(uow.outbox.add(OutMessage(self.names.pay_exchange, "pay", body, message_id=req_id,
                                                        reply_to=self.reply_key)))
        return outbox

    def _reply(self, uow: BureauUnitOfWork, reply_to: str, msgid: str, reply: Reply) -> int:
        return uow.outbox.add(OutMessage(self.names.reply_exchange, reply_to, reply.model_dump_json().encode(),
                                         message_id=f"re:{msgid}", correlation_id=msgid))

    # ---- registry and queries --------------------------------------------------------------------
    def _registry(self, uow: BureauUnitOfWork, inp: Any) -> dict[str, Any]:
        if isinstance(inp, admin.RegisterFacility):
            uow.registry.put_facility(inp.fixmedins_code, inp.fixmedins_name, inp.fixmedins_type, inp.hosp_lv,
                                      inp.admdvs)
            return {"fixmedins_code": inp.fixmedins_code}
        if isinstance(inp, (admin.RegisterPerson, admin.RegisterPersons)):
            people = [inp] if isinstance(inp, admin.RegisterPerson) else inp.persons
            for p in people:
                if p.insuplc_admdvs not in self.served:
                    raise GongjiError(ErrorCode.REGION_NOT_SERVED, f"this bureau does not serve {p.insuplc_admdvs}")
            uow.registry.put_persons([(p.psn_no, p.psn_name, p.insutype, p.psn_type, p.insuplc_admdvs, p.resident_group,
                               int(p.low_income)) for p in people])
            return {"registered": len(people)}
        if inp.scope == "items":
            regions = set(inp.regions) & self.served if inp.regions else self.served
            return {**uow.settlements.audit_items(inp.after, inp.limit, regions), "regions": sorted(regions)}
        return uow.settlements.audit()

    def _cumulative(self, uow: BureauUnitOfWork, req: Request, inp: CumulativeInput) -> dict[str, Any]:
        policy = self._region(req)
        self._person(uow, inp.psn_no, req.insuplc_admdvs)
        year = inp.cum_year or insurance_year(policy, req.inf_time)
        acc = uow.accumulators.get(inp.psn_no, year, lock=False)
        return Cumulative(psn_no=inp.psn_no, cum_year=year, outpatient_dedc=from_fen(acc.outpatient_dedc),
                          inpatient_dedc=from_fen(acc.inpatient_dedc), inpatient_stays=acc.inpatient_stays,
                          hifp_pay=from_fen(acc.hifp_pay), outpatient_hifp_pay=from_fen(acc.outpatient_hifp_pay),
                          settlements=acc.settlements, large_amount_pay=from_fen(acc.large_amount_pay),
                          crit_burden=from_fen(acc.crit_burden), crit_pay=from_fen(acc.crit_pay),
                          assist_pay=from_fen(acc.assist_pay)).model_dump(mode="json")

    def _reconcile(self, uow: BureauUnitOfWork, req: Request, inp: ReconcileInput,
                   via_registry: bool = False) -> dict[str, Any]:
        """3201 对总账: the bureau's totals of the facility's standing settlements of that day, against the POS's."""
        region = inp.setl_optins or req.insuplc_admdvs
        self._region(req)
        if inp.fixmedins_code != req.fixmedins_code and not via_registry:
            # Its answer shows the day's totals, and it closes the facility's idle visits: a facility's own business.
            raise GongjiError(ErrorCode.NOT_YOUR_SETTLEMENT, f"{req.fixmedins_code} may reconcile only its own "
                                                             f"totals, not {inp.fixmedins_code}'s")
        try:
            day = datetime.strptime(inp.stmt_date, "%Y-%m-%d").date()
        except ValueError:
            raise GongjiError(ErrorCode.BAD_INPUT, f"stmt_date {inp.stmt_date} is not a date") from None
        if day > req.inf_time.astimezone(SHANGHAI).date() and not via_registry:
            # A day not begun yet has nothing to reconcile, and its sweep would close visits still in use. (The
            # simulator's audit reconciles the days of a run once it is over, stamped with its own time.)
            raise GongjiError(ErrorCode.BAD_INPUT, f"stmt_date {inp.stmt_date} is after the business day of "
                                                   f"inf_time {format_biz_time(req.inf_time)}")
        mine = {"fixmedins_setl_cnt": 0, **{f: 0 for f in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay",
                                                            "psn_cash_pay")}}
        for row in uow.settlements.settled_on(inp.fixmedins_code, inp.stmt_date):
            if json.loads(row["adjudication"]).get("insuplc_admdvs") != region:
                continue
            info = json.loads(row["setlinfo"])
            mine["fixmedins_setl_cnt"] += 1
            for f in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
                mine[f] += to_fen(Decimal(info[f]))
        theirs = {"fixmedins_setl_cnt": inp.fixmedins_setl_cnt,
                  **{f: to_fen(getattr(inp, f)) for f in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay",
                                                          "psn_cash_pay")}}
        differ = [f for f in mine if mine[f] != theirs[f]]
        swept = self.visits.sweep(uow, inp.fixmedins_code, region, inp.stmt_date)
        bureau = {f: (v if f == "fixmedins_setl_cnt" else f"{from_fen(v)}") for f, v in mine.items()}
        return {"fixmedins_code": inp.fixmedins_code, "stmt_date": inp.stmt_date, "setl_optins": region,
                "stmt_rslt": "1" if differ else "0",
                "stmt_rslt_dscr": ("平 (balanced)" if not differ else "不平: " + ", ".join(
                    f"{f} bureau {bureau[f]} vs facility {theirs[f] if f == 'fixmedins_setl_cnt' else from_fen(theirs[f])}"
                    for f in differ)),
                "bureau": bureau, "differences": differ, "visits_swept": swept}
