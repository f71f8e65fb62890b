"""The fund at a glance, for finance and directors: what was paid in a period (net of reversals and
refunds) by category, by country and by month, and what is committed but not yet paid. Every
figure is summed by the database from the ledger and the request records, in the base currency's
minor units; nothing here reads a request's sensitive details."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import String, case, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from haven import ledger
from haven.db.models import BudgetAllocation, GrantRequestRecord, LedgerEntry
from haven.exports.spec import Period
from haven.lifecycle import Status


@dataclass(frozen=True)
class Paid:
    """Money out, in base minor units: paid, given back (reversals, refunds), and the net."""

    paid: int = 0
    given_back: int = 0
    requests: int = 0

    @property
    def net(self) -> int:
        return self.paid - self.given_back


@dataclass(frozen=True)
class Commitments:
    """What is promised or asked for but not paid, per category, in base minor units."""

    reserved: dict[str, int] = field(default_factory=dict)  # approved, held from an allocation
    awaiting_funds: dict[str, tuple[int, int]] = field(default_factory=dict)  # approved, no room: (requests, amount)
    awaiting_decision: dict[str, tuple[int, int]] = field(default_factory=dict)  # asked for: (requests, amount)


@dataclass(frozen=True)
class FundSummary:
    period: Period
    by_category: dict[str, Paid]
    by_country: dict[str, Paid]
    by_month: dict[str, Paid]  # "YYYY-MM"
    commitments: Commitments


def _month(column, sqlite: bool):
    if sqlite:  # UTCDateTime stores 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC) in SQLite
        return func.substr(type_coerce(column, String), 1, 7)
    return func.to_char(func.timezone("UTC", column), "YYYY-MM")


async def _paid_by(session: AsyncSession, key, period: Period) -> dict[str, Paid]:
    L = LedgerEntry
    out = case((L.kind == ledger.PAYMENT, L.amount_base_minor), else_=0)
    back = case((L.kind.in_([ledger.REVERSAL, ledger.REFUND]), L.amount_base_minor), else_=0)
    rows = await session.execute(
        select(key, func.sum(out), func.sum(back), func.count(func.distinct(L.request_id)))
        .where(
            L.kind.in_([ledger.PAYMENT, ledger.REVERSAL, ledger.REFUND]),
            L.occurred_at >= period.starts_at,
            L.occurred_at < period.ends_before,
        )
        .group_by(key)
        .order_by(key)
    )
    return {k: Paid(int(paid or 0), int(given_back or 0), int(n)) for k, paid, given_back, n in rows}


async def _open_by_category(session: AsyncSession, status: Status, amount) -> dict[str, tuple[int, int]]:
    G = GrantRequestRecord
    rows = await session.execute(
        select(G.category, func.count(), func.coalesce(func.sum(amount), 0)).where(G.status == status).group_by(G.category)
    )
    return {category: (int(n), int(total)) for category, n, total in rows}


async def summarise(session: AsyncSession, period: Period) -> FundSummary:
    sqlite = session.bind.dialect.name == "sqlite"
    G = GrantRequestRecord
    reserved = await session.execute(
        select(BudgetAllocation.category, func.sum(BudgetAllocation.reserved_base_minor)).group_by(BudgetAllocation.category)
    )
    return FundSummary(
        period=period,
        by_category=await _paid_by(session, LedgerEntry.category, period),
        by_country=await _paid_by(session, LedgerEntry.country, period),
        by_month=await _paid_by(session, _month(LedgerEntry.occurred_at, sqlite), period),
        commitments=Commitments(
            reserved={category: int(total) for category, total in reserved if total},
            awaiting_funds=await _open_by_category(session, Status.AWAITING_FUNDS, G.granted_base_minor),
            awaiting_decision=await _open_by_category(session, Status.AWAITING_DECISION, G.amount_base_minor),
        ),
    )
