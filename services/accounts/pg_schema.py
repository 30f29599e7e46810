"""The accounts service's PostgreSQL schema: the SQLite DDL of services/accounts/store.py,
translated (BIGINT fen, DOUBLE PRECISION, BYTEA, identity columns), with the same CHECK constraints as
the last line of defence.

Versions are applied in order at start (services/shared/pg_store.apply_migrations); never edit a released
version, append a new one.
"""
from __future__ import annotations

from services.shared.pg_schema import BASE_V1

V1 = """
CREATE TABLE people (
    psn_no TEXT PRIMARY KEY,
    insuplc_admdvs TEXT NOT NULL,
    insutype TEXT NOT NULL,
    evoucher_active BIGINT NOT NULL DEFAULT 1,
    wallet_fen BIGINT NOT NULL DEFAULT 0 CHECK (wallet_fen >= 0)
);
CREATE TABLE accounts (
    psn_no TEXT PRIMARY KEY REFERENCES people(psn_no),
    insuplc_admdvs TEXT NOT NULL,
    insutype TEXT NOT NULL,
    balance_fen BIGINT NOT NULL CHECK (balance_fen >= 0),
    prior_fen BIGINT NOT NULL DEFAULT 0 CHECK (prior_fen >= 0),
    pocket_year BIGINT,
    status TEXT NOT NULL DEFAULT 'normal',
    sharing_frozen BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE ledger (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txn_id TEXT NOT NULL,
    account TEXT NOT NULL,
    amount_fen BIGINT NOT NULL,
    kind TEXT NOT NULL,
    biz_time TEXT NOT NULL
);
CREATE INDEX ledger_account ON ledger(account);
CREATE INDEX ledger_txn ON ledger(txn_id);
CREATE TABLE bindings (
    auth_id TEXT PRIMARY KEY,
    authorizer_psn_no TEXT NOT NULL REFERENCES accounts(psn_no),
    member_psn_no TEXT NOT NULL REFERENCES people(psn_no),
    relation TEXT NOT NULL,
    rank BIGINT NOT NULL,
    day_cap_fen BIGINT,
    month_cap_fen BIGINT,
    year_cap_fen BIGINT,
    status TEXT NOT NULL DEFAULT 'active',   -- active | unbound
    frozen BIGINT NOT NULL DEFAULT 0,
    created_time TEXT NOT NULL,
    ended_time TEXT
);
CREATE INDEX bindings_member ON bindings(member_psn_no, status);
CREATE INDEX bindings_authorizer ON bindings(authorizer_psn_no, status);
CREATE TABLE binding_changes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    authorizer_psn_no TEXT NOT NULL,
    auth_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    year BIGINT NOT NULL,
    biz_time TEXT NOT NULL
);
CREATE TABLE verify_codes (
    psn_no TEXT NOT NULL,
    code TEXT NOT NULL,
    expires_time TEXT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (psn_no, code)
);
CREATE TABLE transfers (
    transfer_id TEXT PRIMARY KEY,
    from_psn_no TEXT NOT NULL,
    to_psn_no TEXT NOT NULL,
    amount_fen BIGINT NOT NULL CHECK (amount_fen > 0),
    postings TEXT NOT NULL,
    state TEXT NOT NULL,                    -- sent | claimed | returned
    day TEXT NOT NULL,
    created_time TEXT NOT NULL,
    expires_time TEXT NOT NULL
);
CREATE INDEX transfers_pending ON transfers(state, expires_time);
CREATE TABLE proxies (
    proxy_psn_no TEXT NOT NULL,
    member_psn_no TEXT NOT NULL,
    relation TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    PRIMARY KEY (proxy_psn_no, member_psn_no)
);
CREATE TABLE usage (
    key TEXT PRIMARY KEY,
    used_fen BIGINT NOT NULL CHECK (used_fen >= 0),
    cap_fen BIGINT          -- the cap in force when it was last raised
);
CREATE TABLE payments (
    setl_id TEXT PRIMARY KEY,
    psn_no TEXT NOT NULL,
    fixmedins_code TEXT NOT NULL,
    biz_time TEXT NOT NULL,
    year BIGINT NOT NULL,
    medfee_fen BIGINT NOT NULL,
    psn_part_fen BIGINT NOT NULL,
    own_fen BIGINT NOT NULL,
    mulaid TEXT NOT NULL,
    wallet_fen BIGINT NOT NULL,
    cash_fen BIGINT NOT NULL,
    usage TEXT NOT NULL,
    postings TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX payments_psn ON payments(psn_no, year);
"""

MIGRATIONS = [BASE_V1 + V1]
