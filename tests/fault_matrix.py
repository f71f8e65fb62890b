"""The fault matrix: grant requests taken from submission to closed (paid through the local Stripe
server) while one fault strikes, then checked: every request reached `closed`, as it would have
without the fault; each approved tranche has exactly one transfer; the fund ledger's payments
match Stripe's transfers; the audit chain verifies.

    python -m tests.fault_matrix                      # every fault, every boundary, 3 runs each
    python -m tests.fault_matrix --runs 1 --faults stripe_500,dev_server_restart

`make test` runs a short matrix (tests/test_fault_matrix.py). Needs PostgreSQL
(HAVEN_TEST_POSTGRES_URL, default postgresql://root@127.0.0.1:5432/test). Prints a table and
writes bench/results/fault_matrix.json."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import httpx
import psycopg

from haven.localstack import HAVEN
from haven.settings import REPO_ROOT
from tests.fault_stack import PAYEE_ACCOUNT, FaultStack
from tests.harness import SAMPLE_REQUEST

POSTGRES_URL = os.environ.get("HAVEN_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
AMOUNT = {"minor_units": 150_000, "currency": "EUR"}  # one caseworker's approval
BODY = {**SAMPLE_REQUEST, "urgency": "high",
        "payee": {"name": "Digital Safety Partners", "country": "KE", "rail": "stripe", "stripe_account": PAYEE_ACCOUNT}}  # fmt: skip
STEP_TIMEOUT = 90.0  # a killed worker's tasks move on after Temporal's timeouts (about 10 s)

# Every activity a request paid through Stripe runs, in order; the worker is killed as each
# starts and once each has done its work (before Temporal hears of it).
LIFECYCLE_ACTIVITIES = [
    "load_pinned_policy", "record_event", "screen_payee", "assess_risk", "reserve_budget",
    "start_disbursement", "apply_transfer_notice",
]  # fmt: skip
BOUNDARIES = [f"{when}:{name}" for name in LIFECYCLE_ACTIVITIES for when in ("before", "after")]


class Client:
    """A patient API client, as a partner's integration should be: transport errors and 5xx are
    retried (with the same Idempotency-Key for submissions) until the step's deadline."""

    def __init__(self, stack: FaultStack):
        self.stack = stack
        self.http = httpx.AsyncClient(base_url=stack.base_url, timeout=10)
        self.staff = {role: stack.token(role, sub) for role, sub in (("caseworker", "cw-1"), ("finance", "fin-1"))}
        self.partner = stack.token("intermediary", "int-1", "ngo-1")

    async def call(self, method: str, path: str, headers: dict, **kwargs) -> httpx.Response:
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            with contextlib.suppress(httpx.TransportError):
                response = await self.http.request(method, path, headers=headers, **kwargs)
                if response.status_code < 500:
                    return response
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {path} kept failing")
            await asyncio.sleep(0.25)

    async def submit(self, key: str) -> str:
        # Each request for a defender of its own: one defender's yearly cap would refuse the later ones.
        body = {**BODY, "defender": {"pseudonym": f"defender-{key}"}}
        response = await self.call("POST", "/v1/grant-requests", {**self.partner, "Idempotency-Key": key}, json=body)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    async def view(self, request_id: str) -> dict:
        response = await self.call("GET", f"/v1/grant-requests/{request_id}", self.staff["caseworker"])
        return response.json() if response.status_code == 200 else {}

    async def status(self, request_id: str) -> str | None:
        return (await self.view(request_id)).get("status")

    async def until(self, request_id: str, *statuses: str) -> str:
        deadline = time.monotonic() + STEP_TIMEOUT
        while (status := await self.status(request_id)) not in statuses:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{request_id} stayed {status}, expected {statuses}")
            await asyncio.sleep(0.2)
        return status

    async def act(self, request_id: str, path: str, body: dict, headers: dict, done: Callable[[dict], bool]) -> None:
        """An action retried after a lost answer: a 409 then means it already happened, which
        the request's view shows (`done`)."""
        response = await self.call("POST", f"/v1/grant-requests/{request_id}{path}", headers, json=body)
        if response.status_code != 200 and not (response.status_code == 409 and done(await self.view(request_id))):
            raise AssertionError(f"{path} for {request_id}: {response.status_code} {response.text}")

    async def lifecycle(self, key: str, duplicate: bool = False) -> str:
        if duplicate:  # the partner's integration sends the same submission three times at once
            ids = set(await asyncio.gather(*(self.submit(key) for _ in range(3))))
            assert len(ids) == 1, f"one submission became {len(ids)} requests"
            request_id = ids.pop()
        else:
            request_id = await self.submit(key)
        await self.until(request_id, "awaiting_decision")
        approved = lambda view: view.get("status") in ("approved", "payment_pending", "follow_up", "closed")  # noqa: E731
        await self.act(request_id, "/decisions", {"kind": "approve", "amount": AMOUNT}, self.staff["caseworker"], approved)
        await self.until(request_id, "follow_up")
        report = {"text": "Laptop and phones bought; receipts attached.", "receipts": ["INV-1"]}
        await self.act(request_id, "/reports", report, self.partner, lambda view: view.get("report") is not None)
        closed = lambda view: view.get("status") == "closed"  # noqa: E731
        await self.act(request_id, "/report-acceptance", {"note": "Receipts match."}, self.staff["caseworker"], closed)
        return request_id

    async def close(self) -> None:
        await self.http.aclose()


@dataclass
class Fault:
    name: str
    what: str
    # Arms the fault before the run's requests start (and returns a coroutine that runs beside them).
    strike: Callable[[FaultStack, int], Awaitable[None]]
    duplicate: bool = False
    variants: list[str] = field(default_factory=lambda: [""])


async def _worker_killed_at(stack: FaultStack, run: int, boundary: str) -> None:
    stack.kill_worker()
    stack.start_worker(kill_at=f"{boundary}:1")
    while stack.worker_alive():  # until the fault fires
        await asyncio.sleep(0.05)
    stack.start_worker()


async def _worker_killed_in_payment(stack: FaultStack, run: int) -> None:
    """SIGKILL while the transfer call is in flight: Stripe got the request and makes the transfer
    after the worker is gone."""
    before = stack.stripe.control.transfer_count()
    stack.stripe.control.inject_fault("delay", seconds=1.5)
    while not _payment_started(stack):
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    stack.kill_worker()
    while stack.stripe.control.transfer_count() == before:
        await asyncio.sleep(0.05)
    stack.start_worker()


def _payment_started(stack: FaultStack) -> bool:
    with psycopg.connect(_direct_url(stack)) as conn:
        return conn.execute("SELECT count(*) FROM payments WHERE status = 'pending'").fetchone()[0] > 0


async def _dev_server_restart(stack: FaultStack, run: int) -> None:
    while not _payment_started(stack):  # mid-flight: requests decided, payments moving
        await asyncio.sleep(0.02)
    stack.kill_server()
    await asyncio.sleep(2)
    await asyncio.to_thread(stack.start_server)


async def _database_unreachable(stack: FaultStack, run: int) -> None:
    await asyncio.sleep(0.3)
    stack.proxy.cut()
    await asyncio.sleep(4)
    stack.proxy.restore()


def _stripe(kind: str, **options) -> Callable[[FaultStack, int], Awaitable[None]]:
    async def strike(stack: FaultStack, run: int) -> None:
        stack.stripe.control.inject_fault(kind, times=3, **options)

    return strike


async def _webhooks_twice(stack: FaultStack, run: int) -> None:
    """Every transfer.created event is delivered again, twice, while the requests move on."""
    sent: set[str] = set()
    for _ in range(200):
        for event in stack.stripe.control.events("transfer.created"):
            if event["id"] not in sent:
                sent.add(event["id"])
                await asyncio.to_thread(stack.stripe.control.send_event, event["id"], times=2)
        await asyncio.sleep(0.1)


async def _nothing(stack: FaultStack, run: int) -> None:
    return None


FAULTS = [
    Fault("none", "no fault (the baseline)", _nothing),
    Fault("worker_killed_at_boundary", "worker SIGKILLed as an activity starts or once it has done its work",
          lambda stack, run, boundary="": _worker_killed_at(stack, run, boundary), variants=BOUNDARIES),
    Fault("worker_killed_in_payment", "worker SIGKILLed while the Stripe transfer call is in flight", _worker_killed_in_payment),
    Fault("dev_server_restart", "Temporal dev server SIGKILLed mid-flight, restarted on its database file", _dev_server_restart),
    Fault("database_unreachable", "PostgreSQL's connections cut, new ones refused, for 4 s", _database_unreachable),
    Fault("stripe_500", "Stripe answers 500 to the first three transfer calls", _stripe("error", status=500)),
    Fault("stripe_429", "Stripe answers 429 (rate limit) to the first three transfer calls", _stripe("error", status=429)),
    Fault("stripe_timeout", "Stripe answers after the rail's 2 s timeout (the transfer is made)", _stripe("delay", seconds=3)),
    Fault("stripe_dropped", "Stripe makes the transfer, then drops the connection unanswered", _stripe("drop_after_commit")),
    Fault("duplicate_submissions_and_webhooks", "each submission sent three times at once; each webhook twice more",
          _webhooks_twice, duplicate=True),
]  # fmt: skip


@dataclass
class Row:
    fault: str
    runs: int = 0
    requests: int = 0
    lost: int = 0
    duplicated_payments: int = 0
    wrong_end_states: int = 0
    ledger_mismatches: int = 0
    audit_chain_verifies: bool = True
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def _direct_url(stack: FaultStack) -> str:
    return f"{stack.postgres_url.rsplit('/', 1)[0]}/{stack.database}"


async def run_fault(stack: FaultStack, client: Client, fault: Fault, runs: int, requests: int) -> Row:
    row = Row(fault.name)
    started = time.monotonic()
    for run in range(runs):
        for variant in fault.variants:
            row.runs += 1
            tag = f"{fault.name}-{variant or 'x'}-{run}-{time.monotonic_ns()}"
            strike = fault.strike(stack, run, variant) if variant else fault.strike(stack, run)
            striking = asyncio.create_task(strike)
            results = await asyncio.gather(
                *(client.lifecycle(f"{tag}-{n}", fault.duplicate) for n in range(requests)), return_exceptions=True
            )
            with contextlib.suppress(Exception):  # a fault that fires does so while the requests run
                await asyncio.wait_for(striking, 5)
            striking.cancel()
            stack.stripe.control.clear_faults()
            stack.proxy.restore()
            if stack.worker_armed and stack.worker_alive():
                row.problems.append(f"{variant or fault.name}: the armed fault never fired")
                stack.kill_worker()
            if not stack.worker_alive():
                stack.start_worker()
            row.requests += requests
            for result in results:
                if isinstance(result, BaseException):
                    row.problems.append(f"{variant or fault.name}: {type(result).__name__}: {result}")
            _check(stack, row, tag, requests, variant)
    await asyncio.to_thread(stack.stripe.control.wait_for_deliveries, 10)
    row.audit_chain_verifies = _audit_chain_verifies(stack)
    row.seconds = round(time.monotonic() - started, 1)
    return row


def _check(stack: FaultStack, row: Row, tag: str, requests: int, variant: str) -> None:
    """What the books say, read straight from PostgreSQL and the Stripe server."""
    with psycopg.connect(_direct_url(stack)) as conn:
        stored = conn.execute(
            "SELECT id, status FROM grant_requests WHERE idempotency_key LIKE %s", (f"{tag}-%",)
        ).fetchall()
        statuses = dict(stored)
        row.lost += requests - len(statuses)
        row.wrong_end_states += sum(1 for s in statuses.values() if s != "closed")
        transfers: dict[tuple[str, int], list[dict]] = {}
        for transfer in stack.stripe.control.transfers():
            meta = transfer.get("metadata") or {}
            if meta.get("request_id") in statuses:
                transfers.setdefault((meta["request_id"], int(meta["tranche"])), []).append(transfer)
        row.duplicated_payments += sum(len(t) - 1 for t in transfers.values())
        for request_id, status in statuses.items():
            if status != "closed":
                row.problems.append(f"{variant or row.fault}: {request_id} ended {status}")
            payments = conn.execute(
                "SELECT tranche, status, reference, amount_minor FROM payments WHERE request_id = %s", (request_id,)
            ).fetchall()
            entries = conn.execute(
                "SELECT count(*) FROM ledger_entries WHERE request_id = %s AND kind = 'payment'", (request_id,)
            ).fetchone()[0]
            made = transfers.get((request_id, 1), [])
            agree = (
                len(payments) == 1 and len(made) == 1 and entries == 1
                and payments[0][1] == "paid" and payments[0][2] == made[0]["id"] and payments[0][3] == made[0]["amount"]
            )  # fmt: skip
            if not agree:
                row.ledger_mismatches += 1
                row.problems.append(f"{variant or row.fault}: {request_id} ledger {payments}, {entries} entries, transfers {[t['id'] for t in made]}")


def _audit_chain_verifies(stack: FaultStack) -> bool:
    done = subprocess.run([HAVEN, "audit", "verify"], env=stack.env, capture_output=True, text=True, timeout=120)
    return done.returncode == 0


async def run_matrix(faults: list[Fault], runs: int, requests: int, var_dir: Path, postgres_url: str = POSTGRES_URL) -> list[Row]:
    with FaultStack(var_dir, postgres_url) as stack:
        client = Client(stack)
        finance = client.staff["finance"]
        year = date.today().year
        allocation = {"ends_on": f"{year}-12-31", "amount": {"minor_units": 10**12, "currency": "EUR"}}
        response = await client.call("PUT", f"/v1/budget/allocations/legal_fees/{year}-01-01", finance, json=allocation)
        assert response.status_code in (200, 201), response.text
        try:
            return [await run_fault(stack, client, fault, runs, requests) for fault in faults]
        finally:
            await client.close()


COLUMNS = ["fault", "runs", "requests", "lost", "duplicated_payments", "wrong_end_states", "ledger_mismatches", "audit_chain_verifies", "seconds"]


def table(rows: list[Row]) -> str:
    cells = [COLUMNS] + [[str(getattr(r, c)) for c in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per fault (per boundary for worker kills)")
    parser.add_argument("--requests", type=int, default=3, help="requests in flight in each run")
    parser.add_argument("--faults", default=",".join(f.name for f in FAULTS))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "fault_matrix.json")
    args = parser.parse_args()
    chosen = [f for f in FAULTS if f.name in args.faults.split(",")]
    # Stopped (timeout, CI): the stack's processes are stopped on the way out, not left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="haven-faults-") as var_dir:
        rows = asyncio.run(run_matrix(chosen, args.runs, args.requests, Path(var_dir)))
    print(table(rows))
    for row in rows:
        for problem in row.problems[:10]:
            print(f"  {row.fault}: {problem}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": args.runs, "requests_per_run": args.requests,
                                    "faults": [{**asdict(r), "what": f.what} for r, f in zip(rows, chosen)]}, indent=2) + "\n")  # fmt: skip
    clean = all(r.lost == r.duplicated_payments == r.wrong_end_states == r.ledger_mismatches == 0
                and r.audit_chain_verifies and not r.problems for r in rows)  # fmt: skip
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
