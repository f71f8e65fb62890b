"""The activities' writes, on SQLite and PostgreSQL: every one idempotent, none half-done."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import func, select

from activities.budget import BudgetReservations
from activities.payments import Disbursements
from activities.records import CaseRecords
from activities.risk import RiskAssessor
from haven.case_events import (
    CaseEvent,
    DecisionEntry,
    NotificationRequest,
    PaymentInstruction,
    PaymentUpdate,
    RequestProjection,
    ReservationRelease,
    ReservationRequest,
)
from haven.db.models import AuditEvent, BudgetReservation, Decision, GrantRequestRecord, LedgerEntry, Notification, Payment
from haven.intake import Intake
from haven.money import Money
from tests.conftest import TEST_CASE_KEYS
from tests.harness import caseworker, intermediary, submission

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


class _NoTemporal:
    """Intake's client when the test is about the database: starting a workflow fails, as when
    Temporal is down, and the request must still be stored for the sweep."""

    async def start_workflow(self, *args, **kwargs):
        raise ConnectionError("Temporal is unreachable in this test")


_keys = itertools.count()


async def _stored_request(db, default_policy, **overrides) -> str:
    intake = Intake(db, _NoTemporal(), "q", default_policy, b"index-key", case_keys=TEST_CASE_KEYS)
    accepted = await intake.submit(submission(**overrides), intermediary(), f"key-{next(_keys)}")
    return accepted.record.id


async def _count(db, model, **where) -> int:
    async with db.sessions() as session:
        query = select(func.count()).select_from(model)
        for column, value in where.items():
            query = query.where(getattr(model, column) == value)
        return await session.scalar(query)


def _event(request_id: str, seq: int, status_to: str, **extra) -> CaseEvent:
    return CaseEvent(
        request_id=request_id, seq=seq, at=T0 + timedelta(seconds=seq), action=f"step-{seq}",
        actor=caseworker(), status_from="received", status_to=status_to, **extra,
    )  # fmt: skip


async def test_intake_stores_even_when_temporal_is_down(db, default_policy):
    request_id = await _stored_request(db, default_policy)
    async with db.sessions() as session:
        record = await session.get(GrantRequestRecord, request_id)
        details = await TEST_CASE_KEYS.details(session, record)
    assert record.status == "received" and record.status_seq == 0
    assert "falcon" not in str(record.sensitive) and record.sensitive.startswith("sealed:v1:")
    assert details["defender"]["pseudonym"] == "falcon-17"
    assert "falcon" not in record.defender_ref and len(record.defender_ref) == 64


async def test_record_event_is_idempotent_and_atomic(db, default_policy):
    request_id = await _stored_request(db, default_policy)
    records = CaseRecords(db, "http://haven.test")
    event = _event(
        request_id, 1, "awaiting_decision",
        decision=DecisionEntry(kind="approve", amount=Money(minor_units=5, currency="EUR")),
        projection=RequestProjection(risk_score=35, risk_tier="low"),
        notifications=[NotificationRequest(kind="decision_needed", audience="caseworker")],
    )  # fmt: skip
    assert await records.record_event(event) is True
    assert await records.record_event(event) is False
    results = await asyncio.gather(*(records.record_event(event) for _ in range(5)))
    assert results == [False] * 5
    for model in (AuditEvent, Decision, Notification):
        assert await _count(db, model, request_id=request_id) == 1
    async with db.sessions() as session:
        record = await session.get(GrantRequestRecord, request_id)
        note = await session.scalar(select(Notification).where(Notification.request_id == request_id))
    assert (record.status, record.risk_score) == ("awaiting_decision", 35)
    assert note.payload == {
        "request_id": request_id, "kind": "decision_needed", "status": "awaiting_decision",
        "link": f"http://haven.test/v1/grant-requests/{request_id}",
    }  # fmt: skip


async def test_late_events_do_not_move_the_status_back(db, default_policy):
    request_id = await _stored_request(db, default_policy)
    records = CaseRecords(db, "http://haven.test")
    await records.record_event(_event(request_id, 3, "approved"))
    await records.record_event(_event(request_id, 2, "awaiting_decision", projection=RequestProjection(escalated=True)))
    async with db.sessions() as session:
        record = await session.get(GrantRequestRecord, request_id)
    assert (record.status, record.status_seq, record.escalated) == ("approved", 3, True)


async def test_reservations_are_idempotent(db, default_policy):
    request_id = await _stored_request(db, default_policy)
    budget = BudgetReservations(db)
    eur = Money(minor_units=150_000, currency="EUR")
    at = datetime.now(timezone.utc)
    reserve = ReservationRequest(
        request_id=request_id, number=1, category="legal_fees", amount_base_minor=150_000, amount=eur, rate_to_base=Decimal(1), at=at
    )
    await asyncio.gather(*(budget.reserve_budget(reserve) for _ in range(4)))
    assert await _count(db, BudgetReservation, request_id=request_id) == 1
    release = ReservationRelease(
        request_id=request_id, number=1, release_base_minor=150_000, amount=eur, rate_to_base=Decimal(1), reason="failed", at=at
    )
    await budget.release_budget(release)
    await budget.release_budget(release)
    async with db.sessions() as session:
        [row] = (await session.scalars(select(BudgetReservation).where(BudgetReservation.request_id == request_id))).all()
    assert (row.status, row.released_base_minor) == ("released", 150_000)
    async with db.sessions() as session:
        kinds = (await session.scalars(select(LedgerEntry.kind).where(LedgerEntry.request_id == request_id))).all()
    assert sorted(kinds) == ["release", "reservation"]  # one of each, however often the activities ran


async def test_one_payment_row_per_tranche_across_retries(db, default_policy):
    request_id = await _stored_request(db, default_policy)
    payments = Disbursements(db, None, TEST_CASE_KEYS)
    records = CaseRecords(db, "http://haven.test")
    instruction = PaymentInstruction(
        request_id=request_id, tranche=1, attempt=1, rail="manual",
        amount=Money(minor_units=150_000, currency="EUR"), amount_base_minor=150_000,
    )  # fmt: skip
    outcomes = await asyncio.gather(*(payments.start_disbursement(instruction) for _ in range(3)))
    assert {o.outcome for o in outcomes} == {"awaiting_confirmation"}
    await records.record_event(_event(request_id, 1, "payment_failed", payment=PaymentUpdate(tranche=1, status="failed", failure_reason="bounced")))
    await payments.start_disbursement(instruction.model_copy(update={"attempt": 2}))
    await payments.start_disbursement(instruction.model_copy(update={"attempt": 2}))
    async with db.sessions() as session:
        [row] = (await session.scalars(select(Payment).where(Payment.request_id == request_id))).all()
    assert (row.status, row.attempts, row.idempotency_key) == ("pending", 2, f"{request_id}:tranche:1")


async def test_prior_grants_to_the_same_defender_raise_the_risk(db, default_policy):
    earlier = await _stored_request(db, default_policy)
    async with db.transaction() as session:
        record = await session.get(GrantRequestRecord, earlier)
        record.granted_base_minor, record.status = 150_000, "closed"
    other_defender = await _stored_request(db, default_policy, defender={"pseudonym": "owl-2"})
    same_defender = await _stored_request(db, default_policy, defender={"pseudonym": "  FALCON-17 "})
    risk = RiskAssessor(db)
    assert (await risk.assess_risk(other_defender, default_policy)).prior_grants_12_months == 0
    assessed = await risk.assess_risk(same_defender, default_policy)
    assert (assessed.prior_grants_12_months, assessed.prior_granted_base_12_months) == (1, 150_000)
    assert assessed.factors["prior_grants"] == 10
