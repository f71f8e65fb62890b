"""The caps that hold at the moment money is committed: one grant's, and one defender's over twelve
months. They are counted from the ledger (reservations, less releases and money that came back),
under a lock per defender, in the transaction that reserves the money: two requests for the same
defender, reserved at once in different categories, are counted one after the other. The defender
is the keyed hash of the canonical pseudonym (haven.identifiers), so any spelling counts as one."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import case, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from haven import ledger
from haven.db.models import GrantRequestRecord, LedgerEntry

TWELVE_MONTHS = timedelta(days=365)

# How each kind of ledger entry changes what is committed to a request (reserved or paid).
_COMMITTED = case(
    (LedgerEntry.kind == ledger.RESERVATION, LedgerEntry.amount_base_minor),
    (LedgerEntry.kind.in_([ledger.RELEASE, ledger.REFUND, ledger.REVERSAL]), -LedgerEntry.amount_base_minor),
    else_=0,
)


async def lock_defender(session: AsyncSession, request: GrantRequestRecord) -> None:
    """Holds the request's defender until the transaction ends. PostgreSQL: a transaction-level
    advisory lock on the defender's hash (taken after any allocation row lock, always in that order).
    SQLite: a write takes the database's single write lock."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"defender:{request.defender_ref}"})
    else:
        await session.execute(
            update(GrantRequestRecord)
            .where(GrantRequestRecord.id == request.id)
            .values(updated_at=GrantRequestRecord.updated_at)
            .execution_options(synchronize_session=False)
        )


async def committed(session: AsyncSession, request: GrantRequestRecord, at: datetime) -> tuple[int, int]:
    """What is committed now (base minor units) to the request itself, and to its defender across
    every request submitted in the twelve months before `at`."""
    to_request = await session.scalar(
        select(func.coalesce(func.sum(_COMMITTED), 0)).where(LedgerEntry.request_id == request.id)
    )
    to_defender = await session.scalar(
        select(func.coalesce(func.sum(_COMMITTED), 0))
        .join(GrantRequestRecord, GrantRequestRecord.id == LedgerEntry.request_id)
        .where(GrantRequestRecord.defender_ref == request.defender_ref, GrantRequestRecord.created_at >= at - TWELVE_MONTHS)
    )
    return int(to_request), int(to_defender)
