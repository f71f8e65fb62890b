"""Every path of the grant request lifecycle on the time-skipping server, with the real
activities and database. Durable timers that run for days or months take milliseconds here."""

from __future__ import annotations

from datetime import timedelta

import pytest

from activities import build_activities
from haven.intake import Intake
from haven.lifecycle import Status
from haven.worker import build_worker
from tests.conftest import make_settings
from tests.harness import FINANCE, Harness, caseworker, director, intermediary
from workflows import GrantRequestWorkflow

S = Status


@pytest.fixture
async def harness(time_skipping_env, sqlite_db, tmp_path, default_policy):
    settings = make_settings(tmp_path, sqlite_db.url)
    worker = build_worker(time_skipping_env.client, sqlite_db, settings)
    intake = Intake(sqlite_db, time_skipping_env.client, settings.task_queue, default_policy, b"index-key")
    async with worker:
        yield Harness(time_skipping_env, intake, sqlite_db)


async def test_single_approval_runs_to_closed(harness: Harness):
    handle = await harness.submit()
    state = await harness.until(handle, S.AWAITING_DECISION)
    assert state.risk.tier == "low" and state.approvals_required == 1 and not state.director_required

    result = await harness.approve(handle, caseworker(), 150_000)
    assert result.status == S.APPROVED
    await harness.until(handle, S.PAYMENT_PENDING)
    [reservation] = await harness.reservations(handle.id)
    assert (reservation.status, reservation.amount_base_minor) == ("held", 150_000)

    await harness.pay(handle, 150_000)
    state = await harness.until(handle, lambda s: s.status == S.FOLLOW_UP and s.report_due_at is not None)
    await harness.report(handle)
    result = await harness.accept(handle)
    assert result.status == S.CLOSED

    final = await handle.result()
    assert final.status == S.CLOSED
    record = await harness.until_recorded(handle.id, S.CLOSED)
    assert record.granted_minor == 150_000
    [payment] = await harness.payments(handle.id)
    assert (payment.status, payment.reference, payment.idempotency_key) == ("paid", "BANK-REF-1", f"{handle.id}:tranche:1")
    [reservation] = await harness.reservations(handle.id)
    assert (reservation.status, reservation.released_base_minor) == ("settled", 0)
    actions = [e.action for e in await harness.audit(handle.id)]
    assert actions == [
        "screening_started", "screened", "risk_assessed", "approve", "budget_reserved", "payment_started",
        "record_payment", "report_requested", "submit_report", "accept_report",
    ]
    assert [e.seq for e in await harness.audit(handle.id)] == list(range(1, 11))
