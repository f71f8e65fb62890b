"""Applies what a verified Stripe event says to the ledger: once per event id, in one transaction
with the event's own record, so a duplicate or a retried activity changes nothing."""

from __future__ import annotations

from datetime import timezone

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
from haven.reconciliation import Finding, FindingKind
from haven.reconciliation_runs import record_event_findings
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
        """The money (or part of it) came back from the payee's account. The amount reversed is
        cumulative, so an older event arriving late never lowers it. The ledger credits it through
        its one path for money coming back (`ledger.money_back`), which counts money already
        recorded back once; what it matched to a refund or could not apply is a finding finance
        reads, never an error to retry: Stripe was answered when the event was handed over."""
        await session.flush()  # the event's own record first: on SQLite, that takes the write lock
        payment = await session.scalar(
            select(Payment).where(Payment.reference == notice.transfer_id, Payment.rail == PaymentRail.STRIPE).with_for_update()
        )
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
        findings: list[Finding] = []
        audit = []
        if payment is None or (payment.reference is not None and payment.reference != notice.transfer_id):
            findings.append(_stranger(notice, payment))
        else:
            reversal = ledger.Reversal(
                transfer_id=notice.transfer_id, reversed_total=notice.amount_reversed_minor,
                currency=notice.amount.currency, key=f"stripe:{notice.event_id}",
            )  # fmt: skip
            outcome = await ledger.money_back(session, payment, reversal, actor=STRIPE.subject, at=notice.created)
            if outcome is None:
                return  # nothing new
            findings += _findings(notice, outcome)
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
            audit.append(
                audit_entry(
                    STRIPE,
                    "payment_reversed",
                    payment.request_id,
                    **outcome.facts(),
                    transfer_id=notice.transfer_id,
                    amount_minor=payment.amount_minor,
                    reversed_minor=notice.amount_reversed_minor,
                    stripe_event=notice.event_id,
                )
            )
        audit += await record_event_findings(
            session, notice.event_id, notice.created.astimezone(timezone.utc).date(), findings, STRIPE, self.public_base_url
        )
        await append(session, *audit)  # last: it takes the audit chain's lock


def _tranche_name(request_id: str | None, tranche: int | None) -> str:
    return f"request {request_id} tranche {tranche}"


def _stranger(notice: TransferNotice, payment: Payment | None) -> Finding:
    """A reversal of a transfer the ledger does not hold as a tranche's payment."""
    if payment is not None:
        detail = (
            f"Stripe reversed {notice.amount_reversed_minor} of transfer {notice.transfer_id}, but the ledger shows "
            f"{_tranche_name(payment.request_id, payment.tranche)} paid by transfer {payment.reference}: this one may "
            "have paid it twice. Nothing was credited; reconcile it by hand"
        )
    elif notice.request_id is None:
        detail = f"Stripe reversed {notice.amount_reversed_minor} of transfer {notice.transfer_id}, which names no request: haven did not make it"
    else:
        detail = (
            f"Stripe reversed {notice.amount_reversed_minor} of transfer {notice.transfer_id}, for "
            f"{_tranche_name(notice.request_id, notice.tranche)}, which the ledger has no Stripe payment for"
        )
    return Finding(
        kind=FindingKind.MONEY_BACK_NOT_APPLIED, subject=notice.transfer_id, detail=detail + " (minor units).",
        transfer_id=notice.transfer_id, request_id=payment.request_id if payment else notice.request_id,
        tranche=payment.tranche if payment else notice.tranche, ledger_amount_minor=payment.amount_minor if payment else None,
        stripe_amount_minor=notice.amount.minor_units, currency=notice.amount.currency,
        ledger_reversed_minor=payment.reversed_minor if payment else None, stripe_reversed_minor=notice.amount_reversed_minor,
    )  # fmt: skip


def _findings(notice: TransferNotice, outcome: ledger.MoneyBack) -> list[Finding]:
    """What finance should look at after a reversal was applied: money it matched to refunds, and
    money it could not apply."""
    name = _tranche_name(outcome.request_id, outcome.tranche)
    said = (
        f"Stripe reversed {notice.amount_reversed_minor} of transfer {notice.transfer_id} ({outcome.reported_minor} new); "
        f"{name} paid {outcome.paid_minor}, of which {outcome.before_minor} had come back"
    )
    common = dict(
        subject=notice.transfer_id, transfer_id=notice.transfer_id, request_id=outcome.request_id, tranche=outcome.tranche,
        ledger_amount_minor=outcome.paid_minor, stripe_amount_minor=notice.amount.minor_units, currency=notice.amount.currency,
        stripe_reversed_minor=notice.amount_reversed_minor,
    )  # fmt: skip
    found = []
    if outcome.matched_minor:
        refunds = ", ".join(outcome.refunds) or "none"
        found.append(
            Finding(
                kind=FindingKind.REVERSAL_MATCHED_REFUND,
                detail=(
                    f"{said}. {outcome.matched_minor} of it was taken to be the money already recorded as refunded "
                    f"(refunds: {refunds}) and counted once; {outcome.credited_minor} was credited. If the refund was "
                    f"other money, the fund received more than the ledger shows (minor units of {outcome.currency})."
                ),
                **common,
            )
        )
    if outcome.not_applied_minor:
        found.append(
            Finding(
                kind=FindingKind.MONEY_BACK_NOT_APPLIED,
                detail=(
                    f"{said}. {outcome.not_applied_minor} could not be applied: {outcome.reason}; "
                    f"{outcome.credited_minor} was credited (minor units of {outcome.currency})."
                ),
                **common,
            )
        )
    return found
