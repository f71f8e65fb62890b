"""A long-lived load: 10,000 grant requests open at once, most waiting in the caseworkers' queue
and some paid and in their follow-up (a report due in 30 days, reminders on durable timers); then
what the worker holds in memory, what it spends doing nothing, and what a decision costs now.

    .venv/bin/python -m bench.open_requests [--requests 10000] [--follow-ups 1000] [--decisions 200]

On the stack of bench/grant_stack.py (dev server with its history in a file, PostgreSQL, `haven
worker` in its own process with its workflow cache of 1,000, HAVEN_WORKER_MAX_CACHED_WORKFLOWS).
The decisions are approvals of requests picked at random from the queue, one at a time, each timed
from the Update sent to its result (the decision recorded): most of those workflows are no longer
in the worker's cache, so their history is replayed first, as it is for a caseworker deciding on a
request that has waited for days. The worker's CPU time per decision includes what an approval
sets going (the budget reserved, the payment started).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

from bench.grant_stack import GrantStack, drive, grant_stack
from bench.procfs import cpu_seconds, rss_mb
from bench.report import report, summarise
from haven.lifecycle import Status

IDLE_SECONDS = 30


def _memory(stack: GrantStack) -> dict[str, float]:
    return {"worker_rss_mb": round(rss_mb(stack.worker.pid), 1), "temporal_server_rss_mb": round(rss_mb(stack.server.pid), 1)}


async def main(requests: int, follow_ups: int, decisions: int, concurrency: int) -> int:
    async with grant_stack("open_requests") as stack:
        driver = stack.driver
        await drive(driver.one, 5, 5)  # the worker warmed up: its imports and first workflows
        memory = {"warm, nothing open": _memory(stack)}

        every = max(1, requests // follow_ups) if follow_ups else 0
        queued: list[str] = []

        async def open_one(n: int) -> None:
            if every and n % every == 0 and n // every < follow_ups:
                request_id = await driver.one(n)
                await driver.watch.until(request_id, Status.FOLLOW_UP)
            else:
                queued.append(await driver.submit(n))

        started = time.perf_counter()
        opening_seconds, _ = await drive(open_one, requests, concurrency)
        in_follow_up = requests - len(queued)
        print(f"{requests} open in {opening_seconds:.0f} s: {len(queued)} awaiting a decision, {in_follow_up} in follow-up")
        memory[f"{requests} open"] = _memory(stack)

        # Nothing happens for a while: a waiting request is a durable timer or nothing at all.
        before = cpu_seconds(stack.worker.pid), cpu_seconds(stack.server.pid)
        await asyncio.sleep(IDLE_SECONDS)
        idle = {
            "seconds": IDLE_SECONDS,
            "worker_cpu_percent": round(100 * (cpu_seconds(stack.worker.pid) - before[0]) / IDLE_SECONDS, 1),
            "temporal_server_cpu_percent": round(100 * (cpu_seconds(stack.server.pid) - before[1]) / IDLE_SECONDS, 1),
        }
        memory[f"{requests} open, after {IDLE_SECONDS} s idle"] = _memory(stack)
        print(f"idle: {idle}")

        chosen = random.Random(7).sample(queued, min(decisions, len(queued)))
        latencies: list[float] = []
        worker_before = cpu_seconds(stack.worker.pid)
        for request_id in chosen:
            sent = time.perf_counter()
            result = await driver.approve(request_id)
            latencies.append((time.perf_counter() - sent) * 1000)
            assert result.status == Status.APPROVED, result
        worker_cpu_ms = round(1000 * (cpu_seconds(stack.worker.pid) - worker_before) / len(chosen), 1)
        memory[f"after {len(chosen)} decisions"] = _memory(stack)

        print(f"worker memory: {memory}")
        print(f"worker CPU per decision: {worker_cpu_ms} ms; overload signs in the worker's log: {stack.overload_signs()}")
        report("open_requests", {"decision (approve), one at a time": summarise(latencies)}, {
            "open_requests": requests, "awaiting_decision": len(queued), "in_follow_up": in_follow_up,
            "opening_seconds": round(opening_seconds, 1), "opening_requests_per_second": round(requests / opening_seconds, 2),
            "memory_mb": memory, "idle": idle, "worker_cpu_ms_per_decision": worker_cpu_ms,
            "worker_workflow_cache": stack.settings.worker_max_cached_workflows,
            "overload_signs": stack.overload_signs(), "total_seconds": round(time.perf_counter() - started, 1),
            "database": "PostgreSQL", "temporal": "dev server, history in a file",
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--follow-ups", type=int, default=1_000, help="how many of them are paid and in their follow-up")
    parser.add_argument("--decisions", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.requests, args.follow_ups, args.decisions, args.concurrency)))
