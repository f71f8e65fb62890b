"""The fund ledger: what finance allocates to each category for a period, and every movement of that
money between an allocation's three buckets, in the base currency's minor units:

    allocated = available + reserved + paid

A reservation moves money from available to reserved, a payment from reserved to paid, a release
back from reserved to available, a reversal or refund from paid to available. Each movement is an
append-only entry keyed so that a retried write adds nothing, written together with the running
totals on the allocation row, under that row's lock: two reservations can never both take the last
of a budget. Callers pass their session; everything here happens in their transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from haven.db import utcnow
from haven.db.models import BudgetAllocation, BudgetReservation, GrantRequestRecord, LedgerEntry, Payment, PolicyRecord
from haven.money import Money

ALLOCATION, RESERVATION, RELEASE, PAYMENT, REVERSAL, REFUND = (
    "allocation", "reservation", "release", "payment", "reversal", "refund",
)  # fmt: skip


class NoFunds(Exception):
    """A reservation that does not fit what is available."""


class AllocationRefused(ValueError):
    """An allocation finance may not set (overlapping periods, less than is already committed)."""


@dataclass(frozen=True)
class Movement:
    """One movement of money for a request: the base amount and the original beside it."""

    key: str
    request_id: str | None
    tranche: int | None
    amount_base_minor: int
    amount: Money
    rate_to_base: Decimal
    actor: str
    at: datetime


def allocation_id(category: str, starts_on: date) -> str:
    return f"{category}:{starts_on.isoformat()}"


def available(allocation: BudgetAllocation) -> int:
    return allocation.amount_base_minor - allocation.reserved_base_minor - allocation.paid_base_minor


async def allocation_covering(session: AsyncSession, category: str, on: date) -> BudgetAllocation | None:
    """The category's allocation for the period that holds `on`, locked for the transaction."""
    key = await session.scalar(
        select(BudgetAllocation.id).where(
            BudgetAllocation.category == category, BudgetAllocation.starts_on <= on, BudgetAllocation.ends_on >= on
        )
    )
    return await _locked(session, key) if key is not None else None


async def _locked(session: AsyncSession, key: str) -> BudgetAllocation | None:
    """The allocation, read under its lock. Writing to the row first takes the lock on both
    databases: PostgreSQL's row lock, and SQLite's write lock (its driver begins the transaction
    only at the first write, so a plain read first could be stale by the time it is written)."""
    touched = await session.execute(
        update(BudgetAllocation)
        .where(BudgetAllocation.id == key)
        .values(updated_at=BudgetAllocation.updated_at)
        .execution_options(synchronize_session=False)
    )
    if touched.rowcount == 0:
        return None
    return await session.get(BudgetAllocation, key, populate_existing=True)


async def _recorded(session: AsyncSession, key: str) -> LedgerEntry | None:
    return await session.scalar(select(LedgerEntry).where(LedgerEntry.entry_key == key))


async def _entry(session: AsyncSession, kind: str, allocation: BudgetAllocation, movement: Movement) -> LedgerEntry:
    where = (None, None)
    if movement.request_id is not None:
        where = (await session.execute(
            select(GrantRequestRecord.country, GrantRequestRecord.defender_ref).where(GrantRequestRecord.id == movement.request_id)
        )).one_or_none() or (None, None)  # fmt: skip
    return LedgerEntry(
        entry_key=movement.key,
        allocation_id=allocation.id,
        category=allocation.category,
        kind=kind,
        request_id=movement.request_id,
        tranche=movement.tranche,
        country=where[0],
        defender_ref=where[1],
        amount_base_minor=movement.amount_base_minor,
        amount_minor=movement.amount.minor_units,
        currency=movement.amount.currency,
        rate_to_base=str(movement.rate_to_base),
        actor=movement.actor,
        occurred_at=movement.at,
        recorded_at=utcnow(),
    )


async def reserve(session: AsyncSession, category: str, on: date, movement: Movement) -> str:
    """Reserves from the allocation covering `on`; returns its id. Raises NoFunds when there is no
    allocation or too little is available. Repeating the same movement reserves nothing more."""
    earlier = await _recorded(session, movement.key)
    if earlier is not None:
        return earlier.allocation_id
    allocation = await allocation_covering(session, category, on)
    if allocation is None:
        raise NoFunds(f"no budget is allocated to {category} for {on.isoformat()}")
    if movement.amount_base_minor > available(allocation):
        raise NoFunds(
            f"{category} has {available(allocation)} base minor units available for {on.isoformat()}; "
            f"{movement.amount_base_minor} are needed"
        )
    allocation.reserved_base_minor += movement.amount_base_minor
    session.add(await _entry(session, RESERVATION, allocation, movement))
    return allocation.id


async def release(session: AsyncSession, allocation: str, movement: Movement) -> None:
    """Reserved money that will not be paid goes back to available."""
    await _move(session, allocation, RELEASE, movement, reserved=-1, paid=0)


async def pay(session: AsyncSession, allocation: str, movement: Movement) -> None:
    await _move(session, allocation, PAYMENT, movement, reserved=-1, paid=+1)


async def give_back(session: AsyncSession, allocation: str, kind: str, movement: Movement) -> None:
    """Paid money that came back (a reversal, a refund) is available again."""
    assert kind in (REVERSAL, REFUND)
    await _move(session, allocation, kind, movement, reserved=0, paid=-1)


async def _move(session: AsyncSession, allocation_key: str, kind: str, movement: Movement, *, reserved: int, paid: int) -> None:
    if movement.amount_base_minor <= 0 or await _recorded(session, movement.key) is not None:
        return
    allocation = await _locked(session, allocation_key)
    if allocation is None:
        raise LookupError(f"no budget allocation {allocation_key}")
    allocation.reserved_base_minor += reserved * movement.amount_base_minor
    allocation.paid_base_minor += paid * movement.amount_base_minor
    if allocation.reserved_base_minor < 0 or allocation.paid_base_minor < 0:
        raise ValueError(f"{kind} {movement.key} would take {allocation.id} below zero")
    session.add(await _entry(session, kind, allocation, movement))


async def pinned_rate(session: AsyncSession, request_id: str, currency: str) -> Decimal:
    """The exchange rate of the policy version the request was pinned to."""
    policy = await session.scalar(
        select(PolicyRecord.content).join(GrantRequestRecord, GrantRequestRecord.policy_hash == PolicyRecord.hash).where(
            GrantRequestRecord.id == request_id
        )
    )
    return Decimal(str(policy["currencies"][currency]["rate_to_base"]))


async def _reserved_in(session: AsyncSession, request_id: str) -> str | None:
    """The allocation the request's money is held in: that of its newest reservation. (Its status
    may already say settled: the workflow can close a reservation a moment before the payment that
    settled it is recorded.)"""
    return await session.scalar(
        select(BudgetReservation.allocation_id)
        .where(BudgetReservation.request_id == request_id, BudgetReservation.allocation_id.is_not(None))
        .order_by(BudgetReservation.number.desc())
        .limit(1)
    )


async def record_payment(session: AsyncSession, request_id: str, tranche: int, actor: str, at: datetime) -> None:
    """A tranche paid: its amount moves from reserved to paid in the allocation it was reserved from."""
    payment = await session.scalar(select(Payment).where(Payment.request_id == request_id, Payment.tranche == tranche))
    allocation = await _reserved_in(session, request_id)
    if payment is None or allocation is None:
        return  # a request from before the ledger existed
    amount = Money(minor_units=payment.amount_minor, currency=payment.currency)
    movement = Movement(
        key=f"{request_id}:payment:{tranche}", request_id=request_id, tranche=tranche,
        amount_base_minor=payment.amount_base_minor, amount=amount,
        rate_to_base=await pinned_rate(session, request_id, payment.currency), actor=actor, at=at,
    )  # fmt: skip
    await pay(session, allocation, movement)


async def record_given_back(
    session: AsyncSession, payment: Payment, kind: str, amount_minor: int, *, key: str, actor: str, at: datetime
) -> None:
    """Part or all of a paid tranche came back: that share of its base amount is available again,
    in the allocation it was paid from."""
    allocation = await _reserved_in(session, payment.request_id)
    if allocation is None or amount_minor <= 0:
        return
    movement = Movement(
        key=key, request_id=payment.request_id, tranche=payment.tranche,
        amount_base_minor=payment.amount_base_minor * amount_minor // payment.amount_minor,
        amount=Money(minor_units=amount_minor, currency=payment.currency),
        rate_to_base=await pinned_rate(session, payment.request_id, payment.currency), actor=actor, at=at,
    )  # fmt: skip
    await give_back(session, allocation, kind, movement)


async def set_allocation(
    session: AsyncSession, category: str, starts_on: date, ends_on: date, amount: Money, actor: str
) -> tuple[BudgetAllocation, int | None]:
    """Creates or changes the category's allocation for a period; returns it and the amount it
    had before (None when new). The change itself is a ledger entry."""
    if ends_on < starts_on:
        raise AllocationRefused("the period must not end before it starts")
    key = allocation_id(category, starts_on)
    allocation = await _locked(session, key)
    overlapping = await session.scalar(
        select(BudgetAllocation.id).where(
            BudgetAllocation.category == category,
            BudgetAllocation.id != key,
            BudgetAllocation.starts_on <= ends_on,
            BudgetAllocation.ends_on >= starts_on,
        )
    )
    if overlapping is not None:
        raise AllocationRefused(f"the period overlaps the allocation {overlapping}")
    now = utcnow()
    before = allocation.amount_base_minor if allocation is not None else None
    if allocation is None:
        allocation = BudgetAllocation(
            id=key, category=category, starts_on=starts_on, ends_on=ends_on, amount_base_minor=0,
            reserved_base_minor=0, paid_base_minor=0, set_by=actor, created_at=now, updated_at=now,
        )  # fmt: skip
        session.add(allocation)
    committed = allocation.reserved_base_minor + allocation.paid_base_minor
    if amount.minor_units < committed:
        raise AllocationRefused(f"{committed} base minor units are already reserved or paid from this allocation")
    change = amount.minor_units - (before or 0)
    allocation.ends_on = ends_on
    allocation.amount_base_minor = amount.minor_units
    allocation.set_by = actor
    allocation.updated_at = now
    await session.flush()
    revision = await session.scalar(
        select(LedgerEntry.id).where(LedgerEntry.allocation_id == key, LedgerEntry.kind == ALLOCATION).order_by(LedgerEntry.id.desc()).limit(1)
    )
    session.add(
        LedgerEntry(
            entry_key=f"{key}:allocation:{revision or 0}:{now.isoformat()}",
            allocation_id=key, category=category, kind=ALLOCATION, request_id=None, tranche=None,
            amount_base_minor=change, amount_minor=change, currency=amount.currency, rate_to_base="1",
            actor=actor, occurred_at=now, recorded_at=now,
        )  # fmt: skip
    )
    return allocation, before


@dataclass(frozen=True)
class Balance:
    allocation_id: str
    category: str
    starts_on: date
    ends_on: date
    allocated: int
    reserved: int
    paid: int

    @property
    def available(self) -> int:
        return self.allocated - self.reserved - self.paid


def _bucket_effects(kind: str) -> tuple[int, int, int]:
    """How an entry of this kind changes (allocated, reserved, paid)."""
    return {
        ALLOCATION: (1, 0, 0), RESERVATION: (0, 1, 0), RELEASE: (0, -1, 0),
        PAYMENT: (0, -1, 1), REVERSAL: (0, 0, -1), REFUND: (0, 0, -1),
    }[kind]  # fmt: skip


async def balances_from_entries(session: AsyncSession) -> dict[str, tuple[int, int, int]]:
    """Each allocation's (allocated, reserved, paid), summed from its entries alone."""
    totals: dict[str, list[int]] = {}
    rows = await session.execute(
        select(LedgerEntry.allocation_id, LedgerEntry.kind, func.sum(LedgerEntry.amount_base_minor)).group_by(
            LedgerEntry.allocation_id, LedgerEntry.kind
        )
    )
    for allocation, kind, amount in rows:
        effects = _bucket_effects(kind)
        bucket = totals.setdefault(allocation, [0, 0, 0])
        for i, effect in enumerate(effects):
            bucket[i] += effect * int(amount)
    return {key: (a, r, p) for key, (a, r, p) in totals.items()}


async def balances(session: AsyncSession) -> list[Balance]:
    rows = await session.scalars(select(BudgetAllocation).order_by(BudgetAllocation.category, BudgetAllocation.starts_on))
    return [
        Balance(a.id, a.category, a.starts_on, a.ends_on, a.amount_base_minor, a.reserved_base_minor, a.paid_base_minor)
        for a in rows
    ]


async def discrepancies(session: AsyncSession) -> list[str]:
    """Where an allocation does not add up: its running totals against its entries, and no bucket
    below zero. Empty when the ledger balances."""
    from_entries = await balances_from_entries(session)
    found = []
    for balance in await balances(session):
        totals = (balance.allocated, balance.reserved, balance.paid)
        if from_entries.get(balance.allocation_id, (0, 0, 0)) != totals:
            found.append(f"{balance.allocation_id}: totals {totals} but entries sum to {from_entries.get(balance.allocation_id)}")
        if min(balance.available, balance.reserved, balance.paid) < 0:
            found.append(f"{balance.allocation_id}: a bucket below zero {totals}")
    return found


class RefundRefused(ValueError):
    """A refund that cannot be recorded (the tranche is not paid, more would come back than was paid)."""


async def record_refund(
    session: AsyncSession, request_id: str, tranche: int, amount: Money, reference: str, actor: str, at: datetime
) -> tuple[LedgerEntry, bool]:
    """Money an intermediary returned to the fund (unspent, or paid for something else) for a paid
    tranche. Keyed by the transfer's reference, so recording it again changes nothing; returns the
    entry and whether it is new."""
    payment = await session.scalar(select(Payment).where(Payment.request_id == request_id, Payment.tranche == tranche))
    allocation = await _reserved_in(session, request_id)
    if payment is None or payment.status != "paid" or allocation is None:
        raise RefundRefused(f"tranche {tranche} of {request_id} has not been paid")
    if amount.currency != payment.currency:
        raise RefundRefused(f"tranche {tranche} was paid in {payment.currency}; a refund is recorded in that currency")
    await _locked(session, allocation)  # one refund of this money at a time
    key = f"{request_id}:refund:{tranche}:{reference}"
    earlier = await _recorded(session, key)
    if earlier is not None:
        if earlier.amount_minor != amount.minor_units:
            raise RefundRefused(f"the refund {reference!r} is already recorded with another amount ({earlier.amount_minor})")
        return earlier, False
    came_back = await session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0)).where(
            LedgerEntry.request_id == request_id, LedgerEntry.tranche == tranche, LedgerEntry.kind.in_([REVERSAL, REFUND])
        )
    )
    if came_back + amount.minor_units > payment.amount_minor:
        raise RefundRefused(
            f"tranche {tranche} paid {payment.amount_minor}, of which {came_back} already came back; "
            f"a refund of {amount.minor_units} would be more (minor units of {payment.currency})"
        )
    await record_given_back(session, payment, REFUND, amount.minor_units, key=key, actor=actor, at=at)
    await session.flush()
    return await _recorded(session, key), True
