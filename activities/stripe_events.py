"""Applies what a verified Stripe event says to the ledger: once per event id, in one transaction
with the event's own record, so a duplicate or a retried activity changes nothing."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from temporalio import activity

from haven import ledger
from haven.audit import audit_entry
from haven.audit_chain import append
from haven.case_events import TransferNotice
from haven.db import Database, utcnow
from haven.db.models import GrantRequestRecord, Payment, StripeEvent
from haven.grant_request import Actor, PaymentRail
from haven.notifications.outbox import outbox_entry
from haven.stripe_events import TRANSFER_REVERSED

STRIPE = Actor(subject="stripe")  # what Stripe told us, verified by its signature


class StripeEvents:
    def __init__(self, db: Database, public_base_url: str):
        self.db = db
        self.public_base_url = public_base_url.rstrip("/")

    @activity.defn
    async def apply_transfer_notice(self, notice: TransferNotice) -> bool:
        """False when this event was applied before (Stripe delivers at least once)."""
        try:
            async with self.db.transaction() as session:
                if await session.get(StripeEvent, notice.event_id) is not None:
                    return False
                session.add(
                    StripeEvent(
                        id=notice.event_id,
                        type=notice.event_type,
                        object_id=notice.transfer_id,
                        request_id=notice.request_id,
                        tranche=notice.tranche,
                        created_at=notice.created,
                        applied_at=utcnow(),
                    )
                )
                if notice.event_type == TRANSFER_REVERSED:
                    await self._reverse(session, notice)
        except IntegrityError:
            return False  # a concurrent delivery of the same event won
        return True

    async def _reverse(self, session, notice: TransferNotice) -> None:
        """The money (or part of it) came back from the payee's account: the payment records how
        much, the audit trail says so and finance is told. The amount reversed is cumulative, so
        an older event arriving late never lowers it."""
        payment = await session.scalar(select(Payment).where(Payment.reference == notice.transfer_id).with_for_update())
        if payment is None and notice.request_id is not None:
            # The reversal may come before the workflow recorded the transfer as the payment.
            payment = await session.scalar(
                select(Payment)
                .where(
                    Payment.request_id == notice.request_id,
                    Payment.tranche == notice.tranche,
                    Payment.rail == PaymentRail.STRIPE,
                )
                .with_for_update()
            )
        if payment is None or notice.amount_reversed_minor <= payment.reversed_minor:
            return  # not a transfer of ours (reconciliation reports it), or nothing new
        came_back = notice.amount_reversed_minor - payment.reversed_minor
        payment.reversed_minor = notice.amount_reversed_minor
        payment.reversed_at = notice.created
        payment.updated_at = utcnow()
        await ledger.record_given_back(
            session, payment, ledger.REVERSAL, came_back, key=f"stripe:{notice.event_id}", actor=STRIPE.subject, at=notice.created
        )
        request = await session.get(GrantRequestRecord, payment.request_id)
        session.add(
            outbox_entry(
                f"stripe:{notice.event_id}:payment_reversed:finance",
                kind="payment_reversed",
                audience="finance",
                request_id=payment.request_id,
                status=request.status if request is not None else None,
                link=f"{self.public_base_url}/v1/grant-requests/{payment.request_id}",
            )
        )
        await append(  # last: it takes the audit chain's lock
            session,
            audit_entry(
                STRIPE,
                "payment_reversed",
                payment.request_id,
                tranche=payment.tranche,
                transfer_id=notice.transfer_id,
                amount_minor=payment.amount_minor,
                reversed_minor=notice.amount_reversed_minor,
                currency=payment.currency,
                stripe_event=notice.event_id,
            ),
        )
