"""The HTTP API in tests: the app over a time-skipping Temporal server, a worker and SQLite, reached
through httpx without a network; tokens for each role; problem-body assertions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select

from api.app import create_app
from haven.db.models import AuditEvent, GrantRequestRecord
from haven.grant_request import Role
from haven.worker import build_worker
from tests.conftest import make_settings
from tests.harness import SAMPLE_REQUEST
from tests.workflow_histories import keep

BODY = {**SAMPLE_REQUEST, "urgency": "high"}


class Api:
    def __init__(self, http: httpx.AsyncClient, app, settings, verifier, db):
        self.http = http
        self.app = app
        self.settings = settings
        self.verifier = verifier
        self.db = db
        self._keys = 0

    def token(self, role: str, sub: str, org: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.verifier.issue(sub, [Role(role)], org, timedelta(minutes=5))}"}

    def intermediary(self, org: str = "ngo-1") -> dict[str, str]:
        return self.token("intermediary", f"int-{org}", org)

    async def submit(self, body=None, org: str = "ngo-1", key: str | None = None) -> httpx.Response:
        self._keys += 1
        headers = {**self.intermediary(org), "Idempotency-Key": key or f"k-{self._keys}"}
        response = await self.http.post("/v1/grant-requests", json=body or BODY, headers=headers)
        if response.status_code == 202:
            keep(self.app.state.services.client, response.json()["id"])
        return response

    async def until_status(self, request_id: str, status: str, timeout: float = 15) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            response = await self.http.get(f"/v1/grant-requests/{request_id}", headers=self.token("caseworker", "cw-1"))
            if response.json()["status"] == status:
                return response.json()
            assert time.monotonic() < deadline, f"still {response.json()['status']}"
            await asyncio.sleep(0.02)

    async def counts(self) -> tuple[int, int]:
        return await stored_counts(self.db)


@pytest.fixture
def api_settings() -> dict:
    """Settings the `api` fixture's app and worker run with; a test module overrides this fixture
    to change them (e.g. to pay through the local Stripe server)."""
    return {}


@contextlib.asynccontextmanager
async def serving(env, db, tmp_path, **overrides) -> AsyncIterator[Api]:
    """The app and a worker on `env` (a Temporal test environment) and `db`."""
    settings = make_settings(tmp_path, db.url, **overrides)
    app = create_app(settings, db=db, client=env.client)
    async with build_worker(env.client, db, settings), app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://haven.test") as http:
            yield Api(http, app, settings, app.state.services.verifier, db)


@pytest.fixture
async def api(time_skipping_env, sqlite_db, tmp_path, api_settings):
    async with serving(time_skipping_env, sqlite_db, tmp_path, **api_settings) as api:
        yield api


async def stored_counts(db) -> tuple[int, int]:
    """Grant requests and audit events stored: what a refused call must leave unchanged."""
    async with db.sessions() as session:
        requests = await session.scalar(select(func.count()).select_from(GrantRequestRecord))
        events = await session.scalar(select(func.count()).select_from(AuditEvent))
        return requests, events


def assert_problem(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["type"] == f"urn:haven:problem:{kind}" and body["detail"]
    return body
