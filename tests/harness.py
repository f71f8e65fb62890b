"""Drives grant requests through the real workflow, activities and database, as people would."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from haven.case_keys import open_report
from haven.db import Database
from haven.db.models import AuditEvent, BudgetReservation, FollowUpReportRecord, GrantRequestRecord, Notification, Payment
from haven.grant_request import (
    ActionResult,
    Actor,
    CheckInRecord,
    DecisionCommand,
    FollowUpReport,
    GrantRequestState,
    GrantRequestSubmission,
    InformationResponse,
    ManualPaymentRecord,
    PaymentFailureRecord,
    PaymentRail,
    PaymentRetry,
    ReportAcceptance,
    Role,
    ScreeningClearance,
    Withdrawal,
)
from haven.intake import Intake
from haven.lifecycle import Status
from haven.money import Money
from tests.workflow_histories import keep
from workflows.grant_request import GrantRequestWorkflow

_keys = itertools.count()


# A low-risk legal fees request (score 35: one caseworker approval).
SAMPLE_REQUEST: dict[str, Any] = {
    "category": "legal_fees",
    "urgency": "normal",
    "country": "KE",
    "amount": {"minor_units": 150_000, "currency": "EUR"},
    "tranches": 1,
    "threat_level": "moderate",
    "threat_summary": "Summoned for questioning after publishing a report.",
    "purpose": "Retainer for a defence lawyer.",
    "defender": {"pseudonym": "falcon-17"},
    "payee": {"name": "Wanjiru & Partners Advocates", "country": "KE", "account": "KE00 1234 5678"},
}


def submission(**overrides: Any) -> GrantRequestSubmission:
    return GrantRequestSubmission.model_validate({**SAMPLE_REQUEST, **overrides})


def caseworker(n: int = 1, org: str = "fund") -> Actor:
    return Actor(subject=f"cw-{n}", roles=[Role.CASEWORKER], organisation=org)


def director(n: int = 1) -> Actor:
    return Actor(subject=f"dir-{n}", roles=[Role.DIRECTOR], organisation="fund")


FINANCE = Actor(subject="fin-1", roles=[Role.FINANCE], organisation="fund")


def intermediary(org: str = "ngo-1", n: int = 1) -> Actor:
    return Actor(subject=f"int-{org}-{n}", roles=[Role.INTERMEDIARY], organisation=org)


class Harness:
    def __init__(self, env: WorkflowEnvironment, intake: Intake, db: Database):
        self.env = env
        self.intake = intake
        self.db = db

    async def submit(self, actor: Actor | None = None, **overrides: Any) -> WorkflowHandle:
        accepted = await self.intake.submit(submission(**overrides), actor or intermediary(), f"key-{next(_keys)}")
        keep(self.env.client, accepted.record.id)
        return self.env.client.get_workflow_handle_for(GrantRequestWorkflow.run, accepted.record.id)

    async def state(self, handle: WorkflowHandle) -> GrantRequestState:
        return await handle.query(GrantRequestWorkflow.state)

    async def until(self, handle: WorkflowHandle, check, timeout: float = 15.0) -> GrantRequestState:
        """Polls the workflow's state until `check` (a status or a predicate) holds."""
        predicate = check if callable(check) else (lambda s: s.status == check)
        deadline = time.monotonic() + timeout
        while True:
            state = await self.state(handle)
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; the request is {state.status}: {[e.action for e in state.timeline]}")
            await asyncio.sleep(0.02)

    async def record(self, request_id: str) -> GrantRequestRecord:
        async with self.db.sessions() as session:
            return await session.get(GrantRequestRecord, request_id)

    async def until_recorded(self, request_id: str, status: Status, timeout: float = 15.0) -> GrantRequestRecord:
        """Waits until the database's projection has caught up with the workflow."""
        deadline = time.monotonic() + timeout
        while True:
            record = await self.record(request_id)
            if record.status == status:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"database shows {record.status}, expected {status}")
            await asyncio.sleep(0.02)

    async def act(self, handle: WorkflowHandle, update, command) -> ActionResult:
        return await handle.execute_update(update, command)

    async def refused(self, handle: WorkflowHandle, update, command) -> str:
        """Asserts that the workflow refuses the action and returns its reason."""
        try:
            await handle.execute_update(update, command)
        except WorkflowUpdateFailedError as error:
            return str(error.cause.message if hasattr(error.cause, "message") else error.cause)
        except RPCError as error:  # the workflow has already completed
            return f"cannot act: {error.message}"
        raise AssertionError("the action was accepted but should have been refused")

    # The steps people take, named as they would name them.
    async def approve(self, handle, actor: Actor, minor_units: int, currency: str = "EUR") -> ActionResult:
        command = DecisionCommand(actor=actor, kind="approve", amount=Money(minor_units=minor_units, currency=currency))
        return await self.act(handle, GrantRequestWorkflow.decide, command)

    async def reject(self, handle, actor: Actor, note: str = "Outside the fund's mandate.") -> ActionResult:
        return await self.act(handle, GrantRequestWorkflow.decide, DecisionCommand(actor=actor, kind="reject", note=note))

    async def ask(self, handle, actor: Actor, note: str = "Please send the lawyer's quote.") -> ActionResult:
        command = DecisionCommand(actor=actor, kind="request_information", note=note)
        return await self.act(handle, GrantRequestWorkflow.decide, command)

    async def answer(self, handle, actor: Actor | None = None, answer: str = "Quote attached.") -> ActionResult:
        command = InformationResponse(actor=actor or intermediary(), answer=answer)
        return await self.act(handle, GrantRequestWorkflow.provide_information, command)

    async def clear(self, handle, actor: Actor, note: str = "Different entity: checked the registry.") -> ActionResult:
        return await self.act(handle, GrantRequestWorkflow.clear_screening, ScreeningClearance(actor=actor, note=note))

    async def pay(self, handle, minor_units: int, currency: str = "EUR", reference: str = "BANK-REF-1") -> ActionResult:
        # Dated the day of the approval (workflow time): not before it, not in the future.
        approved = [a.at for a in (await handle.query(GrantRequestWorkflow.state)).approvals]
        paid_on = (max(approved) if approved else datetime.now(timezone.utc)).astimezone(timezone.utc).date()
        command = ManualPaymentRecord(
            actor=FINANCE, amount=Money(minor_units=minor_units, currency=currency), reference=reference, paid_on=paid_on
        )
        return await self.act(handle, GrantRequestWorkflow.record_payment, command)

    async def payment_failed(self, handle, reason: str = "Beneficiary bank rejected the transfer.") -> ActionResult:
        command = PaymentFailureRecord(actor=FINANCE, reason=reason)
        return await self.act(handle, GrantRequestWorkflow.record_payment_failure, command)

    async def retry(self, handle, rail: PaymentRail | None = None) -> ActionResult:
        return await self.act(handle, GrantRequestWorkflow.retry_payment, PaymentRetry(actor=FINANCE, rail=rail))

    async def check_in(self, handle, still_needed: bool = True) -> ActionResult:
        command = CheckInRecord(actor=intermediary(), still_needed=still_needed, note="Still at the safe house.")
        return await self.act(handle, GrantRequestWorkflow.check_in, command)

    async def report(self, handle) -> ActionResult:
        command = FollowUpReport(actor=intermediary(), text="The hearing was postponed; lawyer retained.", receipts=["INV-7"])
        return await self.act(handle, GrantRequestWorkflow.submit_report, command)

    async def accept(self, handle, actor: Actor | None = None) -> ActionResult:
        command = ReportAcceptance(actor=actor or caseworker(), note="Receipts match.")
        return await self.act(handle, GrantRequestWorkflow.accept_report, command)

    async def withdraw(self, handle, actor: Actor | None = None) -> ActionResult:
        command = Withdrawal(actor=actor or intermediary(), reason="Charges were dropped.")
        return await self.act(handle, GrantRequestWorkflow.withdraw, command)

    # What the database shows.
    async def reservations(self, request_id: str) -> list[BudgetReservation]:
        async with self.db.sessions() as session:
            rows = await session.scalars(
                select(BudgetReservation).where(BudgetReservation.request_id == request_id).order_by(BudgetReservation.number)
            )
            return list(rows)

    async def payments(self, request_id: str) -> list[Payment]:
        async with self.db.sessions() as session:
            rows = await session.scalars(select(Payment).where(Payment.request_id == request_id).order_by(Payment.tranche))
            return list(rows)

    async def audit(self, request_id: str) -> list[AuditEvent]:
        async with self.db.sessions() as session:
            rows = await session.scalars(select(AuditEvent).where(AuditEvent.request_id == request_id).order_by(AuditEvent.seq))
            return list(rows)

    async def report_row(self, request_id: str) -> FollowUpReportRecord | None:
        """The stored report, its sealed fields opened as a reader of the case sees them."""
        async with self.db.sessions() as session:
            report = await session.scalar(select(FollowUpReportRecord).where(FollowUpReportRecord.request_id == request_id))
            if report is None:
                return None
            sealer = await self.intake.case_keys.sealer(session, request_id)
            session.expunge(report)
        open_report(sealer, report)
        return report

    async def notifications(self, request_id: str) -> list[Notification]:
        async with self.db.sessions() as session:
            rows = await session.scalars(select(Notification).where(Notification.request_id == request_id).order_by(Notification.id))
            return list(rows)
