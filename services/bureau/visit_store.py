"""The bureau's record of visits (就诊): registration or admission, uploaded fee details, discharge, and the
link to the settlement. A visit keeps in step with its settlement whatever path moves the settlement (payment
answer, failure, 2208/2305 reversal, 2601 冲正): repository.Settlements.set_state is the one place that moves
both."""
from __future__ import annotations

import sqlite3
from typing import Any

VISIT_SCHEMA = """
-- state: registered (2201) | admitted (2401) → discharged (2402)
--        → settling (2207/2304 accepted, payment under way) → settled → reversed (2208/2305)
--        settling → back to the state before (payment failed, or 2601 冲正)
--        registered/admitted/discharged → cancelled (2202) | expired (the sweep: left open too long)
CREATE TABLE IF NOT EXISTS visits (
    mdtrt_id TEXT PRIMARY KEY,
    msgid TEXT NOT NULL UNIQUE,
    psn_no TEXT NOT NULL,
    fixmedins_code TEXT NOT NULL,
    insuplc_admdvs TEXT NOT NULL,
    mdtrtarea_admvs TEXT NOT NULL,
    insutype TEXT NOT NULL,
    med_type TEXT NOT NULL,
    kind TEXT NOT NULL,              -- outpatient | inpatient
    ipt_otp_no TEXT NOT NULL,
    begntime TEXT NOT NULL,
    endtime TEXT,
    state TEXT NOT NULL,
    pre_state TEXT,
    setl_id TEXT,
    info TEXT,                       -- 2203 / 2401 / 2402 information as sent (diagnoses, 病种)
    last_time TEXT NOT NULL          -- business time of the last transaction on the visit
);
CREATE INDEX IF NOT EXISTS visits_open ON visits(state, last_time);
CREATE INDEX IF NOT EXISTS visits_setl ON visits(setl_id);
CREATE TABLE IF NOT EXISTS visit_details (
    mdtrt_id TEXT NOT NULL,
    feedetl_sn TEXT NOT NULL,
    chrg_bchno TEXT NOT NULL,
    state TEXT NOT NULL,             -- active | cancelled
    fee_ocur_time TEXT NOT NULL,
    line TEXT NOT NULL,              -- the internal FeeDetail (JSON) the settlement adjudicates
    national TEXT NOT NULL,          -- the line as uploaded (JSON, numbers as sent)
    split TEXT NOT NULL,             -- the per-line answer of the upload
    upload_msgid TEXT NOT NULL,
    cancel_msgid TEXT,
    setl_id TEXT,
    PRIMARY KEY (mdtrt_id, feedetl_sn)
);
"""

OPEN_STATES = ("registered", "admitted", "discharged")
# A visit with no transaction for this long (business time) before the end of the day a 3201 reconciles is
# closed by the sweep as abandoned: an outpatient visit not finished on its day, a stay untouched for 180 days.
SWEEP_AFTER_DAYS = {"outpatient": 1, "inpatient": 180}


def summary(conn: sqlite3.Connection) -> dict[str, Any]:
    """For G199 and the auditor: visits by state, and the open ones (mdtrt_id, facility, last activity)."""
    states = {r[0]: r[1] for r in conn.execute("SELECT state, COUNT(*) FROM visits GROUP BY state")}
    open_rows = conn.execute(f"SELECT mdtrt_id, fixmedins_code, psn_no, state, last_time FROM visits WHERE state IN "
                             f"({','.join('?' * len(OPEN_STATES))}, 'settling') ORDER BY last_time LIMIT 1000",
                             OPEN_STATES).fetchall()
    details = {r[0]: r[1] for r in conn.execute("SELECT state, COUNT(*) FROM visit_details GROUP BY state")}
    return {"states": states, "details": details, "open": [dict(r) for r in open_rows]}
