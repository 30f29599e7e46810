"""Starting what a run needs: a broker, and the three workers as separate processes in a namespace of their own.

Broker discovery, in order: AMQP_URL (or --amqp-url) if given; else localhost:5672 if it answers; else a
RabbitMQ in Docker via testcontainers if Docker is usable; else a SystemExit that says how to get one.
The workers are the very commands docker-compose runs (`python -m simulator.cli worker <svc> ...`); each
prints a line with "ready" on stdout once it consumes.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from contracts.routing import Names
from services.shared import failover
from services.shared.topology import exchanges, queues

WORKERS = ("bureau", "accounts", "pos")
RABBITMQ_IMAGE = "rabbitmq:3.13.7-management"
NO_BROKER = ("No RabbitMQ reachable: set AMQP_URL (or --amqp-url), or start one on localhost:5672 "
             "(`rabbitmq-server -detached`, or `docker run -d -p 5672:5672 rabbitmq:3.13`), "
             "or make Docker available so that a RabbitMQ can be started with testcontainers "
             "(pip install 'testcontainers[rabbitmq]').")


def reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]
        docker.from_env().ping()
        return True
    except Exception:
        return False


class Broker(AbstractContextManager["Broker"]):
    """Where the broker is; stops the container it started, if it started one."""

    def __init__(self, url: str, container: Any = None, origin: str = "given"):
        self.url = url
        self.container = container
        self.origin = origin

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.container is not None:
            try:
                self.container.stop()
            finally:
                self.container = None


def discover_broker(url: str | None = None, *, allow_docker: bool = True) -> Broker:
    url = url or os.environ.get("AMQP_URL")
    if url:
        return Broker(url, origin="AMQP_URL")
    if reachable("127.0.0.1", 5672):
        return Broker("amqp://guest:guest@127.0.0.1:5672/", origin="localhost:5672")
    if allow_docker and docker_available():
        try:
            from testcontainers.rabbitmq import RabbitMqContainer  # type: ignore[import-untyped]
        except ImportError:
            raise SystemExit(NO_BROKER) from None
        container = RabbitMqContainer(RABBITMQ_IMAGE)
        container.start()
        host, port = container.get_container_host_ip(), container.get_exposed_port(container.port)
        return Broker(f"amqp://guest:guest@{host}:{port}/", container, origin="testcontainers")
    raise SystemExit(NO_BROKER)


def die_with_parent() -> None:
    """preexec_fn for worker children: on Linux, SIGTERM them when the process that started them dies, so
    that a killed test run or `gongji run` never leaves workers behind."""
    try:
        import ctypes
        import signal as _signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(_signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:
        pass


class WorkerStack:
    """The three workers as child processes, in a fresh namespace and data directory unless told otherwise."""

    def __init__(self, amqp_url: str, namespace: str | None = None, data_dir: Path | None = None, *,
                 env: dict[str, str] | None = None, log_level: str = "WARNING"):
        self.amqp_url = amqp_url
        self.ns = namespace or f"gj{uuid.uuid4().hex[:10]}"
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="gongji-run-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = self.data_dir / "logs"
        # Scenarios keep their virtual clock (a year in seconds, facilities sharing days out of order): the
        # bureau's per-facility business-time tolerances are off unless the caller sets them.
        self.env = {**os.environ, "GONGJI_LOG_FORMAT": "json", "GONGJI_LOG_LEVEL": log_level,
                    "GONGJI_BIZ_TIME_BACK_S": os.environ.get("GONGJI_BIZ_TIME_BACK_S", "0"),
                    "GONGJI_BIZ_TIME_AHEAD_S": os.environ.get("GONGJI_BIZ_TIME_AHEAD_S", "0"), **(env or {})}

    def command(self, service: str) -> list[str]:
        return [sys.executable, "-m", "simulator.cli", "worker", service, "--namespace", self.ns,
                "--data-dir", str(self.data_dir), "--amqp-url", self.amqp_url]

    async def start_worker(self, service: str, timeout: float = 60.0) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{service}.log", "ab")
        repo = Path(__file__).resolve().parents[1]
        proc = subprocess.Popen(self.command(service), stdout=subprocess.PIPE, stderr=log, env=self.env,
                                cwd=repo, preexec_fn=die_with_parent)
        log.close()
        self.procs[service] = proc
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
        except asyncio.TimeoutError:
            line = b""
        if b"ready" not in line:
            tail = self.log_tail(service)
            raise RuntimeError(f"{service} worker did not start: {line!r}; see {self.logs}/{service}.log\n{tail}")

    async def start(self) -> None:
        """All three at once: each declares the topology it needs, so start order never matters, and a stack
        is ready in the time of its slowest worker instead of the sum of the three (the test suite starts
        a stack about two hundred times)."""
        results = await asyncio.gather(*(self.start_worker(service) for service in WORKERS), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def log_tail(self, service: str, lines: int = 15) -> str:
        try:
            return "\n".join((self.logs / f"{service}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[service]
        proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(timeout=30)

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def remove_data(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def queues_used(self) -> list[str]:
        return [q.name for q in queues(Names(self.ns), [])]

    async def cleanup(self) -> None:
        await cleanup_namespace(self.amqp_url, self.ns, self.queues_used())


async def cleanup_namespace(amqp_url: str, ns: str, queues: list[str]) -> None:
    """Leave nothing behind: this run's queues and exchanges (client queues expire by themselves)."""
    names = Names(ns)
    conn = await failover.connect(amqp_url)  # one URL or a cluster's list
    try:
        for q in queues:
            ch = await conn.channel()
            try:
                await ch.queue_delete(q)
            except Exception:
                pass
        for ex in exchanges(names):
            ch = await conn.channel()
            try:
                await ch.exchange_delete(ex)
            except Exception:
                pass
    finally:
        await conn.close()


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


async def read_dead_letters(amqp_url: str, ns: str, *, consume: bool = True, limit: int = 100000
                            ) -> list[dict[str, str]]:
    """What is in <ns>.dead: each message's reason and the queue it came from. A worker that refuses a message
    says why in x-gongji-reason (and x-gongji-queue); the broker's own dead-lettering (a quorum queue's delivery
    limit, ...) says it in x-first-death-reason / x-death. consume=False only looks (the messages go back)."""
    conn = await failover.connect(amqp_url)  # one URL or a cluster's list
    out: list[dict[str, str]] = []
    try:
        ch = await conn.channel()
        try:
            queue = await ch.get_queue(Names(ns).dead_queue, ensure=True)
        except Exception:
            return out
        while len(out) < limit:
            msg = await queue.get(no_ack=consume, fail=False, timeout=10)
            if msg is None:
                break
            headers = dict(msg.headers or {})
            reason, source = headers.get("x-gongji-reason"), headers.get("x-gongji-queue")
            if reason is None:
                reason = headers.get("x-first-death-reason")
                source = source or headers.get("x-first-death-queue")
                deaths = headers.get("x-death") or []
                if reason is None and deaths:
                    reason = deaths[0].get("reason")
                    source = source or deaths[0].get("queue")
            out.append({"reason": _text(reason) or "unknown", "queue": _text(source),
                        "message_id": _text(msg.message_id)})
    finally:
        await conn.close()
    return out
