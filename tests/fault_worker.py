"""`haven worker` with one fault armed: it kills its own process (SIGKILL, as the OOM killer or a
lost machine would) at an activity boundary. Run by the fault-matrix harness (tests/fault_matrix.py):

    HAVEN_FAULT_KILL_AT=after:reserve_budget:1 python -m tests.fault_worker

`before:<activity>:<n>` dies as the n-th call of that activity starts (nothing of it done);
`after:<activity>:<n>` dies once it has done its work, before Temporal hears the result (so the
work is retried: the activity's idempotency is what keeps it from happening twice)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from haven.cli import _run_part, _serve_worker
from haven.settings import Settings


class KillAt(Interceptor):
    def __init__(self, spec: str):
        self.when, self.activity, count = spec.split(":")
        self.remaining = int(count)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Killing(next, self)


class _Killing(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, fault: KillAt):
        super().__init__(next)
        self.fault = fault

    def _due(self, when: str) -> bool:
        fault = self.fault
        if fault.when != when or activity.info().activity_type != fault.activity:
            return False
        fault.remaining -= 1
        return fault.remaining == 0

    async def execute_activity(self, input: ExecuteActivityInput):
        if self._due("before"):
            _die()
        result = await super().execute_activity(input)
        if self._due("after"):
            _die()
        return result


def _die() -> None:
    print(f"fault: killed at {os.environ['HAVEN_FAULT_KILL_AT']}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    spec = os.environ.get("HAVEN_FAULT_KILL_AT")
    options = {"interceptors": [KillAt(spec)]} if spec else {}
    return asyncio.run(_run_part(Settings(), lambda *args: _serve_worker(*args, **options)))


if __name__ == "__main__":
    sys.exit(main())
