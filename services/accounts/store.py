"""The accounts service's SQLite schema and small helpers (called inside a transaction).

Ledger accounts:
    psn:<psn_no>     当年账户, the current-year personal account (the only pocket where a region does not split)
    psnp:<psn_no>    历年账户, the prior-year personal account (Shanghai shares only this one)
    wallet:<psn_no>  医保钱包, money a relative in another province transferred
    transit:wallet   transfers sent but not yet claimed
    ext:contribution, ext:resident_contribution, fixmedins:<code>   the outside world
Every transaction's postings sum to zero, and every pocket equals the sum of its postings (audit()).
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from contracts.errors import ErrorCode, GongjiError
from contracts.money import MAX_FEN, from_fen
from services.shared.sql import Tx, for_update, marks

SCHEMA = """
CREATE TABLE IF NOT EXISTS people (
    psn_no TEXT PRIMARY KEY,
    insuplc_admdvs TEXT NOT NULL,
    insutype TEXT NOT NULL,
    evoucher_active INTEGER NOT NULL DEFAULT 1,
    wallet_fen INTEGER NOT NULL DEFAULT 0 CHECK (wallet_fen >= 0)
);
CREATE TABLE IF NOT EXISTS accounts (
    psn_no TEXT PRIMARY KEY REFERENCES people(psn_no),
    insuplc_admdvs TEXT NOT NULL,
    insutype TEXT NOT NULL,
    balance_fen INTEGER NOT NULL CHECK (balance_fen >= 0),
    prior_fen INTEGER NOT NULL DEFAULT 0 CHECK (prior_fen >= 0),
    pocket_year INTEGER,
    status TEXT NOT NULL DEFAULT 'normal',
    sharing_frozen INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    txn_id TEXT NOT NULL,
    account TEXT NOT NULL,
    amount_fen INTEGER NOT NULL,
    kind TEXT NOT NULL,
    biz_time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_account ON ledger(account);
CREATE INDEX IF NOT EXISTS ledger_txn ON ledger(txn_id);
CREATE TABLE IF NOT EXISTS bindings (
    auth_id TEXT PRIMARY KEY,
    authorizer_psn_no TEXT NOT NULL REFERENCES accounts(psn_no),
    member_psn_no TEXT NOT NULL REFERENCES people(psn_no),
    relation TEXT NOT NULL,
    rank INTEGER NOT NULL,
    day_cap_fen INTEGER,
    month_cap_fen INTEGER,
    year_cap_fen INTEGER,
    status TEXT NOT NULL DEFAULT 'active',   -- active | unbound
    frozen INTEGER NOT NULL DEFAULT 0,
    created_time TEXT NOT NULL,
    ended_time TEXT
);
CREATE INDEX IF NOT EXISTS bindings_member ON bindings(member_psn_no, status);
CREATE INDEX IF NOT EXISTS bindings_authorizer ON bindings(authorizer_psn_no, status);
CREATE TABLE IF NOT EXISTS binding_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    authorizer_psn_no TEXT NOT NULL,
    auth_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    year INTEGER NOT NULL,
    biz_time TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS verify_codes (
    psn_no TEXT NOT NULL,
    code TEXT NOT NULL,
    expires_time TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (psn_no, code)
);
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id TEXT PRIMARY KEY,
    from_psn_no TEXT NOT NULL,
    to_psn_no TEXT NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
    postings TEXT NOT NULL,
    state TEXT NOT NULL,                    -- sent | claimed | returned
    day TEXT NOT NULL,
    created_time TEXT NOT NULL,
    expires_time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_pending ON transfers(state, expires_time);
CREATE TABLE IF NOT EXISTS proxies (
    proxy_psn_no TEXT NOT NULL,
    member_psn_no TEXT NOT NULL,
    relation TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    PRIMARY KEY (proxy_psn_no, member_psn_no)
);
CREATE TABLE IF NOT EXISTS usage (
    key TEXT PRIMARY KEY,
    used_fen INTEGER NOT NULL CHECK (used_fen >= 0),
    cap_fen INTEGER          -- the cap in force when it was last raised
);
CREATE TABLE IF NOT EXISTS payments (
    setl_id TEXT PRIMARY KEY,
    psn_no TEXT NOT NULL,
    fixmedins_code TEXT NOT NULL,
    biz_time TEXT NOT NULL,
    year INTEGER NOT NULL,
    medfee_fen INTEGER NOT NULL,
    psn_part_fen INTEGER NOT NULL,
    own_fen INTEGER NOT NULL,
    mulaid TEXT NOT NULL,
    wallet_fen INTEGER NOT NULL,
    cash_fen INTEGER NOT NULL,
    usage TEXT NOT NULL,
    postings TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_psn ON payments(psn_no, year);
"""

# ledger prefix → (table, key column, balance column)
POCKETS = {"psn": ("accounts", "balance_fen"), "psnp": ("accounts", "prior_fen"), "wallet": ("people", "wallet_fen")}


def get_person(conn: Tx, psn_no: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM people WHERE psn_no=?", (psn_no,)).fetchone()


def get_account(conn: Tx, psn_no: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM accounts WHERE psn_no=?", (psn_no,)).fetchone()


def lock_people(conn: Tx, psn_nos: list[str]) -> None:
    """Row locks on these people's accounts and wallets, taken in psn_no order (PostgreSQL; on SQLite the
    transaction already holds the file's write lock): every transaction that moves money takes them the same
    way, so two of them wait for each other instead of deadlocking."""
    if not for_update(conn) or not psn_nos:
        return
    keys = sorted(set(psn_nos))
    conn.execute(f"SELECT psn_no FROM people WHERE psn_no IN ({marks(len(keys))}) ORDER BY psn_no"
                 + for_update(conn), keys).fetchall()
    conn.execute(f"SELECT psn_no FROM accounts WHERE psn_no IN ({marks(len(keys))}) ORDER BY psn_no"
                 + for_update(conn), keys).fetchall()


def balance(conn: Tx, psn_no: str) -> int:
    """The personal account balance (当年 + 历年), as `balc` reports it."""
    row = get_account(conn, psn_no)
    return int(row["balance_fen"] + row["prior_fen"]) if row else 0


def wallet(conn: Tx, psn_no: str) -> int:
    row = get_person(conn, psn_no)
    return int(row["wallet_fen"]) if row else 0


def post(conn: Tx, txn_id: str, kind: str, biz_time: str, postings: list[tuple[str, int]]) -> None:
    """One balanced transaction. Pockets move with their postings; CHECK constraints keep them >= 0."""
    if sum(amount for _, amount in postings) != 0:
        raise AssertionError(f"unbalanced postings for {txn_id}: {postings}")
    lock_people(conn, [a.partition(":")[2] for a, x in postings if x and a.partition(":")[0] in POCKETS])
    for account, amount in postings:
        if amount == 0:
            continue
        conn.execute("INSERT INTO ledger (txn_id, account, amount_fen, kind, biz_time) VALUES (?,?,?,?,?)",
                     (txn_id, account, amount, kind, biz_time))
        prefix, _, psn_no = account.partition(":")
        if prefix in POCKETS:
            table, column = POCKETS[prefix]
            cur = conn.execute(f"UPDATE {table} SET {column} = {column} + ? WHERE psn_no=?", (amount, psn_no))
            if cur.rowcount != 1:
                raise AssertionError(f"posting to unknown pocket {account}")
            if amount > 0:
                _within_wire(conn, prefix, psn_no)


def _within_wire(conn: Tx, prefix: str, psn_no: str) -> None:
    """A credit may not take a balance beyond what the wire can carry (balc = 当年 + 历年; the wallet): refused
    here, in the transaction, so the caller's savepoint undoes it and nothing moves."""
    if prefix == "wallet":
        value = conn.execute("SELECT wallet_fen FROM people WHERE psn_no=?", (psn_no,)).fetchone()[0]
    else:
        value = balance(conn, psn_no)
    if value > MAX_FEN:
        raise GongjiError(ErrorCode.AMOUNT_TOO_LARGE,
                          f"the {'wallet' if prefix == 'wallet' else 'account'} of {psn_no} would hold "
                          f"{from_fen(value)}, beyond the largest amount the wire carries ({from_fen(MAX_FEN)})")


def person_deltas(postings: list[tuple[str, int]]) -> dict[str, tuple[int, int]]:
    """psn_no → (account delta, wallet delta) of a set of postings."""
    out: dict[str, tuple[int, int]] = {}
    for account, amount in postings:
        prefix, _, psn_no = account.partition(":")
        if prefix in ("psn", "psnp", "wallet"):
            acct, wal = out.get(psn_no, (0, 0))
            out[psn_no] = (acct + amount, wal) if prefix != "wallet" else (acct, wal + amount)
    return out


def active_bindings(conn: Tx, member: str) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM bindings WHERE member_psn_no=? AND status='active' ORDER BY rank, auth_id",
                        (member,)).fetchall()


def usage_of(conn: Tx, key: str) -> int:
    """Locked: a payment goes on to raise it (a window not used yet has no row: the locks on the accounts
    serialise its first use, see lock_people)."""
    row = conn.execute("SELECT used_fen FROM usage WHERE key=?" + for_update(conn), (key,)).fetchone()
    return int(row[0]) if row else 0


def add_usage(conn: Tx, usage: list[tuple[str, int]] | tuple[tuple[str, int], ...], sign: int,
              caps: dict[str, int] | None = None) -> None:
    for key, amount in usage:
        if sign > 0:
            cap = (caps or {}).get(key)
            conn.execute("INSERT INTO usage (key, used_fen, cap_fen) VALUES (?, ?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET used_fen = usage.used_fen + excluded.used_fen, "
                         "cap_fen = excluded.cap_fen", (key, amount, cap))
        else:  # a release never goes below zero: the CHECK constraint refuses it
            cur = conn.execute("UPDATE usage SET used_fen = used_fen - ? WHERE key=?", (amount, key))
            if cur.rowcount != 1:
                raise AssertionError(f"releasing usage {key} that was never recorded")


def load_payment(conn: Tx, setl_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM payments WHERE setl_id=?" + for_update(conn), (setl_id,)).fetchone()
    if row is None:
        return None
    return {**dict(row), "mulaid": json.loads(row["mulaid"]), "usage": [tuple(u) for u in json.loads(row["usage"])],
            "postings": [tuple(p) for p in json.loads(row["postings"])]}


def audit(conn: Tx) -> dict[str, Any]:
    """Consistency figures: the ledger sums to zero, each pocket equals its ledger, nothing negative,
    no usage window above the cap in force when it was raised."""
    ledger_sum = conn.execute("SELECT COALESCE(SUM(amount_fen),0) FROM ledger").fetchone()[0]
    unbalanced = conn.execute("SELECT COUNT(*) FROM (SELECT txn_id FROM ledger GROUP BY txn_id "
                              "HAVING SUM(amount_fen) != 0) AS t").fetchone()[0]
    # The pockets and their ledger sums (and the money in transit and the transfers sent) are read by one
    # statement: under PostgreSQL's READ COMMITTED each statement has its own snapshot, and a payment another
    # replica commits between two SELECTs would show as a mismatch that is not there.
    sums: dict[str, int] = {}
    pockets: list[tuple[str, str, int]] = []
    sent = 0
    for kind, key, a, b in conn.execute(
            "SELECT 'l' AS kind, account AS k, SUM(amount_fen) AS a, 0 AS b FROM ledger "
            "WHERE account LIKE 'psn%' OR account LIKE 'wallet:%' OR account = 'transit:wallet' GROUP BY account "
            "UNION ALL SELECT 'a', psn_no, balance_fen, prior_fen FROM accounts "
            "UNION ALL SELECT 'w', psn_no, wallet_fen, 0 FROM people "
            "UNION ALL SELECT 't', 'sent', COALESCE(SUM(amount_fen), 0), 0 FROM transfers WHERE state='sent'"):
        if kind == "l":
            sums[key] = int(a)
        elif kind == "a":
            pockets += [("psn", key, int(a)), ("psnp", key, int(b))]
        elif kind == "w":
            pockets.append(("wallet", key, int(a)))
        else:
            sent = int(a)
    mismatched = []
    for prefix, psn_no, fen in pockets:
        ledger_fen = sums.get(f"{prefix}:{psn_no}", 0)
        if fen != ledger_fen:
            mismatched.append({"psn_no": psn_no, "pocket": prefix, "stored_fen": fen, "ledger_fen": ledger_fen})
    transit = sums.get("transit:wallet", 0)
    negative = conn.execute("SELECT COUNT(*) FROM accounts WHERE balance_fen < 0 OR prior_fen < 0").fetchone()[0]
    negative += conn.execute("SELECT COUNT(*) FROM people WHERE wallet_fen < 0").fetchone()[0]
    paid = conn.execute("SELECT COUNT(*) FROM payments WHERE state='paid'").fetchone()[0]
    refunded = conn.execute("SELECT COUNT(*) FROM payments WHERE state='refunded'").fetchone()[0]
    return {
        "accounts": conn.execute("SELECT COUNT(*) FROM accounts").fetchone()[0],
        "ledger_rows": conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0],
        "bindings": "/".join(str(x) for x in conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status='active' THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(frozen), 0) FROM bindings").fetchone()),
        "usage_fen": conn.execute("SELECT COALESCE(SUM(used_fen), 0) FROM usage").fetchone()[0],
        "ledger_sum_fen": ledger_sum,
        # the same posting made twice (a settlement paid twice would show here)
        "double_debits": conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM ledger GROUP BY txn_id, account "
                                      "HAVING COUNT(*) > 1) AS t").fetchone()[0],
        "unbalanced_txns": unbalanced,
        "balance_mismatches": mismatched,
        "negative_balances": negative,
        "negative_usage": conn.execute("SELECT COUNT(*) FROM usage WHERE used_fen < 0").fetchone()[0],
        "cap_overruns": [dict(r) for r in conn.execute(
            "SELECT key, used_fen, cap_fen FROM usage WHERE cap_fen IS NOT NULL AND used_fen > cap_fen")],
        "transit_mismatch_fen": transit - sent,
        "payments_paid": paid,
        "payments_refunded": refunded,
        "total_balance_fen": conn.execute("SELECT COALESCE(SUM(balance_fen + prior_fen),0) FROM accounts").fetchone()[0],
        "total_wallet_fen": conn.execute("SELECT COALESCE(SUM(wallet_fen),0) FROM people").fetchone()[0],
    }


def audit_items(conn: Tx, after: str, limit: int, regions: set[str]) -> dict[str, Any]:
    """G199 scope=items: each payment by setl_id with what it took from the accounts (3202 对明细账)."""
    items: dict[str, dict[str, Any]] = {}
    last = None
    for row in conn.execute("SELECT p.setl_id, p.state, p.medfee_fen, p.psn_part_fen, p.cash_fen, e.insuplc_admdvs "
                            "FROM payments p LEFT JOIN people e ON e.psn_no = p.psn_no WHERE p.setl_id > ? "
                            "ORDER BY p.setl_id LIMIT ?", (after, limit)):
        last = row["setl_id"]
        if regions and row["insuplc_admdvs"] not in regions:
            continue
        items[row["setl_id"]] = {"state": row["state"], "medfee_fen": row["medfee_fen"],
                                 "taken_fen": row["psn_part_fen"] - row["cash_fen"], "cash_fen": row["cash_fen"]}
    more = last is not None and conn.execute("SELECT 1 FROM payments WHERE setl_id > ? LIMIT 1",
                                             (last,)).fetchone() is not None
    return {"items": items, "next": last if more else None}
