"""The reads the API makes. Writes belong to intake and the workflow's activities."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, select

from haven.db import Database
from haven.db.models import AuditEvent, CaseMessage, Decision, FollowUpReportRecord, GrantRequestRecord, Payment


@dataclass(frozen=True)
class QueueFilter:
    statuses: list[str] | None = None
    urgency: str | None = None
    category: str | None = None
    organisation_id: str | None = None
    limit: int = 50
    offset: int = 0


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


async def case_file(db: Database, record: GrantRequestRecord) -> CaseFile:
    async with db.sessions() as session:

        async def rows(model, *order) -> list:
            query: Select = select(model).where(model.request_id == record.id).order_by(*order)
            return list(await session.scalars(query))

        return CaseFile(
            request=record,
            decisions=await rows(Decision, Decision.seq),
            payments=await rows(Payment, Payment.tranche),
            events=await rows(AuditEvent, AuditEvent.seq),
            messages=await rows(CaseMessage, CaseMessage.seq),
            report=await session.scalar(select(FollowUpReportRecord).where(FollowUpReportRecord.request_id == record.id)),
        )


async def list_requests(db: Database, where: QueueFilter) -> list[GrantRequestRecord]:
    """The caseworker queue: soonest decision deadline first, then oldest."""
    query = select(GrantRequestRecord)
    if where.statuses:
        query = query.where(GrantRequestRecord.status.in_(where.statuses))
    if where.urgency:
        query = query.where(GrantRequestRecord.urgency == where.urgency)
    if where.category:
        query = query.where(GrantRequestRecord.category == where.category)
    if where.organisation_id is not None:
        query = query.where(GrantRequestRecord.organisation_id == where.organisation_id)
    query = (
        query.order_by(
            GrantRequestRecord.decision_due_at.is_(None),
            GrantRequestRecord.decision_due_at,
            GrantRequestRecord.created_at,
            GrantRequestRecord.id,
        )
        .limit(where.limit)
        .offset(where.offset)
    )
    async with db.sessions() as session:
        return list(await session.scalars(query))
