"""What the workflow asks its activities to do. Each carries the key that makes a retry harmless."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field, field_serializer

from haven.grant_request import Actor, Category, PaymentRail, Strict
from haven.lifecycle import Status
from haven.money import Money


class RequestProjection(Strict):
    """Columns of the request's row that a lifecycle event changes; only fields set are written."""

    risk_score: int | None = None
    risk_tier: str | None = None
    screening_hit: bool | None = None
    decision_due_at: datetime | None = None
    escalated: bool | None = None
    granted_minor: int | None = None
    granted_base_minor: int | None = None
    current_tranche: int | None = None
    report_due_at: datetime | None = None
    follow_up_overdue: bool | None = None
    rail: str | None = None


class DecisionEntry(Strict):
    kind: str
    amount: Money | None = None
    note: str | None = None


class MessageEntry(Strict):
    """Text a person wrote into the case (sensitive): questions, answers, check-ins, notes."""

    kind: Literal[
        "information_request", "information_response", "screening_clearance", "check_in", "withdrawal", "payment_failure"
    ]
    body: dict[str, Any]
    tranche: int | None = None


class ReportEntry(Strict):
    """The follow-up report: submitted by the intermediary, then accepted by a caseworker."""

    step: Literal["submitted", "accepted"]
    text: str | None = None
    receipts: list[str] = Field(default_factory=list)
    note: str | None = None


class PaymentUpdate(Strict):
    tranche: int
    status: Literal["paid", "failed", "cancelled"]
    reference: str | None = None
    paid_on: date | None = None
    failure_reason: str | None = None


class NotificationRequest(Strict):
    kind: str
    audience: str  # a role ("caseworker", "director", "finance") or "org:<id>"


class CaseEvent(Strict):
    """One step of a request's life, recorded atomically: audit event, status projection, and any
    decision, message, report, payment change and notifications. (request_id, seq) makes it idempotent."""

    request_id: str
    seq: int
    at: datetime
    action: str
    actor: Actor
    status_from: Status
    status_to: Status
    facts: dict[str, Any] = Field(default_factory=dict)
    projection: RequestProjection | None = None
    decision: DecisionEntry | None = None
    message: MessageEntry | None = None
    report: ReportEntry | None = None
    payment: PaymentUpdate | None = None
    notifications: list[NotificationRequest] = Field(default_factory=list)

    @field_serializer("projection")
    def _only_fields_set(self, projection: RequestProjection | None) -> dict[str, Any] | None:
        # "Set to null" and "not changed" must stay different after the trip through Temporal.
        return projection.model_dump(mode="json", exclude_unset=True) if projection is not None else None


class ReservationRequest(Strict):
    """Money to set aside from the category's allocation for the period holding `at`: the base
    amount, and the original amount with the pinned rate beside it."""

    request_id: str
    number: int
    category: Category
    amount_base_minor: int
    amount: Money
    rate_to_base: Decimal
    at: datetime
    # The pinned policy's caps, held where the money is reserved (None: a workflow from before).
    caps: "MoneyCaps | None" = None


class MoneyCaps(Strict):
    """In base minor units: the most one grant may be, and the most one defender may receive in
    twelve months (what is reserved and paid, less what came back)."""

    grant: int
    defender_12_months: int


class ReservationRelease(Strict):
    request_id: str
    number: int
    release_base_minor: int
    amount: Money  # the original amount handed back
    rate_to_base: Decimal
    reason: str
    at: datetime


# The error type `reserve_budget` raises (non-retryable) when the reservation does not fit.
NO_FUNDS = "NoFunds"
# ... and when it does not fit under the grant's or the defender's cap; its first detail is how
# much (base minor units) still fits.
OVER_CAP = "OverCap"


class PaymentInstruction(Strict):
    """What a rail needs to pay one tranche. No personal data: the rail reads the payee itself."""

    request_id: str
    tranche: int
    attempt: int
    # Attempts of this tranche that ended for good: refused (nothing paid) or left unanswered
    # past the policy's patience (the rail looks for the tranche's transfer before paying).
    ended_attempts: int = 0
    rail: PaymentRail
    amount: Money
    amount_base_minor: int

    @property
    def idempotency_key(self) -> str:
        # From the request and tranche only, never the attempt: no retry can pay twice. After an
        # attempt ended for good the next one needs a fresh key, or the payment service would
        # replay its stored answer (Stripe keeps refusals and 500s for a day) even once finance
        # has fixed the cause; the rail first looks for a transfer the ended attempt made.
        key = f"{self.request_id}:tranche:{self.tranche}"
        return f"{key}:after-{self.ended_attempts}" if self.ended_attempts else key


# The error type a rail raises (non-retryable) when it refuses a payment for good.
PAYMENT_REFUSED = "PaymentRefused"


class TransferNotice(Strict):
    """What a verified Stripe webhook event says about one of our transfers: ids and amounts only.
    The event workflow applies it to the ledger and passes it on to the request's workflow."""

    event_id: str
    event_type: str
    created: datetime
    transfer_id: str
    request_id: str | None = None
    tranche: int | None = None
    amount: Money
    amount_reversed_minor: int = 0


class DisbursementStarted(Strict):
    """A rail either completes the payment or leaves it awaiting confirmation (manual, webhooks)."""

    outcome: Literal["awaiting_confirmation", "completed"]
    reference: str | None = None
