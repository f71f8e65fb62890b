"""Who holds a request in the caseworker queue. Assignment is queue work, not a lifecycle step,
so it is kept here rather than in the workflow; each assignment and hand-over is audited."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints

from haven.audit import record_change
from haven.db import Database, utcnow
from haven.db.models import GrantRequestRecord
from haven.grant_request import Actor, Strict
from haven.lifecycle import TERMINAL, Status
from haven.roster import SUBJECT, assignable


class AssignmentInput(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"assignee": "cw-1"}, {"assignee": None}]})

    # None hands the request back to the unassigned queue.
    assignee: Annotated[str, StringConstraints(pattern=SUBJECT)] | None = Field(
        description="`me`, or the subject of an active caseworker or director on the roster; null to unassign"
    )


class AssignmentRefused(Exception):
    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


async def assign(db: Database, actor: Actor, request_id: str, assignee: str | None) -> GrantRequestRecord:
    if assignee is not None and not await assignable(db, actor.issuer or "", assignee):
        raise AssignmentRefused(f"{assignee} is not an active caseworker or director on the roster", field="assignee")
    async with db.transaction() as session:
        record = await session.get(GrantRequestRecord, request_id, with_for_update=True)
        if record is None:
            raise LookupError(request_id)
        if Status(record.status) in TERMINAL:
            raise AssignmentRefused(f"the request is {record.status}; it is no longer in the queue")
        previous = record.assigned_to
        record.assigned_to = assignee
        record.assigned_at = utcnow() if assignee else None
        action = "assigned" if previous is None else ("unassigned" if assignee is None else "handed_over")
        await record_change(session, actor, action, request_id, previous=previous, assignee=assignee)
    return record
