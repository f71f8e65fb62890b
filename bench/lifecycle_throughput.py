"""Lifecycle throughput: N grant requests from submission to paid, decisions made by the driver,
against a bare workflow of the same shape (bench/bare_workflow.py) on the same Temporal server,
the worker of each in a process of its own (the stack of bench/grant_stack.py: PostgreSQL, the dev
server with its history in a file).

    .venv/bin/python -m bench.lifecycle_throughput [--requests 1000] [--concurrency 50]

A grant request: intake (the row, its data key, the workflow started), screening and risk, the
caseworker's approval (an Update), the budget reserved, the manual rail started, finance's
record of the payment (an Update): paid. The driver waits for each step as the caseworkers' queue
does, by reading the statuses of the requests in flight (their database rows, one query for all of
them) every 50 ms; the bare workflow's driver sends each Update at once, and the Update completes when the workflow comes to it (no polling).
The bare workflow's steps are read from the history of a grant request run first, so the two
have the same number of local activities, activities, timers and Updates by construction.
The CPU time each process used per request says which of them limits the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.bare_workflow import BareWorkflow, Shape, shape_of
from bench.grant_stack import drive, grant_stack
from bench.procfs import cpu_seconds, rss_mb
from bench.report import report, summarise


class BareDriver:
    def __init__(self, client: Client, task_queue: str, shape: Shape):
        self.client, self.task_queue, self.shape = client, task_queue, shape
        self.updates = shape.steps.count("update")

    async def one(self, n: int) -> str:
        handle = await self.client.start_workflow(BareWorkflow.run, self.shape, id=f"bare-{uuid.uuid4().hex}", task_queue=self.task_queue)
        for k in range(1, self.updates + 1):
            await handle.execute_update(BareWorkflow.act, k)
        return handle.id


async def main(requests: int, concurrency: int, warmup: int) -> int:
    async with grant_stack("throughput") as stack:
        address = stack.settings.temporal_address
        bare_worker = stack.spawn([sys.executable, "-m", "bench.bare_workflow", "--address", address, "--task-queue", "bare"])
        bare_client = await Client.connect(address, data_converter=pydantic_data_converter)
        grant = stack.driver
        first = await grant.one(-1)  # its history gives the bare workflow its shape
        shape = shape_of(await stack.client.get_workflow_handle(first).fetch_history(), "record_payment")
        bare = BareDriver(bare_client, "bare", shape)
        print(f"shape of a grant request to paid: {_describe(shape)}")

        rows, rates, cpu = {}, {}, {}
        processes = {"grant request": stack.worker.pid, "bare workflow": bare_worker.pid}
        for name, driver in (("grant request", grant), ("bare workflow", bare)):
            await drive(driver.one, warmup, min(concurrency, warmup))
            before = cpu_seconds(processes[name]), cpu_seconds(stack.server.pid), time.process_time()
            elapsed, latencies = await drive(driver.one, requests, concurrency)
            after = cpu_seconds(processes[name]), cpu_seconds(stack.server.pid), time.process_time()
            rates[name] = round(requests / elapsed, 2)
            rows[name] = summarise(latencies)
            # Where the two cores went, per request: which process limits the rate.
            cpu[name] = {part: round(1000 * (b - a) / requests, 1)
                         for part, a, b in zip(("worker", "temporal_server", "driver"), before, after)}  # fmt: skip
            print(f"{name}: {requests} in {elapsed:.1f} s = {rates[name]} requests/s; CPU ms per request: {cpu[name]}")
        memory = {"grant_worker_rss_mb": round(rss_mb(stack.worker.pid), 1), "bare_worker_rss_mb": round(rss_mb(bare_worker.pid), 1)}
        ratio = round(rates["grant request"] / rates["bare workflow"], 3)
        print(f"grant request / bare workflow: {ratio:.1%} of the bare workflow's rate (target: 80 % or more)")
        print(f"overload signs in the workers' log: {stack.overload_signs()}")
        report("lifecycle_throughput", rows, {
            "requests": requests, "concurrency": concurrency, "warmup": warmup,
            "overload_signs": stack.overload_signs(), "requests_per_second": rates, "ratio": ratio, "cpu_ms_per_request": cpu, "shape": _describe(shape), **memory,
            "database": "PostgreSQL", "temporal": "dev server, history in a file",
        })  # fmt: skip
    return 0


def _describe(shape: Shape) -> str:
    return ", ".join(f"{shape.steps.count(kind)} {kind}" for kind in ("local", "activity", "timer", "update"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.requests, args.concurrency, args.warmup)))
