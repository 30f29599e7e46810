"""Which storage a worker uses: SQLite files in its data directory (the default, nothing to install), or
PostgreSQL when GONGJI_DATABASE_URL (or `--database-url`) names a database. Workers call `open_store` and
get a store with one public API either way (open, run(fn), run_sync, close, `commits`, `fault`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

ENV = "GONGJI_DATABASE_URL"


def pg_schema_name(name: str) -> str:
    """The PostgreSQL schema of a store named like its SQLite file: bureau-all → bureau (the bureau serving
    every region), bureau-110000-310000 → bureau_110000_310000, accounts → accounts."""
    return name.removesuffix("-all").replace("-", "_")


async def open_store(name: str, data_dir: Path, schema: str, pg_migrations: Sequence[str], *,
                     database_url: str | None = None, sqlite_migrate: Callable[[Any], None] | None = None) -> Any:
    """An opened store: `<data_dir>/<name>.db` with `schema` (then `sqlite_migrate`, for data directories of an
    older gongji), or, with a database URL, the PostgreSQL schema `pg_schema_name(name)` brought to the last
    of `pg_migrations`."""
    url = database_url if database_url is not None else (os.environ.get(ENV) or None)
    if url:
        from .pg_store import PgStore
        store: Any = PgStore(url, pg_schema_name(name), pg_migrations)
        await store.open()
        return store
    from .store import Store
    store = Store(Path(data_dir) / f"{name}.db", schema)
    await store.open()
    if sqlite_migrate is not None:
        await store.run(sqlite_migrate)
    return store
