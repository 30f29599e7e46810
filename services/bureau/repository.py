"""The bureau's repositories: every query its handlers (service.py, visits.py) need, in portable SQL
(services/shared/sql.py), behind one unit of work. The schema stays in store.py / visit_store.py.

A visit follows its settlement: every change of a settlement's state goes through `Settlements.set_state`,
which moves the visit and its fee details with it (this was the SQLite trigger `visit_follows_settlement`;
as repository code, a PostgreSQL backend needs no trigger language).
"""
from __future__ import annotations

from typing import Any, Iterable

from services.shared.sql import Tx, for_update, marks
from services.shared.uow import Repository, UnitOfWork

from . import store as db
from .domain import Accumulators as Acc
from .visit_store import OPEN_STATES


class Registry(Repository):
    """Facilities, insured people, sign-ins, credential nonces and each facility's business clock."""

    def facility(self, code: str) -> Any:
        return self._tx.execute("SELECT * FROM facilities WHERE code=?", (code,)).fetchone()

    def person(self, psn_no: str) -> Any:
        return self._tx.execute("SELECT * FROM persons WHERE psn_no=?", (psn_no,)).fetchone()

    def put_facility(self, code: str, name: str, type_: str, hosp_lv: str, admdvs: str) -> None:
        self._tx.execute("INSERT INTO facilities (code, name, type, hosp_lv, admdvs) VALUES (?,?,?,?,?) "
                         "ON CONFLICT (code) DO UPDATE SET name=excluded.name, type=excluded.type, "
                         "hosp_lv=excluded.hosp_lv, admdvs=excluded.admdvs", (code, name, type_, hosp_lv, admdvs))

    def put_persons(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """(psn_no, name, insutype, psn_type, insuplc_admdvs, resident_group, low_income) each."""
        self._tx.executemany("INSERT INTO persons (psn_no, name, insutype, psn_type, insuplc_admdvs, resident_group, "
                             "low_income) VALUES (?,?,?,?,?,?,?) ON CONFLICT (psn_no) DO UPDATE SET "
                             "name=excluded.name, insutype=excluded.insutype, psn_type=excluded.psn_type, "
                             "insuplc_admdvs=excluded.insuplc_admdvs, resident_group=excluded.resident_group, "
                             "low_income=excluded.low_income", list(rows))

    def signin(self, sign_no: str) -> Any:
        return self._tx.execute("SELECT * FROM signins WHERE sign_no=?", (sign_no,)).fetchone()

    def put_signin(self, sign_no: str, fixmedins_code: str, opter_no: str, sign_time: str, valid_until: str) -> None:
        self._tx.execute("INSERT INTO signins (sign_no, fixmedins_code, opter_no, sign_time, valid_until) "
                         "VALUES (?,?,?,?,?) ON CONFLICT (sign_no) DO UPDATE SET "
                         "fixmedins_code=excluded.fixmedins_code, opter_no=excluded.opter_no, "
                         "sign_time=excluded.sign_time, valid_until=excluded.valid_until",
                         (sign_no, fixmedins_code, opter_no, sign_time, valid_until))

    def nonce_seen(self, paasid: str, nonce: str) -> bool:
        return db.nonce_seen(self._tx, paasid, nonce)

    def remember_nonce(self, paasid: str, nonce: str) -> None:
        db.remember_nonce(self._tx, paasid, nonce)

    def clock(self, fixmedins_code: str) -> str | None:
        """The latest business time the facility had accepted."""
        row = self._tx.execute("SELECT latest FROM facility_clock WHERE fixmedins_code=?", (fixmedins_code,)).fetchone()
        return None if row is None else str(row["latest"])

    def advance_clock(self, fixmedins_code: str, when: str) -> None:
        """Never backwards, whoever commits first."""
        self._tx.execute("INSERT INTO facility_clock (fixmedins_code, latest) VALUES (?, ?) ON CONFLICT (fixmedins_code) "
                         "DO UPDATE SET latest=excluded.latest WHERE excluded.latest > facility_clock.latest",
                         (fixmedins_code, when))


class Accumulators(Repository):
    """A person's 累计 of an insurance year."""

    def get(self, psn_no: str, year: int, lock: bool = True) -> Acc:
        """`lock`: the transaction may go on to change them (a settlement, an undo)."""
        return db.load_acc(self._tx, psn_no, year, lock=lock)

    def save(self, psn_no: str, year: int, acc: Acc) -> None:
        db.save_acc(self._tx, psn_no, year, acc)

    def add(self, psn_no: str, year: int, delta: Acc) -> None:
        self.save(psn_no, year, self.get(psn_no, year).plus(delta))

    def give_back(self, psn_no: str, year: int, delta: Acc) -> None:
        self.save(psn_no, year, self.get(psn_no, year).minus(delta))


class Settlements(Repository):
    def __init__(self, tx: Tx, visits: "Visits"):
        super().__init__(tx)
        self._visits = visits

    def by_setl_id(self, setl_id: str) -> Any:
        return db.settlement_by(self._tx, "setl_id", setl_id)

    def latest_time(self, psn_no: str) -> str | None:
        """The business time of a person's latest settlement ("YYYY-MM-DD HH:MM:SS"), at any facility."""
        row = self._tx.execute("SELECT MAX(setl_time) FROM settlements WHERE psn_no=?", (psn_no,)).fetchone()
        return row[0] if row else None

    def by_msgid(self, msgid: str) -> Any:
        return db.settlement_by(self._tx, "msgid", msgid)

    def add(self, setl_id: str, msgid: str, infno: str, psn_no: str, fixmedins_code: str, med_type: str, year: int,
            setl_time: str, adjudication: str, reply_to: str | None) -> None:
        self._tx.execute("INSERT INTO settlements (setl_id, msgid, infno, psn_no, fixmedins_code, med_type, year, "
                         "setl_time, state, adjudication, reply_to) VALUES (?,?,?,?,?,?,?,?, 'pending', ?, ?)",
                         (setl_id, msgid, infno, psn_no, fixmedins_code, med_type, year, setl_time, adjudication,
                          reply_to))

    def set_state(self, setl_id: str, state: str, setlinfo: str | None = None) -> None:
        """The one way a settlement's state changes; its visit follows (see the module's docstring)."""
        if setlinfo is None:
            self._tx.execute("UPDATE settlements SET state=? WHERE setl_id=?", (state, setl_id))
        else:
            self._tx.execute("UPDATE settlements SET state=?, setlinfo=? WHERE setl_id=?", (state, setlinfo, setl_id))
        self._visits.follow_settlement(setl_id, state)

    def set_adjudication(self, setl_id: str, adjudication: str) -> None:
        self._tx.execute("UPDATE settlements SET adjudication=? WHERE setl_id=?", (adjudication, setl_id))

    def mark_reversal(self, setl_id: str, rev_msgid: str, rev_reply_to: str | None, rev_time: str) -> None:
        self._tx.execute("UPDATE settlements SET rev_msgid=?, rev_reply_to=?, rev_time=? WHERE setl_id=?",
                         (rev_msgid, rev_reply_to, rev_time, setl_id))

    def mark_cancel(self, setl_id: str, cancel_msgid: str, cancel_reply_to: str | None) -> None:
        self._tx.execute("UPDATE settlements SET cancel_msgid=?, cancel_reply_to=? WHERE setl_id=?",
                         (cancel_msgid, cancel_reply_to, setl_id))

    def settled_on(self, fixmedins_code: str, day: str) -> list[Any]:
        """The facility's standing settlements of a business day (3201): adjudication and setlinfo."""
        return self._tx.execute("SELECT adjudication, setlinfo FROM settlements WHERE fixmedins_code=? AND "
                                "state='settled' AND substr(setl_time, 1, 10)=?", (fixmedins_code, day)).fetchall()

    def audit(self) -> dict[str, Any]:
        return db.audit(self._tx)

    def audit_items(self, after: str, limit: int, regions: set[str]) -> dict[str, Any]:
        return db.audit_items(self._tx, after, limit, regions)


class Awaiting(Repository):
    """Payments and refunds asked of the accounts service and not answered yet."""

    def add(self, req_id: str, setl_id: str, body: bytes) -> None:
        db.awaiting_add(self._tx, req_id, setl_id, body)

    def done(self, req_id: str) -> None:
        db.awaiting_done(self._tx, req_id)

    def due(self, older_than_s: float) -> list[tuple[str, bytes]]:
        return db.awaiting_due(self._tx, older_than_s)


# The visit's state for each state of its settlement (NULL: back to the state before the settlement).
FOLLOW = {"pending": "settling", "settled": "settled", "reversing": "reversed", "reversed": "reversed"}
UNLINK = ("failed", "compensating", "compensated")  # its fee details are free to be settled again


class Visits(Repository):
    """The national visit record (visit_store.py): visits and their fee details."""

    def get(self, mdtrt_id: str) -> Any:
        return self._tx.execute("SELECT * FROM visits WHERE mdtrt_id=?" + for_update(self._tx), (mdtrt_id,)).fetchone()

    def add(self, mdtrt_id: str, msgid: str, psn_no: str, fixmedins_code: str, insuplc_admdvs: str,
            mdtrtarea_admvs: str, insutype: str, med_type: str, kind: str, ipt_otp_no: str, begntime: str, state: str,
            info: str | None, last_time: str) -> None:
        self._tx.execute("INSERT INTO visits (mdtrt_id, msgid, psn_no, fixmedins_code, insuplc_admdvs, mdtrtarea_admvs,"
                         " insutype, med_type, kind, ipt_otp_no, begntime, state, info, last_time) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         (mdtrt_id, msgid, psn_no, fixmedins_code, insuplc_admdvs, mdtrtarea_admvs, insutype,
                          med_type, kind, ipt_otp_no, begntime, state, info, last_time))

    def open_with_number(self, psn_no: str, fixmedins_code: str, ipt_otp_no: str) -> str | None:
        """The mdtrt_id of the person's visit still open at the facility under that 门诊号/住院号, if any."""
        row = self._tx.execute(f"SELECT mdtrt_id FROM visits WHERE state IN ({marks(len(OPEN_STATES))}) AND psn_no=? "
                               "AND fixmedins_code=? AND ipt_otp_no=?",
                               (*OPEN_STATES, psn_no, fixmedins_code, ipt_otp_no)).fetchone()
        return row[0] if row else None

    def touch(self, mdtrt_id: str, when: str) -> None:
        self._tx.execute("UPDATE visits SET last_time=? WHERE mdtrt_id=?", (when, mdtrt_id))

    def cancel(self, mdtrt_id: str, msgid: str, when: str) -> None:
        """2202: the registration and its active details are cancelled."""
        self._tx.execute("UPDATE visit_details SET state='cancelled', cancel_msgid=? WHERE mdtrt_id=? AND "
                         "state='active'", (msgid, mdtrt_id))
        self._tx.execute("UPDATE visits SET state='cancelled', last_time=? WHERE mdtrt_id=?", (when, mdtrt_id))

    def set_info(self, mdtrt_id: str, med_type: str, info: str, when: str) -> None:
        self._tx.execute("UPDATE visits SET med_type=?, info=?, last_time=? WHERE mdtrt_id=?",
                         (med_type, info, when, mdtrt_id))

    def discharge(self, mdtrt_id: str, endtime: str, info: str, when: str) -> None:
        self._tx.execute("UPDATE visits SET state='discharged', endtime=?, info=?, last_time=? WHERE mdtrt_id=?",
                         (endtime, info, when, mdtrt_id))

    def start_settling(self, mdtrt_id: str, setl_id: str, batch: str, when: str) -> None:
        """2207 / 2304 accepted: the visit (and the details settled) are linked to the settlement."""
        self._tx.execute("UPDATE visits SET pre_state=state, state='settling', setl_id=?, last_time=? "
                         "WHERE mdtrt_id=?", (setl_id, when, mdtrt_id))
        where, args = self._active(mdtrt_id, batch)
        self._tx.execute(f"UPDATE visit_details SET setl_id=? WHERE {where}", (setl_id, *args))

    def follow_settlement(self, setl_id: str, state: str) -> None:
        """The visit of a settlement takes the settlement's new state (or goes back to where it was before)."""
        follow = FOLLOW.get(state)
        linked = "setl_id=? AND state IN ('settling', 'settled', 'reversed')"
        if follow is None:
            self._tx.execute(f"UPDATE visits SET state=pre_state WHERE {linked}", (setl_id,))
        else:
            self._tx.execute(f"UPDATE visits SET state=? WHERE {linked}", (follow, setl_id))
        if state in UNLINK:
            self._tx.execute("UPDATE visit_details SET setl_id=NULL WHERE setl_id=?", (setl_id,))

    def expire(self, fixmedins_code: str, region: str, kind: str, before: str) -> int:
        """The sweep: open visits of this kind with no transaction since `before` are closed as abandoned."""
        cur = self._tx.execute(f"UPDATE visits SET state='expired' WHERE fixmedins_code=? AND insuplc_admdvs=? AND "
                               f"kind=? AND state IN ({marks(len(OPEN_STATES))}) AND last_time < ?",
                               (fixmedins_code, region, kind, *OPEN_STATES, before))
        return int(cur.rowcount)

    # ---- fee details ----------------------------------------------------------------------------------
    @staticmethod
    def _active(mdtrt_id: str, batch: str, sn: str | None = None) -> tuple[str, list[Any]]:
        where, args = "mdtrt_id=? AND state='active'", [mdtrt_id]
        if batch:
            where, args = where + " AND chrg_bchno=?", args + [batch]
        if sn is not None:
            where, args = where + " AND feedetl_sn=?", args + [sn]
        return where, args

    def detail(self, mdtrt_id: str, feedetl_sn: str) -> Any:
        return self._tx.execute("SELECT * FROM visit_details WHERE mdtrt_id=? AND feedetl_sn=?",
                                (mdtrt_id, feedetl_sn)).fetchone()

    def add_detail(self, mdtrt_id: str, feedetl_sn: str, batch: str, fee_ocur_time: str, line: str, national: str,
                   split: str, upload_msgid: str) -> None:
        self._tx.execute("INSERT INTO visit_details (mdtrt_id, feedetl_sn, chrg_bchno, state, fee_ocur_time, line, "
                         "national, split, upload_msgid) VALUES (?,?,?, 'active', ?,?,?,?,?)",
                         (mdtrt_id, feedetl_sn, batch, fee_ocur_time, line, national, split, upload_msgid))

    def active_lines(self, mdtrt_id: str, batch: str = "") -> list[Any]:
        """The active details (of one batch, or all with batch ''), in upload order."""
        where, args = self._active(mdtrt_id, batch)
        return self._tx.execute(f"SELECT * FROM visit_details WHERE {where} ORDER BY fee_ocur_time, rowid",
                                args).fetchall()

    def active_sns(self, mdtrt_id: str, batch: str, sn: str | None) -> list[str]:
        where, args = self._active(mdtrt_id, batch, sn)
        return [r["feedetl_sn"] for r in self._tx.execute(f"SELECT feedetl_sn FROM visit_details WHERE {where}",
                                                          args).fetchall()]

    def cancel_lines(self, mdtrt_id: str, batch: str, sn: str | None, msgid: str) -> None:
        where, args = self._active(mdtrt_id, batch, sn)
        self._tx.execute(f"UPDATE visit_details SET state='cancelled', cancel_msgid=? WHERE {where}", [msgid, *args])

    def has_batch(self, mdtrt_id: str, batch: str) -> bool:
        return self._tx.execute("SELECT 1 FROM visit_details WHERE mdtrt_id=? AND chrg_bchno=?",
                                (mdtrt_id, batch)).fetchone() is not None

    def all_details(self, mdtrt_id: str) -> list[Any]:
        return self._tx.execute("SELECT * FROM visit_details WHERE mdtrt_id=? ORDER BY rowid", (mdtrt_id,)).fetchall()


class BureauUnitOfWork(UnitOfWork):
    def __init__(self, tx: Tx):
        super().__init__(tx)
        self.registry = Registry(tx)
        self.accumulators = Accumulators(tx)
        self.visits = Visits(tx)
        self.settlements = Settlements(tx, self.visits)
        self.awaiting = Awaiting(tx)


