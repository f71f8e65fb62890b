"""Durable workflows: deterministic orchestration of the grant request lifecycle."""

from workflows.grant_request import GrantRequestWorkflow

WORKFLOWS = [GrantRequestWorkflow]

__all__ = ["GrantRequestWorkflow", "WORKFLOWS"]
