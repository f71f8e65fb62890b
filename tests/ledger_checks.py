"""What every test that moves money can assert: the ledger balances, and each request's share of it
agrees with its reservations and payments."""

from __future__ import annotations

from sqlalchemy import func, select

from haven import ledger
from haven.db import Database
from haven.db.models import BudgetReservation, LedgerEntry, Payment


async def assert_ledger_balances(db: Database) -> None:
    async with db.sessions() as session:
        assert await ledger.discrepancies(session) == []
        per_request = await session.execute(
            select(LedgerEntry.request_id, LedgerEntry.kind, func.sum(LedgerEntry.amount_base_minor))
            .where(LedgerEntry.request_id.is_not(None))
            .group_by(LedgerEntry.request_id, LedgerEntry.kind)
        )
        moved: dict[str, dict[str, int]] = {}
        for request_id, kind, amount in per_request:
            moved.setdefault(request_id, {})[kind] = int(amount)
        for request_id, kinds in moved.items():
            reserved = kinds.get(ledger.RESERVATION, 0) - kinds.get(ledger.RELEASE, 0) - kinds.get(ledger.PAYMENT, 0)
            held = await session.scalar(
                select(func.coalesce(func.sum(BudgetReservation.amount_base_minor), 0)).where(
                    BudgetReservation.request_id == request_id, BudgetReservation.status == "held"
                )
            )
            if not held:
                assert reserved == 0, f"{request_id}: {reserved} still reserved with no reservation held"
            paid = await session.scalar(
                select(func.coalesce(func.sum(Payment.amount_base_minor), 0)).where(
                    Payment.request_id == request_id, Payment.status == "paid"
                )
            )
            given_back = kinds.get(ledger.REVERSAL, 0) + kinds.get(ledger.REFUND, 0)
            assert kinds.get(ledger.PAYMENT, 0) == paid, f"{request_id}: ledger paid {kinds.get(ledger.PAYMENT, 0)}, payments {paid}"
            assert given_back <= paid
