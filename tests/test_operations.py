"""What operators and their monitoring read: readiness (the database and Temporal both reachable)
and the API's Prometheus metrics (its requests by route template, the fund's requests by status)."""

from __future__ import annotations

import dataclasses
import re

import structlog
from temporalio.client import Client

from haven.db import Database
from tests.api_harness import BODY, Api, assert_problem


async def test_ready_when_the_database_and_temporal_answer(api: Api):
    response = await api.http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "temporal": "ok"}}


async def test_not_ready_names_what_cannot_be_reached(api: Api):
    services = api.app.state.services
    reachable_db, reachable_client = services.db, services.client
    nowhere = Database("postgresql+psycopg://root@127.0.0.1:1/none")  # nothing listens on port 1
    try:
        services.db = nowhere
        body = assert_problem(await api.http.get("/readyz"), 503, "not-ready")
        assert body["detail"] == "cannot reach database"
        services.db, services.client = reachable_db, await Client.connect("127.0.0.1:1", lazy=True)
        body = assert_problem(await api.http.get("/readyz"), 503, "not-ready")
        assert body["detail"] == "cannot reach temporal"
        assert body["errors"] == [{"field": "temporal", "message": "unreachable"}]
    finally:
        services.db, services.client = reachable_db, reachable_client
        await nowhere.dispose()


def _sample(exposition: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in exposition.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_metrics_count_requests_by_route_template_and_the_fund_by_status(api: Api):
    submitted = await api.submit()
    request_id = submitted.json()["id"]
    await api.until_status(request_id, "awaiting_decision")
    missing = "gr_" + "0" * 20
    for _ in range(3):
        await api.http.get(f"/v1/grant-requests/{missing}", headers=api.token("caseworker", "cw-1"))

    response = await api.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _sample(text, "haven_http_requests_total", method="POST", route="/v1/grant-requests", status="202") == 1
    assert _sample(text, "haven_http_requests_total", method="GET", route="/v1/grant-requests/{request_id}", status="404") == 3
    assert request_id not in text and missing not in text  # ids never become labels
    assert _sample(text, "haven_http_request_duration_seconds_count", method="POST", route="/v1/grant-requests") == 1
    assert _sample(text, "haven_grant_requests", status="awaiting_decision") == 1
    assert _sample(text, "haven_grant_requests", status="paid") == 0  # every status has its line
    assert _sample(text, "haven_follow_ups_overdue") == 0

    await api.http.get("/no/such/path")
    text = (await api.http.get("/metrics")).text
    assert _sample(text, "haven_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert not re.search(r'route="/no/such', text)


async def test_every_answer_carries_a_request_id_that_its_log_lines_carry_too(api: Api):
    first, second = (await api.http.get("/healthz")).headers["x-request-id"], (await api.http.get("/healthz")).headers["x-request-id"]
    assert first != second and len(first) == 16
    assert (await api.http.get("/healthz", headers={"X-Request-ID": "proxy-1234abcd"})).headers["x-request-id"] == "proxy-1234abcd"
    # Not a plain token (it could forge log lines): replaced.
    assert (await api.http.get("/healthz", headers={"X-Request-ID": "x\" injected"})).headers["x-request-id"] != "x\" injected"

    lines: list[dict] = []
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, lambda _l, _m, event: lines.append(event) or event,
                                    structlog.processors.JSONRenderer()])  # fmt: skip
    try:
        headers = {**api.intermediary(), "Idempotency-Key": "log-1", "X-Request-ID": "trace-me-123"}
        response = await api.http.post("/v1/grant-requests", json=BODY, headers=headers)
    finally:
        structlog.reset_defaults()
    assert response.status_code == 202
    [received] = [line for line in lines if line["event"] == "grant_request_received"]
    assert received["http_request_id"] == "trace-me-123" and received["request_id"] == response.json()["id"]


def test_a_line_logged_in_an_activity_names_its_workflow_and_attempt():
    from temporalio.testing import ActivityEnvironment

    from haven.logging import add_temporal_context

    assert add_temporal_context(None, "info", {"event": "outside"}) == {"event": "outside"}
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(environment.info, workflow_id="gr_0123", activity_type="record_event", attempt=3)
    event = environment.run(lambda: add_temporal_context(None, "info", {"event": "inside"}))
    assert event == {"event": "inside", "workflow_id": "gr_0123", "activity": "record_event", "attempt": 3}


def _labels(exposition: str, name: str) -> set[str]:
    """The values of label `name` on the API's request series."""
    lines = [line for line in exposition.splitlines() if line.startswith("haven_http_")]
    return {value for line in lines for value in re.findall(rf'{name}="([^"]*)"', line)}


async def test_metrics_labels_stay_bounded_whatever_methods_and_paths_a_caller_invents(api: Api):
    """A client without a token must not grow /metrics: methods it invents, paths it makes up and
    ids in paths all fold into a fixed set of label values."""
    from api.app import routes

    known_routes = {route.path for route in routes()} | {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}

    async def junk(round: int) -> int:
        for n in range(round * 1000, round * 1000 + 400):
            method = [f"FOO{n}", f"get{n}", "get", "PROPFIND", f"X-{n}", "TRACE", "CONNECT", "BREW"][n % 8]
            path = ["/healthz", f"/v1/grant-requests/gr_{n:020d}", f"/no/such/{n}", f"/v1/codec/{n}", "/metrics"][n % 5]
            await api.http.request(method, path)
        for n in range(100):  # known methods on paths nobody routes
            await api.http.request(["GET", "POST", "DELETE", "PATCH", "PUT"][n % 5], f"/v1/x{round}-{n}/{n}")
        return 500

    tried = await junk(1)
    first = (await api.http.get("/metrics")).text
    tried += await junk(2)  # other invented methods and paths: not one more line
    after = (await api.http.get("/metrics")).text
    assert len(after.splitlines()) == len(first.splitlines()), f"{tried} junk requests kept growing /metrics"

    assert _labels(after, "method") <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert _labels(after, "route") <= known_routes | {"unmatched"}
    assert _labels(after, "status") <= {"200", "201", "202", "204", "400", "401", "403", "404", "405", "409", "413", "415",
                                        "422", "429", "500", "503", "2xx", "3xx", "4xx", "5xx"}
    # Per round, 80 calls of /healthz: 10 with "get" (httpx sends GET), 70 with invented methods.
    assert _sample(after, "haven_http_requests_total", method="other", route="/healthz", status="405") == 2 * 70


async def test_api_docs_are_off_outside_dev_mode_unless_switched_on(time_skipping_env, sqlite_db, tmp_path):
    import httpx

    from api.app import create_app
    from tests.conftest import make_settings

    async def fetched(**overrides) -> dict[str, int]:
        settings = make_settings(tmp_path, sqlite_db.url, **overrides)
        app = create_app(settings, db=sqlite_db, client=time_skipping_env.client)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://haven.test") as http:
            return {path: (await http.get(path)).status_code for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")}

    production = {"dev_mode": False, "jwks_file": _jwks(tmp_path)}
    assert await fetched(**production) == {"/docs": 404, "/redoc": 404, "/openapi.json": 404, "/docs/oauth2-redirect": 404}
    assert (await fetched(**production, api_docs=True))["/openapi.json"] == 200
    assert set((await fetched()).values()) == {200}, "on in dev mode"
    assert set((await fetched(api_docs=False)).values()) == {404}


def _jwks(tmp_path):
    import json

    from cryptography.hazmat.primitives.asymmetric import ec
    from jose import jwk

    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    key = {**jwk.construct(public, "ES256").to_dict(), "kid": "ec-1", "use": "sig", "alg": "ES256"}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key]}, default=lambda b: b.decode()))
    return jwks
