"""PostgreSQL DDL shared by every service's schema: the inbox and the outbox (services/shared/store.py's
BASE_SCHEMA, translated: BIGINT, DOUBLE PRECISION, BYTEA, an identity column for the outbox, and the relay's
lease column that `pg_store.outbox_claim` uses so that relays on several hosts share the work).

A service's migrations are a list of DDL scripts, version 1 first, each applied once (pg_store.apply_migrations);
a released version is never edited: a change is a new version appended to the list.
"""
from __future__ import annotations

BASE_V1 = """
CREATE TABLE inbox (
    msgid TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    reply TEXT,               -- JSON reply given (NULL while the effect is still pending elsewhere)
    reply_to TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    body BYTEA NOT NULL,
    message_id TEXT,
    correlation_id TEXT,
    reply_to TEXT,
    headers TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    claimed_until DOUBLE PRECISION   -- a relay's lease on the row (outbox_claim), NULL: free
);
"""
