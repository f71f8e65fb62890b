"""Money returned to the fund after payment: an intermediary sends back what was not spent (or was
paid for something else), and finance records it. It is a ledger movement from paid back to
available, keyed by the transfer's reference; the case's status does not change."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from haven import ledger
from haven.audit import record_change
from haven.db import utcnow
from haven.db.queries import find_request
from haven.grant_request import Actor, CalendarDate, Reference, Strict
from haven.money import Money, PositiveMoney, WholeNumber
from api.permissions import Operation, require
from api.problems import PROBLEM_RESPONSES as PROBLEMS
from api.problems import Problem
from api.routes.grant_requests import RequestId
from api.services import Svc

router = APIRouter(prefix="/v1/grant-requests", tags=["finance"])


class RefundInput(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"tranche": 1, "amount": {"minor_units": 20000, "currency": "EUR"},
                                         "reference": "SEPA-IN-2026-118", "received_on": "2026-11-30"}]}  # fmt: skip
    )

    tranche: WholeNumber = Field(ge=1, le=24)
    amount: PositiveMoney = Field(description="What came back, in the currency the tranche was paid in.")
    reference: Reference = Field(description="The incoming transfer's reference: recording it again changes nothing.")
    received_on: CalendarDate = Field(description="Not before the tranche was paid, nor in the future.")
    separate_from_reversal: bool = Field(
        default=False,
        strict=True,
        description=(
            "The tranche's Stripe transfer was reversed, and this is other money (it came back by another way). "
            "Without it, a refund of a reversed tranche is refused: the reversal is already counted."
        ),
    )


class RefundView(BaseModel):
    request_id: str
    tranche: int
    amount: Money
    amount_base: Money
    reference: str
    received_on: date
    recorded_by: str


@router.post(
    "/{request_id}/refunds",
    status_code=201,
    response_model=RefundView,
    responses={**PROBLEMS, 200: {"model": RefundView, "description": "This reference was recorded before: that refund."}},
)
async def record_refund(
    request_id: RequestId,
    body: RefundInput,
    response: Response,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.RECORD_REFUND))],
) -> RefundView:
    """Finance records money returned for a paid tranche. The same reference again answers 200 with
    the refund already recorded; 409 when the tranche is not paid, when more would come back than
    was paid (refunds and Stripe reversals together), when the tranche's transfer was reversed
    through Stripe and the refund is not said to be other money, or when the reference was recorded
    with another amount; 422 when it is dated before the payment."""
    if body.received_on > utcnow().date():
        detail = "received_on: a refund is recorded once it has been received, not before"
        raise Problem(422, "validation-error", detail, errors=[{"field": "received_on", "message": detail}])
    if await find_request(svc.db, request_id, None) is None:
        raise Problem(404, "not-found", f"no grant request {request_id}")
    try:
        async with svc.db.transaction() as session:
            entry, created = await ledger.record_refund(
                session, request_id, body.tranche, body.amount, body.reference, actor.subject, utcnow(),
                received_on=body.received_on, separate_from_reversal=body.separate_from_reversal,
            )  # fmt: skip
            if created:
                separate = {"separate_from_reversal": True} if body.separate_from_reversal else {}
                await record_change(
                    session, actor, "refund_recorded", request_id, tranche=body.tranche, amount_minor=body.amount.minor_units,
                    currency=body.amount.currency, amount_base_minor=entry.amount_base_minor, reference=body.reference,
                    received_on=body.received_on.isoformat(), **separate,
                )  # fmt: skip
    except ledger.RefundRefused as refusal:
        if refusal.field is not None:
            detail = f"{refusal.field}: {refusal}"
            raise Problem(422, "validation-error", detail, errors=[{"field": refusal.field, "message": str(refusal)}]) from None
        raise Problem(409, "refund-refused", str(refusal)) from None
    if not created:
        response.status_code = 200
    base = svc.intake.policy.policy.base_currency
    return RefundView(
        request_id=request_id, tranche=body.tranche, amount=Money(minor_units=entry.amount_minor, currency=entry.currency),
        amount_base=Money(minor_units=entry.amount_base_minor, currency=base), reference=body.reference,
        received_on=body.received_on, recorded_by=entry.actor,
    )  # fmt: skip
