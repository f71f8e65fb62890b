"""The Stripe rail: one Connect Transfer per tranche to the payee's connected account.

The idempotency key comes from the request and tranche only, so however often Temporal retries
the activity (a crash, a timeout, a lost response), Stripe returns the transfer it made first;
and before any transfer is made, the tranche's earlier transfer is looked for, in case the key
has expired meanwhile.
Transient failures (network, 5xx, 429) are raised as they are and retried by Temporal with
back-off; Stripe's own client never retries, so there is one retry policy, not two. Permanent
refusals (no such account, insufficient platform balance, an invalid request) fail the payment
step at once and say why, without any personal data."""

from __future__ import annotations

from typing import Any

import stripe
from temporalio.exceptions import ApplicationError

from haven.case_events import PAYMENT_REFUSED, DisbursementStarted, PaymentInstruction
from haven.settings import Settings
from haven.stripe_transfers import tranche_paid_by, transfer_metadata

# Stripe refused the transfer itself (no such account, insufficient balance, an invalid request):
# nothing was paid and retrying cannot help, so the payment fails and finance decides. Everything
# else is retried: network errors, 5xx and 429, but also a rejected key (a configuration fault
# the operators fix) and an idempotency conflict, which does not prove that nothing was paid.
PERMANENT = (stripe.InvalidRequestError, stripe.CardError)


def stripe_client(settings: Settings) -> stripe.StripeClient:
    """`HAVEN_STRIPE_API_BASE` points the real client at another Stripe-compatible server (the
    local one in development and tests); empty means Stripe itself."""
    base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses=base,
        max_network_retries=0,
        http_client=stripe.HTTPXClient(timeout=settings.stripe_timeout_seconds),
    )


def refused(reason: str) -> ApplicationError:
    return ApplicationError(reason, type=PAYMENT_REFUSED, non_retryable=True)


class StripeRail:
    def __init__(self, client: stripe.StripeClient):
        self.client = client

    async def start(self, instruction: PaymentInstruction, payee: dict[str, Any]) -> DisbursementStarted:
        account = payee.get("stripe_account")
        if not account:
            raise refused("the payee has no Stripe connected account")
        params: dict[str, Any] = {
            "amount": instruction.amount.minor_units,
            "currency": instruction.amount.currency.lower(),
            "destination": account,
            "transfer_group": instruction.request_id,
            "metadata": transfer_metadata(instruction.request_id, instruction.tranche),
        }
        try:
            made_before = await self._transfer_made_before(instruction)
            if made_before is not None:
                return DisbursementStarted(outcome="completed", reference=made_before)
            transfer = await self.client.v1.transfers.create_async(
                params, {"idempotency_key": instruction.idempotency_key}
            )
        except PERMANENT as error:
            code = getattr(error, "code", None) or type(error).__name__
            raise refused(f"Stripe refused the transfer ({code})") from None
        return DisbursementStarted(outcome="completed", reference=transfer.id)

    async def _transfer_made_before(self, instruction: PaymentInstruction) -> str | None:
        """Idempotency keys expire (Stripe keeps them for a day): before making a transfer, look
        for one already made for this tranche, so a late retry can never pay twice."""
        made = await self.client.v1.transfers.list_async({"transfer_group": instruction.request_id, "limit": 100})
        for transfer in made.data:
            paid = tranche_paid_by(transfer.metadata.to_dict() if transfer.metadata else None)
            if paid == (instruction.request_id, instruction.tranche):
                return transfer.id
        return None
