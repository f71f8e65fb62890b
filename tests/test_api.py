"""The HTTP API over the real workflow (time-skipping server), worker and database: auth, roles,
organisation scoping, problem bodies, and that refused input leaves nothing behind."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest
from jose import jwt

from tests.api_harness import BODY, Api, assert_problem


# --- authentication ---------------------------------------------------------------------------


def _forge(api: Api, **changes) -> str:
    claims = {"sub": "cw-1", "roles": ["caseworker"], "aud": "haven-api", "iss": "haven-dev",
              "exp": int(time.time()) + 300}  # fmt: skip
    key = changes.pop("_key", api.verifier.key)
    algorithm = changes.pop("_alg", "HS256")
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=algorithm)


def _alg_none(claims: dict) -> str:
    import base64
    import json

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


@pytest.mark.parametrize("case", ["wrong_key", "no_exp", "alg_none"])
async def test_dev_mode_tokens_signed_otherwise_get_401_and_change_nothing(api: Api, case: str):
    """The production path (JWKS keys) has its attack table in test_auth.py; in dev mode the
    HS256 secret must be just as strict."""
    now = int(time.time())
    tokens = {
        "wrong_key": _forge(api, _key="guessed-secret-" + "y" * 32),
        "no_exp": _forge(api, exp=None),
        "alg_none": _alg_none({"sub": "cw-1", "roles": ["caseworker"], "aud": "haven-api", "iss": "haven-dev", "exp": now + 300}),
    }
    headers = {"Authorization": f"Bearer {tokens[case]}"}
    before = await api.counts()
    response = await api.http.post("/v1/grant-requests", json=BODY, headers={**headers, "Idempotency-Key": "k"})
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert (await api.http.get("/v1/grant-requests", headers=headers)).status_code == 401
    assert await api.counts() == before


async def test_roles_are_enforced_per_endpoint(api: Api):
    response = await api.http.post(
        "/v1/grant-requests", json=BODY, headers={**api.token("finance", "fin-1"), "Idempotency-Key": "k"}
    )
    assert "may not submit" in assert_problem(response, 403, "forbidden")["detail"]
    created = (await api.submit()).json()
    await api.until_status(created["id"], "awaiting_decision")
    decision = {"kind": "approve", "amount": {"minor_units": 150_000, "currency": "EUR"}}
    for role in ("intermediary", "finance", "admin"):
        org = "ngo-1" if role == "intermediary" else None
        response = await api.http.post(
            f"/v1/grant-requests/{created['id']}/decisions", json=decision, headers=api.token(role, f"{role}-1", org)
        )
        assert_problem(response, 403, "forbidden")
    assert (await api.http.get("/v1/grant-requests", headers=api.token("admin", "adm-1"))).status_code == 403


async def test_intermediaries_see_only_their_organisation(api: Api):
    mine = (await api.submit(org="ngo-1")).json()
    theirs = (await api.submit(org="ngo-2")).json()
    own = await api.http.get(f"/v1/grant-requests/{mine['id']}", headers=api.intermediary("ngo-1"))
    assert own.status_code == 200 and own.json()["details"]["defender"]["pseudonym"] == "falcon-17"
    other = await api.http.get(f"/v1/grant-requests/{theirs['id']}", headers=api.intermediary("ngo-1"))
    assert_problem(other, 404, "not-found")
    missing = await api.http.get("/v1/grant-requests/gr_doesnotexist", headers=api.intermediary("ngo-1"))
    assert other.json()["detail"].replace(theirs["id"], "X") == missing.json()["detail"].replace("gr_doesnotexist", "X")
    listed = await api.http.get("/v1/grant-requests", headers=api.intermediary("ngo-1"))
    assert [r["id"] for r in listed.json()["items"]] == [mine["id"]]
    withdraw = await api.http.post(
        f"/v1/grant-requests/{theirs['id']}/withdraw", json={"reason": "x"}, headers=api.intermediary("ngo-1")
    )
    assert_problem(withdraw, 404, "not-found")


async def test_finance_sees_the_payee_but_not_the_case(api: Api):
    created = (await api.submit()).json()
    view = (await api.http.get(f"/v1/grant-requests/{created['id']}", headers=api.token("finance", "fin-1"))).json()
    assert set(view["details"]) == {"payee"} and view["messages"] is None
    case = (await api.http.get(f"/v1/grant-requests/{created['id']}", headers=api.token("caseworker", "cw-1"))).json()
    assert case["details"]["threat_summary"].startswith("Summoned")


# --- intake: validation, idempotency, nothing half-written ----------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": {"minor_units": 1500.5, "currency": "EUR"}}, "amount.minor_units"),
        ({"amount": {"minor_units": -100, "currency": "EUR"}}, "amount.minor_units"),
        ({"amount": {"minor_units": 0, "currency": "EUR"}}, "amount.minor_units"),
        ({"amount": {"minor_units": "150000", "currency": "EUR"}}, "amount.minor_units"),
        ({"amount": {"minor_units": 150000, "currency": "euro"}}, "amount.currency"),
        ({"category": "armed_guards"}, "category"),
        ({"urgency": "yesterday"}, "urgency"),
        ({"country": "Kenya"}, "country"),
        ({"payee": {"name": "", "country": "KE"}}, "payee.name"),
        ({"defender": {"pseudonym": "falcon", "name": "Real Name"}}, "defender.name"),
        ({"purpose": "x" * 4001}, "purpose"),
        ({"tranches": 2.5}, "tranches"),
        ({"payee": {"name": "Vendor", "country": "KE", "rail": "stripe"}}, "payee"),
        ({"payee": {"name": "Vendor", "country": "KE", "rail": "stripe", "stripe_account": "ba_123"}}, "payee.stripe_account"),
    ],
)
async def test_invalid_submissions_point_at_the_field_and_store_nothing(api: Api, change, field):
    before = await api.counts()
    body = assert_problem(await api.submit({**BODY, **change}), 422, "validation-error")
    assert field in [e["field"] for e in body["errors"]], body
    assert await api.counts() == before


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"amount": {"minor_units": 900_000, "currency": "EUR"}}, "amount.minor_units", "capped at 750000"),
        ({"amount": {"minor_units": 10_000, "currency": "JPY"}}, "amount.currency", "does not pay in JPY"),
        ({"tranches": 3}, "tranches", "one payment"),
        ({"category": "safe_housing", "tranches": 12}, "tranches", "at most 6"),
        (
            {"payee": {"name": "Vendor", "country": "KE", "rail": "stripe", "stripe_account": "acct_1Abc"}},
            "payee.rail",
            "does not pay through stripe",  # this deployment has no Stripe key
        ),
    ],
)
async def test_submissions_the_policy_cannot_grant_are_refused(api: Api, change, field, words):
    before = await api.counts()
    body = assert_problem(await api.submit({**BODY, **change}), 422, "intake-policy")
    assert body["errors"][0]["field"] == field and words in body["detail"]
    assert await api.counts() == before


async def test_malformed_oversized_and_non_json_bodies(api: Api):
    headers = {**api.intermediary(), "Idempotency-Key": "k"}
    before = await api.counts()
    malformed = await api.http.post(
        "/v1/grant-requests", content=b'{"category": ', headers={**headers, "Content-Type": "application/json"}
    )
    assert_problem(malformed, 400, "malformed-json")
    huge = {**BODY, "purpose": "x" * (api.settings.max_body_bytes + 1)}
    assert_problem(await api.http.post("/v1/grant-requests", json=huge, headers=headers), 413, "body-too-large")
    form = await api.http.post("/v1/grant-requests", data={"category": "legal_fees"}, headers=headers)
    assert_problem(form, 415, "unsupported-media-type")
    no_key = await api.http.post("/v1/grant-requests", json=BODY, headers=api.intermediary())
    assert "Idempotency-Key" in assert_problem(no_key, 422, "validation-error")["detail"]
    assert await api.counts() == before


async def test_idempotency_key_replays_and_conflicts(api: Api):
    first = await api.submit(key="same-key")
    again = await api.submit(key="same-key")
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert first.headers["location"] == f"/v1/grant-requests/{first.json()['id']}"
    other_body = {**BODY, "amount": {"minor_units": 99_000, "currency": "EUR"}}
    assert_problem(await api.submit(other_body, key="same-key"), 422, "intake-idempotency")
    # Keys are per organisation: another organisation's identical key is its own request.
    elsewhere = await api.submit(key="same-key", org="ngo-2")
    assert elsewhere.json()["id"] != first.json()["id"]
    assert (await api.counts())[0] == 2


async def test_concurrent_duplicate_submissions_create_one_request(api: Api):
    responses = await asyncio.gather(*(api.submit(key="burst") for _ in range(8)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert (await api.counts())[0] == 1


async def test_unregistered_and_suspended_organisations_cannot_submit(api: Api):
    before = await api.counts()
    assert "not registered" in assert_problem(await api.submit(org="ngo-unknown"), 403, "intake-forbidden")["detail"]
    assert "suspended" in assert_problem(await api.submit(org="ngo-suspended"), 403, "intake-forbidden")["detail"]
    assert await api.counts() == before


# --- actions -------------------------------------------------------------------------------------


def _today() -> str:
    """A payment is dated between its approval and today (UTC)."""
    return datetime.now(timezone.utc).date().isoformat()


async def test_refused_actions_are_409_with_the_reason(api: Api):
    created = (await api.submit()).json()
    await api.until_status(created["id"], "awaiting_decision")
    url = f"/v1/grant-requests/{created['id']}"
    approve = {"kind": "approve", "amount": {"minor_units": 150_000, "currency": "EUR"}}
    too_much = {"kind": "approve", "amount": {"minor_units": 150_001, "currency": "EUR"}}
    body = assert_problem(await api.http.post(f"{url}/decisions", json=too_much, headers=api.token("caseworker", "cw-1")), 409, "action-refused")
    assert "no more than the amount requested" in body["detail"]
    own_org = api.token("caseworker", "cw-9", "ngo-1")
    assert "own organisation" in assert_problem(await api.http.post(f"{url}/decisions", json=approve, headers=own_org), 409, "action-refused")["detail"]
    payment = {"amount": {"minor_units": 150_000, "currency": "EUR"}, "reference": "T-1", "paid_on": "2026-11-24"}
    early = await api.http.post(f"{url}/payments", json=payment, headers=api.token("finance", "fin-1"))
    assert "while the request is awaiting_decision" in assert_problem(early, 409, "action-refused")["detail"]
    reject_without_reason = await api.http.post(f"{url}/decisions", json={"kind": "reject"}, headers=api.token("caseworker", "cw-1"))
    assert "needs a note" in assert_problem(reject_without_reason, 409, "action-refused")["detail"]
    reject = {"kind": "reject", "note": "Outside the mandate."}
    assert (await api.http.post(f"{url}/decisions", json=reject, headers=api.token("caseworker", "cw-1"))).json()["status"] == "rejected"
    await api.until_status(created["id"], "rejected")
    closed = await api.http.post(f"{url}/decisions", json=approve, headers=api.token("caseworker", "cw-2"))
    assert "rejected" in assert_problem(closed, 409, "action-refused")["detail"]


async def test_whole_lifecycle_through_http(api: Api):
    created = (await api.submit()).json()
    assert created["status"] == "received"
    url = f"/v1/grant-requests/{created['id']}"
    await api.until_status(created["id"], "awaiting_decision")
    queue = (await api.http.get("/v1/grant-requests?status=awaiting_decision", headers=api.token("caseworker", "cw-1"))).json()["items"]
    assert [r["id"] for r in queue] == [created["id"]] and queue[0]["decision_due_at"]

    ask = {"kind": "request_information", "note": "Please send the lawyer's quote."}
    assert (await api.http.post(f"{url}/decisions", json=ask, headers=api.token("caseworker", "cw-1"))).json()["status"] == "information_requested"
    answer = await api.http.post(f"{url}/information", json={"answer": "Quote: 1,500 EUR."}, headers=api.intermediary())
    assert answer.json()["status"] == "awaiting_decision"
    approve = {"kind": "approve", "amount": {"minor_units": 150_000, "currency": "EUR"}}
    assert (await api.http.post(f"{url}/decisions", json=approve, headers=api.token("caseworker", "cw-1"))).json()["status"] == "approved"
    await api.until_status(created["id"], "payment_pending")
    payment = {"amount": {"minor_units": 150_000, "currency": "EUR"}, "reference": "SEPA-2026-0042", "paid_on": _today()}
    assert (await api.http.post(f"{url}/payments", json=payment, headers=api.token("finance", "fin-1"))).json()["status"] == "paid"
    await api.until_status(created["id"], "follow_up")
    report = {"text": "Lawyer retained; hearing postponed.", "receipts": ["INV-2026-17"]}
    assert (await api.http.post(f"{url}/reports", json=report, headers=api.intermediary())).status_code == 200
    accept = await api.http.post(f"{url}/report-acceptance", json={"note": "Receipts match."}, headers=api.token("caseworker", "cw-2"))
    assert accept.json()["status"] == "closed"

    view = await api.until_status(created["id"], "closed")
    assert view["granted"] == {"minor_units": 150_000, "currency": "EUR"}
    assert view["payments"][0]["reference"] == "SEPA-2026-0042" and view["payments"][0]["status"] == "paid"
    assert [m["kind"] for m in view["messages"]] == ["information_request", "information_response"]
    assert view["report"]["receipts"] == ["INV-2026-17"] and view["report"]["accepted_by"] == "cw-2"
    assert view["timeline"][-1]["action"] == "accept_report"


async def test_concurrent_approvals_over_http_keep_exactly_the_matrix(api: Api):
    # 4,000 EUR needs two caseworkers (four eyes); six press "approve" at the same moment.
    created = (await api.submit({**BODY, "amount": {"minor_units": 400_000, "currency": "EUR"}})).json()
    await api.until_status(created["id"], "awaiting_decision")
    url = f"/v1/grant-requests/{created['id']}/decisions"
    approve = {"kind": "approve", "amount": {"minor_units": 400_000, "currency": "EUR"}}
    responses = await asyncio.gather(
        *(api.http.post(url, json=approve, headers=api.token("caseworker", f"cw-{n}")) for n in range(1, 7))
    )
    assert sorted(r.status_code for r in responses) == [200, 200, 409, 409, 409, 409]
    for refused in (r for r in responses if r.status_code == 409):
        assert refused.json()["type"] == "urn:haven:problem:action-refused"
    case = await api.until_status(created["id"], "payment_pending")
    approvals = [d for d in case["decisions"] if d["kind"] == "approve"]
    assert len(approvals) == 2 and len({d["actor"] for d in approvals}) == 2
