"""The FastAPI application: settings in, routes wired, errors as problem details."""

from __future__ import annotations

from contextlib import asynccontextmanager

import structlog
from fastapi import Depends, FastAPI
from temporalio.client import Client

from haven.db import Database
from haven.intake import Intake
from haven.keys import case_keys, payload_keys, pseudonym_index_key
from haven.policy_versions import ActivePolicy, activate_if_none
from haven.settings import Settings, get_settings
from haven.temporal import connect
from api import openapi, problems
from api.auth import TokenVerifier
from api.limits import BodyLimit, RateLimit, refuse_unknown_query_parameters
from api.metrics import ApiMetrics, RequestMetrics
from api.server import BodyDeadline
from api.routes import audit, budget, codec, erasure, exports, grant_requests, refunds, health, organisations, policies, reconciliations, staff, stripe_webhooks
from api.services import Services
from policies import load_policy


log = structlog.get_logger(__name__)

ROUTERS = [health.router, grant_requests.router, refunds.router, erasure.router, budget.router, organisations.router, policies.router, staff.router, stripe_webhooks.router, reconciliations.router, exports.router, audit.router, codec.router]


def routes():
    """Every API route, as declared (the permission table is printed from these)."""
    return [route for router in ROUTERS for route in router.routes]


def create_app(settings: Settings | None = None, *, db: Database | None = None, client: Client | None = None) -> FastAPI:
    """Builds the app. Tests and `haven run` pass the database and Temporal client they own."""
    settings = settings or get_settings()
    verifier = TokenVerifier(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await verifier.start()
        own_db = db is None
        database = db or Database(settings.async_database_url)
        temporal = client or await connect(settings)
        from_file = load_policy(settings.policy_file)
        active = await activate_if_none(database, from_file)
        if active.hash != from_file.hash:
            log.warning("policy_file_not_active", file=str(settings.policy_file), file_hash=from_file.hash, active_hash=active.hash,
                        hint="propose it with POST /v1/policies and activate it to use it")  # fmt: skip
        sealed = case_keys(settings)
        intake = Intake(
            database, temporal, settings.task_queue, active, pseudonym_index_key(settings), settings.payment_rails,
            case_keys=sealed, policies=ActivePolicy(database, active),
        )  # fmt: skip
        app.state.services = Services(
            settings, database, temporal, intake, verifier, RateLimit(settings.intake_rate_per_minute), payload_keys(settings), sealed
        )
        yield
        if own_db:
            await database.dispose()

    app = FastAPI(
        title="haven",
        summary="Emergency fund workflow engine for human-rights defenders at risk",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(refuse_unknown_query_parameters)],
        # Off outside dev mode unless HAVEN_API_DOCS=true: then these paths answer 404.
        **({} if settings.serves_api_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}),
    )
    problems.install(app)
    docs = [url for url in (app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url, app.openapi_url) if url]
    app.state.metrics = ApiMetrics(routes=[route.path for route in routes()] + docs)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(codec.CodecCors, origins=settings.codec_cors_origins)
    app.add_middleware(BodyDeadline, seconds=settings.api_body_timeout_seconds)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)  # outermost: it times the others too
    for router in ROUTERS:
        app.include_router(router)
    openapi.install(app, routes(), max_body_bytes=settings.max_body_bytes)
    return app
