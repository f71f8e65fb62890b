"""Durable workflows: deterministic orchestration of the grant request lifecycle.

Import each workflow from its own module (`from workflows.grant_request import ...`): the
workflow sandbox runs a workflow's module afresh for every workflow instance, package included,
so this package imports nothing; the worker's list of workflows is in haven/worker.py."""
