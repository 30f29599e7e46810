"""Throwaway PostgreSQL databases: one per test stack, `gongji run` and `gongji bench` (as a fresh SQLite data
directory is for them), created on the server a URL names and dropped at the end, connections and all."""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import conninfo
from psycopg import sql as pg_sql

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_dbname(url: str, dbname: str) -> str:
    """The same server and options, another database (a URL stays a URL, a `key=value` string stays one)."""
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
    params = conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return conninfo.make_conninfo("", **params)


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(with_dbname(url, "postgres"), autocommit=True, connect_timeout=10)


def create_database(server_url: str, prefix: str = "gongji_t_") -> str:
    """A new empty database on the server of `server_url`; returns its URL."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    with _admin(server_url) as conn:
        conn.execute(pg_sql.SQL("CREATE DATABASE {}").format(pg_sql.Identifier(name)))
    return with_dbname(server_url, name)


def drop_database(url: str) -> None:
    """Drop it, even with workers still connected (WITH (FORCE), PostgreSQL 13+)."""
    name = conninfo.conninfo_to_dict(url)["dbname"]
    with _admin(url) as conn:
        conn.execute(pg_sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pg_sql.Identifier(name)))


@contextmanager
def throwaway_database(server_url: str, prefix: str = "gongji_t_") -> Iterator[str]:
    url = create_database(server_url, prefix)
    try:
        yield url
    finally:
        drop_database(url)


def reachable(server_url: str = DEFAULT_SERVER) -> str | None:
    """None when the server accepts connections, else why not."""
    try:
        with _admin(server_url):
            return None
    except psycopg.Error as exc:
        return str(exc).strip()


def outbox_rows(url: str) -> dict[str, int]:
    """Rows waiting in each schema's outbox (`gongji bench` waits for them to drain)."""
    out: dict[str, int] = {}
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        schemas = [r[0] for r in conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'outbox' ORDER BY 1")]
        for schema in schemas:
            query = pg_sql.SQL("SELECT COUNT(*) FROM {}.outbox").format(pg_sql.Identifier(schema))
            out[schema] = int(conn.execute(query).fetchone()[0])  # type: ignore[index]
    return out


def backend_pids(url: str) -> dict[str, int]:
    """The server process of each gongji store connected to this database ("pg:accounts", "pg:accounts#2", …):
    on one machine, their CPU is the database's share of a settlement (`gongji bench`)."""
    out: dict[str, int] = {}
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute("SELECT application_name, pid FROM pg_stat_activity WHERE datname = current_database() "
                            "AND application_name LIKE 'gongji-%' ORDER BY application_name, pid").fetchall()
    for app, pid in rows:
        key = f"pg:{app.removeprefix('gongji-')}"
        n = 1
        while (key if n == 1 else f"{key}#{n}") in out:
            n += 1
        out[key if n == 1 else f"{key}#{n}"] = int(pid)
    return out
