"""Durable workflows: deterministic orchestration of the grant request lifecycle."""

from workflows.grant_request import GrantRequestWorkflow
from workflows.reconciliation import ReconciliationWorkflow
from workflows.stripe_event import StripeEventWorkflow

WORKFLOWS = [GrantRequestWorkflow, StripeEventWorkflow, ReconciliationWorkflow]

__all__ = ["GrantRequestWorkflow", "ReconciliationWorkflow", "StripeEventWorkflow", "WORKFLOWS"]
