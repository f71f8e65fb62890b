"""Retention by crypto-shredding: when a request has been over for longer than its pinned
policy's `retention_days`, its data key is destroyed, and with it every sealed detail of the case
(the defender, the payee, the narrative, answers, notes, reports), in the database and in
Temporal's history alike. The request's row, its ledger entries and its audit events stay:
pseudonymous, and the ledger still balances and the audit chain still verifies. An admin can
also erase one request that is over, at once."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from haven.audit import record_change
from haven.case_keys import CaseKeys
from haven.db import Database, utcnow
from haven.db.models import CaseKey, GrantRequestRecord, PolicyRecord
from haven.grant_request import Actor
from haven.lifecycle import TERMINAL

DESTROYED = "case_data_destroyed"  # the audit action
DEFAULT_RETENTION_DAYS = 730  # for requests pinned to a policy from before retention was a rule


class ErasureRefused(ValueError):
    """Only a request that is over can be erased: a running one still needs its details."""


async def erase(db: Database, case_keys: CaseKeys, request_id: str, actor: Actor, why: str) -> bool:
    """Destroys the request's data key; True when this call destroyed it, False when it already
    was (or the request predates sealing and has none). Audited in the same transaction."""
    async with db.transaction() as session:
        record = await session.get(GrantRequestRecord, request_id)
        if record is None:
            raise LookupError(f"no grant request {request_id}")
        if record.status not in TERMINAL:
            raise ErasureRefused(f"{request_id} is {record.status}: only a request that is over can be erased")
        destroyed = await case_keys.destroy(session, request_id, utcnow(), why)
        if destroyed:
            await record_change(session, actor, DESTROYED, request_id, why=why, status=record.status)
    return destroyed


async def due_for_destruction(db: Database, now: datetime) -> list[str]:
    """Requests over for longer than their pinned policy keeps them, whose key still exists."""
    async with db.sessions() as session:
        rows = await session.execute(
            select(GrantRequestRecord.id, GrantRequestRecord.updated_at, PolicyRecord.content)
            .join(CaseKey, CaseKey.request_id == GrantRequestRecord.id)
            .join(PolicyRecord, PolicyRecord.hash == GrantRequestRecord.policy_hash)
            .where(GrantRequestRecord.status.in_([str(s) for s in TERMINAL]), CaseKey.wrapped_key.is_not(None))
            .order_by(GrantRequestRecord.updated_at)
        )
        return [
            request_id
            for request_id, over_at, policy in rows
            if over_at + timedelta(days=int(policy.get("retention_days", DEFAULT_RETENTION_DAYS))) <= now
        ]
