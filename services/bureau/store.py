"""The bureau's SQLite schema and small queries."""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict
from decimal import Decimal

from contracts import credentials
from contracts.money import to_fen
from services.shared.sql import Tx, for_update
from services.shared.store import transaction

from .domain import Accumulators
from .visit_store import VISIT_SCHEMA
from .visit_store import summary as visit_summary

SCHEMA = """
CREATE TABLE IF NOT EXISTS facilities (
    code TEXT PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL, hosp_lv TEXT NOT NULL, admdvs TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS persons (
    psn_no TEXT PRIMARY KEY, name TEXT NOT NULL, insutype TEXT NOT NULL, psn_type TEXT NOT NULL,
    insuplc_admdvs TEXT NOT NULL,
    resident_group TEXT,                      -- 居民医保 row: child / adult / elderly (NULL: from psn_type)
    low_income INTEGER NOT NULL DEFAULT 0     -- 特困/低保: 医疗救助 pays where the region runs it
);
CREATE TABLE IF NOT EXISTS accumulators (
    psn_no TEXT NOT NULL, year INTEGER NOT NULL,
    outpatient_dedc INTEGER NOT NULL CHECK (outpatient_dedc >= 0),
    inpatient_dedc INTEGER NOT NULL CHECK (inpatient_dedc >= 0),
    inpatient_stays INTEGER NOT NULL CHECK (inpatient_stays >= 0),
    hifp_pay INTEGER NOT NULL CHECK (hifp_pay >= 0),
    outpatient_hifp_pay INTEGER NOT NULL CHECK (outpatient_hifp_pay >= 0),
    settlements INTEGER NOT NULL CHECK (settlements >= 0),
    large_amount_pay INTEGER NOT NULL DEFAULT 0 CHECK (large_amount_pay >= 0),
    crit_burden INTEGER NOT NULL DEFAULT 0 CHECK (crit_burden >= 0),
    crit_pay INTEGER NOT NULL DEFAULT 0 CHECK (crit_pay >= 0),
    assist_pay INTEGER NOT NULL DEFAULT 0 CHECK (assist_pay >= 0),
    PRIMARY KEY (psn_no, year)
);
-- state: pending → settled → reversing → reversed
--        pending/settled → compensating → compensated   (2601 冲正)
--        pending → failed                               (the accounts refused to pay)
CREATE TABLE IF NOT EXISTS settlements (
    setl_id TEXT PRIMARY KEY,
    msgid TEXT NOT NULL UNIQUE,
    infno TEXT NOT NULL,
    psn_no TEXT NOT NULL,
    fixmedins_code TEXT NOT NULL,
    med_type TEXT NOT NULL,
    year INTEGER NOT NULL,
    setl_time TEXT NOT NULL,
    state TEXT NOT NULL,
    adjudication TEXT NOT NULL,
    reply_to TEXT,
    setlinfo TEXT,
    rev_msgid TEXT, rev_reply_to TEXT, rev_time TEXT,
    cancel_msgid TEXT, cancel_reply_to TEXT
);
CREATE INDEX IF NOT EXISTS settlements_psn ON settlements(psn_no);
CREATE TABLE IF NOT EXISTS awaiting (  -- payments and refunds asked of the accounts service, not yet answered
    req_id TEXT PRIMARY KEY, setl_id TEXT NOT NULL, body BLOB NOT NULL, asked_at REAL NOT NULL, asks INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS awaiting_asked ON awaiting(asked_at);
CREATE TABLE IF NOT EXISTS facility_clock (  -- the latest business time each facility had accepted
    fixmedins_code TEXT PRIMARY KEY, latest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS signin_nonces (  -- x-tif-nonce of accepted 9001s (replays refused)
    paasid TEXT NOT NULL, nonce TEXT NOT NULL, seen_at REAL NOT NULL, PRIMARY KEY (paasid, nonce)
);
CREATE INDEX IF NOT EXISTS signin_nonces_seen ON signin_nonces(seen_at);
CREATE TABLE IF NOT EXISTS signins (
    sign_no TEXT PRIMARY KEY, fixmedins_code TEXT NOT NULL, opter_no TEXT NOT NULL,
    sign_time TEXT NOT NULL, valid_until TEXT NOT NULL
);
""" + VISIT_SCHEMA


ACC_COLUMNS = ("outpatient_dedc", "inpatient_dedc", "inpatient_stays", "hifp_pay", "outpatient_hifp_pay",
               "settlements", "large_amount_pay", "crit_burden", "crit_pay", "assist_pay")  # Accumulators' order


# Columns added after the first release (issue 10): a data directory of an older gongji gets them on start.
ADDED_COLUMNS = {"accumulators": [(c, "INTEGER NOT NULL DEFAULT 0") for c in ACC_COLUMNS[6:]],
                 "persons": [("resident_group", "TEXT"), ("low_income", "INTEGER NOT NULL DEFAULT 0")]}


def migrate(conn: sqlite3.Connection) -> None:
    """Add the missing columns, once, under the write lock (replicas may start together). SQLite data
    directories only: another backend versions its schema itself."""
    with transaction(conn):
        for table, columns in ADDED_COLUMNS.items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        # A visit follows its settlement in repository code now (repository.Settlements.set_state).
        conn.execute("DROP TRIGGER IF EXISTS visit_follows_settlement")


def load_acc(conn: Tx, psn_no: str, year: int, lock: bool = False) -> Accumulators:
    query = (f"SELECT {', '.join(ACC_COLUMNS)} FROM accumulators WHERE psn_no=? AND year=?"
             + (for_update(conn) if lock else ""))
    row = conn.execute(query, (psn_no, year)).fetchone()
    if row is None and lock and conn.dialect == "postgres":
        # A person's first settlement of the year finds no row to lock: two replicas settling for that person
        # at once would both start from zero and the later write would undo the earlier (each taking the whole
        # deductible). So the row is made, and locked; a concurrent insert waits for ours and then finds it.
        conn.execute(f"INSERT INTO accumulators (psn_no, year, {', '.join(ACC_COLUMNS)}) "
                     f"VALUES (?,?,{','.join('0' * len(ACC_COLUMNS))}) ON CONFLICT (psn_no, year) DO NOTHING",
                     (psn_no, year))
        row = conn.execute(query, (psn_no, year)).fetchone()
    return Accumulators(*row) if row else Accumulators()


def save_acc(conn: Tx, psn_no: str, year: int, acc: Accumulators) -> None:
    conn.execute(f"INSERT INTO accumulators (psn_no, year, {', '.join(ACC_COLUMNS)}) "
                 f"VALUES (?,?,{','.join('?' * len(ACC_COLUMNS))}) ON CONFLICT (psn_no, year) DO UPDATE SET "
                 + ", ".join(f"{c}=excluded.{c}" for c in ACC_COLUMNS), (psn_no, year, *acc.as_tuple()))


def settlement_by(conn: Tx, column: str, value: str) -> sqlite3.Row | None:
    """Locked: the transaction may go on to move it."""
    assert column in ("setl_id", "msgid")
    return conn.execute(f"SELECT * FROM settlements WHERE {column}=?" + for_update(conn), (value,)).fetchone()


def delta_of(row: sqlite3.Row) -> Accumulators:
    return Accumulators(**json.loads(row["adjudication"])["delta"])


def delta_json(acc: Accumulators) -> dict[str, int]:
    return asdict(acc)


def audit(conn: Tx) -> dict:
    """Accumulators equal the sum of the settlements that still count; daily totals per facility (3201).

    Both sides are read by one statement: under PostgreSQL's READ COMMITTED each statement has its own snapshot,
    and a settlement another replica commits between two SELECTs would show as a mismatch that is not there."""
    counted: dict[tuple[str, int], Accumulators] = {}
    stored: dict[tuple[str, int], Accumulators] = {}
    zeros = ", ".join(f"0 AS {c}" for c in ACC_COLUMNS)
    for row in conn.execute(f"SELECT 's' AS kind, psn_no, year, adjudication, {zeros} FROM settlements "
                            f"WHERE state IN ('pending', 'settled') UNION ALL "
                            f"SELECT 'a', psn_no, year, NULL, {', '.join(ACC_COLUMNS)} FROM accumulators"):
        key = (row["psn_no"], int(row["year"]))
        if row["kind"] == "s":
            counted[key] = counted.get(key, Accumulators()).plus(delta_of(row))
        else:
            stored[key] = Accumulators(*[int(row[c]) for c in ACC_COLUMNS])
    mismatches = []
    for key, acc in stored.items():
        if acc != counted.pop(key, Accumulators()):
            mismatches.append({"psn_no": key[0], "year": key[1]})
    mismatches += [{"psn_no": k[0], "year": k[1], "missing": True} for k in counted]
    daily = {}
    for row in conn.execute("SELECT fixmedins_code, substr(setl_time, 1, 10) AS day, setlinfo FROM settlements "
                            "WHERE state = 'settled'"):
        info = json.loads(row["setlinfo"])
        d = daily.setdefault(f"{row['fixmedins_code']}/{row['day']}", {"count": 0, "medfee_fen": 0, "hifp_fen": 0,
                                                                         "acct_fen": 0, "cash_fen": 0})
        d["count"] += 1
        for k, f in (("medfee_fen", "medfee_sumamt"), ("hifp_fen", "hifp_pay"), ("acct_fen", "acct_pay"),
                     ("cash_fen", "psn_cash_pay")):
            d[k] += to_fen(Decimal(info[f]))
    states = {r[0]: r[1] for r in conn.execute("SELECT state, COUNT(*) FROM settlements GROUP BY state")}
    totals = conn.execute("SELECT COALESCE(SUM(outpatient_dedc),0), COALESCE(SUM(inpatient_dedc),0), "
                          "COALESCE(SUM(inpatient_stays),0), COALESCE(SUM(hifp_pay),0), COALESCE(SUM(settlements),0) "
                          "FROM accumulators").fetchone()
    return {"accumulator_mismatches": mismatches, "states": states, "daily_totals": daily,
            "accumulator_totals": list(totals),
            "persons": conn.execute("SELECT COUNT(*) FROM persons").fetchone()[0],
            "visits": visit_summary(conn)}


def audit_items(conn: Tx, after: str, limit: int, regions: set[str]) -> dict:
    """G199 scope=items: each settlement by setl_id with what it says was taken from the accounts (3202)."""
    items: dict[str, dict] = {}
    last = None
    for row in conn.execute("SELECT setl_id, state, adjudication, setlinfo FROM settlements WHERE setl_id > ? "
                            "ORDER BY setl_id LIMIT ?", (after, limit)):
        last = row["setl_id"]
        adj = json.loads(row["adjudication"])
        if regions and adj.get("insuplc_admdvs") not in regions:
            continue
        item: dict = {"state": row["state"]}
        if row["setlinfo"]:
            info = json.loads(row["setlinfo"])
            part, cash = to_fen(Decimal(info["psn_part_amt"])), to_fen(Decimal(info["psn_cash_pay"]))
            item.update(medfee_fen=to_fen(Decimal(info["medfee_sumamt"])), taken_fen=part - cash, cash_fen=cash)
        items[row["setl_id"]] = item
    more = last is not None and conn.execute("SELECT 1 FROM settlements WHERE setl_id > ? LIMIT 1",
                                             (last,)).fetchone() is not None
    return {"items": items, "next": last if more else None}


def nonce_seen(conn: Tx, paasid: str, nonce: str) -> bool:
    return conn.execute("SELECT 1 FROM signin_nonces WHERE paasid=? AND nonce=?", (paasid, nonce)).fetchone() \
        is not None


def remember_nonce(conn: Tx, paasid: str, nonce: str) -> None:
    """Kept twice as long as a signature is valid (older signatures are refused by their timestamp anyway)."""
    now = time.time()
    conn.execute("DELETE FROM signin_nonces WHERE seen_at < ?", (now - 2 * credentials.MAX_SKEW_S,))
    conn.execute("INSERT INTO signin_nonces (paasid, nonce, seen_at) VALUES (?,?,?) ON CONFLICT (paasid, nonce) "
                 "DO NOTHING", (paasid, nonce, now))


def awaiting_add(conn: Tx, req_id: str, setl_id: str, body: bytes) -> None:
    conn.execute("INSERT INTO awaiting (req_id, setl_id, body, asked_at, asks) VALUES (?,?,?,?,1) ON CONFLICT (req_id) "
                 "DO UPDATE SET setl_id=excluded.setl_id, body=excluded.body, asked_at=excluded.asked_at, asks=1",
                 (req_id, setl_id, body, time.time()))


def awaiting_done(conn: Tx, req_id: str) -> None:
    conn.execute("DELETE FROM awaiting WHERE req_id=?", (req_id,))


def awaiting_due(conn: Tx, older_than_s: float, limit: int = 500) -> list[tuple[str, bytes]]:
    """Requests asked longer ago than `older_than_s`; each is marked as asked again now."""
    now = time.time()
    rows = conn.execute("SELECT req_id, body FROM awaiting WHERE asked_at < ? ORDER BY asked_at, req_id LIMIT ?"
                        + for_update(conn), (now - older_than_s, limit)).fetchall()
    for r in rows:
        conn.execute("UPDATE awaiting SET asked_at=?, asks=asks+1 WHERE req_id=?", (now, r["req_id"]))
    return [(r["req_id"], bytes(r["body"])) for r in rows]
