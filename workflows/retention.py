"""The daily retention run, started by the `case-data-retention` schedule: one activity that
destroys the data keys of requests over for longer than their policy keeps them."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.retention import CaseDataRetention


@workflow.defn
class RetentionWorkflow:
    @workflow.run
    async def run(self) -> int:
        return await workflow.execute_activity_method(
            CaseDataRetention.destroy_expired_case_data,
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=10)),
        )
