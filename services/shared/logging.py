"""structlog: readable lines in a terminal, JSON elsewhere (containers, CI logs); msgid/setl_id are
bound through contextvars so every line a handler writes carries them."""
from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(service: str, level: str | None = None) -> None:
    level_name = (level or os.environ.get("GONGJI_LOG_LEVEL", "INFO")).upper()
    fmt = os.environ.get("GONGJI_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    renderer = (structlog.dev.ConsoleRenderer(colors=True) if fmt == "console"
                else structlog.processors.JSONRenderer(ensure_ascii=False))
    logging.basicConfig(level=level_name, stream=sys.stderr, format="%(message)s")
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level_name)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
