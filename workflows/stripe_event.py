"""One short workflow per verified Stripe event: apply it to the ledger, then tell the request's
workflow. Its id is the event's, so a second delivery of the event starts nothing; and once the
API has handed the event over, the ledger write and the signal are retried until they happen."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from activities.stripe_events import StripeEvents
    from haven.case_events import TransferNotice
    from haven.stripe_events import TRANSFER_CREATED
    from workflows.grant_request import GrantRequestWorkflow


def stripe_event_workflow_id(event_id: str) -> str:
    return f"stripe-event-{event_id}"


@workflow.defn
class StripeEventWorkflow:
    @workflow.run
    async def run(self, notice: TransferNotice) -> bool:
        applied = await workflow.execute_local_activity_method(
            StripeEvents.apply_transfer_notice,
            notice,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
        )
        if notice.request_id is None:
            return applied
        signal = (
            GrantRequestWorkflow.transfer_confirmed
            if notice.event_type == TRANSFER_CREATED
            else GrantRequestWorkflow.transfer_reversed
        )
        try:
            # Signals are idempotent on the request's side, so a duplicate event may pass them on.
            await workflow.get_external_workflow_handle(notice.request_id).signal(signal, notice)
        except FailureError:
            # The request's workflow has finished (closed, or the event is not about a request of
            # ours): the ledger already holds what the event said.
            workflow.logger.info("request workflow not running; the event is recorded in the ledger only")
        return applied
