"""Structured logs: JSON lines in production, readable lines in dev mode. Log events carry ids,
never the content of a case; should one ever be handed a case's field by name, the redacting
processor blanks it before anything is written."""

from __future__ import annotations

import logging
from typing import Any

import structlog
from temporalio import activity


# Fields of a case that name or endanger people (haven.grant_request), and free text about them.
SENSITIVE_FIELDS = frozenset({
    "defender", "pseudonym", "payee", "name", "account", "stripe_account", "threat_summary", "purpose",
    "answer", "note", "text", "receipts", "reason", "body", "email", "sensitive", "details",
})  # fmt: skip
REDACTED = "[redacted]"


def _redacted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in SENSITIVE_FIELDS else _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value


def redact_sensitive(_logger: Any, _method: str, event_dict: dict) -> dict:
    """A structlog processor: every sensitive field, at any depth, is written as "[redacted]"."""
    return {k: REDACTED if k.lower() in SENSITIVE_FIELDS else _redacted(v) for k, v in event_dict.items()}


def add_temporal_context(_logger: Any, _method: str, event_dict: dict) -> dict:
    """A structlog processor: a line logged inside an activity names its workflow (the request's
    id, for a grant request), the activity and the attempt."""
    if activity.in_activity():
        info = activity.info()
        event_dict.setdefault("workflow_id", info.workflow_id)
        event_dict.setdefault("activity", info.activity_type)
        event_dict.setdefault("attempt", info.attempt)
    return event_dict


def configure_logging(*, dev_mode: bool) -> None:
    renderer = structlog.dev.ConsoleRenderer(colors=False) if dev_mode else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # the API's http_request_id (api/metrics.py)
            add_temporal_context,
            redact_sensitive,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
