"""Both storage backends under test (issue 12): `--backends sqlite,postgres` (the default runs both).

The end-to-end, mutual-aid, hostile-input, concurrency, fault, replica, admission and outsider-probe modules (BOTH)
run once per backend: their `stack` (and every stack they start themselves, through `database_env`) keeps SQLite
files in its data directory, or uses a throwaway PostgreSQL database (CREATE DATABASE gongji_t_<random>, dropped at the end) on
the server at GONGJI_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres). Other modules run on
SQLite only.
"""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from services.shared.pg_admin import DEFAULT_SERVER, create_database, drop_database, reachable

BOTH = {"test_settlement_e2e", "test_mutual_aid", "test_hostile_input", "test_concurrency", "test_faults",
        "test_fault_scenarios", "test_transient", "test_replicas", "test_resident_funds_e2e", "test_admission",
        "test_outsider_probe"}
BACKENDS = ("sqlite", "postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backends", default=os.environ.get("GONGJI_TEST_BACKENDS", ",".join(BACKENDS)),
                     help="storage backends for the modules that run on both (comma-separated: sqlite,postgres)")


def selected(config: pytest.Config) -> list[str]:
    chosen = [b.strip() for b in str(config.getoption("--backends")).split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BACKENDS]
    if unknown:
        raise pytest.UsageError(f"--backends: unknown {', '.join(unknown)} (choose from {', '.join(BACKENDS)})")
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    backends = selected(metafunc.config) if module in BOTH else ["sqlite"]
    metafunc.parametrize("backend", backends, indirect=True, scope="session")


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server the tests make their databases on (it must accept connections)."""
    url = os.environ.get("GONGJI_TEST_PG_URL", DEFAULT_SERVER)
    why = reachable(url)
    if why is not None:
        pytest.fail(f"No PostgreSQL at {url} for the tests ({why}). Start it (`pg_ctlcluster "
                    "--skip-systemctl-redirect $(ls /etc/postgresql) main start`), set GONGJI_TEST_PG_URL, or run "
                    "SQLite only with --backends sqlite.", pytrace=False)
    return url


@pytest.fixture
def pg_database(pg_server: str) -> Iterator[str]:
    """A throwaway database for one test."""
    url = create_database(pg_server)
    yield url
    drop_database(url)


def database_env_for(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The workers' environment for a backend: SQLite in the data directory, or GONGJI_DATABASE_URL of a
    new throwaway database that is dropped when the requesting fixture or test ends."""
    if backend != "postgres":
        return {"GONGJI_DATABASE_URL": ""}  # SQLite, even when the test run itself has a database URL set
    url = create_database(request.getfixturevalue("pg_server"))
    request.addfinalizer(lambda: drop_database(url))
    return {"GONGJI_DATABASE_URL": url}


@pytest.fixture
def database_env(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """For a test that starts its own stack: pass as the stack's env (or monkeypatch it into os.environ)."""
    return database_env_for(backend, request)


@pytest.fixture(scope="session")
def stack_database_env(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The same for the session's shared `stack` (one per backend)."""
    return database_env_for(backend, request)
