"""Administrators change the policy through the API: propose (validated, stored, reviewed against
the active version and the last 90 days of requests), then activate. New requests are pinned to
the active version; requests already running keep theirs. Bad input changes nothing."""

from __future__ import annotations

from sqlalchemy import func, select

from haven.db.models import AuditEvent, GrantRequestRecord, PolicyActivation, PolicyRecord
from haven.policy_versions import ActivePolicy, activate_if_none, record_policy_version
from policies import version_of
from tests.api_harness import Api, assert_problem

ADMIN = ("admin", "admin-1")


def _proposal(api: Api, **changes) -> dict:
    document = api.app.state.services.intake.policy.policy.model_dump(mode="json")
    document["name"] = "stricter-2027"
    for dotted, value in changes.items():
        place = document
        *parents, last = dotted.split(".")
        for key in parents:
            place = place[int(key)] if isinstance(place, list) else place[key]
        place[int(last) if isinstance(place, list) else last] = value
    return document


async def _stored(api: Api) -> tuple[int, int, int]:
    async with api.db.sessions() as session:
        versions = await session.scalar(select(func.count()).select_from(PolicyRecord))
        activations = await session.scalar(select(func.count()).select_from(PolicyActivation))
        events = await session.scalar(select(func.count()).select_from(AuditEvent))
    return versions, activations, events


async def test_propose_review_activate_and_new_requests_are_pinned_to_it(api: Api):
    first = (await api.submit()).json()["id"]  # EUR 1,500 legal fees: one caseworker under the default policy
    await api.until_status(first, "awaiting_decision")
    old_hash = api.app.state.services.intake.policy.hash

    # Four eyes from EUR 1,000 for low and medium risk; legal fees capped at EUR 1,000.
    body = _proposal(api, **{"approval_matrix.0.max_amount": 100_000})
    response = await api.http.post("/v1/policies", json=body, headers=api.token(*ADMIN))
    assert response.status_code == 201, response.text
    review = response.json()
    assert review["active"] is False and review["active_hash"] == old_hash and review["name"] == "stricter-2027"
    assert {"path": "approval_matrix.0.max_amount", "active": 250_000, "proposed": 100_000} in review["changes"]
    assert {"path": "name", "active": "default-2026-11", "proposed": "stricter-2027"} in review["changes"]
    assert review["dry_run"] == {"days": 90, "requests": 1, "different_approvals": 1, "over_a_cap": 0, "not_assessed": 0,
                                 "over_a_cap_by_category": {}}  # fmt: skip
    new_hash = review["hash"]
    again = await api.http.post("/v1/policies", json=body, headers=api.token(*ADMIN))
    assert again.status_code == 200 and again.json()["hash"] == new_hash  # the same document is the same version

    listed = (await api.http.get("/v1/policies", headers=api.token(*ADMIN))).json()
    assert {(v["hash"], v["active"]) for v in listed} == {(old_hash, True), (new_hash, False)}
    assert (await api.http.get(f"/v1/policies/{new_hash}", headers=api.token(*ADMIN))).json()["changes"] == review["changes"]

    activated = await api.http.post(f"/v1/policies/{new_hash}/activation", json={"note": "board decision 2026-12"}, headers=api.token(*ADMIN))
    assert activated.status_code == 201, activated.text
    assert activated.json()["activated_by"] == "admin-1"

    second = (await api.submit()).json()["id"]
    async with api.db.sessions() as session:
        pinned = dict((await session.execute(select(GrantRequestRecord.id, GrantRequestRecord.policy_hash))).all())
        audit = list(await session.scalars(select(AuditEvent).where(AuditEvent.action == "policy_activated")))
    assert pinned == {first: old_hash, second: new_hash}  # the running request keeps its version
    assert audit[-1].actor == "admin-1" and audit[-1].facts == {"hash": new_hash, "replaced": old_hash}
    listed = (await api.http.get("/v1/policies", headers=api.token(*ADMIN))).json()
    assert {(v["hash"], v["active"]) for v in listed} == {(old_hash, False), (new_hash, True)}

    # The version it replaced can be activated again; the active one cannot.
    assert_problem(await api.http.post(f"/v1/policies/{new_hash}/activation", json={}, headers=api.token(*ADMIN)), 409, "conflict")


async def test_bad_proposals_are_refused_and_change_nothing(api: Api):
    before = await _stored(api)
    invalid = _proposal(api, **{"categories.legal_fees.max_grant": -5})
    body = assert_problem(await api.http.post("/v1/policies", json=invalid, headers=api.token(*ADMIN)), 422, "validation-error")
    assert any("categories.legal_fees.max_grant" in e["field"] for e in body["errors"])

    incomplete = _proposal(api)
    del incomplete["categories"]["safe_housing"]
    body = assert_problem(await api.http.post("/v1/policies", json=incomplete, headers=api.token(*ADMIN)), 422, "validation-error")
    assert "no rule for safe_housing" in body["detail"]

    other_base = _proposal(api, base_currency="USD", **{"currencies.USD.rate_to_base": "1", "currencies.EUR.rate_to_base": "1.09"})
    body = assert_problem(await api.http.post("/v1/policies", json=other_base, headers=api.token(*ADMIN)), 422, "validation-error")
    assert body["errors"] == [{"field": "base_currency", "message": "must stay the same"}]

    assert_problem(await api.http.post("/v1/policies", json=_proposal(api), headers=api.token("caseworker", "cw-1")), 403, "forbidden")
    missing = "sha256:" + "0" * 64
    assert_problem(await api.http.post(f"/v1/policies/{missing}/activation", json={}, headers=api.token(*ADMIN)), 404, "not-found")
    assert_problem(await api.http.get("/v1/policies/not-a-hash", headers=api.token(*ADMIN)), 422, "validation-error")
    assert await _stored(api) == before


async def test_an_activation_reaches_the_other_api_processes(api: Api):
    services = api.app.state.services
    other_process = ActivePolicy(api.db, services.intake.policy, refresh=0)
    proposal = version_of(services.intake.policy.policy.model_copy(update={"name": "elsewhere"}))
    await record_policy_version(api.db, proposal)
    await api.http.post(f"/v1/policies/{proposal.hash}/activation", json={}, headers=api.token(*ADMIN))
    assert (await other_process.current()).hash == proposal.hash


async def test_a_restart_with_an_edited_policy_file_keeps_the_active_version(api: Api):
    services = api.app.state.services
    active = services.intake.policy
    edited = version_of(active.policy.model_copy(update={"name": "edited-file"}))
    assert (await activate_if_none(api.db, edited)).hash == active.hash  # recorded, not activated
    listed = (await api.http.get("/v1/policies", headers=api.token(*ADMIN))).json()
    assert {(v["hash"], v["active"]) for v in listed} == {(active.hash, True), (edited.hash, False)}
