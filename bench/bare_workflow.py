"""The bare workflow the lifecycle throughput benchmark compares haven with: the same steps as a
grant request's history (its local activities, activities, timers and Updates, in order, read
from a real history by `shape_of`), each doing nothing. What it costs is what Temporal costs;
what the grant request costs on top is haven's.

    python -m bench.bare_workflow --address 127.0.0.1:7233 --task-queue bare   # its worker
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

LOCAL, ACTIVITY, TIMER, UPDATE = "local", "activity", "timer", "update"


class Shape(BaseModel):
    steps: list[str]


def shape_of(history: WorkflowHistory, through_update: str) -> Shape:
    """The steps of `history` up to the Update `through_update` and the local activities that
    follow it (the work a request does to get there)."""
    steps: list[str] = []
    done = False
    for event in history.events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_MARKER_RECORDED and event.marker_recorded_event_attributes.marker_name == "core_local_activity":
            steps.append(LOCAL)
        elif done:
            if kind in (EventType.EVENT_TYPE_TIMER_STARTED, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
                        EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED):  # fmt: skip
                break
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            steps.append(ACTIVITY)
        elif kind == EventType.EVENT_TYPE_TIMER_STARTED:
            steps.append(TIMER)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            steps.append(UPDATE)
            done = event.workflow_execution_update_accepted_event_attributes.accepted_request.input.name == through_update
    return Shape(steps=steps)


@activity.defn
async def nothing() -> None:
    return None


@workflow.defn
class BareWorkflow:
    def __init__(self) -> None:
        self._updates = 0
        self._waiting_for = 0

    @workflow.run
    async def run(self, shape: Shape) -> int:
        pending_timer = False
        for step in shape.steps:
            if step == LOCAL:
                await workflow.execute_local_activity(nothing, start_to_close_timeout=timedelta(seconds=30))
            elif step == ACTIVITY:
                await workflow.execute_activity(nothing, start_to_close_timeout=timedelta(seconds=30))
            elif step == TIMER:  # the grant request waits for its decision with a deadline
                pending_timer = True
            else:
                self._waiting_for += 1
                expected = self._waiting_for
                timeout = timedelta(days=7) if pending_timer else None
                await workflow.wait_condition(lambda: self._updates >= expected, timeout=timeout)
                pending_timer = False
        return self._updates

    @workflow.update
    async def act(self, k: int) -> int:
        """The k-th Update, sent at once: it completes when the workflow has come to wait for it
        (the driver of a grant request waits for the state instead; the bare one needs no polls)."""
        await workflow.wait_condition(lambda: self._waiting_for >= k)
        self._updates += 1
        return self._updates


async def serve(address: str, task_queue: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    async with Worker(client, task_queue=task_queue, workflows=[BareWorkflow], activities=[nothing]):
        print("bare worker running", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.task_queue))
