"""API latency at a fixed request rate, open loop (each request sent on schedule, whether or not
the ones before it have answered, as independent clients would): submissions, reads of one
request, and the caseworker's queue, each in a phase of its own, on the embedded default
(`haven run`: Temporal dev server, SQLite, worker and API in one process).

    .venv/bin/python -m bench.api_latency [--rate 100] [--seconds 20]

Before the phases, `--backlog` requests (default 500) are submitted and the run waits until all
of them are in the caseworkers' queue, so reads and the queue work on a database that is not
empty; during the submission phase the worker screens and assesses every new request on the
same two cores, in the same process. An error is any answer other than the
operation's success status, or no answer within 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.intake_latency import REQUEST
from bench.report import report, summarise
from haven.localstack import LocalHaven


async def phase(http: httpx.AsyncClient, rate: float, seconds: float, send) -> tuple[list[float], int, float]:
    """Sends `send(n)` at `rate` per second for `seconds`; latencies (ms), errors, achieved rate."""
    latencies: list[float] = []
    errors = 0

    async def one(n: int) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            ok = await send(n)
        except httpx.HTTPError:
            ok = False
        if ok:
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            errors += 1

    total = int(rate * seconds)
    began = time.perf_counter()
    tasks = []
    for n in range(total):
        delay = began + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    return latencies, errors, total / (time.perf_counter() - began)


async def _until_settled(http: httpx.AsyncClient, backlog: int, timeout: float = 600) -> float:
    """Waits until every backlog request is screened, assessed and in the queue (read from the
    API's metrics), so the reads are timed against the API, not against the worker still busy
    with the backlog in the same process. Seconds waited."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        metrics = (await http.get("/metrics")).text
        waiting = next((float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                        if line.startswith('haven_grant_requests{status="awaiting_decision"}')), 0.0)  # fmt: skip
        if waiting >= backlog:
            return time.perf_counter() - began
        await asyncio.sleep(1)
    raise RuntimeError(f"the backlog was not in the queue after {timeout:.0f} s")


async def run(haven: LocalHaven, rate: float, seconds: float, backlog: int) -> dict:
    partner = haven.token("--role", "intermediary", "--sub", "bench", "--org", "ngo-1")
    caseworker = haven.token("--role", "caseworker", "--sub", "cw-1")
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=haven.base_url, timeout=10, limits=limits) as http:
        stamp = time.time_ns()

        async def submit(n: int, tag: str = "load") -> bool:
            body = {**REQUEST, "defender": {"pseudonym": f"bench-{tag}-{n}"}}
            headers = {**partner, "Idempotency-Key": f"{tag}-{stamp}-{n}"}
            response = await http.post("/v1/grant-requests", json=body, headers=headers)
            if response.status_code == 202 and tag == "backlog":
                ids.append(response.json()["id"])
            return response.status_code == 202

        ids: list[str] = []
        for start in range(0, backlog, 10):
            await asyncio.gather(*(submit(n, "backlog") for n in range(start, min(start + 10, backlog))))
        settled = await _until_settled(http, len(ids))
        print(f"backlog of {len(ids)} in the queue after {settled:.0f} s")

        async def get(n: int) -> bool:
            response = await http.get(f"/v1/grant-requests/{ids[n % len(ids)]}", headers=caseworker)
            return response.status_code == 200

        async def queue(n: int) -> bool:
            response = await http.get("/v1/grant-requests?status=awaiting_decision&limit=50", headers=caseworker)
            return response.status_code == 200

        rows = {}
        for name, send in (("get a request", get), ("list the queue", queue), ("submit", submit)):
            await phase(http, rate, 2, send)  # warm-up
            latencies, errors, achieved = await phase(http, rate, seconds, send)
            rows[name] = {**summarise(latencies), "errors": errors, "achieved_rate": round(achieved, 1)}
            print(f"{name}: {len(latencies)} ok, {errors} errors, {achieved:.1f}/s")
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100, help="requests per second in each phase")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--backlog", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="haven-bench-") as tmp:
        haven = LocalHaven(Path(tmp) / "haven", HAVEN_INTAKE_RATE_PER_MINUTE="1000000")
        haven.start()
        try:
            rows = asyncio.run(run(haven, args.rate, args.seconds, args.backlog))
        finally:
            try:
                haven.stop()
            except RuntimeError as error:  # still busy with the load: the figures stand, say so
                print(f"note: {error}; it was killed", file=sys.stderr)
    report("api_latency", rows, {
        "setup": "haven run (Temporal dev server + SQLite, worker and API in one process), open-loop load from one "
                 "process on the same machine", "rate_per_second": args.rate, "seconds": args.seconds,
        "backlog": args.backlog, "errors": {name: row["errors"] for name, row in rows.items()},
        "targets": "p99 under 50 ms for reads and under 150 ms for submissions at 100 requests/s",
    })  # fmt: skip
    for name, row in rows.items():
        print(f"{name}: errors {row['errors']}, achieved {row['achieved_rate']}/s")


if __name__ == "__main__":
    main()
