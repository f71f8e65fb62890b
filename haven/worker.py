"""The worker: runs grant request workflows and their activities."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from activities import build_activities
from haven.db import Database
from haven.settings import Settings
from workflows.grant_request import GrantRequestWorkflow
from workflows.reconciliation import ReconciliationWorkflow
from workflows.retention import RetentionWorkflow
from workflows.stripe_event import StripeEventWorkflow

WORKFLOWS = [GrantRequestWorkflow, StripeEventWorkflow, ReconciliationWorkflow, RetentionWorkflow]


def build_worker(client: Client, db: Database, settings: Settings, payment_rails=None, **options) -> Worker:
    """`payment_rails` replaces the configured rails (tests drive a rail of their own); `options`
    go to the Temporal worker."""
    options = {
        "max_cached_workflows": settings.worker_max_cached_workflows,
        "max_concurrent_workflow_tasks": settings.worker_max_concurrent_workflow_tasks,
        "max_concurrent_local_activities": settings.worker_max_concurrent_local_activities,
        "max_concurrent_activities": settings.worker_max_concurrent_activities,
        **options,
    }
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=build_activities(db, settings, payment_rails),
        **options,
    )
