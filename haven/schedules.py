"""The Temporal Schedules haven runs by: the daily reconciliation of Stripe transfers with the
ledger, and the daily retention run that destroys the details of requests over for longer than
their policy keeps them. Each worker makes sure they exist, and are as this code says, when it
starts."""

from __future__ import annotations

from datetime import timedelta

import structlog
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError

from haven.grant_request import PaymentRail
from haven.reconciliation import ReconciliationOrder
from haven.settings import Settings
from workflows.reconciliation import ReconciliationWorkflow
from workflows.retention import RetentionWorkflow

log = structlog.get_logger("haven.schedules")

RECONCILIATION_SCHEDULE = "stripe-reconciliation"
# 03:00 UTC: the previous UTC day is well over, and a transfer made just before midnight has had
# hours to be recorded paid.
RECONCILIATION_HOUR_UTC = 3


def reconciliation_schedule(settings: Settings) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            ReconciliationWorkflow.run,
            # No day and no run id: each run reconciles the day before it starts, under its own
            # workflow id (Temporal appends the scheduled time to this one).
            ReconciliationOrder(trigger="schedule", requested_by="schedule"),
            id=RECONCILIATION_SCHEDULE,
            task_queue=settings.task_queue,
        ),
        spec=ScheduleSpec(
            calendars=[ScheduleCalendarSpec(hour=[ScheduleRange(RECONCILIATION_HOUR_UTC)], minute=[ScheduleRange(0)])],
            time_zone_name="UTC",
        ),
        # A run missed while Temporal or every worker was down is made up within a day; older ones
        # are for finance to start by hand. Never two runs at once.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(days=1)),
    )


RETENTION_SCHEDULE = "case-data-retention"
RETENTION_HOUR_UTC = 4


def retention_schedule(settings: Settings) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(RetentionWorkflow.run, id=RETENTION_SCHEDULE, task_queue=settings.task_queue),
        spec=ScheduleSpec(
            calendars=[ScheduleCalendarSpec(hour=[ScheduleRange(RETENTION_HOUR_UTC)], minute=[ScheduleRange(0)])],
            time_zone_name="UTC",
        ),
        # A missed run is made up within a day (the next one would catch up anyway); never two at once.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(days=1)),
    )


async def ensure_schedules(client: Client, settings: Settings) -> None:
    """Creates the schedules, or brings existing ones up to date (keeping an operator's pause).
    Safe to call from every worker at every start. Without the Stripe rail there is nothing to
    reconcile, so no reconciliation schedule is made (an existing one is left for the operators).
    A worker that may not manage schedules (a restricted Temporal key) logs it and still pays and
    decides."""
    await _ensure(client, RETENTION_SCHEDULE, retention_schedule(settings))
    if PaymentRail.STRIPE in settings.payment_rails:
        await _ensure(client, RECONCILIATION_SCHEDULE, reconciliation_schedule(settings))


async def _ensure(client: Client, schedule_id: str, schedule: Schedule) -> None:
    try:
        try:
            await client.create_schedule(schedule_id, schedule)
            log.info("schedule_created", schedule=schedule_id)
            return
        except ScheduleAlreadyRunningError:
            pass

        def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
            schedule.state = current.description.schedule.state
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(schedule_id).update(update)
    except RPCError as error:
        log.error("schedule_not_ensured", schedule=schedule_id, error=error.message)
