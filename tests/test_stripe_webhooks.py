"""Stripe's webhooks, end to end over real HTTP: the local Stripe-compatible server makes the
transfers and signs and sends the events; the API verifies them with the `stripe` package, and the
workflows on the time-skipping server move on. Exactly one transfer, and a ledger that matches it,
whatever order or number of times the events arrive; forged or stale events change nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select

from api.app import create_app
from haven.db.models import AuditEvent, Notification, Payment, StripeEvent
from haven.grant_request import Role
from haven.intake import Intake
from haven.lifecycle import Status
from haven.localstack import free_port
from haven.stripe_local import LocalStripe, sign_payload
from haven.worker import build_worker
from tests.conftest import TEST_CASE_KEYS, make_settings
from haven.settings import REPO_ROOT
from tests.harness import SAMPLE_REQUEST, Harness, caseworker
from workflows.grant_request import GrantRequestWorkflow
from tests.workflow_histories import keep
from workflows.stripe_event import stripe_event_workflow_id

SECRET = "whsec_test_" + "s" * 24
PAYEE = {"name": "Digital Safety Partners", "country": "LT", "rail": "stripe", "stripe_account": "acct_payee1"}
AMOUNT = 150_000


class Stack:
    """The API served on a loopback port (so the local Stripe server can call it), a worker and
    the local Stripe server, sharing one time-skipping Temporal server and one database."""

    def __init__(self, http: httpx.AsyncClient, stripe_server: LocalStripe, app, db):
        self.http = http
        self.stripe = stripe_server
        self.control = stripe_server.control
        self.app = app
        self.db = db
        self.verifier = app.state.services.verifier
        self._keys = 0

    def token(self, role: str, sub: str, org: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.verifier.issue(sub, [Role(role)], org, timedelta(minutes=5))}"}

    async def approved(self) -> str:
        """A request paid through Stripe, approved (one approval is enough for this one)."""
        self._keys += 1
        body = {**SAMPLE_REQUEST, "urgency": "high", "payee": PAYEE}
        headers = {**self.token("intermediary", "int-1", "ngo-1"), "Idempotency-Key": f"wh-{self._keys}"}
        created = await self.http.post("/v1/grant-requests", json=body, headers=headers)
        assert created.status_code == 202, created.text
        request_id = created.json()["id"]
        keep(self.app.state.services.client, request_id)
        await self.until(request_id, lambda r: r["status"] == "awaiting_decision")
        decision = {"kind": "approve", "amount": {"minor_units": AMOUNT, "currency": "EUR"}}
        approved = await self.http.post(
            f"/v1/grant-requests/{request_id}/decisions", json=decision, headers=self.token("caseworker", "cw-1")
        )
        assert approved.status_code == 200, approved.text
        return request_id

    async def until(self, request_id: str, predicate, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            view = (await self.http.get(f"/v1/grant-requests/{request_id}", headers=self.token("finance", "fin-1"))).json()
            if predicate(view):
                return view
            assert time.monotonic() < deadline, f"timed out; the request is {view.get('status')}"
            await asyncio.sleep(0.05)

    async def until_ledger(self, request_id: str, predicate, timeout: float = 20) -> Payment:
        deadline = time.monotonic() + timeout
        while True:
            (payment,) = await self.payments(request_id)
            if predicate(payment):
                return payment
            assert time.monotonic() < deadline, f"timed out; the payment is {payment.status}"
            await asyncio.sleep(0.05)

    async def payments(self, request_id: str) -> list[Payment]:
        async with self.db.sessions() as session:
            return list(await session.scalars(select(Payment).where(Payment.request_id == request_id)))

    async def counts(self) -> dict[str, int]:
        async with self.db.sessions() as session:
            return {
                model.__tablename__: await session.scalar(select(func.count()).select_from(model))
                for model in (StripeEvent, AuditEvent, Notification, Payment)
            }

    async def audit(self, request_id: str) -> list[AuditEvent]:
        async with self.db.sessions() as session:
            rows = await session.scalars(select(AuditEvent).where(AuditEvent.request_id == request_id).order_by(AuditEvent.id))
            return list(rows)

    async def notifications(self, request_id: str) -> set[tuple[str, str]]:
        async with self.db.sessions() as session:
            rows = await session.scalars(select(Notification).where(Notification.request_id == request_id))
            return {(n.kind, n.audience) for n in rows}

    async def reverse(self, transfer_id: str, amount: int | None = None) -> None:
        """A reversal made through Stripe's API (as from the dashboard), outside haven."""
        params = {"amount": amount} if amount else {}
        await asyncio.to_thread(self.stripe.client().v1.transfers.reversals.create, transfer_id, params)

    async def send(self, event_id: str, **options) -> list[dict]:
        """Re-sends a stored event through the local server (from a thread: the API is served on
        this event loop)."""
        return await asyncio.to_thread(self.control.send_event, event_id, **options)

    async def post_event(self, payload: str, signature: str | None) -> httpx.Response:
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        return await self.http.post("/v1/webhooks/stripe", content=payload.encode(), headers=headers)


@asynccontextmanager
async def served(app, port: int):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the API did not start"
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def stack(time_skipping_env, db, tmp_path, local_stripe):
    stripe_server = local_stripe
    settings = make_settings(
        tmp_path,
        db.url,
        stripe_api_key=stripe_server.api_key,
        stripe_api_base=stripe_server.url,
        stripe_webhook_secret=SECRET,
        stripe_timeout_seconds=2.0,
    )
    port = free_port()
    stripe_server.control.register_webhook(f"http://127.0.0.1:{port}/v1/webhooks/stripe", SECRET, mode="async")
    app = create_app(settings, db=db, client=time_skipping_env.client)
    async with build_worker(time_skipping_env.client, db, settings), app.router.lifespan_context(app):
        async with served(app, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield Stack(http, stripe_server, app, db)
            await asyncio.to_thread(stripe_server.control.wait_for_deliveries, 5)


def _signed(event: dict, *, timestamp: int | None = None, secret: str = SECRET) -> tuple[str, str]:
    payload = json.dumps(event)
    return payload, sign_payload(payload, secret, int(time.time()) if timestamp is None else timestamp)


async def test_a_webhook_before_the_api_answer_moves_the_payment_on(stack):
    """The transfer is made and its webhook delivered before the API answers, then the answer is
    lost and Stripe cannot be asked again: the webhook alone completes the payment."""
    stack.control.register_webhook(stack.control.webhook.url, SECRET, mode="sync")
    stack.control.inject_fault("drop_after_commit")

    async def stripe_goes_down_once_the_transfer_exists() -> None:
        while stack.control.transfer_count() == 0:
            await asyncio.sleep(0.002)
        # The rail's retry (200 ms later) can no longer find the transfer it made.
        stack.control.inject_fault("error", method="GET", path="/v1/transfers", status=500, times=100_000)

    outage = asyncio.create_task(stripe_goes_down_once_the_transfer_exists())
    request_id = await stack.approved()
    await outage
    view = await stack.until(request_id, lambda r: r["status"] == "follow_up")
    (transfer,) = stack.control.transfers()
    (payment,) = await stack.payments(request_id)
    assert (payment.status, payment.reference, payment.amount_minor) == ("paid", transfer["id"], transfer["amount"])
    assert view["payments"][0]["reference"] == transfer["id"]
    async with stack.db.sessions() as session:
        (event,) = await session.scalars(select(StripeEvent))
    assert (event.type, event.object_id, event.request_id, event.tranche) == ("transfer.created", transfer["id"], request_id, 1)
    stack.control.clear_faults()


async def test_a_webhook_sent_twice_or_late_changes_nothing(stack):
    request_id = await stack.approved()
    await stack.until(request_id, lambda r: r["status"] == "follow_up")
    (created,) = stack.control.events("transfer.created")
    await stack.until_ledger(request_id, lambda p: p.status == "paid")
    await asyncio.to_thread(stack.control.wait_for_deliveries, 5)
    before = await stack.counts()
    attempts = await stack.send(created["id"], times=2)
    assert [a["status"] for a in attempts] == [200, 200]
    assert await stack.counts() == before
    assert len(stack.control.transfers()) == 1
    (payment,) = await stack.payments(request_id)
    assert (payment.status, payment.reference) == ("paid", created["data"]["object"]["id"])


async def test_a_reversal_corrects_the_ledger_and_tells_finance_in_any_order(stack):
    request_id = await stack.approved()
    await stack.until(request_id, lambda r: r["status"] == "follow_up")
    (transfer,) = stack.control.transfers()
    await stack.reverse(transfer["id"], 50_000)
    payment = await stack.until_ledger(request_id, lambda p: p.reversed_minor == 50_000)
    assert payment.status == "paid" and payment.reversed_at is not None
    await stack.reverse(transfer["id"])  # the rest
    await stack.until_ledger(request_id, lambda p: p.reversed_minor == AMOUNT)
    await asyncio.to_thread(stack.control.wait_for_deliveries, 5)

    # The first, partial reversal arrives again, late: the ledger keeps the full amount.
    first, second = stack.control.events("transfer.reversed")
    before = await stack.counts()
    (attempt,) = await stack.send(first["id"])
    assert attempt["status"] == 200
    assert await stack.counts() == before
    (payment,) = await stack.payments(request_id)
    assert payment.reversed_minor == AMOUNT

    reversals = [e.facts for e in await stack.audit(request_id) if e.action == "payment_reversed"]
    assert [f["reversed_minor"] for f in reversals] == [50_000, AMOUNT]
    assert all(f["transfer_id"] == transfer["id"] and f["stripe_event"] for f in reversals)
    assert ("payment_reversed", "finance") in await stack.notifications(request_id)
    view = await stack.until(request_id, lambda r: r["payments"][0]["reversed_minor"] == AMOUNT)
    assert view["status"] == "follow_up" and view["payments"][0]["status"] == "reversed"
    state = await stack.app.state.services.client.get_workflow_handle(request_id).query(GrantRequestWorkflow.state)
    assert state.tranches[0].reversed_minor == AMOUNT
    for event in stack.control.events("transfer.created") + stack.control.events("transfer.reversed"):
        keep(stack.app.state.services.client, stripe_event_workflow_id(event["id"]))


async def test_a_reversal_after_the_request_closed_still_reaches_the_ledger(stack):
    request_id = await stack.approved()
    await stack.until(request_id, lambda r: r["status"] == "follow_up")
    intermediary = stack.token("intermediary", "int-1", "ngo-1")
    report = await stack.http.post(f"/v1/grant-requests/{request_id}/reports", json={"text": "Paid the lawyer."}, headers=intermediary)
    assert report.status_code == 200, report.text
    accepted = await stack.http.post(
        f"/v1/grant-requests/{request_id}/report-acceptance", json={}, headers=stack.token("caseworker", "cw-2")
    )
    assert accepted.status_code == 200, accepted.text
    await stack.until(request_id, lambda r: r["status"] == "closed")
    (transfer,) = stack.control.transfers()
    await stack.reverse(transfer["id"])
    payment = await stack.until_ledger(request_id, lambda p: p.reversed_minor == AMOUNT)
    assert payment.status == "paid"
    assert ("payment_reversed", "finance") in await stack.notifications(request_id)


async def test_forged_stale_or_unsigned_events_are_refused_and_change_nothing(stack):
    request_id = await stack.approved()
    await stack.until(request_id, lambda r: r["status"] == "follow_up")
    (transfer,) = stack.control.transfers()
    stack.control.register_webhook(stack.control.webhook.url, SECRET, mode="hold")
    await stack.reverse(transfer["id"])
    (reversal,) = stack.control.events("transfer.reversed")
    before = await stack.counts()

    payload, signature = _signed(reversal)
    tampered = payload.replace(f'"amount_reversed": {AMOUNT}', '"amount_reversed": 1')
    assert tampered != payload
    refused = [
        await stack.post_event(tampered, signature),
        await stack.post_event(*_signed(reversal, timestamp=int(time.time()) - 600)),  # stale
        await stack.post_event(*_signed(reversal, secret="whsec_someone_else")),
        await stack.post_event(payload, None),
        await stack.post_event("not json", sign_payload("not json", SECRET, int(time.time()))),
    ]
    for response in refused:
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:haven:problem:invalid-signature"
    assert await stack.counts() == before
    (payment,) = await stack.payments(request_id)
    assert payment.reversed_minor == 0

    # The same event, signed as Stripe signs it, is applied.
    accepted = await stack.post_event(payload, signature)
    assert accepted.json() == {"event_id": reversal["id"], "outcome": "accepted"}
    await stack.until_ledger(request_id, lambda p: p.reversed_minor == AMOUNT)
    again = await stack.post_event(payload, signature)
    assert again.json()["outcome"] == "duplicate"


async def test_events_about_other_things_are_acknowledged_and_ignored(stack):
    before = await stack.counts()
    event = {"id": "evt_other1", "object": "event", "type": "payout.paid", "created": int(time.time()),
             "data": {"object": {"id": "po_1", "object": "payout"}}}  # fmt: skip
    response = await stack.post_event(*_signed(event))
    assert response.json() == {"event_id": "evt_other1", "outcome": "ignored"}
    assert await stack.counts() == before


async def test_without_a_webhook_secret_events_are_not_accepted(api):
    response = await api.http.post(
        "/v1/webhooks/stripe", content=b"{}", headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"}
    )
    assert response.status_code == 503
    assert response.json()["type"] == "urn:haven:problem:not-configured"


async def test_a_worker_killed_during_the_transfer_call_pays_exactly_once(
    time_skipping_env, sqlite_db, tmp_path, default_policy, local_stripe
):
    """`kill -9` of the worker while Stripe is making the transfer: the activity is retried by
    another worker, which finds the transfer instead of making a second one."""
    stripe_server = local_stripe
    settings = make_settings(
        tmp_path, sqlite_db.url, stripe_api_key=stripe_server.api_key, stripe_api_base=stripe_server.url
    )
    env = {
        **os.environ,
        **{f"HAVEN_{name.upper()}": str(getattr(settings, name)) for name in (
            "database_url", "task_queue", "stripe_api_key", "stripe_api_base", "pseudonym_index_key", "payload_keys", "master_keys")},
        "HAVEN_TEMPORAL_ADDRESS": time_skipping_env.client.service_client.config.target_host,
    }  # fmt: skip
    # Stripe takes 3 s over the transfer; it is made even though the caller is gone by then.
    stripe_server.control.inject_fault("delay", seconds=3)
    worker = subprocess.Popen([sys.executable, "-m", "tests.payment_worker"], env=env, cwd=REPO_ROOT)
    try:
        intake = Intake(sqlite_db, time_skipping_env.client, settings.task_queue, default_policy, b"index-key", settings.payment_rails, case_keys=TEST_CASE_KEYS)
        harness = Harness(time_skipping_env, intake, sqlite_db)
        handle = await harness.submit(payee=PAYEE)
        await harness.until(handle, Status.AWAITING_DECISION, timeout=30)
        await harness.approve(handle, caseworker(1), AMOUNT)
        deadline = time.monotonic() + 20
        while stripe_server.control.faults():  # the transfer call has reached Stripe
            assert time.monotonic() < deadline, "the transfer call never reached Stripe"
            await asyncio.sleep(0.01)
    finally:
        worker.kill()
        worker.wait()
    deadline = time.monotonic() + 10
    while stripe_server.control.transfer_count() == 0:
        assert time.monotonic() < deadline, "Stripe never made the transfer"
        await asyncio.sleep(0.05)
    async with build_worker(time_skipping_env.client, sqlite_db, settings):
        # The dead worker's attempt stops heartbeating and times out; the retry runs here.
        await harness.until_recorded(handle.id, Status.FOLLOW_UP, timeout=30)
        (payment,) = await harness.payments(handle.id)
    (transfer,) = stripe_server.control.transfers()
    assert (payment.status, payment.reference, payment.amount_minor) == ("paid", transfer["id"], transfer["amount"])
    assert payment.attempts == 1  # one payment attempt of the workflow; Temporal retried the call
