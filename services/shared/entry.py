"""Running a worker process: configuration, logging, signals, orderly shutdown."""
from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import structlog

from contracts.routing import Names

from .broker import Broker
from .logging import configure
from .runtime import Worker

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"


@dataclass(frozen=True)
class WorkerConfig:
    amqp_url: str = field(default_factory=lambda: os.environ.get("AMQP_URL", DEFAULT_AMQP_URL))
    namespace: str = field(default_factory=lambda: os.environ.get("GONGJI_NAMESPACE", "gongji"))
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("GONGJI_DATA_DIR", "data")))
    regions: list[str] = field(default_factory=list)
    prefetch: int = 64
    # PostgreSQL instead of SQLite files in data_dir (services/shared/stores.py); "" or None: SQLite
    database_url: str | None = field(default_factory=lambda: os.environ.get("GONGJI_DATABASE_URL") or None)

    @property
    def names(self) -> Names:
        return Names(self.namespace)


Setup = Callable[[WorkerConfig, Broker], Awaitable[Worker]]


async def serve_forever(service: str, cfg: WorkerConfig, setup: Setup) -> None:
    log = structlog.get_logger()
    broker = Broker(cfg.amqp_url, cfg.names, name=f"gongji-{service}")
    await broker.connect()
    await broker.declare_topology()
    try:
        worker = await setup(cfg, broker)
    except SystemExit as exc:  # e.g. a damaged database: say why, leave the broker cleanly, exit non-zero
        log.error("worker refuses to start", reason=str(exc.code))
        await broker.close()
        raise
    worker.start_stats(cfg.data_dir / "stats", service)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker ready", namespace=cfg.namespace, data_dir=str(cfg.data_dir), pid=os.getpid())
    print(f"gongji {service} worker ready", flush=True)
    await stop.wait()
    log.info("worker stopping")
    await worker.stop()
    await broker.close()
    await worker.store.close()


def run(service: str, cfg: WorkerConfig, setup: Setup) -> None:
    configure(service)
    # uvloop: ≈ 10–15 % less worker CPU per settlement (BENCHMARKS.md, 2026-11-29). GONGJI_UVLOOP=0 turns it off.
    if os.environ.get("GONGJI_UVLOOP", "1") != "0":
        try:
            import uvloop  # type: ignore[import-not-found]
        except ImportError:
            uvloop = None
        if uvloop is not None:
            uvloop.run(serve_forever(service, cfg, setup))
            return
    asyncio.run(serve_forever(service, cfg, setup))
