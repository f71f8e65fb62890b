"""The audit log's hash chain, on SQLite and PostgreSQL: a real case's events chain and verify;
altering, deleting or inserting one row (behind the application's back, in SQL) is detected and
the event named; concurrent appends make one unbroken chain; `haven audit verify` and
`GET /v1/audit/verification` answer the same report."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from sqlalchemy import delete, func, insert, select, update

from haven.audit import record_case_read, record_change
from haven.audit_chain import GENESIS, append, event_hash, verify_chain
from haven.db import Database, utcnow
from haven.db.migrate import alembic_config
from haven.db.models import AuditChainHead, AuditEvent
from haven.grant_request import SYSTEM
from haven.policy_versions import record_policy_version
from haven.lifecycle import Status
from haven.settings import REPO_ROOT
from tests.api_harness import Api
from tests.harness import Harness, caseworker

EVENTS = AuditEvent.__table__


async def _events(db) -> list[AuditEvent]:
    async with db.sessions() as session:
        return list(await session.scalars(select(AuditEvent).order_by(AuditEvent.chain_seq)))


async def _chain_of(db, n: int) -> list[AuditEvent]:
    """`n` changes audited one transaction each, after the policy version the fixture recorded."""
    for i in range(n):
        async with db.transaction() as session:
            await record_change(session, caseworker(), "assigned", f"gr_{i}", previous=None, assignee=f"cw-{i}")
    return await _events(db)


async def _sql(db, statement) -> None:
    """A change made behind the application's back."""
    async with db.engine.begin() as conn:
        await conn.execute(statement)


def _forged(chain_seq: int | None, prev_hash: str | None, **content) -> dict:
    """An event as a forger would write it; its hash computed as the application would."""
    at = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
    row = {
        "request_id": "gr_forged", "seq": None, "action": "approve", "actor": "cw-9", "roles": ["caseworker"],
        "status_from": None, "status_to": None, "facts": {"amount_minor": 750_000}, "occurred_at": at,
        "recorded_at": at, "chain_seq": chain_seq, "prev_hash": prev_hash, **content,
    }  # fmt: skip
    return {**row, "hash": event_hash(SimpleNamespace(**row)) if chain_seq is not None else None}


async def _problem(db) -> tuple[str, int | None, int | None]:
    report = await verify_chain(db)
    assert not report.intact and report.problem is not None
    return report.problem.kind, report.problem.chain_seq, report.problem.event_id


# --- the chain as the application writes it -----------------------------------------------------


async def test_a_real_case_s_events_chain_and_verify_intact(harness: Harness):
    handle = await harness.submit()
    await harness.until(handle, Status.AWAITING_DECISION)
    await record_case_read(harness.db, caseworker(), handle.id, view="case")
    await harness.approve(handle, caseworker(), 150_000)
    await harness.until(handle, Status.PAYMENT_PENDING)
    await harness.pay(handle, 150_000)
    await harness.until(handle, lambda s: s.status == Status.FOLLOW_UP and s.report_due_at is not None)
    await harness.report(handle)
    await harness.accept(handle)
    await harness.until_recorded(handle.id, Status.CLOSED)

    events = await _events(harness.db)
    assert [e.chain_seq for e in events] == list(range(1, len(events) + 1))
    assert [e.prev_hash for e in events] == [GENESIS] + [e.hash for e in events[:-1]]
    assert all(event_hash(e) == e.hash for e in events)  # read back from the database: the same hash
    actions = [e.action for e in events]
    assert actions[0] == "policy_version_recorded" and "case_read" in actions and "accept_report" in actions
    report = await verify_chain(harness.db)
    assert report.intact and report.problem is None
    assert (report.events, report.head_seq, report.head_hash) == (len(events), events[-1].chain_seq, events[-1].hash)
    assert report.describe() == f"audit chain intact: {len(events)} events, head #{len(events)} {events[-1].hash}"


async def test_the_hash_is_the_same_after_a_round_trip_through_the_database(db):
    """The canonical form is pinned: the same event hashes to the same value on every backend."""
    west_africa = timezone(timedelta(hours=1))
    event = AuditEvent(
        request_id="gr_roundtrip", seq=7, action="approve", actor="cw-ü", roles=["caseworker", "director"],
        status_from="awaiting_decision", status_to="approved",
        facts={"note": "Avocate à Dakar — 弁護士", "amount_minor": 10**15, "rate": 0.1, "nested": {"z": [1, None, True]}, "b": 1},
        occurred_at=datetime(2026, 11, 24, 13, 0, 0, 123456, tzinfo=west_africa),
        recorded_at=datetime(2026, 11, 24, 12, 0, 1, 7, tzinfo=timezone.utc),
    )  # fmt: skip
    event.chain_seq, event.prev_hash = 2, "a" * 64
    # The canonical form, written out: anyone can recompute the chain from an export with it.
    canonical = (
        '{"action":"approve","actor":"cw-ü","chain_seq":2,"facts":{"amount_minor":1000000000000000,"b":1,'
        '"nested":{"z":[1,null,true]},"note":"Avocate à Dakar — 弁護士","rate":0.1},'
        '"occurred_at":"2026-11-24T12:00:00.123456+00:00","prev_hash":"' + "a" * 64 + '",'
        '"recorded_at":"2026-11-24T12:00:01.000007+00:00","request_id":"gr_roundtrip","roles":["caseworker","director"],'
        '"seq":7,"status_from":"awaiting_decision","status_to":"approved"}'
    )
    assert event_hash(event) == hashlib.sha256(canonical.encode()).hexdigest()
    async with db.transaction() as session:
        await append(session, event)
    async with db.sessions() as session:
        stored = await session.get(AuditEvent, event.id)
    assert event_hash(stored) == stored.hash
    assert stored.occurred_at == datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=timezone.utc)
    assert (await verify_chain(db)).intact


async def test_a_policy_version_recorded_is_an_audit_event(db, default_policy):
    async with db.sessions() as session:
        [event] = await session.scalars(select(AuditEvent).where(AuditEvent.action == "policy_version_recorded"))
    assert (event.actor, event.facts) == ("system", {"hash": default_policy.hash, "name": default_policy.policy.name})
    await record_policy_version(db, default_policy)  # the same version again: nothing new
    changed = default_policy.model_copy(update={"hash": "sha256:" + "1" * 64})
    await record_policy_version(db, changed)
    async with db.sessions() as session:
        recorded = list(await session.scalars(select(AuditEvent.facts).where(AuditEvent.action == "policy_version_recorded")))
    assert [f["hash"] for f in recorded] == [default_policy.hash, changed.hash]
    assert (await verify_chain(db)).intact


async def test_concurrent_appends_make_one_unbroken_chain(db):
    async def change(i: int) -> None:
        async with db.transaction() as session:
            await record_change(session, SYSTEM, "staff_updated", staff=f"s-{i}")

    await asyncio.gather(*(change(i) for i in range(50)))
    report = await verify_chain(db)
    assert report.intact and report.events == report.head_seq == 51
    events = await _events(db)
    assert sorted(e.facts.get("staff", "") for e in events)[1:] == sorted(f"s-{i}" for i in range(50))
    # Ids are given in chain order (under the chain's lock): what tells a stand-in from an alteration.
    assert [e.id for e in events] == sorted(e.id for e in events)


async def test_an_audit_event_rolls_back_with_its_change(db):
    before = await verify_chain(db)
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await record_change(session, SYSTEM, "staff_updated", staff="s-1")
            raise RuntimeError("the change failed after it was audited")
    after = await verify_chain(db)
    assert after.intact and (after.head_seq, after.head_hash) == (before.head_seq, before.head_hash)


# --- tampering ---------------------------------------------------------------------------------


async def test_an_altered_event_is_named(db):
    events = await _chain_of(db, 5)
    target = events[3]
    await _sql(db, update(EVENTS).where(EVENTS.c.id == target.id).values(facts={**target.facts, "assignee": "cw-x"}))
    assert await _problem(db) == ("altered", target.chain_seq, target.id)
    report = await verify_chain(db)
    assert report.events == target.chain_seq - 1
    assert "altered: its content does not match its hash" in report.describe()


async def test_an_altered_time_is_named(db):
    events = await _chain_of(db, 3)
    target = events[2]
    await _sql(db, update(EVENTS).where(EVENTS.c.id == target.id).values(occurred_at=target.occurred_at - timedelta(microseconds=1)))
    assert await _problem(db) == ("altered", target.chain_seq, target.id)


async def test_an_event_altered_with_its_hash_recomputed_is_named(db):
    events = await _chain_of(db, 5)
    target = events[2]
    rewritten = {**_forged(target.chain_seq, target.prev_hash, facts={"assignee": "cw-x"}, request_id=target.request_id)}
    await _sql(db, update(EVENTS).where(EVENTS.c.id == target.id).values(**rewritten))
    assert await _problem(db) == ("altered", target.chain_seq, target.id)


async def test_a_removed_event_is_named(db):
    events = await _chain_of(db, 5)
    target = events[2]
    await _sql(db, delete(EVENTS).where(EVENTS.c.id == target.id))
    assert await _problem(db) == ("removed", target.chain_seq, None)
    report = await verify_chain(db)
    assert f"#{target.chain_seq} missing after #{target.chain_seq - 1}" in report.problem.detail


async def test_the_newest_event_removed_is_named(db):
    events = await _chain_of(db, 3)
    await _sql(db, delete(EVENTS).where(EVENTS.c.id == events[-1].id))
    assert await _problem(db) == ("removed", events[-1].chain_seq, None)


async def test_a_removed_head_is_reported(db):
    await _chain_of(db, 2)
    await _sql(db, delete(AuditChainHead.__table__))
    assert await _problem(db) == ("removed", None, None)


async def test_an_event_inserted_without_a_place_in_the_chain_is_named(db):
    await _chain_of(db, 3)
    await _sql(db, insert(EVENTS).values(**_forged(None, None)))
    async with db.sessions() as session:
        forged = await session.scalar(select(func.max(AuditEvent.id)))
    assert await _problem(db) == ("inserted", None, forged)


@pytest.mark.parametrize("plausible", [True, False], ids=["plausible-hash", "made-up-hash"])
async def test_an_event_inserted_after_the_head_is_named(db, plausible):
    events = await _chain_of(db, 3)
    row = _forged(events[-1].chain_seq + 1, events[-1].hash)
    if not plausible:
        row["hash"] = "f" * 64
    await _sql(db, insert(EVENTS).values(**row))
    async with db.sessions() as session:
        forged = await session.scalar(select(AuditEvent.id).where(AuditEvent.request_id == "gr_forged"))
    assert await _problem(db) == ("inserted", events[-1].chain_seq + 1, forged)


async def test_an_event_put_in_the_place_of_a_removed_one_is_named(db):
    events = await _chain_of(db, 5)
    target = events[2]
    await _sql(db, delete(EVENTS).where(EVENTS.c.id == target.id))
    await _sql(db, insert(EVENTS).values(**_forged(target.chain_seq, target.prev_hash)))
    async with db.sessions() as session:
        forged = await session.scalar(select(AuditEvent.id).where(AuditEvent.request_id == "gr_forged"))
    assert await _problem(db) == ("inserted", target.chain_seq, forged)


@pytest.mark.parametrize("place", [0, -1])
async def test_an_event_inserted_before_the_first_is_named(db, place):
    await _chain_of(db, 2)
    await _sql(db, insert(EVENTS).values(**_forged(place, GENESIS)))
    async with db.sessions() as session:
        forged = await session.scalar(select(AuditEvent.id).where(AuditEvent.request_id == "gr_forged"))
    assert await _problem(db) == ("inserted", place, forged)


# --- migration, CLI and API --------------------------------------------------------------------


async def test_the_migration_chains_the_events_written_before_the_chain(database_url):
    from alembic import command

    config = alembic_config(database_url)
    await asyncio.to_thread(command.downgrade, config, "0003")
    db = Database(database_url)
    try:
        at = utcnow()
        written = [
            {"request_id": None, "seq": None, "action": "case_read", "actor": "cw-1", "roles": ["caseworker"],
             "status_from": None, "status_to": None, "facts": {"view": "case", "n": i}, "occurred_at": at, "recorded_at": at}
            for i in range(2500)  # more than one batch of the migration's
        ]  # fmt: skip
        async with db.engine.begin() as conn:
            await conn.execute(insert(EVENTS), written)
        await asyncio.to_thread(command.upgrade, config, "head")
        report = await verify_chain(db)
        assert report.intact and report.events == report.head_seq == 2500
        events = await _events(db)
        assert [e.facts["n"] for e in events] == list(range(2500))  # chained in the order written
        async with db.transaction() as session:
            await record_change(session, SYSTEM, "staff_updated", staff="after-migration")
        assert (await verify_chain(db)).head_seq == 2501
    finally:
        await db.dispose()


async def _cli(database_url: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "haven.cli", "audit", "verify",
        env={**os.environ, "HAVEN_DATABASE_URL": database_url}, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    return process.returncode, output.decode()


async def test_the_cli_exits_0_when_intact_and_1_naming_the_event_when_not(db):
    events = await _chain_of(db, 2)
    code, output = await _cli(db.url)
    assert (code, output.strip()) == (0, f"audit chain intact: 3 events, head #3 {events[-1].hash}")
    await _sql(db, update(EVENTS).where(EVENTS.c.id == events[1].id).values(actor="someone-else"))
    code, output = await _cli(db.url)
    assert code == 1, output
    assert f"audit chain NOT intact: #2 (id {events[1].id}) altered: its content does not match its hash" in output


async def test_the_api_answers_the_report(api: Api):
    finance = api.token("finance", "fin-1")
    response = await api.http.get("/v1/audit/verification", headers=finance)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["intact"] is True and body["problem"] is None and body["events"] == body["head"]["seq"] >= 1

    events = await _events(api.db)
    await _sql(api.db, delete(EVENTS).where(EVENTS.c.id == events[-1].id))
    response = await api.http.get("/v1/audit/verification", headers=api.token("director", "dir-1"))
    assert response.status_code == 200
    body = response.json()
    assert body["intact"] is False
    assert (body["problem"]["kind"], body["problem"]["chain_seq"], body["problem"]["event_id"]) == ("removed", events[-1].chain_seq, None)


@pytest.mark.parametrize("role", ["intermediary", "caseworker"])
async def test_only_finance_directors_and_admins_may_verify(api: Api, role):
    headers = api.token(role, f"{role}-1", "ngo-1" if role == "intermediary" else None)
    response = await api.http.get("/v1/audit/verification", headers=headers)
    assert response.status_code == 403
    assert (await api.http.get("/v1/audit/verification", headers=api.token("admin", "adm-1"))).status_code == 200
