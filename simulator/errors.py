"""Exit codes and the errors the CLI turns into one line a person can act on.

A CI job needs to tell "the scenario found a problem" (1) from "the input was wrong" (2) from "the machinery
was not there" (3): only the first is a finding about the system under test.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Awaitable, Callable, TypeVar
from urllib.parse import unquote, urlparse

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1  # an expectation or an invariant failed
EXIT_INVALID = 2  # invalid input: scenario, policy, arguments
EXIT_INFRA = 3  # infrastructure: broker unreachable or refused, workers not ready

EXIT_CODES_HELP = """exit codes:
  0  passed: every expectation and invariant held
  1  failed: an expectation or an invariant did not hold (see the report)
  2  invalid input: scenario, policy or arguments (the message names the file, line and field)
  3  infrastructure: the broker is unreachable or refused the login, or the workers were not ready"""


class InfrastructureError(Exception):
    """Something gongji needs is not there. str() is one line, with what to do."""


def where(url: str) -> str:
    """host:port/vhost and user of an AMQP URL (the first of a cluster's list), never the password."""
    urls = [part.strip() for part in url.split(",") if part.strip()] or [url]
    u = urlparse(urls[0])
    vhost = unquote(u.path[1:]) if u.path and u.path != "/" else "/"
    more = f" and {len(urls) - 1} other node(s)" if len(urls) > 1 else ""
    return f"{u.hostname or 'localhost'}:{u.port or 5672} (vhost {vhost!r}, user {u.username or 'guest'!r}){more}"


def explain_broker_error(url: str, exc: BaseException) -> str:
    """One line: what went wrong with the broker and what to do about it."""
    at = where(url)
    text = str(exc)
    name = type(exc).__name__
    if "ACCESS_REFUSED" in text or name in ("ProbableAuthenticationError", "AuthenticationError"):
        return (f"RabbitMQ at {at} refused the login (ACCESS_REFUSED): check the user and password in AMQP_URL or "
                f"--amqp-url")
    if "NOT_ALLOWED" in text or "vhost" in text.lower() or (name == "InvalidFrameError" and "Connection.Close" in text):
        return (f"RabbitMQ at {at} refused the virtual host (it does not exist or the user may not use it): "
                f"fix the vhost in AMQP_URL, or create it (rabbitmqctl add_vhost / set_permissions)")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return (f"RabbitMQ at {at} did not answer in time: is the host right, and a firewall not dropping the "
                f"connection?")
    if "111" in text or "refused" in text.lower() or isinstance(exc, ConnectionRefusedError):
        return (f"cannot reach RabbitMQ at {at} (connection refused): start it (`rabbitmq-server -detached`, or "
                f"`docker compose up rabbitmq`), or point AMQP_URL / --amqp-url at it")
    first = text.splitlines()[0] if text else name
    return f"RabbitMQ at {at}: {name}: {first[:200]}"


# Errors that never heal by retrying: a wrong password, a wrong vhost.
def _permanent(exc: BaseException) -> bool:
    msg = explain_broker_error("amqp://x/", exc)
    return "refused the login" in msg or "virtual host" in msg


async def check_broker(url: str, *, timeout: float = 5.0, wait: float | None = None) -> None:
    """One connection to the broker (closed at once). Raises InfrastructureError with one line.

    A refused login or vhost fails at once; a closed port too, unless `wait` seconds (env GONGJI_BROKER_WAIT,
    default 0) are given to wait for a broker that is still starting."""
    from services.shared import failover
    if wait is None:
        try:
            wait = float(os.environ.get("GONGJI_BROKER_WAIT", "0") or 0)
        except ValueError:
            wait = 0.0
    quiet = {n: logging.getLogger(n).level for n in ("aio_pika", "aiormq")}
    for n in quiet:  # aio-pika logs each failed attempt with a traceback; the one line below says it all
        logging.getLogger(n).setLevel(logging.CRITICAL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    try:
        while True:
            try:
                conn = await asyncio.wait_for(failover.connect(url, timeout=timeout), (timeout + 1) * len(failover.split(url)))
                await conn.close()
                return
            except Exception as exc:  # noqa: BLE001 - every failure becomes one line
                if _permanent(exc) or loop.time() + 0.5 > deadline:
                    raise InfrastructureError(explain_broker_error(url, exc)) from None
                await asyncio.sleep(0.5)
    finally:
        for n, level in quiet.items():
            logging.getLogger(n).setLevel(level)


NO_ANSWER = ("no answer from the workers{ns}: are they running and ready (`gongji up`, `docker compose up`), and "
             "in the same namespace (--namespace / GONGJI_NAMESPACE)?")


def run_guarded(make: Callable[[], Awaitable[T]], amqp_url: str | None, namespace: str | None = None
                ) -> tuple[int, T | None, str | None]:
    """asyncio.run(make()) with every infrastructure or input failure turned into (exit code, None, one line)."""
    import aiormq

    url = amqp_url or os.environ.get("AMQP_URL") or "amqp://guest:guest@localhost:5672/"
    try:
        return EXIT_OK, asyncio.run(make()), None  # type: ignore[arg-type]
    except InfrastructureError as exc:
        return EXIT_INFRA, None, str(exc)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            from .stack import NO_BROKER
            return (EXIT_INFRA if exc.code == NO_BROKER else EXIT_INVALID), None, exc.code
        raise
    except (asyncio.TimeoutError, TimeoutError):
        return EXIT_INFRA, None, NO_ANSWER.format(ns=f" (namespace {namespace})" if namespace else "")
    except (aiormq.exceptions.AMQPError, ConnectionError, OSError) as exc:
        return EXIT_INFRA, None, explain_broker_error(url, exc)
    except RuntimeError as exc:  # a worker that did not start, a broker that went away
        return EXIT_INFRA, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
