"""Structured logs: JSON lines in production, readable lines in dev mode. Log events carry ids,
never the content of a case."""

from __future__ import annotations

import logging

import structlog


def configure_logging(*, dev_mode: bool) -> None:
    renderer = structlog.dev.ConsoleRenderer(colors=False) if dev_mode else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
