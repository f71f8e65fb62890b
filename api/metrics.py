"""The API's Prometheus metrics and HTTP request ids: its requests (by route template, never by
path, so no grant request's id becomes a label) and the fund's state read from the database when
scraped (requests by status, overdue follow-ups). Aggregates only: nothing here names an
organisation or a defender. The worker's metrics (Temporal's own, time to decision and to
payment) are on its own endpoint (haven.worker_metrics).

Every label takes its value from a fixed set, whatever a caller sends: a method the API does not
know is "other", a path no route matches is "unmatched", a status outside the known ones is its
class ("4xx"). Otherwise anyone could grow the exposition (and Prometheus) without limit by
inventing methods or paths."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from haven.db import Database
from haven.db.models import GrantRequestRecord
from haven.lifecycle import Status

# Most answers take milliseconds; a submission waits for Temporal to start its workflow.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STATUSES = frozenset({200, 201, 202, 204, 304, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 500, 502, 503, 504})
UNMATCHED = "unmatched"


class ApiMetrics:
    """One registry per app (tests build many apps in one process). `routes`: the templates of the
    app's routes, the only route labels besides "unmatched"."""

    def __init__(self, routes: Iterable[str] = ()) -> None:
        self.routes = frozenset(routes)
        self.registry = CollectorRegistry()
        self.requests = Counter("haven_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("haven_http_request_duration_seconds", "Time to answer an HTTP request",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.by_status = Gauge("haven_grant_requests", "Grant requests by status", ["status"], registry=self.registry)
        self.overdue = Gauge("haven_follow_ups_overdue", "Requests in follow-up whose report is overdue", registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        route = route if route in self.routes else UNMATCHED
        self.requests.labels(method, route, _status_label(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    async def exposition(self, db: Database) -> bytes:
        """The text Prometheus scrapes, the fund's state read now."""
        async with db.sessions() as session:
            counts = dict((await session.execute(
                select(GrantRequestRecord.status, func.count()).group_by(GrantRequestRecord.status)
            )).all())  # fmt: skip
            overdue = await session.scalar(
                select(func.count()).where(GrantRequestRecord.status == Status.FOLLOW_UP, GrantRequestRecord.follow_up_overdue.is_(True))
            )
        for status in Status:  # every status, zeros included, so a graph does not lose its line
            self.by_status.labels(status.value).set(counts.get(status.value, 0))
        self.overdue.set(overdue or 0)
        return generate_latest(self.registry)


class RequestMetrics:
    """Pure ASGI middleware: counts and times every HTTP request by its route template, and gives it
    an id (X-Request-ID, bound into its log lines)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500
        request_id = _request_id(scope)

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            # Every line logged while answering names the request (and is returned to the caller).
            with structlog.contextvars.bound_contextvars(http_request_id=request_id):
                await self.app(scope, receive, send_and_note)
        finally:
            # The router writes the matched route into the scope; unmatched paths share one label.
            route = getattr(scope.get("route"), "path", UNMATCHED)
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - started)


def _status_label(status: int) -> str:
    if status in STATUSES:
        return str(status)
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def _request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when it is a plain token (a proxy's), or a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and 8 <= len(value) <= 64 and value.replace(b"-", b"").isalnum():
            return value.decode()
    return secrets.token_hex(8)
