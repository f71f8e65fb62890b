"""Replay safety: every recorded history (tests/histories/, one per lifecycle path, recorded by
`make histories`) is replayed against the current workflow code. A change that would make a running
workflow take another path than its history says (an activity added, removed or reordered, a
timer moved) fails here, before it reaches a worker with requests in flight. Such a change ships
behind `workflow.patched` (the README says how)."""

from __future__ import annotations

import copy

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError, _Definition

from tests.workflow_histories import recorded
from haven.worker import WORKFLOWS
from workflows.grant_request import GrantRequestWorkflow

HISTORIES = recorded()


def replayer() -> Replayer:
    # The recorded payloads are already opened, so the converter is the app's without its codec.
    return Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)


async def test_every_recorded_history_replays_on_the_current_code():
    assert len(HISTORIES) >= 40, "tests/histories/ is missing its recordings"
    async def histories():
        for history in HISTORIES.values():
            yield history

    results = await replayer().replay_workflows(histories(), raise_on_replay_failure=False)
    failures = {name: results.replay_failures[h.run_id] for name, h in HISTORIES.items() if h.run_id in results.replay_failures}
    if failures:
        first, error = next(iter(failures.items()))
        pytest.fail(f"{len(failures)} recorded histories no longer replay: {sorted(failures)}; {first}: {str(error)[:600]}")


def _events(kind: int):
    for history in HISTORIES.values():
        for event in history.events:
            if event.event_type == kind:
                yield event


def test_the_recordings_cover_every_workflow_and_every_action_on_a_grant_request():
    """What a running workflow can be asked to do, each in at least one recorded history: each
    workflow type, each Update and each signal of the grant request."""
    started = {e.workflow_execution_started_event_attributes.workflow_type.name for e in _events(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)}
    assert started == {_Definition.must_from_class(w).name for w in WORKFLOWS}

    definition = _Definition.must_from_class(GrantRequestWorkflow)
    updates = {e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name for e in _events(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)}
    assert set(definition.updates) <= updates, f"no recorded history has {sorted(set(definition.updates) - updates)}"
    signals = {e.workflow_execution_signaled_event_attributes.signal_name for e in _events(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)}
    assert set(definition.signals) - {None} <= signals, f"no recorded history has {sorted(set(definition.signals) - signals)}"


def _longest_closed_grant_request() -> WorkflowHistory:
    closed = [
        h for h in HISTORIES.values()
        if h.events[0].workflow_execution_started_event_attributes.workflow_type.name == "GrantRequestWorkflow"
        and h.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
    ]  # fmt: skip
    return max(closed, key=lambda h: len(h.events))


async def test_a_workflow_that_changed_its_steps_fails_the_replay():
    """The check can fail: the same history, with one activity renamed (what the history would say
    had the code called another activity at that point), no longer replays."""
    history = _longest_closed_grant_request()
    altered = copy.deepcopy(history)
    scheduled = [e for e in altered.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    scheduled[len(scheduled) // 2].activity_task_scheduled_event_attributes.activity_type.name = "an_activity_the_code_never_calls"
    await replayer().replay_workflow(history)
    with pytest.raises(NondeterminismError):
        await replayer().replay_workflow(altered)
