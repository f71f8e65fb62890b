"""Durable workflows: deterministic orchestration of the grant request lifecycle."""

from workflows.grant_request import GrantRequestWorkflow
from workflows.reconciliation import ReconciliationWorkflow
from workflows.retention import RetentionWorkflow
from workflows.stripe_event import StripeEventWorkflow

WORKFLOWS = [GrantRequestWorkflow, StripeEventWorkflow, ReconciliationWorkflow, RetentionWorkflow]

__all__ = ["GrantRequestWorkflow", "ReconciliationWorkflow", "RetentionWorkflow", "StripeEventWorkflow", "WORKFLOWS"]
