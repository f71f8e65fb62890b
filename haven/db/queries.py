"""The reads the API makes. Writes belong to intake and the workflow's activities."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Select, and_, or_, select

from haven.case_keys import (
    CASE_TEXT, DECISION_NOTE, ERASED, ERASED_DETAILS, SENSITIVE, CaseKeys, open_message, open_report,
)  # fmt: skip
from haven.db import Database
from haven.lifecycle import TERMINAL
from haven.db.models import AuditEvent, CaseMessage, Decision, FollowUpReportRecord, GrantRequestRecord, Payment


NOBODY = ""  # `assigned_to=NOBODY` asks for unassigned requests


@dataclass(frozen=True)
class QueuePosition:
    """Where a page ended, in the queue's sort order: decision deadline (none last), age, id."""

    decision_due_at: datetime | None
    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = json.dumps(
            [self.decision_due_at.isoformat() if self.decision_due_at else None, self.created_at.isoformat(), self.id]
        )
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> "QueuePosition":
        """Raises ValueError for anything that is not a cursor this API handed out."""
        try:
            due, created, request_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            position = cls(
                datetime.fromisoformat(due) if due is not None else None, datetime.fromisoformat(created), str(request_id)
            )
        except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as error:
            raise ValueError("not a cursor from this queue") from error
        if position.created_at.tzinfo is None or (due is not None and position.decision_due_at.tzinfo is None):
            raise ValueError("not a cursor from this queue")
        return position


@dataclass(frozen=True)
class QueueFilter:
    statuses: list[str] | None = None
    urgency: str | None = None
    category: str | None = None
    country: str | None = None
    organisation_id: str | None = None
    assigned_to: str | None = None  # a subject, or NOBODY
    overdue_at: datetime | None = None  # only requests overdue at this moment
    after: QueuePosition | None = None
    limit: int = 50


@dataclass(frozen=True)
class CaseFile:
    request: GrantRequestRecord
    decisions: list[Decision]
    payments: list[Payment]
    events: list[AuditEvent]
    messages: list[CaseMessage]
    report: FollowUpReportRecord | None


async def find_request(db: Database, request_id: str, organisation_id: str | None) -> GrantRequestRecord | None:
    """None both when it does not exist and when the reader may not see it: ids cannot be probed."""
    async with db.sessions() as session:
        record = await session.get(GrantRequestRecord, request_id)
    if record is None or (organisation_id is not None and record.organisation_id != organisation_id):
        return None
    return record


async def case_file(db: Database, record: GrantRequestRecord, case_keys: CaseKeys) -> CaseFile:
    """Everything about one request, its sealed fields opened (or `[erased]` once its key is gone).
    The rows are detached copies for the view: opening them never writes anything back."""
    async with db.sessions() as session:

        async def rows(model, *order) -> list:
            query: Select = select(model).where(model.request_id == record.id).order_by(*order)
            return list(await session.scalars(query))

        file = CaseFile(
            request=record,
            decisions=await rows(Decision, Decision.seq),
            payments=await rows(Payment, Payment.tranche),
            events=list(
                await session.scalars(
                    # Lifecycle events only; reads of the case are audited too, but are not its history.
                    select(AuditEvent)
                    .where(AuditEvent.request_id == record.id, AuditEvent.seq.is_not(None))
                    .order_by(AuditEvent.seq)
                )
            ),
            messages=await rows(CaseMessage, CaseMessage.seq),
            report=await session.scalar(select(FollowUpReportRecord).where(FollowUpReportRecord.request_id == record.id)),
        )
        sealer = await case_keys.sealer(session, record.id)
        session.expunge_all()
    for payment in file.payments:  # finance's reason, sealed; a rail's own reason is not
        payment.failure_reason = sealer.open(CASE_TEXT, payment.failure_reason)
    if sealer.destroyed:  # crypto-shredded: what was sealed reads as erased, in the fields' own shapes
        record.sensitive = ERASED_DETAILS
        for decision in file.decisions:
            decision.note = ERASED if decision.note is not None else None
        for message in file.messages:
            message.body = ERASED_DETAILS
        if file.report is not None:
            file.report.text, file.report.receipts = ERASED, []
            file.report.acceptance_note = ERASED if file.report.acceptance_note is not None else None
        return file
    record.sensitive = sealer.open(SENSITIVE, record.sensitive)
    for decision in file.decisions:
        decision.note = sealer.open_text(decision.note, DECISION_NOTE)
    for message in file.messages:
        message.body = open_message(sealer, message.body)
    if file.report is not None:
        open_report(sealer, file.report)
    return file


async def list_requests(db: Database, where: QueueFilter) -> tuple[list[GrantRequestRecord], QueuePosition | None]:
    """The caseworker queue, soonest decision deadline first (none last), then oldest; one page
    and the position to continue from (None on the last page). Keyset pagination: requests that
    arrive meanwhile never make a page skip or repeat another; a request whose deadline changes
    while someone pages (it was screened, or decided) can move across the cursor."""
    r = GrantRequestRecord
    query = select(r)
    if where.statuses:
        query = query.where(r.status.in_(where.statuses))
    if where.urgency:
        query = query.where(r.urgency == where.urgency)
    if where.category:
        query = query.where(r.category == where.category)
    if where.country:
        query = query.where(r.country == where.country)
    if where.organisation_id is not None:
        query = query.where(r.organisation_id == where.organisation_id)
    if where.assigned_to is not None:
        query = query.where(r.assigned_to.is_(None) if where.assigned_to == NOBODY else r.assigned_to == where.assigned_to)
    if where.overdue_at is not None:
        query = query.where(
            or_(r.decision_due_at < where.overdue_at, r.follow_up_overdue.is_(True)),
            r.status.not_in([str(s) for s in TERMINAL]),
        )
    if where.after is not None:
        query = query.where(_after(where.after))
    query = query.order_by(r.decision_due_at.is_(None), r.decision_due_at, r.created_at, r.id).limit(where.limit + 1)
    async with db.sessions() as session:
        rows = list(await session.scalars(query))
    if len(rows) <= where.limit:
        return rows, None
    last = rows[where.limit - 1]
    return rows[: where.limit], QueuePosition(last.decision_due_at, last.created_at, last.id)


def _after(position: QueuePosition) -> ColumnElement[bool]:
    r = GrantRequestRecord
    later_same_due = or_(r.created_at > position.created_at, and_(r.created_at == position.created_at, r.id > position.id))
    if position.decision_due_at is None:
        return and_(r.decision_due_at.is_(None), later_same_due)
    return or_(
        r.decision_due_at.is_(None),
        r.decision_due_at > position.decision_due_at,
        and_(r.decision_due_at == position.decision_due_at, later_same_due),
    )
