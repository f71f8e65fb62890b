"""Budget reservations: money set aside from the category's allocation before payment, and released
if it will not be paid. Both are ledger movements (`haven.ledger`), keyed by request and number."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from haven import caps, ledger
from haven.case_events import NO_FUNDS, OVER_CAP, ReservationRelease, ReservationRequest
from haven.db import Database, utcnow
from haven.db.models import BudgetReservation, GrantRequestRecord
from policies import rules
from haven.grant_request import SYSTEM


def _movement(kind: str, order: ReservationRequest | ReservationRelease, amount_base_minor: int) -> ledger.Movement:
    """The ledger movement of a reservation or its release, keyed by request and number."""
    return ledger.Movement(
        key=f"{order.request_id}:{kind}:{order.number}",
        request_id=order.request_id,
        tranche=None,
        amount_base_minor=amount_base_minor,
        amount=order.amount,
        rate_to_base=order.rate_to_base,
        actor=SYSTEM.subject,
        at=order.at,
    )


class OverCap(Exception):
    def __init__(self, message: str, room: int):
        super().__init__(message)
        self.room = room


async def _check_caps(session, request: ReservationRequest) -> None:
    """The grant's and the defender's caps, checked in the reservation's transaction, which
    already holds the allocation's lock: the defender's is taken after it, always in that order."""
    assert request.caps is not None
    record = await session.get(GrantRequestRecord, request.request_id)
    if record is None:
        raise LookupError(f"no grant request {request.request_id}")
    await caps.lock_defender(session, record)
    to_request, to_defender = await caps.committed(session, record, request.at)
    room = rules.room_under_caps(request.caps.grant, request.caps.defender_12_months, to_request, to_defender)
    if request.amount_base_minor > room:
        raise OverCap(
            f"{request.amount_base_minor} base minor units do not fit under the caps: {room} still fit "
            f"(the grant's cap {request.caps.grant}, of which {to_request} is committed; the defender's 12-month cap "
            f"{request.caps.defender_12_months}, of which {to_defender} is committed across their requests)",
            room,
        )


class BudgetReservations:
    def __init__(self, db: Database):
        self.db = db

    @activity.defn
    async def reserve_budget(self, request: ReservationRequest) -> None:
        """Raises a non-retryable NoFunds error when the reservation does not fit: the workflow
        then waits for funds (or a caseworker's decision) instead of paying."""
        movement = _movement(ledger.RESERVATION, request, request.amount_base_minor)
        try:
            async with self.db.transaction() as session:
                # The allocation's lock first, then whether this reservation exists: an attempt of this
                # activity still running when Temporal started the next may have reserved it meanwhile,
                # and the next must not then be refused (over the caps, no funds) for that money.
                await ledger.allocation_covering(session, request.category, request.at.date())
                exists = await session.scalar(
                    select(BudgetReservation.id).where(
                        BudgetReservation.request_id == request.request_id, BudgetReservation.number == request.number
                    )
                )
                if exists is not None:
                    return
                if request.caps is not None:
                    await _check_caps(session, request)
                allocation = await ledger.reserve(session, request.category, request.at.date(), movement)
                session.add(
                    BudgetReservation(
                        request_id=request.request_id,
                        number=request.number,
                        allocation_id=allocation,
                        category=request.category,
                        amount_base_minor=request.amount_base_minor,
                        released_base_minor=0,
                        status="held",
                        reserved_at=utcnow(),
                    )
                )
        except ledger.NoFunds as refusal:
            raise ApplicationError(str(refusal), type=NO_FUNDS, non_retryable=True) from None
        except OverCap as refusal:
            raise ApplicationError(str(refusal), refusal.room, type=OVER_CAP, non_retryable=True) from None
        except IntegrityError:
            pass  # the same reservation, written by a concurrent attempt of this activity

    @activity.defn
    async def release_budget(self, release: ReservationRelease) -> None:
        """Closes a held reservation, giving back what will not be paid (0 when fully paid)."""
        async with self.db.transaction() as session:
            reservation = await session.scalar(
                select(BudgetReservation)
                .where(BudgetReservation.request_id == release.request_id, BudgetReservation.number == release.number)
                .with_for_update()
            )
            if reservation is None or reservation.status != "held":
                return
            if not 0 <= release.release_base_minor <= reservation.amount_base_minor:
                raise ValueError("a release cannot exceed its reservation")
            reservation.released_base_minor = release.release_base_minor
            reservation.status = "released" if release.release_base_minor == reservation.amount_base_minor else "settled"
            reservation.closed_at = utcnow()
            if reservation.allocation_id is not None:
                movement = _movement(ledger.RELEASE, release, release.release_base_minor)
                await ledger.release(session, reservation.allocation_id, movement)
