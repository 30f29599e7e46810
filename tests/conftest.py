"""Test fixtures: a real RabbitMQ, a namespace of our own, and the three workers as separate processes.

Broker: AMQP_URL if set; else localhost:5672 if it answers; else a RabbitMQ started with testcontainers
when Docker is available; else a clear error saying how to get one.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from simulator.stack import discover_broker
from tests.harness import Stack, cleanup_namespace

pytest_plugins = ["tests.backends"]  # --backends, the backend / pg_database / database_env fixtures


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """The same discovery `gongji run` uses (simulator.stack.discover_broker)."""
    try:
        broker = discover_broker()
    except SystemExit as exc:
        pytest.fail(f"No RabbitMQ for the tests. {exc}", pytrace=False)
    with broker:
        yield broker.url


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack(amqp_url: str, run_id: str, tmp_path_factory: pytest.TempPathFactory, backend: str,
                stack_database_env: dict[str, str]) -> AsyncIterator[Stack]:
    """The three workers, shared by the tests that use distinct people (each test makes its own); one stack
    per storage backend (tests/backends.py)."""
    ns = f"t{run_id}" if backend == "sqlite" else f"t{run_id}{backend[:2]}"
    s = Stack(amqp_url, ns, Path(tmp_path_factory.mktemp("stack")), env=stack_database_env)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()
        await cleanup_namespace(amqp_url, ns, s.queues_used())


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "broker_restart: restarts the local RabbitMQ; collected last")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The broker-restart test goes last, so that no other test shares its outage."""
    items.sort(key=lambda item: item.get_closest_marker("broker_restart") is not None)
