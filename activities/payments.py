"""Disbursement through a payment rail. The rail interface is what Stripe will implement too."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from temporalio import activity

from haven.case_events import DisbursementStarted, PaymentInstruction
from haven.case_keys import CaseKeys
from haven.db import Database, utcnow
from haven.db.models import GrantRequestRecord, Payment
from haven.grant_request import PaymentRail


class Rail(Protocol):
    """Pays one tranche. Must be idempotent on `instruction.idempotency_key`."""

    async def start(self, instruction: PaymentInstruction, payee: dict[str, Any]) -> DisbursementStarted: ...


class ManualRail:
    """Finance pays by bank transfer outside the system and records it (reference, amount, date)
    through the API; that record confirms the payment."""

    async def start(self, instruction: PaymentInstruction, payee: dict[str, Any]) -> DisbursementStarted:
        return DisbursementStarted(outcome="awaiting_confirmation")


# While a rail call is out the activity heartbeats, so a worker that dies mid-payment is noticed in
# seconds (the workflow's heartbeat timeout) rather than at the end of the call's whole timeout.
HEARTBEAT_EVERY_SECONDS = 1.0


async def _heartbeating(call: Awaitable[DisbursementStarted]) -> DisbursementStarted:
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY_SECONDS)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        # Cancelled (the workflow learnt the outcome from a webhook): a call left in flight is
        # harmless, the rail being idempotent, but nothing should outlive the activity.
        task.cancel()


class Disbursements:
    def __init__(self, db: Database, rails: dict[PaymentRail, Rail] | None, case_keys: CaseKeys):
        self.db = db
        self.case_keys = case_keys  # opens the payee's details for the rail
        # Manual payment needs nothing configured, so every worker can take it (finance may switch
        # a failed payment to it).
        self.rails: dict[PaymentRail, Rail] = {PaymentRail.MANUAL: ManualRail(), **(rails or {})}

    @activity.defn
    async def start_disbursement(self, instruction: PaymentInstruction) -> DisbursementStarted:
        rail = self.rails.get(instruction.rail)
        if rail is None:
            # A worker set up without this rail (a rolling deploy, a missing key): another worker,
            # or this one once fixed, can pay it. Retried, never a refusal.
            raise RuntimeError(f"the {instruction.rail} rail is not configured on this worker")
        payee = await self._open_payment(instruction)
        return await _heartbeating(rail.start(instruction, payee))

    async def _open_payment(self, instruction: PaymentInstruction) -> dict[str, Any]:
        """One payment row per tranche; a retry after a failure reopens it as a new attempt."""
        now = utcnow()
        try:
            async with self.db.transaction() as session:
                request = await session.get(GrantRequestRecord, instruction.request_id)
                if request is None:
                    raise LookupError(f"no grant request {instruction.request_id}")
                payment = await session.scalar(
                    select(Payment)
                    .where(Payment.request_id == instruction.request_id, Payment.tranche == instruction.tranche)
                    .with_for_update()
                )
                if payment is None:
                    session.add(
                        Payment(
                            request_id=instruction.request_id,
                            tranche=instruction.tranche,
                            idempotency_key=instruction.idempotency_key,
                            rail=instruction.rail,
                            amount_minor=instruction.amount.minor_units,
                            currency=instruction.amount.currency,
                            amount_base_minor=instruction.amount_base_minor,
                            status="pending",
                            attempts=instruction.attempt,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                elif payment.attempts < instruction.attempt and payment.status == "failed":
                    payment.status = "pending"
                    payment.attempts = instruction.attempt
                    payment.idempotency_key = instruction.idempotency_key
                    payment.rail = instruction.rail
                    # A tranche decided again (the caps refused the first amount) is a new amount.
                    payment.amount_minor = instruction.amount.minor_units
                    payment.currency = instruction.amount.currency
                    payment.amount_base_minor = instruction.amount_base_minor
                    payment.failure_reason = None
                    payment.updated_at = now
                return dict((await self.case_keys.details(session, request))["payee"])
        except IntegrityError:
            return await self._open_payment(instruction)
