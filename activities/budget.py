"""Budget reservations: money set aside before payment and released if it will not be paid."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from temporalio import activity

from haven.case_events import ReservationRelease, ReservationRequest
from haven.db import Database, utcnow
from haven.db.models import BudgetReservation


class BudgetReservations:
    def __init__(self, db: Database):
        self.db = db

    @activity.defn
    async def reserve_budget(self, request: ReservationRequest) -> None:
        try:
            async with self.db.transaction() as session:
                exists = await session.scalar(
                    select(BudgetReservation.id).where(
                        BudgetReservation.request_id == request.request_id, BudgetReservation.number == request.number
                    )
                )
                if exists is None:
                    session.add(
                        BudgetReservation(
                            request_id=request.request_id,
                            number=request.number,
                            category=request.category,
                            amount_base_minor=request.amount_base_minor,
                            released_base_minor=0,
                            status="held",
                            reserved_at=utcnow(),
                        )
                    )
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
