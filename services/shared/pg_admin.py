"""Throwaway PostgreSQL databases: one per test stack, `gongji run` and `gongji bench` (as a fresh SQLite data
directory is for them), created on the server a URL names and dropped at the end, connections and all."""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg import conninfo
from psycopg import sql as pg_sql

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_dbname(url: str, dbname: str) -> str:
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
