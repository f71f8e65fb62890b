"""Operations: liveness, readiness (what a load balancer or an orchestrator asks before sending
traffic) and Prometheus metrics. No token: expose them to the monitoring network only (the
metrics are aggregates, naming no organisation or defender)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from api.problems import problem_response
from api.services import Svc

router = APIRouter(tags=["operations"])

READINESS_TIMEOUT = 2.0  # seconds per check: an orchestrator's probe gives up soon after


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "The database or Temporal cannot be reached"}})
async def readyz(svc: Svc, request: Request):
    """Readiness: the database answers a query and Temporal's frontend reports itself serving."""

    async def database() -> None:
        async with svc.db.sessions() as session:
            await session.execute(text("SELECT 1"))

    async def temporal() -> None:
        if not await svc.client.service_client.check_health(timeout=timedelta(seconds=READINESS_TIMEOUT)):
            raise RuntimeError("not serving")

    checks = {"database": database, "temporal": temporal}
    outcomes = await asyncio.gather(*(asyncio.wait_for(check(), READINESS_TIMEOUT) for check in checks.values()), return_exceptions=True)
    failed = [name for name, outcome in zip(checks, outcomes) if isinstance(outcome, BaseException)]
    if failed:
        return problem_response(
            503, "not-ready", f"cannot reach {' and '.join(failed)}", instance=request.url.path,
            errors=[{"field": name, "message": "unreachable"} for name in failed],
        )  # fmt: skip
    return {"status": "ready", "checks": {name: "ok" for name in checks}}


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(svc: Svc, request: Request) -> Response:
    """Prometheus metrics of this API process, and the fund's requests by status."""
    return Response(await request.app.state.metrics.exposition(svc.db), media_type=CONTENT_TYPE_LATEST)
