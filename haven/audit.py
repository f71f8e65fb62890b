"""Audit events that are not lifecycle steps: reads of a case's sensitive detail and changes made
by administrators. Lifecycle steps are written by the workflow's `record_event` activity. Every
event goes into the log through `haven.audit_chain.append`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from haven.audit_chain import append
from haven.db import Database, utcnow
from haven.db.models import AuditEvent
from haven.grant_request import Actor


def audit_entry(actor: Actor, action: str, request_id: str | None = None, **facts: Any) -> AuditEvent:
    now = utcnow()
    return AuditEvent(
        request_id=request_id,
        seq=None,  # not a lifecycle step: no place in the request's sequence
        action=action,
        actor=actor.subject,
        roles=[str(r) for r in actor.roles],
        status_from=None,
        status_to=None,
        facts=facts,
        occurred_at=now,
        recorded_at=now,
    )


async def record_case_read(db: Database, actor: Actor, request_id: str, view: str) -> None:
    """Written before the detail is returned: if it cannot be recorded, the detail is not shown."""
    async with db.transaction() as session:
        await append(session, audit_entry(actor, "case_read", request_id, view=view))


async def record_change(session: AsyncSession, actor: Actor, action: str, request_id: str | None = None, **facts: Any) -> None:
    """Audits a change in the transaction that makes it; call it last there (see `append`)."""
    await append(session, audit_entry(actor, action, request_id, **facts))
