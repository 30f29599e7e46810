"""The POS's store: its SQLite schema and every query its handlers need (portable SQL, services/shared/sql.py).

Rows come back as they are stored (readable by column name); the handlers in service.py decide what they
mean. A SELECT of rows the transaction goes on to change takes them `for_update` (row locks on PostgreSQL).
"""
from __future__ import annotations

from typing import Any

from services.shared.sql import Tx, for_update
from services.shared.uow import Repository, UnitOfWork

SCHEMA = """
CREATE TABLE IF NOT EXISTS visits (
    visit_id TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    state TEXT NOT NULL,             -- open | done
    stage TEXT NOT NULL,             -- signin | register | admit | info | upload:N | cancel:N | discharge
                                     -- | presettle | settle | reverse | compensate  (national_flow.plan)
    next_stage TEXT,                 -- after a sign-in: the stage it was needed for
    msgid TEXT NOT NULL,             -- the request we are waiting on
    settle_msgid TEXT,
    request TEXT NOT NULL,           -- that request, to resend as it was
    deadline REAL NOT NULL,
    presettle TEXT,
    outcome TEXT,
    mdtrt_id TEXT,                   -- the bureau's 就诊ID, from the 2201 / 2401 answer
    round_trips INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS visits_msgid ON visits(msgid);
CREATE INDEX IF NOT EXISTS visits_open ON visits(state, deadline);
CREATE TABLE IF NOT EXISTS msgid_seq (prefix TEXT PRIMARY KEY, n INTEGER NOT NULL);
-- one sign-in per facility and business day (a visit of any day finds the sign-in of its own day)
CREATE TABLE IF NOT EXISTS signins (fixmedins_code TEXT NOT NULL, day TEXT NOT NULL, sign_no TEXT NOT NULL,
                                    valid_until TEXT NOT NULL, PRIMARY KEY (fixmedins_code, day));
"""



class Visits(Repository):
    def get(self, visit_id: str) -> Any:
        return self._tx.execute("SELECT * FROM visits WHERE visit_id=?" + for_update(self._tx),
                                (visit_id,)).fetchone()

    def open_by_msgid(self, msgid: str) -> Any:
        """The open visit waiting on this msgid's answer (None: it has moved on)."""
        return self._tx.execute("SELECT * FROM visits WHERE msgid=? AND state='open'" + for_update(self._tx),
                                (msgid,)).fetchone()

    def count_open(self) -> int:
        """For admission control: the POS processes sharing a PostgreSQL database take turns (a transaction
        advisory lock) from here to their commit; otherwise two of them count the same open visits, both admit
        one more, and the bound is passed (READ COMMITTED sees no one else's uncommitted visit). SQLite's file
        lock already serialises them."""
        if self._tx.dialect == "postgres":
            self._tx.execute("SELECT pg_advisory_xact_lock(hashtext('gongji.pos.admission'))")
        return int(self._tx.execute("SELECT COUNT(*) FROM visits WHERE state='open'").fetchone()[0])

    def due(self, now: float, limit: int = 500) -> list[Any]:
        """Open visits past their deadline, taken in visit_id order."""
        return self._tx.execute("SELECT * FROM visits WHERE state='open' AND deadline < ? ORDER BY visit_id LIMIT ?"
                                + for_update(self._tx), (now, limit)).fetchall()

    def add(self, visit_id: str, command: str, stage: str, next_stage: str | None, msgid: str,
            settle_msgid: str | None, request: str, deadline: float, round_trips: int) -> None:
        self._tx.execute("INSERT INTO visits (visit_id, command, state, stage, next_stage, msgid, settle_msgid, "
                         "request, deadline, round_trips) VALUES (?,?, 'open', ?,?,?,?,?,?,?)",
                         (visit_id, command, stage, next_stage, msgid, settle_msgid, request, deadline, round_trips))

    def set_mdtrt_id(self, visit_id: str, mdtrt_id: str) -> None:
        self._tx.execute("UPDATE visits SET mdtrt_id=? WHERE visit_id=?", (mdtrt_id, visit_id))

    def set_presettle(self, visit_id: str, presettle: str) -> None:
        self._tx.execute("UPDATE visits SET presettle=? WHERE visit_id=?", (presettle, visit_id))

    def advance(self, visit_id: str, stage: str, msgid: str, settle_msgid: str | None, request: str,
                deadline: float) -> None:
        """The visit waits on the answer of `stage` now (settle_msgid kept once set)."""
        self._tx.execute("UPDATE visits SET stage=?, next_stage=NULL, msgid=?, settle_msgid=COALESCE(?, settle_msgid), "
                         "request=?, deadline=?, round_trips=round_trips+1 WHERE visit_id=?",
                         (stage, msgid, settle_msgid, request, deadline, visit_id))

    def compensate(self, visit_id: str, msgid: str, request: str, deadline: float) -> None:
        self._tx.execute("UPDATE visits SET stage='compensate', msgid=?, request=?, deadline=?, "
                         "round_trips=round_trips+1 WHERE visit_id=?", (msgid, request, deadline, visit_id))

    def set_deadline(self, visit_id: str, deadline: float) -> None:
        self._tx.execute("UPDATE visits SET deadline=? WHERE visit_id=?", (deadline, visit_id))

    def finish(self, visit_id: str, outcome: str) -> None:
        self._tx.execute("UPDATE visits SET state='done', outcome=? WHERE visit_id=?", (outcome, visit_id))


class SignIns(Repository):
    """One sign-in (9001) per facility and business day."""

    def get(self, fixmedins_code: str, day: str) -> Any:
        return self._tx.execute("SELECT sign_no, valid_until FROM signins WHERE fixmedins_code=? AND day=?",
                                (fixmedins_code, day)).fetchone()

    def put(self, fixmedins_code: str, day: str, sign_no: str, valid_until: str) -> None:
        self._tx.execute("INSERT INTO signins (fixmedins_code, day, sign_no, valid_until) VALUES (?,?,?,?) "
                         "ON CONFLICT (fixmedins_code, day) DO UPDATE SET sign_no=excluded.sign_no, "
                         "valid_until=excluded.valid_until", (fixmedins_code, day, sign_no, valid_until))


LANES = 10  # PostgreSQL: POS processes sharing a database count msgids in lanes of their own (claim_lane)


class MsgidSequence(Repository):
    def next(self, prefix: str, lane: int | None = None) -> int:
        """The next sequence number under `prefix` (0 first), taken in one statement: two replicas sharing the
        database never get the same one. With a `lane`, the count is that lane's own (a row `prefix/lane`),
        so replicas in different lanes never wait for each other's counter rows."""
        key = prefix if lane is None else f"{prefix}/{lane}"
        return int(self._tx.execute("INSERT INTO msgid_seq (prefix, n) VALUES (?, 0) ON CONFLICT (prefix) DO UPDATE "
                                    "SET n = msgid_seq.n + 1 RETURNING n", (key,)).fetchone()[0])


def claim_lane(tx: Tx) -> int | None:
    """PostgreSQL: the first msgid lane no other POS process of this database holds (a session advisory lock,
    gone with the connection), 0 for the first process, so that a lone POS numbers as before. A POS group
    commit holds its counter rows to the end of the transaction; two replicas incrementing the same rows in
    different orders deadlocked (one second each to detect). If every lane is taken, or the connection is
    re-made later, two processes may share a lane: they then wait for each other again, never collide.
    SQLite: None (one file lock serialises everything)."""
    if tx.dialect != "postgres":
        return None
    for lane in range(LANES):
        if tx.execute("SELECT pg_try_advisory_lock(hashtext('gongji.pos.msgid_lane'), ?)", (lane,)).fetchone()[0]:
            return lane
    return None


class PosUnitOfWork(UnitOfWork):
    def __init__(self, tx: Tx):
        super().__init__(tx)
        self.visits = Visits(tx)
        self.signins = SignIns(tx)
        self.msgids = MsgidSequence(tx)
