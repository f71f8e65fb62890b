"""Lifecycle throughput: N grant requests from submission to paid, decisions made by the driver,
against a bare workflow of the same shape (bench/bare_workflow.py), on one Temporal dev server
(its history in a file, as `haven run` keeps it), with the worker of each in a process of its own
and the app database on PostgreSQL (a throw-away database on HAVEN_BENCH_POSTGRES_URL, default
postgresql://root@127.0.0.1:5432/test): the production shape. SQLite, the embedded default,
serves one process; with a separate worker and fifty requests at a time its single writer is
what would be measured.

    .venv/bin/python -m bench.lifecycle_throughput [--requests 1000] [--concurrency 50]

A grant request: intake (the row, its data key, the workflow started), screening and risk, the
caseworker's approval (an Update), the budget reserved, the manual rail started, finance's
record of the payment (an Update): paid. The driver waits for each step as the caseworkers' queue
does, by reading the statuses of the requests in flight (their database rows, one query for all of
them) every 50 ms; the bare workflow's driver sends
each Update at once, and the Update completes when the workflow comes to it (no polling).
The bare workflow's steps are read from the history of a grant request run first, so the two
have the same number of local activities, activities, timers and Updates by construction.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

import psycopg
from sqlalchemy import select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.bare_workflow import BareWorkflow, Shape, shape_of
from bench.report import report, summarise
from haven import devserver, ledger
from haven.db import Database, utcnow
from haven.db.migrate import upgrade_async
from haven.db.models import GrantRequestRecord, Organisation
from haven.grant_request import Actor, Category, DecisionCommand, GrantRequestSubmission, ManualPaymentRecord, Role
from haven.intake import Intake, record_policy_version
from haven.keys import case_keys, pseudonym_index_key
from haven.lifecycle import Status
from haven.localstack import HAVEN, free_port
from haven.money import Money
from haven.settings import Settings
from haven.temporal import connect
from policies import load_policy
from workflows.grant_request import GrantRequestWorkflow

POSTGRES_SERVER = os.environ.get("HAVEN_BENCH_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
POLL_EVERY = 0.05
AMOUNT = Money(minor_units=50_000, currency="EUR")  # one caseworker's approval
PARTNER = Actor(subject="int-bench", roles=[Role.INTERMEDIARY], organisation="ngo-1")
CASEWORKER = Actor(subject="cw-1", roles=[Role.CASEWORKER], organisation="fund")
FINANCE = Actor(subject="fin-1", roles=[Role.FINANCE], organisation="fund")


def submission(n: int) -> GrantRequestSubmission:
    return GrantRequestSubmission.model_validate({
        "category": "secure_communications", "urgency": "high", "country": "KE",
        "amount": AMOUNT.model_dump(), "tranches": 1, "threat_level": "moderate",
        "threat_summary": "Phone seized at a checkpoint.", "purpose": "A new phone and laptop.",
        "defender": {"pseudonym": f"bench-{n}"},
        "payee": {"name": "Digital Safety Partners", "country": "KE", "account": "KE00 0000"},
    })  # fmt: skip


class StatusWatch:
    """Wakes the requests waiting for a status: one query every POLL_EVERY for all of them, as a
    queue view reads many rows at once (a query per request and poll would be the driver's load
    on the two cores, not haven's)."""

    def __init__(self, db: Database):
        self.db = db
        self.waiting: dict[str, tuple[Status, asyncio.Future]] = {}
        self._task: asyncio.Task | None = None

    async def until(self, request_id: str, status: Status, timeout: float = 120.0) -> None:
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = (status, future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(f"request {request_id} did not reach {status} in time") from None
        finally:
            self.waiting.pop(request_id, None)

    async def _poll(self) -> None:
        while self.waiting:
            await asyncio.sleep(POLL_EVERY)
            ids = list(self.waiting)
            async with self.db.sessions() as session:
                rows = (await session.execute(
                    select(GrantRequestRecord.id, GrantRequestRecord.status).where(GrantRequestRecord.id.in_(ids))
                )).all()  # fmt: skip
            for request_id, status in rows:
                wanted, future = self.waiting.get(request_id, (None, None))
                if future is not None and status == wanted and not future.done():
                    future.set_result(None)


class GrantDriver:
    def __init__(self, intake: Intake, client: Client, db: Database):
        self.intake, self.client = intake, client
        self.watch = StatusWatch(db)

    async def one(self, n: int) -> str:
        accepted = await self.intake.submit(submission(n), PARTNER, f"bench-{uuid.uuid4().hex}")
        handle = self.client.get_workflow_handle_for(GrantRequestWorkflow.run, accepted.record.id)
        await self.watch.until(handle.id, Status.AWAITING_DECISION)
        await handle.execute_update(GrantRequestWorkflow.decide, DecisionCommand(actor=CASEWORKER, kind="approve", amount=AMOUNT))
        await self.watch.until(handle.id, Status.PAYMENT_PENDING)
        paid = ManualPaymentRecord(actor=FINANCE, amount=AMOUNT, reference=f"BANK-{n}", paid_on=date.today())
        result = await handle.execute_update(GrantRequestWorkflow.record_payment, paid)
        assert result.status == Status.PAID, result
        return handle.id


class BareDriver:
    def __init__(self, client: Client, task_queue: str, shape: Shape):
        self.client, self.task_queue, self.shape = client, task_queue, shape
        self.updates = shape.steps.count("update")

    async def one(self, n: int) -> str:
        handle = await self.client.start_workflow(BareWorkflow.run, self.shape, id=f"bare-{uuid.uuid4().hex}", task_queue=self.task_queue)
        for k in range(1, self.updates + 1):
            await handle.execute_update(BareWorkflow.act, k)
        return handle.id


async def drive(one, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """Runs `one` for n = 0..requests-1, `concurrency` at a time; the elapsed seconds and each
    request's latency in ms."""
    queue = iter(range(requests))
    latencies: list[float] = []

    async def lane() -> None:
        for n in queue:
            started = time.perf_counter()
            await one(n)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main(requests: int, concurrency: int, warmup: int) -> int:
    with tempfile.TemporaryDirectory(prefix="haven-throughput-") as var:
        var_dir = Path(var)
        address = f"127.0.0.1:{free_port()}"
        database = f"haven_throughput_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(POSTGRES_SERVER, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        database_url = f"postgresql+psycopg://{POSTGRES_SERVER.split('://', 1)[1].rsplit('/', 1)[0]}/{database}"
        settings = Settings(var_dir=var_dir, dev_mode=True, temporal_address=address, temporal_ui_port=free_port(),
                            task_queue="grant-requests", intake_rate_per_minute=10**6, database_url=database_url)  # fmt: skip
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("HAVEN_")}, "HAVEN_DEV_MODE": "true",
               "HAVEN_VAR_DIR": str(var_dir), "HAVEN_TEMPORAL_ADDRESS": address, "HAVEN_TASK_QUEUE": settings.task_queue,
               "HAVEN_DATABASE_URL": settings.database_url}  # fmt: skip
        server = devserver.start_dev_server(settings)
        workers: list[subprocess.Popen] = []
        try:
            await devserver.wait_until_serving(settings, server)
            await upgrade_async(settings.async_database_url)
            db = Database(settings.async_database_url)
            await _seed(db, settings)
            log = open(var_dir / "workers.log", "ab")
            workers.append(subprocess.Popen([HAVEN, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT))
            workers.append(subprocess.Popen([sys.executable, "-m", "bench.bare_workflow", "--address", address, "--task-queue", "bare"],
                                            stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
            client = await connect(settings)
            bare_client = await Client.connect(address, data_converter=pydantic_data_converter)
            intake = Intake(db, client, settings.task_queue, load_policy(settings.policy_file), pseudonym_index_key(settings),
                            settings.payment_rails, case_keys=case_keys(settings))  # fmt: skip
            grant = GrantDriver(intake, client, db)

            first = await grant.one(-1)  # its history gives the bare workflow its shape
            shape = shape_of(await client.get_workflow_handle(first).fetch_history(), "record_payment")
            bare = BareDriver(bare_client, "bare", shape)
            print(f"shape of a grant request to paid: {_describe(shape)}")

            rows, rates = {}, {}
            for name, driver in (("grant request", grant), ("bare workflow", bare)):
                await drive(driver.one, warmup, min(concurrency, warmup))
                elapsed, latencies = await drive(driver.one, requests, concurrency)
                rates[name] = round(requests / elapsed, 2)
                rows[name] = summarise(latencies)
                print(f"{name}: {requests} in {elapsed:.1f} s = {rates[name]} requests/s")
            memory = {"grant_worker_rss_mb": round(rss_mb(workers[0].pid), 1), "bare_worker_rss_mb": round(rss_mb(workers[1].pid), 1)}
            ratio = round(rates["grant request"] / rates["bare workflow"], 3)
            print(f"grant request / bare workflow: {ratio:.1%} of the bare workflow's rate (target: 80 % or more)")
            report("lifecycle_throughput", rows, {
                "requests": requests, "concurrency": concurrency, "warmup": warmup,
                "requests_per_second": rates, "ratio": ratio, "shape": _describe(shape), **memory,
                "database": "PostgreSQL", "temporal": "dev server, history in a file",
            })  # fmt: skip
            await db.dispose()
            return 0
        finally:
            for worker in workers:
                worker.terminate()
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
            devserver.stop(server)
            with psycopg.connect(POSTGRES_SERVER, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _describe(shape: Shape) -> str:
    return ", ".join(f"{shape.steps.count(kind)} {kind}" for kind in ("local", "activity", "timer", "update"))


async def _seed(db: Database, settings: Settings) -> None:
    await record_policy_version(db, load_policy(settings.policy_file))
    policy = load_policy(settings.policy_file).policy
    async with db.transaction() as session:
        session.add(Organisation(id="ngo-1", name="Partner NGO", trust_level="standard", active=True, created_at=utcnow()))
    async with db.transaction() as session:
        year = date.today().year
        await ledger.set_allocation(session, Category.SECURE_COMMUNICATIONS, date(year, 1, 1), date(year, 12, 31),
                                    Money(minor_units=10**12, currency=policy.base_currency), "bench")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.requests, args.concurrency, args.warmup)))
