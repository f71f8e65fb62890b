"""One reconciliation of a day's Stripe transfers with the ledger, started daily by the
`stripe-reconciliation` schedule or on demand by finance. Deterministic orchestration only: the
run is recorded as running, compared and recorded by an activity, or recorded as failed."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.reconciliation import StripeReconciliation
    from haven.reconciliation import ReconciliationOrder, ReconciliationSummary

SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")  # set by Temporal Schedules
LOCAL_ACTIVITY_TIMEOUT = timedelta(seconds=10)
LOCAL_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=30))
# Stripe may be unreachable for a while: keep trying, further apart, for some hours; after that the
# run fails and finance is told, rather than the day being silently left unreconciled.
COMPARISON_TIMEOUT = timedelta(minutes=5)
COMPARISON_GIVES_UP_AFTER = timedelta(hours=6)
COMPARISON_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5))


@workflow.defn
class ReconciliationWorkflow:
    @workflow.run
    async def run(self, order: ReconciliationOrder) -> ReconciliationSummary:
        # A scheduled run reconciles the day before its nominal time, even when it starts late
        # (caught up after an outage); any other run, the day before it starts.
        nominal = workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME) or workflow.now()
        run = order.for_run(workflow.info().workflow_id, nominal)
        await self._local(StripeReconciliation.open_reconciliation_run, run)
        try:
            return await workflow.execute_activity_method(
                StripeReconciliation.reconcile_stripe_day,
                run,
                start_to_close_timeout=COMPARISON_TIMEOUT,
                schedule_to_close_timeout=COMPARISON_GIVES_UP_AFTER,
                retry_policy=COMPARISON_RETRY,
            )
        except ActivityError as error:
            await self._local(StripeReconciliation.fail_reconciliation_run, run)
            reason = getattr(error.cause, "message", None) or str(error.cause or error)
            raise ApplicationError(f"the reconciliation of {run.day} failed: {reason}", non_retryable=True) from None

    async def _local(self, fn, run) -> None:
        # The app database's own steps: short and idempotent, as local activities.
        await workflow.execute_local_activity_method(
            fn, run, start_to_close_timeout=LOCAL_ACTIVITY_TIMEOUT, retry_policy=LOCAL_RETRY
        )
