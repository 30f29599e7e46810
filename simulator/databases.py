"""A throwaway PostgreSQL database for the workers one command starts (run, bench, each policy set of compare).

A run on SQLite starts from a fresh data directory; on PostgreSQL the same freshness is a database of its own,
created on the server the URL names and dropped at the end (kept with --keep-data). The workers find it in
GONGJI_DATABASE_URL, which is set for the duration and restored afterwards.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from services.shared.pg_admin import create_database, drop_database


@contextmanager
def throwaway(database_url: str | None, prefix: str, keep: bool = False) -> Iterator[str | None]:
    if not database_url:
        yield None
        return
    url = create_database(database_url, prefix=prefix)
    before = os.environ.get("GONGJI_DATABASE_URL")
    os.environ["GONGJI_DATABASE_URL"] = url  # the workers' environment
    try:
        yield url
    finally:
        if before is None:
            os.environ.pop("GONGJI_DATABASE_URL", None)
        else:
            os.environ["GONGJI_DATABASE_URL"] = before
        if keep:
            print(f"PostgreSQL database kept: {url}", file=sys.stderr)
        else:
            drop_database(url)
