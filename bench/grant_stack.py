"""haven in its production shape, for the benchmarks of its workflows: one Temporal dev server (its
history in a file, as `haven run` keeps it), the app database on PostgreSQL (a throw-away database
on HAVEN_BENCH_POSTGRES_URL, default postgresql://root@127.0.0.1:5432/test), `haven worker` in a
process of its own, and a driver that submits through haven's intake and decides and pays through
the workflow's Updates, as the API does.

SQLite, the embedded default, serves one process; with a separate worker and many requests at a
time its single writer is what would be measured."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import psycopg
import structlog
from sqlalchemy import select
from temporalio.client import Client

from bench.report import RESULTS
from haven import devserver, ledger
from haven.db import Database, utcnow
from haven.db.migrate import upgrade_async
from haven.db.models import GrantRequestRecord, Organisation
from haven.grant_request import Actor, ActionResult, Category, DecisionCommand, GrantRequestSubmission, ManualPaymentRecord, Role
from haven.intake import Intake
from haven.policy_versions import record_policy_version
from haven.keys import case_keys, pseudonym_index_key
from haven.lifecycle import Status
from haven.localstack import HAVEN, free_port
from haven.money import Money
from haven.settings import Settings
from haven.temporal import connect
from policies import load_policy
from workflows.grant_request import GrantRequestWorkflow

# The driver submits through haven's intake in its own process: its info lines (one per request)
# would be the benchmark's output, and its cost.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

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
        self.seen: dict[str, str] = {}
        self._task: asyncio.Task | None = None

    async def until(self, request_id: str, status: Status, timeout: float = 300.0) -> None:
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = (status, future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            seen = self.seen.get(request_id, "no row")
            raise TimeoutError(f"request {request_id} did not reach {status} in {timeout:.0f} s (it is {seen})") from None
        finally:
            self.waiting.pop(request_id, None)
            self.seen.pop(request_id, None)

    async def _poll(self) -> None:
        while self.waiting:
            await asyncio.sleep(POLL_EVERY)
            ids = list(self.waiting)
            async with self.db.sessions() as session:
                rows = (await session.execute(
                    select(GrantRequestRecord.id, GrantRequestRecord.status).where(GrantRequestRecord.id.in_(ids))
                )).all()  # fmt: skip
            for request_id, status in rows:
                self.seen[request_id] = status
                wanted, future = self.waiting.get(request_id, (None, None))
                if future is not None and status == wanted and not future.done():
                    future.set_result(None)


class GrantDriver:
    """A partner submitting, a caseworker approving, finance recording a manual payment."""

    def __init__(self, intake: Intake, client: Client, db: Database):
        self.intake, self.client = intake, client
        self.watch = StatusWatch(db)

    async def submit(self, n: int) -> str:
        """Submitted and screened: the request is in the caseworkers' queue."""
        accepted = await self.intake.submit(submission(n), PARTNER, f"bench-{uuid.uuid4().hex}")
        await self.watch.until(accepted.record.id, Status.AWAITING_DECISION)
        return accepted.record.id

    async def approve(self, request_id: str) -> ActionResult:
        handle = self.client.get_workflow_handle_for(GrantRequestWorkflow.run, request_id)
        return await handle.execute_update(GrantRequestWorkflow.decide, DecisionCommand(actor=CASEWORKER, kind="approve", amount=AMOUNT))

    async def pay(self, request_id: str, n: int) -> ActionResult:
        """Waits for the payment to be due, then records it: paid, and the follow-up begins."""
        await self.watch.until(request_id, Status.PAYMENT_PENDING)
        handle = self.client.get_workflow_handle_for(GrantRequestWorkflow.run, request_id)
        paid = ManualPaymentRecord(actor=FINANCE, amount=AMOUNT, reference=f"BANK-{n}", paid_on=date.today())
        result = await handle.execute_update(GrantRequestWorkflow.record_payment, paid)
        assert result.status == Status.PAID, result
        return result

    async def one(self, n: int) -> str:
        """Submission to paid."""
        request_id = await self.submit(n)
        await self.approve(request_id)
        await self.pay(request_id, n)
        return request_id


async def drive(one: Callable[[int], Awaitable[object]], requests: int, concurrency: int) -> tuple[float, list[float]]:
    """Runs `one` for n = 0..requests-1, `concurrency` at a time; the elapsed seconds and each
    call's latency in ms."""
    queue = iter(range(requests))
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def lane() -> None:
        for n in queue:
            started = loop.time()
            await one(n)
            latencies.append((loop.time() - started) * 1000)

    started = loop.time()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return loop.time() - started, latencies


OVERLOAD_SIGNS = {
    "workflow_tasks_over_5_s": "Workflow task duration exceeded",
    "activities_timed_out_then_finished": "Activity not found on completion",
}


@dataclass
class GrantStack:
    settings: Settings
    db: Database
    client: Client
    server: subprocess.Popen  # the Temporal dev server
    driver: GrantDriver
    _log: Path
    _processes: list[subprocess.Popen]
    worker: subprocess.Popen | None = None  # `haven worker`

    def overload_signs(self) -> dict[str, int]:
        """What the workers' log shows of a worker taking on more than it can run: slow workflow
        tasks and activities that finished after Temporal had timed them out (and retried them)."""
        text = self._log.read_text(errors="replace") if self._log.exists() else ""
        return {sign: text.count(pattern) for sign, pattern in OVERLOAD_SIGNS.items()}

    def spawn(self, command: list[str], **options) -> subprocess.Popen:
        """Another process of the benchmark's (stopped with the stack), its output in the workers' log."""
        with open(self._log, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **options)
        self._processes.append(process)
        return process


@asynccontextmanager
async def grant_stack(name: str) -> AsyncIterator[GrantStack]:
    """The stack, torn down afterwards (its database dropped); the workers' log is kept in
    bench/results/<name>.workers.log."""
    with tempfile.TemporaryDirectory(prefix=f"haven-{name}-") as var:
        var_dir = Path(var)
        address = f"127.0.0.1:{free_port()}"
        database = f"haven_{name}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(POSTGRES_SERVER, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        database_url = f"postgresql+psycopg://{POSTGRES_SERVER.split('://', 1)[1].rsplit('/', 1)[0]}/{database}"
        settings = Settings(var_dir=var_dir, dev_mode=True, temporal_address=address, temporal_ui_port=free_port(),
                            task_queue="grant-requests", intake_rate_per_minute=10**6, database_url=database_url)  # fmt: skip
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("HAVEN_")}, "HAVEN_DEV_MODE": "true",
               "HAVEN_VAR_DIR": str(var_dir), "HAVEN_TEMPORAL_ADDRESS": address, "HAVEN_TASK_QUEUE": settings.task_queue,
               "HAVEN_DATABASE_URL": settings.database_url}  # fmt: skip
        log = var_dir / "workers.log"
        processes: list[subprocess.Popen] = []
        server = devserver.start_dev_server(settings)
        db = None
        try:
            await devserver.wait_until_serving(settings, server)
            await upgrade_async(settings.async_database_url)
            db = Database(settings.async_database_url)
            await _seed(db, settings)
            client = await connect(settings)
            intake = Intake(db, client, settings.task_queue, load_policy(settings.policy_file), pseudonym_index_key(settings),
                            settings.payment_rails, case_keys=case_keys(settings))  # fmt: skip
            stack = GrantStack(settings, db, client, server, GrantDriver(intake, client, db), log, processes)
            stack.worker = stack.spawn([HAVEN, "worker"], env=env)
            yield stack
        finally:
            for process in processes:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
            if db is not None:
                await db.dispose()
            devserver.stop(server)
            with psycopg.connect(POSTGRES_SERVER, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            if log.exists():  # what the overload signs were, or why it failed
                RESULTS.mkdir(exist_ok=True)
                kept = RESULTS / f"{name}.workers.log"
                shutil.copyfile(log, kept)
                print(f"the workers' log is kept in {kept}", file=sys.stderr)


async def _seed(db: Database, settings: Settings) -> None:
    policy = load_policy(settings.policy_file)
    await record_policy_version(db, policy)
    async with db.transaction() as session:
        session.add(Organisation(id="ngo-1", name="Partner NGO", trust_level="standard", active=True, created_at=utcnow()))
    async with db.transaction() as session:
        year = date.today().year
        await ledger.set_allocation(session, Category.SECURE_COMMUNICATIONS, date(year, 1, 1), date(year, 12, 31),
                                    Money(minor_units=10**12, currency=policy.policy.base_currency), "bench")  # fmt: skip
