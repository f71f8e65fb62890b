"""Envelope encryption of a request's details and retention by crypto-shredding: every sensitive
field is sealed with the request's own data key (bound to the request and the field), the key is
stored only wrapped by a master key that rotates, and once the key is destroyed (retention, or an
admin's erasure) the details are gone for good while the ledger balances and the audit chain
verifies."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from haven.case_keys import ERASED, SENSITIVE, CaseKeys, MasterKeys, Sealer
from haven.db import utcnow
from haven.db.models import CaseKey, GrantRequestRecord
from haven.keyring import KeyRing, KeyRingError
from tests.api_harness import Api, assert_problem, stored_counts
from tests.canaries import CANARIES, case_through_to_closed
from tests.conftest import TEST_CASE_KEYS, TEST_MASTER_KEYS
from tests.ledger_checks import assert_ledger_balances


def test_a_sealed_field_opens_only_for_its_own_request_and_field():
    sealer, _ = TEST_CASE_KEYS.new("gr_a", utcnow())
    sealed = sealer.seal(SENSITIVE, {"payee": {"name": "Advocates"}})
    assert sealed.startswith("sealed:v1:") and "Advocates" not in sealed
    assert sealer.open(SENSITIVE, sealed) == {"payee": {"name": "Advocates"}}
    with pytest.raises(KeyRingError, match="moved from elsewhere"):
        sealer.open("decisions.note", sealed)  # the same key, another field
    with pytest.raises(KeyRingError, match="moved from elsewhere"):
        Sealer("gr_b", sealer.data_key).open(SENSITIVE, sealed)  # another request's row
    assert sealer.open(SENSITIVE, {"written": "before sealing"}) == {"written": "before sealing"}
    assert Sealer("gr_a", None, destroyed=True).open(SENSITIVE, sealed) == ERASED


def test_data_keys_wrapped_under_the_old_master_key_unwrap_after_rotation():
    old = CaseKeys(MasterKeys(KeyRing.parse(TEST_MASTER_KEYS.split(",")[1])))
    _, row = old.new("gr_c", utcnow())
    assert row.master_key_id == "master-1" and len(row.wrapped_key) == 12 + 32 + 16
    rotated = MasterKeys(KeyRing.parse(TEST_MASTER_KEYS))
    assert len(rotated.unwrap("gr_c", row.master_key_id, row.wrapped_key)) == 32
    with pytest.raises(KeyRingError, match="does not unwrap"):
        rotated.unwrap("gr_other", row.master_key_id, row.wrapped_key)  # bound to its request
    with pytest.raises(KeyRingError, match="not configured"):
        MasterKeys(KeyRing.parse(KeyRing.generate("elsewhere"))).unwrap("gr_c", row.master_key_id, row.wrapped_key)


def _database_bytes(api: Api) -> bytes:
    path = Path(api.db.url.split(":///", 1)[1])
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


async def test_the_database_holds_no_detail_of_a_case_in_the_clear(api: Api):
    request_id = await case_through_to_closed(api)
    case = (await api.http.get(f"/v1/grant-requests/{request_id}", headers=api.token("caseworker", "cw-1"))).json()
    assert case["details"]["payee"]["name"] == CANARIES["payee_name"]  # readers entitled to it see it
    assert [m["body"] for m in case["messages"] if m["kind"] == "information_response"] == [{"answer": CANARIES["answer"]}]
    assert case["report"]["text"] == CANARIES["report"] and case["report"]["receipts"] == [CANARIES["receipt"]]
    assert CANARIES["approval_note"] in [d["note"] for d in case["decisions"]]

    stored = _database_bytes(api)
    assert len(stored) > 100_000 and request_id.encode() in stored  # the file scanned is the right one
    found = [name for name, value in CANARIES.items() if value.encode() in stored]
    assert found == [], f"the database holds {found} in the clear"


async def test_an_admin_erases_a_closed_request_for_good_and_the_books_still_hold(api: Api):
    request_id = await case_through_to_closed(api)
    running = (await api.submit()).json()["id"]
    await api.until_status(running, "awaiting_decision")
    admin = api.token("admin", "adm-1")

    before = await stored_counts(api.db)
    assert_problem(await api.http.post(f"/v1/grant-requests/{running}/erasure", json={"reason": "asked"}, headers=admin), 409, "erasure-refused")
    assert_problem(await api.http.post(f"/v1/grant-requests/{request_id}/erasure", json={"reason": "asked"}, headers=api.token("caseworker", "cw-1")), 403, "forbidden")
    assert_problem(await api.http.post("/v1/grant-requests/gr_nothing/erasure", json={"reason": "asked"}, headers=admin), 404, "not-found")
    assert await stored_counts(api.db) == before

    erased = await api.http.post(f"/v1/grant-requests/{request_id}/erasure", json={"reason": "the defender asked"}, headers=admin)
    assert erased.status_code == 200 and erased.json() == {"request_id": request_id, "erased": True}
    again = await api.http.post(f"/v1/grant-requests/{request_id}/erasure", json={"reason": "twice"}, headers=admin)
    assert again.json()["erased"] is False

    case = (await api.http.get(f"/v1/grant-requests/{request_id}", headers=api.token("caseworker", "cw-1"))).json()
    assert case["details"] == {"erased": True} and case["report"]["text"] == ERASED
    assert case["status"] == "closed" and case["payments"][0]["status"] == "paid"
    async with api.db.sessions() as session:
        key = await session.get(CaseKey, request_id)
        record = await session.get(GrantRequestRecord, request_id)
    assert key.wrapped_key is None and key.destroyed_why == "the defender asked"
    # Not even the master keys open it now: there is no data key left to unwrap.
    async with api.db.sessions() as session:
        with_master_keys = await TEST_CASE_KEYS.sealer(session, request_id)
    assert with_master_keys.data_key is None and with_master_keys.open(SENSITIVE, record.sensitive) == ERASED
    assert record.sensitive.startswith("sealed:v1:")  # the ciphertext is still there, unreadable
    await assert_ledger_balances(api.db)
    verification = (await api.http.get("/v1/audit/verification", headers=admin)).json()
    assert verification["intact"]
    stored = _database_bytes(api)
    assert not any(value.encode() in stored for value in CANARIES.values())


async def test_the_retention_run_destroys_the_keys_of_requests_over_for_longer_than_the_policy_keeps_them(api: Api):
    from activities.retention import CaseDataRetention

    old, recent = await case_through_to_closed(api), await case_through_to_closed(api)
    running = (await api.submit()).json()["id"]
    await api.until_status(running, "awaiting_decision")
    retention_days = api.app.state.services.intake.policy.policy.retention_days
    async with api.db.transaction() as session:
        long_ago = utcnow() - timedelta(days=retention_days + 1)
        await session.execute(update(GrantRequestRecord).where(GrantRequestRecord.id.in_([old, running])).values(updated_at=long_ago))
    from temporalio.testing import ActivityEnvironment

    run = CaseDataRetention(api.db, TEST_CASE_KEYS)
    assert await ActivityEnvironment().run(run.destroy_expired_case_data) == 1
    assert await ActivityEnvironment().run(run.destroy_expired_case_data) == 0  # a retried run destroys nothing twice
    async with api.db.sessions() as session:
        keys = {k.request_id: k for k in await session.scalars(select(CaseKey).where(CaseKey.request_id.in_([old, recent, running])))}
    assert keys[old].wrapped_key is None and keys[old].destroyed_why == "retention period over"
    assert keys[recent].wrapped_key is not None and keys[running].wrapped_key is not None  # kept: too recent; still running
    audit = (await api.http.get(f"/v1/exports/audit?from={utcnow().date()}&to={utcnow().date() + timedelta(days=1)}&format=jsonl",
                                headers=api.token("finance", "fin-1"))).text  # fmt: skip
    destroyed = [json.loads(line) for line in audit.splitlines() if '"case_data_destroyed"' in line]
    assert [(e["request_id"], e["actor"], e["facts"]["why"]) for e in destroyed] == [(old, "system", "retention period over")]
    await assert_ledger_balances(api.db)


async def test_the_daily_retention_schedule_destroys_what_is_due(sqlite_db, default_policy, tmp_path):
    """On the Temporal dev server (the time-skipping one has no schedules): every worker ensures
    the `case-data-retention` schedule, Stripe or not, and what it starts destroys due keys."""
    import asyncio
    import time

    from temporalio.testing import WorkflowEnvironment

    from haven.schedules import RETENTION_HOUR_UTC, RETENTION_SCHEDULE, ensure_schedules
    from haven.worker import build_worker
    from tests.conftest import DATA_CONVERTER, make_settings, venv_binary
    from tests.test_records import _stored_request

    request_id = await _stored_request(sqlite_db, default_policy)
    async with sqlite_db.transaction() as session:
        await session.execute(
            update(GrantRequestRecord).where(GrantRequestRecord.id == request_id)
            .values(status="withdrawn", updated_at=utcnow() - timedelta(days=default_policy.policy.retention_days + 1))
        )  # fmt: skip
    settings = make_settings(tmp_path, sqlite_db.url)
    async with await WorkflowEnvironment.start_local(dev_server_existing_path=venv_binary("temporal"), data_converter=DATA_CONVERTER) as env:
        await ensure_schedules(env.client, settings)
        await ensure_schedules(env.client, settings)  # a second worker starting: updated, not duplicated
        handle = env.client.get_schedule_handle(RETENTION_SCHEDULE)
        described = await handle.describe()
        assert [(c.hour[0].start, c.minute[0].start) for c in described.schedule.spec.calendars] == [(RETENTION_HOUR_UTC, 0)]
        assert [s.id async for s in await env.client.list_schedules()].count(RETENTION_SCHEDULE) == 1
        async with build_worker(env.client, sqlite_db, settings):
            await handle.trigger()
            deadline = time.monotonic() + 20
            while True:
                async with sqlite_db.sessions() as session:
                    key = await session.get(CaseKey, request_id)
                if key.wrapped_key is None:
                    break
                assert time.monotonic() < deadline, "the scheduled retention run did not destroy the key"
                await asyncio.sleep(0.1)
        await handle.delete()
    assert key.destroyed_why == "retention period over"
