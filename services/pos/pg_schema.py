"""The POS's PostgreSQL schema: the SQLite DDL of services/pos/service.py,
translated (BIGINT fen, DOUBLE PRECISION, BYTEA, identity columns), with the same CHECK constraints as
the last line of defence.

Versions are applied in order at start (services/shared/pg_store.apply_migrations); never edit a released
version, append a new one.
"""
from __future__ import annotations

from services.shared.pg_schema import BASE_V1

V1 = """
CREATE TABLE visits (
    visit_id TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    state TEXT NOT NULL,             -- open | done
    stage TEXT NOT NULL,             -- signin | register | admit | info | upload:N | cancel:N | discharge
                                     -- | presettle | settle | reverse | compensate  (national_flow.plan)
    next_stage TEXT,                 -- after a sign-in: the stage it was needed for
    msgid TEXT NOT NULL,             -- the request we are waiting on
    settle_msgid TEXT,
    request TEXT NOT NULL,           -- that request, to resend as it was
    deadline DOUBLE PRECISION NOT NULL,
    presettle TEXT,
    outcome TEXT,
    mdtrt_id TEXT,                   -- the bureau's 就诊ID, from the 2201 / 2401 answer
    round_trips BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX visits_msgid ON visits(msgid);
CREATE INDEX visits_open ON visits(state, deadline);
CREATE TABLE msgid_seq (prefix TEXT PRIMARY KEY, n BIGINT NOT NULL);
-- one sign-in per facility and business day (a visit of any day finds the sign-in of its own day)
CREATE TABLE signins (fixmedins_code TEXT NOT NULL, day TEXT NOT NULL, sign_no TEXT NOT NULL,
                                    valid_until TEXT NOT NULL, PRIMARY KEY (fixmedins_code, day));
"""

MIGRATIONS = [BASE_V1 + V1]
