"""The caseworker queue: keyset pages, filters, assignment and hand-over, and audited reads."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update

from haven.db import Database
from haven.db.models import AuditEvent, GrantRequestRecord
from haven.db.queries import NOBODY, QueueFilter, QueuePosition, list_requests
from tests.api_harness import Api, assert_problem

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
_ids = itertools.count()


def _record(policy_hash: str, *, due: datetime | None, created: datetime, **fields) -> GrantRequestRecord:
    n = next(_ids)
    values = dict(
        id=f"gr_q{n:05d}", organisation_id="ngo-1", submitted_by="int-1", idempotency_key=f"q-{n}", body_hash="h",
        category="legal_fees", urgency="normal", country="KE", threat_level="moderate", amount_minor=1000,
        currency="EUR", amount_base_minor=1000, tranche_count=1, rail="manual", policy_hash=policy_hash,
        defender_ref="d", sensitive={}, status="awaiting_decision", status_seq=1, decision_due_at=due,
        escalated=False, follow_up_overdue=False, created_at=created, updated_at=created,
    )  # fmt: skip
    return GrantRequestRecord(**{**values, **fields})


async def _add(db: Database, *records: GrantRequestRecord) -> None:
    async with db.transaction() as session:
        session.add_all(records)


def _key(r: GrantRequestRecord):
    return (r.decision_due_at is None, r.decision_due_at or T0, r.created_at, r.id)


async def test_pages_never_skip_or_repeat_while_requests_arrive(db: Database, default_policy):
    h = default_policy.hash
    originals = [
        # Ties on the deadline and on the creation time, and requests with no deadline at all.
        _record(h, due=T0 + timedelta(hours=i % 4) if i % 5 else None, created=T0 + timedelta(minutes=i // 3))
        for i in range(23)
    ]
    await _add(db, *originals)
    seen: list[GrantRequestRecord] = []
    position = None
    pages = 0
    while True:
        page, position = await list_requests(db, QueueFilter(limit=4, after=position))
        seen += page
        pages += 1
        # New requests arrive between pages, some sorting before the cursor and some after.
        await _add(
            db,
            _record(h, due=T0 - timedelta(hours=1), created=T0, idempotency_key=f"early-{pages}"),
            _record(h, due=None, created=T0 + timedelta(days=1), idempotency_key=f"late-{pages}"),
        )
        if position is None:
            break
        position = QueuePosition.decode(position.encode())  # as the API hands it out and takes it back
    ids = [r.id for r in seen]
    assert len(ids) == len(set(ids)), "a request was listed twice"
    assert {r.id for r in originals} <= set(ids), "a request was skipped"
    assert [_key(r) for r in seen] == sorted(_key(r) for r in seen)


async def test_filters(db: Database, default_policy):
    h = default_policy.hash
    now = datetime.now(timezone.utc)
    late = _record(h, due=now - timedelta(hours=1), created=T0, country="UG", assigned_to="cw-1")
    follow_up_late = _record(h, due=None, created=T0, status="follow_up", follow_up_overdue=True)
    closed_late = _record(h, due=None, created=T0, status="closed", follow_up_overdue=True)
    on_time = _record(h, due=now + timedelta(hours=5), created=T0, urgency="critical", assigned_to="cw-2")
    await _add(db, late, follow_up_late, closed_late, on_time)

    async def ids(**where) -> set[str]:
        return {r.id for r in (await list_requests(db, QueueFilter(**where)))[0]}

    assert await ids(country="UG") == {late.id}
    assert await ids(overdue_at=now) == {late.id, follow_up_late.id}
    assert await ids(assigned_to="cw-2") == {on_time.id}
    assert await ids(assigned_to=NOBODY) == {follow_up_late.id, closed_late.id}
    assert await ids(urgency="critical") == {on_time.id}
    assert await ids(statuses=["follow_up"]) == {follow_up_late.id}
    assert await ids(organisation_id="ngo-2") == set()
    assert closed_late.id not in await ids(overdue_at=now), "a closed case is never overdue"


async def test_the_api_pages_with_a_cursor(api: Api):
    created = [(await api.submit()).json()["id"] for _ in range(3)]
    for request_id in created:  # deadlines are set once screened; page a queue that holds still
        await api.until_status(request_id, "awaiting_decision")
    cw = api.token("caseworker", "cw-1")
    first = (await api.http.get("/v1/grant-requests", params={"limit": 2}, headers=cw)).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = (await api.http.get("/v1/grant-requests", params={"limit": 2, "cursor": first["next_cursor"]}, headers=cw)).json()
    assert second["next_cursor"] is None
    assert sorted(r["id"] for r in first["items"] + second["items"]) == sorted(created)
    forged = await api.http.get("/v1/grant-requests", params={"cursor": "eyJub3QiOiAiYSBjdXJzb3IifQ"}, headers=cw)
    assert assert_problem(forged, 422, "validation-error")["errors"][0]["field"] == "cursor"


async def _roster(api: Api, subject: str, roles: list[str], active: bool = True) -> None:
    body = {"name": subject, "email": f"{subject}@example.org", "roles": roles, "active": active}
    response = await api.http.put(f"/v1/staff/{subject}", json=body, headers=api.token("admin", "adm-1"))
    assert response.status_code in (200, 201), response.text


async def test_assignment_and_hand_over(api: Api):
    for subject, roles in (("cw-1", ["caseworker"]), ("dir-1", ["director"]), ("fin-1", ["finance"])):
        await _roster(api, subject, roles)
    await _roster(api, "cw-gone", ["caseworker"], active=False)
    request_id = (await api.submit()).json()["id"]
    url = f"/v1/grant-requests/{request_id}/assignment"
    cw1 = api.token("caseworker", "cw-1")

    taken = await api.http.put(url, json={"assignee": "me"}, headers=cw1)
    assert taken.status_code == 200 and taken.json()["assigned_to"] == "cw-1"
    mine = (await api.http.get("/v1/grant-requests", params={"assigned_to": "me"}, headers=cw1)).json()["items"]
    assert [r["id"] for r in mine] == [request_id]
    handed = await api.http.put(url, json={"assignee": "dir-1"}, headers=cw1)
    assert handed.json()["assigned_to"] == "dir-1"
    assert (await api.http.get("/v1/grant-requests", params={"assigned_to": "me"}, headers=cw1)).json()["items"] == []

    for refused in ("fin-1", "cw-gone", "nobody-known"):
        body = assert_problem(await api.http.put(url, json={"assignee": refused}, headers=cw1), 422, "assignment-refused")
        assert body["errors"][0]["field"] == "assignee"
    back = await api.http.put(url, json={"assignee": None}, headers=api.token("director", "dir-1"))
    assert back.json()["assigned_to"] is None
    unassigned = (await api.http.get("/v1/grant-requests", params={"assigned_to": "nobody"}, headers=cw1)).json()
    assert [r["id"] for r in unassigned["items"]] == [request_id]

    async with api.db.sessions() as session:
        actions = list(
            await session.scalars(
                select(AuditEvent.action).where(AuditEvent.request_id == request_id, AuditEvent.seq.is_(None), AuditEvent.action != "case_read").order_by(AuditEvent.id)
            )
        )
    assert actions == ["assigned", "handed_over", "unassigned"]

    await api.http.post(f"/v1/grant-requests/{request_id}/withdraw", json={"reason": "resolved"}, headers=api.intermediary())
    await api.until_status(request_id, "withdrawn")
    assert_problem(await api.http.put(url, json={"assignee": "cw-1"}, headers=cw1), 409, "assignment-refused")


async def test_every_read_of_a_case_is_audited_and_kept_out_of_its_timeline(api: Api):
    request_id = (await api.submit()).json()["id"]
    await api.until_status(request_id, "awaiting_decision")  # reads as cw-1 while it waits
    async with api.db.sessions() as session:
        await session.execute(update(AuditEvent).where(AuditEvent.action == "case_read").values(actor="earlier"))
        await session.commit()
    url = f"/v1/grant-requests/{request_id}"
    await api.http.get(url, headers=api.token("caseworker", "cw-7"))
    await api.http.get(url, headers=api.token("finance", "fin-7"))
    case = (await api.http.get(url, headers=api.intermediary())).json()
    await api.http.get("/v1/grant-requests", headers=api.token("caseworker", "cw-8"))  # a list shows no detail
    await api.http.get("/v1/grant-requests/gr_missing", headers=api.token("caseworker", "cw-9"))

    async with api.db.sessions() as session:
        reads = list(
            await session.execute(
                select(AuditEvent.actor, AuditEvent.request_id, AuditEvent.facts, AuditEvent.occurred_at)
                .where(AuditEvent.action == "case_read", AuditEvent.actor != "earlier")
                .order_by(AuditEvent.id)
            )
        )
    assert [(r.actor, r.request_id, r.facts["view"]) for r in reads] == [
        ("cw-7", request_id, "case"),
        ("fin-7", request_id, "payment"),
        ("int-ngo-1", request_id, "case"),
    ]
    assert all(r.occurred_at is not None for r in reads)
    assert "case_read" not in [entry["action"] for entry in case["timeline"]]


async def test_each_organisation_has_its_own_intake_rate(api: Api):
    from api.limits import RateLimit

    now = [1000.0]
    api.app.state.services.intake_rate = RateLimit(2, clock=lambda: now[0])
    assert (await api.submit(org="ngo-1")).status_code == 202
    assert (await api.submit(org="ngo-1")).status_code == 202
    before = await api.counts()
    limited = await api.submit(org="ngo-1")
    assert_problem(limited, 429, "rate-limited")
    assert limited.headers["retry-after"] == "30"  # two a minute: one more in 30 s
    assert (await api.counts())[0] == before[0]
    assert (await api.submit(org="ngo-2")).status_code == 202
    replay = await api.submit(org="ngo-1", key="k-1")  # a retry of the first submission
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    now[0] += 30
    assert (await api.submit(org="ngo-1")).status_code == 202
