"""Every role against every endpoint, on a request of its own organisation and of another.

The expectations below are written out by hand, as the specification; they are deliberately not
read from `api.permissions.PERMISSIONS`, so a wrong entry there (or a route guarded by the wrong
operation) fails this test. A refused call must leave no trace of the caller in the audit log."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from api.app import create_app, routes
from api.permissions import operation_of, permission_table
from haven.db import utcnow
from haven.db.models import AuditEvent, Organisation, ReconciliationRun, StaffMember
from haven.exports.spec import ExportFormat, ExportKind, ExportSpec, Period
from haven.exports.stream import Export, record_export
from haven.grant_request import Actor, Role
from haven.policy_versions import record_policy_version
from haven.settings import REPO_ROOT
from haven.stripe_local import LocalStripe
from haven.worker import build_worker
from tests.conftest import TEST_ISSUER, make_settings, prepare_database, start_time_skipping
from policies import load_policy, version_of
from tests.harness import SAMPLE_REQUEST

I, C, D, F, A = "intermediary", "caseworker", "director", "finance", "admin"
ROLES = [I, C, D, F, A]
EUR = {"minor_units": 1_000, "currency": "EUR"}
YESTERDAY = (utcnow().date() - timedelta(days=1)).isoformat()
RUN = "rc_access"  # a reconciliation run the fixture stores
EXPORT = "ex_" + "a" * 32  # an export whose manifest the fixture records
# A policy version the fixture records, not active (the default policy under another name).
PROPOSED_POLICY = version_of(load_policy(REPO_ROOT / "policies" / "default.yaml").policy.model_copy(update={"name": "access-proposal"}))
# Placeholders of paths that are neither a request, an organisation nor a staff member.
FIXED_PLACES = {"{run_id}": RUN, "{export_id}": EXPORT, "{kind}": "ledger", "{category}": "legal_fees", "{starts_on}": "3000-01-01",
                "{policy_hash}": PROPOSED_POLICY.hash}  # fmt: skip


def _placed(path: str) -> str:
    for place, value in FIXED_PLACES.items():
        path = path.replace(place, value)
    return path


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {id} is a grant request, {org} an organisation, {sub} a staff member
    allowed: frozenset[str]
    body: dict | None = None

    @property
    def about_a_request(self) -> bool:
        return "{id}" in self.path


def E(method: str, path: str, allowed: set[str], body: dict | None = None) -> Endpoint:
    return Endpoint(method, path, frozenset(allowed), body)


ENDPOINTS = [
    E("POST", "/v1/grant-requests", {I}, SAMPLE_REQUEST),
    E("GET", "/v1/grant-requests", {I, C, D, F}),
    E("GET", "/v1/grant-requests/{id}", {I, C, D, F}),
    E("POST", "/v1/grant-requests/{id}/decisions", {C, D}, {"kind": "approve", "amount": EUR}),
    E("POST", "/v1/grant-requests/{id}/screening-clearance", {C, D}, {"note": "a different person"}),
    E("POST", "/v1/grant-requests/{id}/information", {I}, {"answer": "the quote is attached"}),
    E("POST", "/v1/grant-requests/{id}/payments", {F}, {"amount": EUR, "reference": "SEPA-1", "paid_on": "2026-11-24"}),
    E("POST", "/v1/grant-requests/{id}/payment-failures", {F}, {"reason": "account closed"}),
    E("POST", "/v1/grant-requests/{id}/payment-retries", {F}, {}),
    E("POST", "/v1/grant-requests/{id}/check-ins", {I}, {"still_needed": True}),
    E("POST", "/v1/grant-requests/{id}/reports", {I}, {"text": "done", "receipts": ["R-1"]}),
    E("POST", "/v1/grant-requests/{id}/report-acceptance", {C, D}, {"note": "receipts match"}),
    E("POST", "/v1/grant-requests/{id}/withdraw", {I}, {"reason": "no longer needed"}),
    E("PUT", "/v1/grant-requests/{id}/assignment", {C, D}, {"assignee": "cw-roster"}),
    E("POST", "/v1/grant-requests/{id}/refunds", {F}, {"tranche": 1, "amount": EUR, "reference": "IN-1", "received_on": "2026-11-24"}),
    E("GET", "/v1/organisations", {A}),
    E("PUT", "/v1/organisations/{org}", {A}, {"name": "New partner", "trust_level": "standard"}),
    E("POST", "/v1/organisations/{org}/webhook-secret", {A}),
    E("GET", "/v1/staff", {C, D, A}),
    E("PUT", "/v1/staff/{sub}", {A}, {"name": "New colleague", "email": "new@example.org", "roles": ["caseworker"]}),
    E("POST", "/v1/reconciliations", {F}, {"day": YESTERDAY}),
    E("GET", "/v1/reconciliations", {D, F}),
    E("GET", "/v1/reconciliations/{run_id}", {D, F}),
    E("GET", "/v1/audit/verification", {D, F, A}),
    E("GET", "/v1/budget/allocations", {D, F}),
    E("PUT", "/v1/budget/allocations/{category}/{starts_on}", {F}, {"ends_on": "3000-12-31", "amount": EUR}),
    E("GET", "/v1/budget/summary", {D, F}),
    E("GET", "/v1/exports/{kind}?from=2026-01-01&to=2026-01-02", {F}),
    E("GET", "/v1/exports/{export_id}/manifest", {F}),
    E("POST", "/v1/grant-requests/{id}/erasure", {A}, {"reason": "asked by the defender"}),
    E("POST", "/v1/codec/decode", {C, D}, {"payloads": []}),
    E("POST", "/v1/codec/encode", {C, D}, {"payloads": []}),
    E("GET", "/v1/policies", {A}),
    E("POST", "/v1/policies", {A}, PROPOSED_POLICY.policy.model_dump(mode="json")),
    E("GET", "/v1/policies/{policy_hash}", {A}),
    E("POST", "/v1/policies/{policy_hash}/activation", {A}, {"note": "access test"}),
]


def _cases():
    for endpoint in ENDPOINTS:
        for role in ROLES:
            for whose in ("own", "other") if endpoint.about_a_request else ("-",):
                yield pytest.param(endpoint, role, whose, id=f"{endpoint.method} {endpoint.path} {role} {whose}")


class Access:
    def __init__(self, http: httpx.AsyncClient, app, db):
        self.http, self.app, self.db = http, app, db
        self.serial = itertools.count()

    def headers(self, role: str, subject: str, organisation: str | None = None) -> dict[str, str]:
        # Intermediaries belong to ngo-1 unless told otherwise; fund staff carry no organisation.
        organisation = organisation or ("ngo-1" if role == I else None)
        token = self.app.state.services.verifier.issue(subject, [Role(role)], organisation, timedelta(minutes=5))
        return {"Authorization": f"Bearer {token}", "Idempotency-Key": f"access-{next(self.serial)}"}

    async def enrol(self, subject: str, role: str) -> None:
        """Staff act only as active rostered people: each test's staff subject is put on the roster."""
        if role == I:
            return
        async with self.db.transaction() as session:
            now = utcnow()
            session.add(StaffMember(issuer=TEST_ISSUER, subject=subject, subject_key=subject, name=subject,
                                    email=f"{subject}@example.org", roles=[role], active=True, created_at=now, updated_at=now))  # fmt: skip

    async def new_request(self, organisation: str) -> str:
        headers = self.headers(I, f"submitter-{organisation}", organisation)
        response = await self.http.post("/v1/grant-requests", json=SAMPLE_REQUEST, headers=headers)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    async def audit_rows_by(self, subject: str) -> int:
        async with self.db.sessions() as session:
            return await session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.actor == subject))


@pytest.fixture(scope="module")
async def access(tmp_path_factory, default_policy) -> AsyncIterator[Access]:
    tmp = tmp_path_factory.mktemp("access")
    db = await prepare_database(f"sqlite+aiosqlite:///{tmp / 'haven.db'}", default_policy)
    async with db.transaction() as session:
        now = utcnow()
        session.add(StaffMember(issuer=TEST_ISSUER, subject="cw-roster", subject_key="cw-roster", name="Roster Caseworker", email="cw@example.org",
                                roles=["caseworker"], active=True, created_at=now, updated_at=now))  # fmt: skip
        session.add(Organisation(id="ngo-hook", name="hook", trust_level="standard", active=True,
                                 webhook_url="https://hooks.example.org/haven", webhook_secret="s", created_at=now))  # fmt: skip
        session.add(ReconciliationRun(id=RUN, day=now.date(), trigger="schedule", requested_by="schedule", status="done",
                                      transfers_seen=0, payments_seen=0, mismatches=0, started_at=now))  # fmt: skip
    empty_day = ExportSpec(ExportKind.LEDGER, ExportFormat.CSV, Period(date(2026, 1, 1), date(2026, 1, 2)))
    export = Export(empty_day, Actor(subject="fin-fixture", roles=[Role.FINANCE]), EXPORT)
    async for _ in export.chunks(db):
        pass
    await record_export(db, export.actor, export.manifest)
    await record_policy_version(db, PROPOSED_POLICY)
    env = await start_time_skipping()
    stripe = LocalStripe().start()  # finance's reconciliation needs the Stripe rail
    settings = make_settings(tmp, db.url, stripe_api_key=stripe.api_key, stripe_api_base=stripe.url)
    app = create_app(settings, db=db, client=env.client)
    async with build_worker(env.client, db, settings), app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://haven.test") as http:
            yield Access(http, app, db)
    await env.shutdown()
    stripe.stop()
    await db.dispose()


@pytest.mark.parametrize(("endpoint", "role", "whose"), list(_cases()))
async def test_role_endpoint_organisation(access: Access, endpoint: Endpoint, role: str, whose: str):
    n = next(access.serial)
    subject = f"{role}-{n}"
    await access.enrol(subject, role)
    path = endpoint.path.replace("{org}", "ngo-hook" if "webhook" in endpoint.path else f"org-{n}")
    path = _placed(path.replace("{sub}", f"staff-{n}"))
    if endpoint.about_a_request:
        path = path.replace("{id}", await access.new_request("ngo-1" if whose == "own" else "ngo-2"))
    response = await access.http.request(
        endpoint.method, path, json=endpoint.body, headers=access.headers(role, subject)
    )

    if role not in endpoint.allowed:
        expected = 403
    elif role == I and whose == "other":
        expected = 404  # the same answer as for an id that does not exist: ids cannot be probed
    else:
        expected = None
    if expected is not None:
        assert response.status_code == expected, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert await access.audit_rows_by(subject) == 0, "a refused call left a trace in the audit log"
    else:
        # Reached the operation: done, or refused by the workflow for the request's current status.
        assert response.status_code in (200, 201, 202, 409), response.text
        # Refused for the request's state: nothing was paid yet, it is not over yet.
        refusals = {"urn:haven:problem:action-refused", "urn:haven:problem:refund-refused", "urn:haven:problem:erasure-refused"}
        assert response.status_code != 409 or response.json()["type"] in refusals


@pytest.mark.parametrize(
    ("roles", "organisation"),
    [([I, F], "ngo-1"), ([I, A], "ngo-1"), ([I, C], "ngo-1"), ([I], None)],
    ids=["intermediary+finance", "intermediary+admin", "intermediary+caseworker", "intermediary-without-org"],
)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
async def test_tokens_that_would_escape_organisation_scoping_are_refused(access: Access, endpoint, roles, organisation):
    n = next(access.serial)
    subject = f"mixed-{n}"
    path = _placed(endpoint.path.replace("{org}", f"org-{n}").replace("{sub}", f"staff-{n}"))
    if endpoint.about_a_request:
        path = path.replace("{id}", await access.new_request("ngo-2"))
    token = access.app.state.services.verifier.issue(subject, [Role(r) for r in roles], organisation, timedelta(minutes=5))
    response = await access.http.request(
        endpoint.method, path, json=endpoint.body, headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"m-{n}"}
    )
    assert response.status_code == 403, response.text
    assert await access.audit_rows_by(subject) == 0


def test_the_readme_shows_the_permission_table_of_the_routes():
    table = permission_table(routes())
    readme = (REPO_ROOT / "README.md").read_text()
    assert table in readme, "README.md's permission table is out of date; replace it with:\n\n" + table


def test_the_specification_above_covers_every_guarded_route():
    guarded = {(method, route.path) for route in routes() if operation_of(route) is not None for method in route.methods}
    specified = {
        (e.method, e.path.split("?")[0].replace("{id}", "{request_id}").replace("{org}", "{organisation_id}").replace("{sub}", "{subject}"))
        for e in ENDPOINTS
    }
    assert guarded == specified
