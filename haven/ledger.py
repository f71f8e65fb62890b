"""The fund ledger: what finance allocates to each category for a period, and every movement of that
money between an allocation's three buckets, in the base currency's minor units:

    allocated = available + reserved + paid

A reservation moves money from available to reserved, a payment from reserved to paid, a release
back from reserved to available, a reversal or refund from paid to available. Each movement is an
append-only entry keyed so that a retried write adds nothing, written together with the running
totals on the allocation row, under that row's lock: two reservations can never both take the last
of a budget. Callers pass their session; everything here happens in their transaction."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from haven.db import utcnow
from haven.db.models import BudgetAllocation, BudgetReservation, GrantRequestRecord, LedgerEntry, Payment, PolicyRecord, StripeEvent
from haven.money import Money
from haven.stripe_events import TRANSFER_REVERSED

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


def _payment_key(request_id: str, tranche: int) -> str:
    return f"{request_id}:payment:{tranche}"


async def record_payment(session: AsyncSession, request_id: str, tranche: int, actor: str, at: datetime) -> MoneyBack | None:
    """A tranche paid: its amount moves from reserved to paid in the allocation it was reserved from.
    A reversal Stripe reported before the payment was recorded is applied with it (returned, for the
    caller's audit entry)."""
    payment = await session.scalar(select(Payment).where(Payment.request_id == request_id, Payment.tranche == tranche))
    allocation = await _reserved_in(session, request_id)
    if payment is None or allocation is None:
        return None  # a request from before the ledger existed
    if await _recorded(session, _payment_key(request_id, tranche)) is not None:
        return None  # recorded before
    amount = Money(minor_units=payment.amount_minor, currency=payment.currency)
    movement = Movement(
        key=_payment_key(request_id, tranche), request_id=request_id, tranche=tranche,
        amount_base_minor=payment.amount_base_minor, amount=amount,
        rate_to_base=await pinned_rate(session, request_id, payment.currency), actor=actor, at=at,
    )  # fmt: skip
    await pay(session, allocation, movement)
    if not payment.reversed_minor or not payment.reference:
        return None
    reversal_seen = await session.scalar(
        select(StripeEvent.id).where(StripeEvent.type == TRANSFER_REVERSED, StripeEvent.object_id == payment.reference).limit(1)
    )
    if reversal_seen is None:
        return None  # Stripe's figure is not about this transfer: reconciliation reports the difference
    await session.flush()
    deferred = Reversal(transfer_id=payment.reference, reversed_total=payment.reversed_minor, currency=payment.currency,
                        key=f"{request_id}:reversal:{tranche}:on-payment", reversed_before=0)  # fmt: skip
    return await money_back(session, payment, deferred, actor="stripe", at=at)


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


# --- money coming back ------------------------------------------------------------------------
#
# Refunds (finance records money an intermediary sent back, keyed by its reference) and Stripe
# transfer reversals (Stripe's cumulative `amount_reversed` of the tranche's transfer) both go through
# `money_back`, one tranche at a time, under the lock of the allocation the tranche was paid from.
# Per tranche, what came back is the sum of its refund and reversal entries, and:
#
# - it never exceeds what was paid;
# - a refund is recorded in full or refused: when it would exceed what was paid, when it is dated
#   before the payment, and when the tranche's transfer has been reversed through Stripe unless
#   finance says it is other money (`separate_from_reversal`): the reversal is already counted, and
#   the same money recorded again would count twice;
# - a reversal is credited only what Stripe's cumulative figure exceeds what is already back
#   (refunds and earlier reversals alike): money recorded as refunded before Stripe reported the
#   reversal is taken to be that reversal's money and counted once ("matched"). What exceeds what
#   was paid, or cannot be applied at all, is "not applied". The caller reports both as
#   reconciliation findings; nothing here raises for what Stripe says;
# - a reversal of a tranche the ledger does not show paid yet (its transfer is still being recorded)
#   is deferred: Stripe's figure is kept on the payment and applied when the payment is recorded.


class RefundRefused(ValueError):
    """A refund that cannot be recorded (the tranche is not paid, more would come back than was
    paid, the money is a reversal's). `field`: the input at fault, when it is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Refund:
    """Money an intermediary returned to the fund for a paid tranche, as finance records it."""

    amount: Money
    reference: str
    received_on: date | None = None
    separate_from_reversal: bool = False


@dataclass(frozen=True)
class Reversal:
    """What Stripe says of the tranche's transfer: how much of it has been reversed in all.
    `reversed_before`: the figure already taken into account (None: the one on the payment)."""

    transfer_id: str
    reversed_total: int
    currency: str
    key: str
    reversed_before: int | None = None


@dataclass(frozen=True)
class MoneyBack:
    """What one report of money coming back did to its tranche, in minor units of its currency."""

    kind: str
    request_id: str
    tranche: int
    currency: str
    paid_minor: int
    before_minor: int  # refunds and credited reversals before this one
    reported_minor: int  # what this report adds: the refund, or the growth of Stripe's figure
    credited_minor: int = 0
    credited_base_minor: int = 0
    matched_minor: int = 0  # a reversal's money already recorded back: counted once
    not_applied_minor: int = 0  # see `reason`
    deferred_minor: int = 0  # applied when the payment is recorded
    reason: str | None = None
    refunds: tuple[str, ...] = ()  # the references of the tranche's refunds before this one
    entry: LedgerEntry | None = None
    new: bool = True  # False: this refund was recorded before

    def facts(self) -> dict:
        """Ids and amounts, for the audit trail."""
        return {
            "tranche": self.tranche, "currency": self.currency, "paid_minor": self.paid_minor,
            "back_before_minor": self.before_minor, "credited_minor": self.credited_minor,
            "credited_base_minor": self.credited_base_minor, "matched_minor": self.matched_minor,
            "not_applied_minor": self.not_applied_minor, "deferred_minor": self.deferred_minor,
        }  # fmt: skip


async def _back_on(session: AsyncSession, request_id: str, tranche: int) -> tuple[int, int, int, tuple[str, ...]]:
    """What already came back for the tranche: refunded, reversed (credited), in base units, and the
    references of its refunds."""
    rows = (
        await session.execute(
            select(LedgerEntry.kind, LedgerEntry.entry_key, LedgerEntry.amount_minor, LedgerEntry.amount_base_minor).where(
                LedgerEntry.request_id == request_id, LedgerEntry.tranche == tranche, LedgerEntry.kind.in_([REVERSAL, REFUND])
            )
        )
    ).all()
    prefix = f"{request_id}:refund:{tranche}:"
    refunded = sum(r.amount_minor for r in rows if r.kind == REFUND)
    reversed_ = sum(r.amount_minor for r in rows if r.kind == REVERSAL)
    references = tuple(r.entry_key.removeprefix(prefix) for r in rows if r.kind == REFUND)
    return refunded, reversed_, sum(r.amount_base_minor for r in rows), references


async def money_back(session: AsyncSession, payment: Payment, came_back: Refund | Reversal, *, actor: str, at: datetime) -> MoneyBack | None:
    """The one way money comes back to a paid tranche (see above). Raises RefundRefused for a refund
    that cannot be recorded; returns None for a reversal that says nothing new."""
    paid_entry = await _recorded(session, _payment_key(payment.request_id, payment.tranche))
    allocation = await _locked(session, paid_entry.allocation_id) if paid_entry is not None else None
    await session.refresh(payment)  # as it is now, under the lock
    refunded, reversed_, base_back, references = await _back_on(session, payment.request_id, payment.tranche)
    before = refunded + reversed_
    paid = payment.amount_minor
    outcome = MoneyBack(
        kind=REFUND if isinstance(came_back, Refund) else REVERSAL, request_id=payment.request_id, tranche=payment.tranche,
        currency=payment.currency, paid_minor=paid, before_minor=before, reported_minor=0, refunds=references,
    )  # fmt: skip
    if isinstance(came_back, Refund):
        _check_paid(payment, paid_entry, came_back)
        key = refund_key(payment.request_id, payment.tranche, came_back.reference)
        earlier = await _recorded(session, key)
        if earlier is not None:
            if earlier.amount_minor != came_back.amount.minor_units:
                raise RefundRefused(f"the refund {came_back.reference!r} is already recorded with another amount ({earlier.amount_minor})")
            return replace(outcome, entry=earlier, new=False)
        _check_refund(payment, came_back, refunded, reversed_)
        credit = came_back.amount.minor_units
        outcome = replace(outcome, reported_minor=credit)
    else:
        reversed_before = payment.reversed_minor if came_back.reversed_before is None else came_back.reversed_before
        if came_back.reversed_total <= reversed_before:
            return None  # an older figure, or one already taken into account
        if came_back.currency != payment.currency:
            reason = f"the transfer is in {came_back.currency}; the tranche was paid in {payment.currency}"
            new = came_back.reversed_total - reversed_before
            return replace(outcome, reported_minor=new, not_applied_minor=new, reason=reason)
        if came_back.reversed_before is None:
            payment.reversed_minor, payment.reversed_at, payment.updated_at = came_back.reversed_total, at, utcnow()
        new = came_back.reversed_total - reversed_before
        over = max(0, came_back.reversed_total - paid) - max(0, reversed_before - paid)
        outcome = replace(outcome, reported_minor=new)
        if paid_entry is None:
            if payment.status == "pending":
                return replace(outcome, deferred_minor=new - over, not_applied_minor=over,
                               reason="more was reversed than the tranche's amount" if over else None)  # fmt: skip
            why = "has no payment in the fund ledger" if payment.status == "paid" else f"is {payment.status}, not paid"
            return replace(outcome, not_applied_minor=new, reason=f"tranche {payment.tranche} {why}")
        credit = max(0, min(came_back.reversed_total, paid) - before)
        outcome = replace(outcome, matched_minor=max(0, new - over - credit), not_applied_minor=over,
                          reason="more was reversed than the tranche's amount" if over else None)  # fmt: skip
        key = came_back.key
    base = payment.amount_base_minor * (before + credit) // paid - base_back if credit else 0
    if credit and (allocation is None or allocation.paid_base_minor < base):
        shown = allocation.paid_base_minor if allocation is not None else 0
        reason = f"the allocation shows {shown} base minor units paid; {base} cannot come back from it"
        if isinstance(came_back, Refund):
            raise RefundRefused(reason)
        return replace(outcome, matched_minor=0, not_applied_minor=outcome.reported_minor, reason=reason)
    if not credit:
        return outcome
    movement = Movement(
        key=key, request_id=payment.request_id, tranche=payment.tranche, amount_base_minor=base,
        amount=Money(minor_units=credit, currency=payment.currency),
        rate_to_base=await pinned_rate(session, payment.request_id, payment.currency), actor=actor, at=at,
    )  # fmt: skip
    # Written here rather than by `_move`, under the lock already held: a share too small to move a
    # base minor unit is still money back in the tranche's currency, and is recorded as such.
    allocation.paid_base_minor -= base
    entry = await _entry(session, outcome.kind, allocation, movement)
    session.add(entry)
    await session.flush()
    return replace(outcome, credited_minor=credit, credited_base_minor=base, entry=entry)


def refund_key(request_id: str, tranche: int, reference: str) -> str:
    return f"{request_id}:refund:{tranche}:{reference}"


def _check_paid(payment: Payment, paid_entry: LedgerEntry | None, refund: Refund) -> None:
    if payment.status != "paid" or paid_entry is None:
        raise RefundRefused(f"tranche {payment.tranche} of {payment.request_id} has not been paid")
    if refund.amount.currency != payment.currency:
        raise RefundRefused(f"tranche {payment.tranche} was paid in {payment.currency}; a refund is recorded in that currency")


def _check_refund(payment: Payment, refund: Refund, refunded: int, reversed_: int) -> None:
    if refund.received_on is not None and payment.paid_on is not None and refund.received_on < payment.paid_on:
        raise RefundRefused(
            f"must not be before tranche {payment.tranche} was paid ({payment.paid_on.isoformat()})", field="received_on"
        )
    stripe = ""
    if payment.reversed_minor:
        stripe = (
            f"; its transfer {payment.reference} was reversed through Stripe by {payment.reversed_minor} "
            f"({reversed_} of it counted as money back, the rest matched to refunds or not applied)"
        )
        if not refund.separate_from_reversal:
            raise RefundRefused(
                f"tranche {payment.tranche} paid {payment.amount_minor} minor units of {payment.currency}{stripe}. That money "
                "is recorded already; if this refund is other money, record it with separate_from_reversal: true"
            )
    if refunded + reversed_ + refund.amount.minor_units > payment.amount_minor:
        raise RefundRefused(
            f"tranche {payment.tranche} paid {payment.amount_minor}, of which {refunded + reversed_} already came back "
            f"({refunded} refunded, {reversed_} reversed){stripe}; a refund of {refund.amount.minor_units} would be more "
            f"(minor units of {payment.currency})"
        )


async def record_refund(
    session: AsyncSession, request_id: str, tranche: int, amount: Money, reference: str, actor: str, at: datetime,
    *, received_on: date | None = None, separate_from_reversal: bool = False,
) -> tuple[LedgerEntry, bool]:
    """Money an intermediary returned to the fund (unspent, or paid for something else) for a paid
    tranche. Keyed by the transfer's reference, so recording it again changes nothing; returns the
    entry and whether it is new."""
    payment = await session.scalar(
        select(Payment).where(Payment.request_id == request_id, Payment.tranche == tranche).with_for_update()
    )
    if payment is None:
        raise RefundRefused(f"tranche {tranche} of {request_id} has not been paid")
    refund = Refund(amount=amount, reference=reference, received_on=received_on, separate_from_reversal=separate_from_reversal)
    outcome = await money_back(session, payment, refund, actor=actor, at=at)
    assert outcome is not None and outcome.entry is not None
    return outcome.entry, outcome.new
