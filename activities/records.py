"""Writes the durable record of a request's life. Every write is keyed, so a retry changes nothing."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, select, update
from sqlalchemy.exc import IntegrityError
from temporalio import activity

from haven import ledger
from haven.audit import audit_entry
from haven.audit_chain import append
from haven.case_events import CaseEvent
from haven.db import Database, utcnow
from haven.grant_request import Actor
from haven.lifecycle import Status
from haven.policy_versions import stored_version
from haven.worker_metrics import TIME_TO_DECISION, TIME_TO_FIRST_PAYMENT, observe_time_to
from haven.notifications.outbox import outbox_entry
from haven.db.models import (
    AuditEvent,
    CaseMessage,
    Decision,
    FollowUpReportRecord,
    GrantRequestRecord,
    Payment,
)
from policies import PolicyVersion


class CaseRecords:
    def __init__(self, db: Database, public_base_url: str):
        self.db = db
        self.public_base_url = public_base_url.rstrip("/")

    @activity.defn
    async def load_pinned_policy(self, policy_hash: str) -> PolicyVersion:
        return await stored_version(self.db, policy_hash)  # UnknownPolicy is a LookupError

    @activity.defn
    async def record_event(self, event: CaseEvent) -> bool:
        """Returns False when this event was already recorded (a retry or a replayed duplicate)."""
        try:
            async with self.db.transaction() as session:
                already = await session.scalar(
                    select(AuditEvent.id).where(AuditEvent.request_id == event.request_id, AuditEvent.seq == event.seq)
                )
                if already is not None:
                    return False
                self._write(session, event)
                submitted_at, came_back = await self._project(session, event)
                await append(session, self._audit_event(event), *came_back)  # last: it takes the chain's lock
        except IntegrityError:
            # A concurrent attempt of this same activity won the race and wrote it all.
            return False
        if submitted_at is not None:  # committed, once: a retry returned above
            _observe_timings(event, submitted_at)
        return True

    @staticmethod
    def _audit_event(event: CaseEvent) -> AuditEvent:
        return AuditEvent(
            request_id=event.request_id,
            seq=event.seq,
            action=event.action,
            actor=event.actor.subject,
            roles=[str(r) for r in event.actor.roles],
            status_from=event.status_from,
            status_to=event.status_to,
            facts=event.facts,
            occurred_at=event.at,
            recorded_at=utcnow(),
        )

    def _write(self, session, event: CaseEvent) -> None:
        # What people wrote arrives sealed by the API (haven.case_keys.CASE_TEXT) and is stored so.
        if event.decision is not None:
            amount = event.decision.amount
            session.add(
                Decision(
                    request_id=event.request_id,
                    seq=event.seq,
                    kind=event.decision.kind,
                    actor=event.actor.subject,
                    roles=[str(r) for r in event.actor.roles],
                    amount_minor=amount.minor_units if amount else None,
                    currency=amount.currency if amount else None,
                    note=event.decision.note,
                    decided_at=event.at,
                )
            )
        if event.message is not None:
            session.add(
                CaseMessage(
                    request_id=event.request_id,
                    seq=event.seq,
                    kind=event.message.kind,
                    author=event.actor.subject,
                    tranche=event.message.tranche,
                    body=event.message.body,
                    written_at=event.at,
                )
            )
        if event.report is not None and event.report.step == "submitted":
            session.add(
                FollowUpReportRecord(
                    request_id=event.request_id,
                    text=event.report.text,
                    receipts=event.report.receipts,
                    submitted_by=event.actor.subject,
                    submitted_at=event.at,
                )
            )
        for note in event.notifications:
            session.add(
                outbox_entry(
                    f"{event.request_id}:{event.seq}:{note.kind}:{note.audience}",
                    kind=note.kind,
                    audience=note.audience,
                    request_id=event.request_id,
                    status=str(event.status_to),
                    link=f"{self.public_base_url}/v1/grant-requests/{event.request_id}",
                )
            )

    async def _project(self, session, event: CaseEvent) -> tuple[datetime | None, list[AuditEvent]]:
        """Writes the event into the request's row (and its payment's); returns when it was submitted,
        and the audit events of money that came back with the payment (a reversal Stripe reported
        before the payment was recorded)."""
        came_back: list[AuditEvent] = []
        now = utcnow()
        changes = event.projection.model_dump(exclude_unset=True) if event.projection else {}
        # Events may be recorded out of order (an update and the main loop at once): only a newer
        # event moves the status; its projected fields are written either way. One statement: SET
        # reads the row as it was, so every CASE sees the old status_seq.
        newer = GrantRequestRecord.status_seq < event.seq
        submitted_at = await session.scalar(
            update(GrantRequestRecord.__table__)
            .where(GrantRequestRecord.id == event.request_id)
            .values(
                status=case((newer, str(event.status_to)), else_=GrantRequestRecord.status),
                status_seq=case((newer, event.seq), else_=GrantRequestRecord.status_seq),
                updated_at=case((newer, now), else_=GrantRequestRecord.updated_at),
                **changes,
            )
            .returning(GrantRequestRecord.created_at)
        )
        if event.report is not None and event.report.step == "accepted":
            await session.execute(
                update(FollowUpReportRecord)
                .where(FollowUpReportRecord.request_id == event.request_id)
                .values(
                    accepted_by=event.actor.subject,
                    accepted_at=event.at,
                    acceptance_note=event.report.note,
                )
            )
        if event.payment is not None:
            p = event.payment
            await session.execute(
                update(Payment)
                .where(Payment.request_id == event.request_id, Payment.tranche == p.tranche)
                .values(
                    status=p.status,
                    reference=p.reference,
                    paid_on=p.paid_on,
                    failure_reason=p.failure_reason,
                    recorded_by=event.actor.subject,
                    updated_at=now,
                )
            )
            if p.status == "paid":
                back = await ledger.record_payment(session, event.request_id, p.tranche, event.actor.subject, event.at)
                if back is not None:
                    stripe = Actor(subject="stripe")
                    came_back.append(audit_entry(stripe, "reversal_applied", event.request_id, transfer_id=p.reference, **back.facts()))
        return submitted_at, came_back


def _observe_timings(event: CaseEvent, submitted_at: datetime) -> None:
    if event.status_to != event.status_from and event.status_to in (Status.APPROVED, Status.REJECTED):
        observe_time_to(TIME_TO_DECISION, submitted_at, event.at)
    if event.payment is not None and event.payment.status == "paid" and event.payment.tranche == 1:
        observe_time_to(TIME_TO_FIRST_PAYMENT, submitted_at, event.at)
