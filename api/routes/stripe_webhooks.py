"""Stripe's webhooks. No bearer token: Stripe proves itself with the `Stripe-Signature` header,
checked with the endpoint secret before anything is read or stored. A verified event we act on is
handed to its own workflow (id = the event id), so a duplicate delivery starts nothing; the
ledger and the request's workflow are moved on there, durably."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError

from haven.stripe_events import UnverifiedEvent, transfer_notice, verified_event
from api.problems import PROBLEM_RESPONSES, Problem
from api.services import Svc
from workflows.stripe_event import StripeEventWorkflow, stripe_event_workflow_id

router = APIRouter(prefix="/v1/webhooks", tags=["payments"])

EVENT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"type": "object", "description": "A Stripe event, exactly as Stripe sent and signed it."},
            "example": {"id": "evt_1", "type": "transfer.reversed", "created": 1764028800, "data": {"object": {}}},
        }
    },
}


SIGNATURE = {
    "name": "Stripe-Signature",
    "in": "header",
    "required": True,
    "description": "Stripe's signature of the body with the endpoint's secret (`t=…,v1=…`).",
    "schema": {"type": "string"},
}


class StripeEventReceipt(BaseModel):
    event_id: str
    outcome: Literal["accepted", "duplicate", "ignored"]


@router.post(
    "/stripe",
    response_model=StripeEventReceipt,
    responses={code: PROBLEM_RESPONSES[code] for code in (400, 413, 415, 503)},
    openapi_extra={"requestBody": EVENT_BODY, "parameters": [SIGNATURE]},
)
async def receive_stripe_event(request: Request, svc: Svc) -> StripeEventReceipt:
    """Stripe's events about our transfers (`transfer.created`, `transfer.reversed`). A tampered,
    unsigned or stale event gets 400 and changes nothing; other event types are acknowledged and
    ignored, so Stripe stops re-sending them."""
    secret = svc.settings.stripe_webhook_secret
    if not secret:
        raise Problem(503, "not-configured", "Stripe webhooks are not set up here (HAVEN_STRIPE_WEBHOOK_SECRET)")
    try:
        event = verified_event(await request.body(), request.headers.get("stripe-signature"), secret)
    except UnverifiedEvent as error:
        raise Problem(400, "invalid-signature", str(error)) from None
    notice = transfer_notice(event)
    if notice is None:
        return StripeEventReceipt(event_id=str(event.get("id", "")), outcome="ignored")
    try:
        await svc.client.start_workflow(
            StripeEventWorkflow.run,
            notice,
            id=stripe_event_workflow_id(notice.event_id),
            task_queue=svc.settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        return StripeEventReceipt(event_id=notice.event_id, outcome="duplicate")
    except RPCError:
        # Not acknowledged: Stripe delivers the event again later.
        raise Problem(503, "workflow-unavailable", "the workflow service is unavailable; Stripe will retry") from None
    return StripeEventReceipt(event_id=notice.event_id, outcome="accepted")
