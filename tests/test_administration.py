"""Administrators: organisations (trust, suspension, where they are notified) and the staff roster.
Every change is audited; bad input is refused with the field named and changes nothing."""

from __future__ import annotations

from sqlalchemy import func, select

from haven.db.models import AuditEvent, Organisation, StaffMember
from tests.api_harness import Api, assert_problem

PARTNER = {
    "name": "Partner Three",
    "trust_level": "standard",
    "notification_email": "alerts@partner-three.example.org",
    "webhook_url": "https://partner-three.example.org/haven",
}


def admin(api: Api) -> dict[str, str]:
    return api.token("admin", "adm-1")


async def _audit_actions(api: Api) -> list[str]:
    async with api.db.sessions() as session:
        return list(await session.scalars(select(AuditEvent.action).where(AuditEvent.actor == "adm-1").order_by(AuditEvent.id)))


async def test_register_change_and_suspend_an_organisation(api: Api):
    created = await api.http.put("/v1/organisations/ngo-3", json=PARTNER, headers=admin(api))
    assert created.status_code == 201, created.text
    secret = created.json()["webhook_secret"]
    assert secret.startswith("whsec_") and len(secret) > 30
    assert (await api.submit(org="ngo-3")).status_code == 202

    changed = await api.http.put("/v1/organisations/ngo-3", json={**PARTNER, "trust_level": "high"}, headers=admin(api))
    assert changed.status_code == 200 and changed.json()["trust_level"] == "high"
    assert changed.json()["webhook_secret"] is None, "the secret is shown once only"
    listed = (await api.http.get("/v1/organisations", headers=admin(api))).json()
    assert "webhook_secret" not in next(o for o in listed if o["id"] == "ngo-3")

    rotated = await api.http.post("/v1/organisations/ngo-3/webhook-secret", headers=admin(api))
    assert rotated.status_code == 200 and rotated.json()["webhook_secret"] not in (None, secret)
    async with api.db.sessions() as session:
        assert (await session.get(Organisation, "ngo-3")).webhook_secret == rotated.json()["webhook_secret"]

    suspended = await api.http.put("/v1/organisations/ngo-3", json={**PARTNER, "active": False}, headers=admin(api))
    assert suspended.json()["active"] is False
    assert "suspended" in assert_problem(await api.submit(org="ngo-3"), 403, "intake-forbidden")["detail"]
    assert await _audit_actions(api) == [
        "organisation_registered",
        "organisation_updated",
        "webhook_secret_rotated",
        "organisation_updated",
    ]


async def test_rotating_needs_a_webhook_and_an_organisation(api: Api):
    no_hook = {k: v for k, v in PARTNER.items() if k != "webhook_url"}
    assert (await api.http.put("/v1/organisations/ngo-4", json=no_hook, headers=admin(api))).json()["webhook_secret"] is None
    assert_problem(await api.http.post("/v1/organisations/ngo-4/webhook-secret", headers=admin(api)), 409, "no-webhook")
    assert_problem(await api.http.post("/v1/organisations/ngo-none/webhook-secret", headers=admin(api)), 404, "not-found")


async def test_bad_organisation_input_names_the_field_and_changes_nothing(api: Api):
    cases = [
        ({**PARTNER, "webhook_url": "http://partner.example.org/hook"}, "webhook_url"),
        ({**PARTNER, "webhook_url": "https://user:pass@partner.example.org/hook"}, "webhook_url"),
        ({**PARTNER, "webhook_url": "ftp://partner.example.org"}, "webhook_url"),
        ({**PARTNER, "webhook_url": "https://169.254.169.254/latest/meta-data"}, "webhook_url"),
        ({**PARTNER, "webhook_url": "https://10.0.0.5/hook"}, "webhook_url"),
        ({**PARTNER, "webhook_url": "https://[fd00::1]/hook"}, "webhook_url"),
        ({**PARTNER, "notification_email": "not-an-address"}, "notification_email"),
        ({**PARTNER, "trust_level": "total"}, "trust_level"),
        ({**PARTNER, "name": ""}, "name"),
        ({**PARTNER, "name": "   "}, "name"),
        ({**PARTNER, "name": "    " + "x" * 200}, "name"),  # over the limit as sent (found by schemathesis)
        ({**PARTNER, "name": "a\x00b"}, "name"),
        ({**PARTNER, "active": "yes please"}, "active"),
        ({**PARTNER, "active": 0}, "active"),  # a number is not a yes or no (found by schemathesis)
        ({**PARTNER, "is_admin": True}, "is_admin"),
    ]
    for body, field in cases:
        problem = assert_problem(await api.http.put("/v1/organisations/ngo-5", json=body, headers=admin(api)), 422, "validation-error")
        assert field in [e["field"] for e in problem["errors"]], (field, problem)
    for bad_id in ("NGO-Upper", "a", "ngo_5", "x" * 70):
        assert (await api.http.put(f"/v1/organisations/{bad_id}", json=PARTNER, headers=admin(api))).status_code == 422
    async with api.db.sessions() as session:
        assert await session.get(Organisation, "ngo-5") is None
        assert await session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.actor == "adm-1")) == 0


async def test_the_staff_roster(api: Api):
    body = {"name": "Amina", "email": "amina@fund.example.org", "roles": ["caseworker", "director"]}
    created = await api.http.put("/v1/staff/0b8e6c3a-keycloak-sub", json=body, headers=admin(api))
    assert created.status_code == 201 and created.json()["roles"] == ["caseworker", "director"]
    off = await api.http.put("/v1/staff/0b8e6c3a-keycloak-sub", json={**body, "active": False}, headers=admin(api))
    assert off.status_code == 200 and off.json()["active"] is False
    roster = (await api.http.get("/v1/staff", headers=api.token("caseworker", "cw-1"))).json()
    assert [m["subject"] for m in roster] == ["0b8e6c3a-keycloak-sub"]

    for bad, field in (
        ({**body, "roles": ["intermediary"]}, "roles"),
        ({**body, "roles": []}, "roles"),
        ({**body, "roles": ["root"]}, "roles.0"),
        ({**body, "email": "amina at fund"}, "email"),
    ):
        problem = assert_problem(await api.http.put("/v1/staff/new-person", json=bad, headers=admin(api)), 422, "validation-error")
        assert field in [e["field"] for e in problem["errors"]], (field, problem)
    assert (await api.http.put("/v1/staff/has%2Fslash", json=body, headers=admin(api))).status_code in (404, 422)
    async with api.db.sessions() as session:
        assert await session.get(StaffMember, "new-person") is None
    assert await _audit_actions(api) == ["staff_added", "staff_updated"]


async def test_a_new_webhook_endpoint_gets_a_new_secret_and_a_removed_one_keeps_none(api: Api):
    first = (await api.http.put("/v1/organisations/ngo-6", json=PARTNER, headers=admin(api))).json()["webhook_secret"]
    moved = {**PARTNER, "webhook_url": "https://new-host.example.org/haven"}
    second = (await api.http.put("/v1/organisations/ngo-6", json=moved, headers=admin(api))).json()["webhook_secret"]
    assert second and second != first
    removed = {k: v for k, v in PARTNER.items() if k != "webhook_url"}
    assert (await api.http.put("/v1/organisations/ngo-6", json=removed, headers=admin(api))).json()["webhook_secret"] is None
    async with api.db.sessions() as session:
        assert (await session.get(Organisation, "ngo-6")).webhook_secret is None
    again = (await api.http.put("/v1/organisations/ngo-6", json=PARTNER, headers=admin(api))).json()["webhook_secret"]
    assert again and again not in (first, second)


async def test_registering_the_same_organisation_twice_at_once(api: Api):
    import asyncio

    responses = await asyncio.gather(
        *(api.http.put("/v1/organisations/ngo-7", json=PARTNER, headers=admin(api)) for _ in range(4)),
        *(api.http.put("/v1/staff/cw-new", json={"name": "N", "email": "n@example.org", "roles": ["caseworker"]},
                       headers=admin(api)) for _ in range(4)),
    )  # fmt: skip
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses if r.status_code >= 300]
    assert sorted(r.status_code for r in responses[:4]).count(201) == 1
