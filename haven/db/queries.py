"""The reads the API makes. Writes belong to intake and the workflow's activities."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
        due = str(_microseconds(self.decision_due_at)) if self.decision_due_at else "-"
        return f"{due}.{_microseconds(self.created_at)}.{self.id}"

    @classmethod
    def decode(cls, cursor: str) -> "QueuePosition":
        """Any string of the cursor's format (QUEUE_CURSOR, as the API's schema states it) is a
        place in the queue's order; raises ValueError for anything else."""
        if not re.fullmatch(QUEUE_CURSOR, cursor):
            raise ValueError("not a cursor from this queue")
        due, created, request_id = cursor.split(".", 2)
        return cls(None if due == "-" else _instant(int(due)), _instant(int(created)), request_id)


# Where a page ended, in the clear: the decision deadline (`-`: none) and the time received, in
# microseconds since 1970 (UTC), and the request's id. Nothing in it is secret from the reader,
# who saw that request on the page; at most 16 digits (until the year 2286) keeps it a datetime.
QUEUE_CURSOR = r"^(-|[0-9]{1,16})\.[0-9]{1,16}\.[A-Za-z0-9_-]{1,40}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _microseconds(moment: datetime) -> int:
    return (moment.replace(tzinfo=moment.tzinfo or UTC) - _EPOCH) // timedelta(microseconds=1)


def _instant(microseconds: int) -> datetime:
    return _EPOCH + timedelta(microseconds=microseconds)


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
