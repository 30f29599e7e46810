"""The bureau's PostgreSQL schema: the SQLite DDL of services/bureau/store.py and visit_store.py,
translated (BIGINT fen, DOUBLE PRECISION, BYTEA, identity columns), with the same CHECK constraints as
the last line of defence.
The SQLite trigger visit_follows_settlement is not here: the repositories move a visit with its settlement.
visit_details has SQLite's implicit `rowid` as an identity column (the repositories order fee lines by it).

Versions are applied in order at start (services/shared/pg_store.apply_migrations); never edit a released
version, append a new one.
"""
from __future__ import annotations

from services.shared.pg_schema import BASE_V1

V1 = """
CREATE TABLE facilities (
    code TEXT PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL, hosp_lv TEXT NOT NULL, admdvs TEXT NOT NULL
);
CREATE TABLE persons (
    psn_no TEXT PRIMARY KEY, name TEXT NOT NULL, insutype TEXT NOT NULL, psn_type TEXT NOT NULL,
    insuplc_admdvs TEXT NOT NULL,
    resident_group TEXT,                      -- 居民医保 row: child / adult / elderly (NULL: from psn_type)
    low_income BIGINT NOT NULL DEFAULT 0     -- 特困/低保: 医疗救助 pays where the region runs it
);
CREATE TABLE accumulators (
    psn_no TEXT NOT NULL, year BIGINT NOT NULL,
    outpatient_dedc BIGINT NOT NULL CHECK (outpatient_dedc >= 0),
    inpatient_dedc BIGINT NOT NULL CHECK (inpatient_dedc >= 0),
    inpatient_stays BIGINT NOT NULL CHECK (inpatient_stays >= 0),
    hifp_pay BIGINT NOT NULL CHECK (hifp_pay >= 0),
    outpatient_hifp_pay BIGINT NOT NULL CHECK (outpatient_hifp_pay >= 0),
    settlements BIGINT NOT NULL CHECK (settlements >= 0),
    large_amount_pay BIGINT NOT NULL DEFAULT 0 CHECK (large_amount_pay >= 0),
    crit_burden BIGINT NOT NULL DEFAULT 0 CHECK (crit_burden >= 0),
    crit_pay BIGINT NOT NULL DEFAULT 0 CHECK (crit_pay >= 0),
    assist_pay BIGINT NOT NULL DEFAULT 0 CHECK (assist_pay >= 0),
    PRIMARY KEY (psn_no, year)
);
-- state: pending → settled → reversing → reversed
--        pending/settled → compensating → compensated   (2601 冲正)
--        pending → failed                               (the accounts refused to pay)
CREATE TABLE settlements (
    setl_id TEXT PRIMARY KEY,
    msgid TEXT NOT NULL UNIQUE,
    infno TEXT NOT NULL,
    psn_no TEXT NOT NULL,
    fixmedins_code TEXT NOT NULL,
    med_type TEXT NOT NULL,
    year BIGINT NOT NULL,
    setl_time TEXT NOT NULL,
    state TEXT NOT NULL,
    adjudication TEXT NOT NULL,
    reply_to TEXT,
    setlinfo TEXT,
    rev_msgid TEXT, rev_reply_to TEXT, rev_time TEXT,
    cancel_msgid TEXT, cancel_reply_to TEXT
);
CREATE INDEX settlements_psn ON settlements(psn_no);
CREATE TABLE awaiting (  -- payments and refunds asked of the accounts service, not yet answered
    req_id TEXT PRIMARY KEY, setl_id TEXT NOT NULL, body BYTEA NOT NULL, asked_at DOUBLE PRECISION NOT NULL,
    asks BIGINT NOT NULL
);
CREATE INDEX awaiting_asked ON awaiting(asked_at);
CREATE TABLE facility_clock (  -- the latest business time each facility had accepted
    fixmedins_code TEXT PRIMARY KEY, latest TEXT NOT NULL
);
CREATE TABLE signin_nonces (  -- x-tif-nonce of accepted 9001s (replays refused)
    paasid TEXT NOT NULL, nonce TEXT NOT NULL, seen_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (paasid, nonce)
);
CREATE INDEX signin_nonces_seen ON signin_nonces(seen_at);
CREATE TABLE signins (
    sign_no TEXT PRIMARY KEY, fixmedins_code TEXT NOT NULL, opter_no TEXT NOT NULL,
    sign_time TEXT NOT NULL, valid_until TEXT NOT NULL
);

-- state: registered (2201) | admitted (2401) → discharged (2402)
--        → settling (2207/2304 accepted, payment under way) → settled → reversed (2208/2305)
--        settling → back to the state before (payment failed, or 2601 冲正)
--        registered/admitted/discharged → cancelled (2202) | expired (the sweep: left open too long)
CREATE TABLE visits (
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
CREATE INDEX visits_open ON visits(state, last_time);
CREATE INDEX visits_setl ON visits(setl_id);
CREATE TABLE visit_details (
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
    rowid BIGINT GENERATED ALWAYS AS IDENTITY,  -- SQLite's implicit rowid: lines in the order they came
    PRIMARY KEY (mdtrt_id, feedetl_sn)
);
"""

MIGRATIONS = [BASE_V1 + V1]
