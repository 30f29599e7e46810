"""Transient versus poison, and the store fault that tests inject.

A failure that is not about the message (a full or failing disk, a locked or unreadable database, a broker
that went away) must never use up a quorum queue's delivery limit: RabbitMQ 3.10 counts a delivery after a
nack-requeue and after a channel close alike, so the only way not to count is to keep the delivery unacked
and try again here, in-process, until the store works again. Only a message that fails on its own is poison.
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass

import aiormq

from . import failover

# Messages of sqlite3.DatabaseError that say the database (not the statement) is the problem.
_DAMAGED = ("malformed", "not a database", "disk i/o", "database or disk is full", "unable to open",
            "database is locked", "readonly database", "disk image")


def is_transient(exc: BaseException) -> bool:
    """True when the failure is the environment's (disk, database file, broker), not the message's."""
    if isinstance(exc, sqlite3.OperationalError):
        return True  # locked, disk I/O error, disk full, unable to open, read-only, ...
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.DataError, sqlite3.NotSupportedError)):
        return any(m in str(exc).lower() for m in _DAMAGED)
    pg = sys.modules.get("psycopg")  # PostgreSQL (only loaded when a store uses it)
    if pg is not None and isinstance(exc, pg.OperationalError):
        return True  # connection lost, server shutting down, deadlock/serialisation retries used up (40P01/40001)
    if isinstance(exc, OSError):  # ENOSPC, EIO, a lost connection (ConnectionError is an OSError)
        return True
    if isinstance(exc, (aiormq.exceptions.AMQPConnectionError, aiormq.exceptions.ChannelInvalidStateError,
                        TimeoutError)):
        return True
    # A node of a cluster that went away, or refused a publish (basic.nack) for a moment: services.shared.failover
    return type(exc) is aiormq.exceptions.ChannelClosed or failover.nacked(exc)


@dataclass
class StoreFault:
    """GONGJI_CHAOS='{"store_fail_s": 30, "store_fail_file": "/tmp/x", "store_fail_stores": ["accounts"]}':
    once the file exists (or after `store_fail_after` transactions), every transaction of a store whose file
    name contains one of `store_fail_stores` (default: all) raises sqlite3.OperationalError("disk I/O error")
    for `store_fail_s` seconds, then the store works again. For the transient-fault tests."""

    seconds: float
    trigger_file: str | None
    after: int | None
    started: float | None = None
    calls: int = 0

    @classmethod
    def from_env(cls, store_name: str) -> "StoreFault | None":
        raw = os.environ.get("GONGJI_CHAOS")
        if not raw:
            return None
        cfg = json.loads(raw)
        if not cfg.get("store_fail_s"):
            return None
        stores = cfg.get("store_fail_stores")
        if stores and not any(s in store_name for s in stores):
            return None
        after = cfg.get("store_fail_after")
        return cls(float(cfg["store_fail_s"]), cfg.get("store_fail_file"), int(after) if after is not None else None)

    def check(self) -> None:
        """Raise while the fault window is open (called on the store's thread before each batch)."""
        if self.started is None:
            self.calls += 1
            fire = ((self.trigger_file is not None and os.path.exists(self.trigger_file))
                    or (self.after is not None and self.calls > self.after))
            if not fire:
                return
            self.started = time.monotonic()
        if time.monotonic() - self.started < self.seconds:
            raise sqlite3.OperationalError("disk I/O error")
