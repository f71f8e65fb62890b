"""Reconciliation of a day's Stripe transfers with the payments ledger: the comparison's rules
one by one; the workflow and its activities against the local Stripe server on SQLite and
PostgreSQL (a transfer missing from the ledger, one with a different amount, findings, audit
events, finance's notification, a retry that writes nothing twice); the daily schedule on the
Temporal dev server; and the finance API."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import date, datetime, timedelta, timezone

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.client import ScheduleBackfill, ScheduleRange, WorkflowFailureError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.reconciliation import StripeReconciliation
from api.app import create_app
from activities.stripe_rail import stripe_client
from haven.db import utcnow
from haven.db.models import AuditEvent, Notification, Payment, ReconciliationFinding, ReconciliationRun
from haven.grant_request import Role
from haven.intake import Intake
from haven.reconciliation import (
    FindingKind,
    LedgerPayment,
    ReconciliationOrder,
    compare,
    references_to_look_up,
    refusal_of_day,
)
from haven.schedules import RECONCILIATION_HOUR_UTC, RECONCILIATION_SCHEDULE, ensure_schedules
from haven.stripe_local import LocalStripe
from haven.stripe_transfers import Transfer
from haven.worker import build_worker
from tests.api_harness import assert_problem, stored_counts
from tests.conftest import TEST_CASE_KEYS, DATA_CONVERTER, make_settings, venv_binary
from tests.harness import intermediary, submission
from workflows.reconciliation import ReconciliationWorkflow
from tests.workflow_histories import keep

DAY = date(2026, 11, 24)
NOON = datetime(2026, 11, 24, 12, tzinfo=timezone.utc)
LAST_SECOND_BEFORE = datetime(2026, 11, 23, 23, 59, 59, tzinfo=timezone.utc)


# --- the comparison ---------------------------------------------------------------------------


def transfer(id: str = "tr_1", amount: int = 150_000, *, request: str | None = "gr_a", tranche: int = 1,
             currency: str = "EUR", reversed_minor: int = 0, created: datetime = NOON) -> Transfer:  # fmt: skip
    return Transfer(id=id, amount_minor=amount, currency=currency, created=created, reversed_minor=reversed_minor,
                    request_id=request, tranche=tranche if request else None)  # fmt: skip


def payment(reference: str | None = "tr_1", amount: int = 150_000, *, request: str = "gr_a", tranche: int = 1,
            status: str = "paid", rail: str = "stripe", currency: str = "EUR", paid_on: date | None = DAY,
            reversed_minor: int = 0) -> LedgerPayment:  # fmt: skip
    return LedgerPayment(request_id=request, tranche=tranche, rail=rail, status=status, amount_minor=amount,
                         currency=currency, reference=reference, paid_on=paid_on, reversed_minor=reversed_minor)  # fmt: skip


def kinds(findings) -> set[tuple[str, str]]:
    return {(str(f.kind), f.subject) for f in findings}


def test_a_transfer_and_its_payment_that_agree_are_no_finding():
    assert compare(DAY, [transfer()], [payment()]) == []


@pytest.mark.parametrize(
    ("ledger", "says"),
    [
        ([], "no payment for request gr_a tranche 1"),
        ([payment(reference=None, status="failed")], "as failed, not paid"),
        ([payment(reference=None, status="pending", paid_on=None)], "as pending, not paid"),
        ([payment(reference="tr_1", status="failed")], "as failed, not paid"),
        ([payment(reference="SEPA-7", rail="manual")], "another manual payment (SEPA-7): it may have been paid twice"),
    ],
    ids=["no-payment", "failed", "pending", "failed-with-its-reference", "paid-by-another-reference"],
)
def test_a_transfer_the_ledger_does_not_show_paid_by_it_is_missing_from_the_ledger(ledger, says):
    (finding,) = compare(DAY, [transfer()], ledger)
    assert (finding.kind, finding.subject, finding.request_id, finding.tranche) == (FindingKind.MISSING_FROM_LEDGER, "tr_1", "gr_a", 1)
    assert finding.stripe_amount_minor == 150_000 and says in finding.detail


def test_a_transfer_haven_did_not_make_is_missing_from_the_ledger():
    (finding,) = compare(DAY, [transfer(request=None)], [])
    assert finding.kind == FindingKind.MISSING_FROM_LEDGER and finding.request_id is None
    assert "names no request" in finding.detail


@pytest.mark.parametrize("reference", ["tr_gone", None], ids=["unknown-transfer", "no-reference"])
def test_a_stripe_payment_with_no_transfer_is_missing_from_stripe(reference):
    ledger = [payment(reference=reference)]
    assert references_to_look_up(DAY, [], ledger) == ([reference] if reference else [])
    (finding,) = compare(DAY, [], ledger)
    assert (finding.kind, finding.subject, finding.transfer_id) == (FindingKind.MISSING_FROM_STRIPE, "gr_a:1", reference)
    assert finding.ledger_amount_minor == 150_000 and finding.currency == "EUR"


def test_only_stripe_payments_paid_that_day_are_expected_at_stripe():
    ledger = [
        payment(rail="manual", reference="SEPA-1"),
        payment(status="pending", reference=None, tranche=2),
        payment(paid_on=DAY - timedelta(days=3), reference="tr_old", tranche=3),
    ]
    assert references_to_look_up(DAY, [], ledger) == [] and compare(DAY, [], ledger) == []


@pytest.mark.parametrize(
    ("stripe_side", "ledger_side", "says"),
    [
        (transfer(amount=140_000), payment(), "amount 150000 in the ledger, 140000 at Stripe"),
        (transfer(currency="USD"), payment(), "currency EUR in the ledger, USD at Stripe"),
        (transfer(reversed_minor=50_000), payment(), "reversed 0 in the ledger, 50000 at Stripe"),
        (transfer(reversed_minor=50_000), payment(reversed_minor=20_000), "reversed 20000 in the ledger, 50000 at Stripe"),
    ],
    ids=["amount", "currency", "reversal-not-in-ledger", "reversal-differs"],
)
def test_an_amount_currency_or_reversal_that_differs_is_a_finding(stripe_side, ledger_side, says):
    (finding,) = compare(DAY, [stripe_side], [ledger_side])
    assert (finding.kind, finding.subject, finding.request_id) == (FindingKind.AMOUNT_DIFFERS, "tr_1", "gr_a")
    assert says in finding.detail
    assert finding.facts()["ledger_amount_minor"] == 150_000 and "detail" not in finding.facts()


def test_the_payment_is_matched_by_its_transfer_id_not_by_its_day():
    # Made at 23:59:59, recorded paid after midnight: the day it was made agrees with the ledger...
    late = transfer(created=LAST_SECOND_BEFORE)
    next_day_payment = payment(paid_on=DAY)
    assert compare(DAY - timedelta(days=1), [late], [next_day_payment]) == []
    # ...and the day the ledger says it was paid finds it at Stripe by id, not missing.
    assert references_to_look_up(DAY, [], [next_day_payment]) == ["tr_1"]
    assert compare(DAY, [], [next_day_payment], elsewhere=[late]) == []
    # Fetched by id and found with another amount: that still counts.
    (finding,) = compare(DAY, [], [next_day_payment], elsewhere=[transfer(amount=1, created=LAST_SECOND_BEFORE)])
    assert finding.kind == FindingKind.AMOUNT_DIFFERS


def test_several_mismatches_each_once():
    transfers = [transfer("tr_1"), transfer("tr_2", request="gr_b"), transfer("tr_3", request="gr_c", amount=5)]
    ledger = [payment("tr_1"), payment("tr_3", request="gr_c"), payment("tr_9", request="gr_d")]
    assert kinds(compare(DAY, transfers, ledger)) == {
        ("missing_from_ledger", "tr_2"), ("amount_differs", "tr_3"), ("missing_from_stripe", "gr_d:1"),
    }  # fmt: skip


def test_a_stripe_transfer_is_read_with_its_metadata():
    read = Transfer.from_stripe(
        {"id": "tr_x", "amount": 900, "currency": "eur", "created": int(NOON.timestamp()), "amount_reversed": 100,
         "metadata": {"request_id": "gr_a", "tranche": "2"}}
    )  # fmt: skip
    assert read == Transfer(id="tr_x", amount_minor=900, currency="EUR", created=NOON, reversed_minor=100, request_id="gr_a", tranche=2)
    stranger = Transfer.from_stripe({"id": "tr_y", "amount": 1, "currency": "usd", "created": 0, "metadata": {"tranche": "x"}})
    assert (stranger.request_id, stranger.tranche) == (None, None)


def test_which_days_can_be_reconciled_and_which_day_the_schedule_takes():
    today = date(2026, 11, 25)
    assert refusal_of_day(today, today) is None and refusal_of_day(today - timedelta(days=90), today) is None
    assert "future" in refusal_of_day(today + timedelta(days=1), today)
    assert "90 days" in refusal_of_day(today - timedelta(days=91), today)
    scheduled = ReconciliationOrder(trigger="schedule", requested_by="schedule")
    run = scheduled.for_run("stripe-reconciliation-2026-11-25T03:00:00Z", datetime(2026, 11, 25, 3, tzinfo=timezone.utc))
    assert (run.day, run.run_id) == (date(2026, 11, 24), "stripe-reconciliation-2026-11-25T03:00:00Z")


# --- the workflow and its activities against the local Stripe server --------------------------


def stripe_settings(server: LocalStripe) -> dict:
    return {"stripe_api_key": server.api_key, "stripe_api_base": server.url, "stripe_timeout_seconds": 5.0}


class _NoTemporal:
    """The ledger's requests are stored by intake; their workflows are not what is tested here."""

    async def start_workflow(self, *args, **kwargs):
        raise ConnectionError("not started in this test")


_keys = itertools.count()


async def ledger_payment(db, policy, *, amount: int, reference: str | None, paid_on: date = DAY, status: str = "paid") -> str:
    """A request and its first tranche's payment as the ledger records it; returns the request id."""
    intake = Intake(db, _NoTemporal(), "q", policy, b"index-key", case_keys=TEST_CASE_KEYS)
    request_id = (await intake.submit(submission(), intermediary(), f"rc-{next(_keys)}")).record.id
    now = utcnow()
    async with db.transaction() as session:
        session.add(
            Payment(request_id=request_id, tranche=1, idempotency_key=f"{request_id}:1", rail="stripe", amount_minor=amount,
                    currency="EUR", amount_base_minor=amount, status=status, reference=reference, paid_on=paid_on,
                    created_at=now, updated_at=now)
        )  # fmt: skip
    return request_id


def make_transfer(server: LocalStripe, amount: int, request_id: str, at: datetime) -> str:
    server.control.set_time(at.timestamp())
    made, _events = server.control.create_transfer(
        {"amount": amount, "currency": "eur", "destination": "acct_payee1",
         "metadata": {"request_id": request_id, "tranche": "1"}, "transfer_group": request_id}
    )  # fmt: skip
    return made["id"]


async def rows(db, model, *where) -> list:
    async with db.sessions() as session:
        return list(await session.scalars(select(model).where(*where)))


async def test_reconciliation_finds_a_transfer_missing_from_the_ledger_and_one_with_another_amount(
    db, local_stripe, time_skipping_env, tmp_path, default_policy, monkeypatch
):
    monkeypatch.setattr("activities.reconciliation.PAGE", 2)  # so the day's transfers come in pages
    # Agrees with the ledger.
    agreed = await ledger_payment(db, default_policy, amount=100_000, reference=None)
    agreed_transfer = make_transfer(local_stripe, 100_000, agreed, NOON)
    # Made a second before midnight, recorded paid the next day: found by id, and it agrees.
    late = await ledger_payment(db, default_policy, amount=80_000, reference=None)
    late_transfer = make_transfer(local_stripe, 80_000, late, LAST_SECOND_BEFORE)
    # The ledger says 140,000; Stripe moved 150,000.
    differs = await ledger_payment(db, default_policy, amount=140_000, reference=None)
    differs_transfer = make_transfer(local_stripe, 150_000, differs, NOON + timedelta(hours=1))
    # A transfer for a request the ledger does not have.
    stranger_transfer = make_transfer(local_stripe, 25_000, "gr_0000000000000000000000000000dead", NOON + timedelta(hours=2))
    # The ledger says paid through Stripe, and Stripe has no such transfer.
    phantom = await ledger_payment(db, default_policy, amount=60_000, reference="tr_neverheardof")
    async with db.transaction() as session:
        for request_id, reference in ((agreed, agreed_transfer), (late, late_transfer), (differs, differs_transfer)):
            (row,) = await session.scalars(select(Payment).where(Payment.request_id == request_id))
            row.reference = reference
    local_stripe.control.set_time(None)

    settings = make_settings(tmp_path, db.url, **stripe_settings(local_stripe))
    order = ReconciliationOrder(day=DAY, trigger="finance", requested_by="fin-1", run_id="rc_test1")
    async with build_worker(time_skipping_env.client, db, settings):
        summary = await time_skipping_env.client.execute_workflow(
            ReconciliationWorkflow.run, order, id="rc_test1", task_queue=settings.task_queue
        )
    assert (summary.status, summary.transfers_seen, summary.payments_seen, summary.mismatches) == ("done", 3, 4, 3)
    keep(time_skipping_env.client, "rc_test1")

    findings = await rows(db, ReconciliationFinding, ReconciliationFinding.run_id == "rc_test1")
    assert kinds(findings) == {
        ("missing_from_ledger", stranger_transfer), ("amount_differs", differs_transfer), ("missing_from_stripe", f"{phantom}:1"),
    }  # fmt: skip
    by_kind = {f.kind: f for f in findings}
    assert (by_kind["amount_differs"].ledger_amount_minor, by_kind["amount_differs"].stripe_amount_minor) == (140_000, 150_000)
    assert by_kind["missing_from_ledger"].request_id == "gr_0000000000000000000000000000dead"

    audit = await rows(db, AuditEvent, AuditEvent.action == "reconciliation_mismatch")
    assert sorted((a.request_id, a.facts["kind"]) for a in audit) == sorted(
        [("gr_0000000000000000000000000000dead", "missing_from_ledger"), (differs, "amount_differs"), (phantom, "missing_from_stripe")]
    )
    differs_audit = next(a for a in audit if a.request_id == differs)
    assert differs_audit.facts == {
        "run_id": "rc_test1", "day": "2026-11-24", "kind": "amount_differs", "subject": differs_transfer,
        "transfer_id": differs_transfer, "tranche": 1, "ledger_amount_minor": 140_000, "stripe_amount_minor": 150_000,
        "currency": "EUR", "ledger_reversed_minor": 0, "stripe_reversed_minor": 0,
    }  # fmt: skip
    (notice,) = await rows(db, Notification, Notification.kind == "reconciliation_mismatches")
    assert (notice.audience, notice.request_id) == ("finance", None)
    assert notice.payload["link"].endswith("/v1/reconciliations/rc_test1")

    # Once more for the same run, even with Stripe changed meanwhile: nothing is written twice.
    make_transfer(local_stripe, 1_000, "gr_0000000000000000000000000000beef", NOON)
    activities = StripeReconciliation(db, stripe_client(settings), settings.public_base_url)
    again = await activities.reconcile_stripe_day(order.for_run("rc_test1", NOON))
    async with build_worker(time_skipping_env.client, db, settings):
        replayed = await time_skipping_env.client.execute_workflow(
            ReconciliationWorkflow.run, order, id="rc_test1-again", task_queue=settings.task_queue
        )
    assert again == replayed == summary
    assert len(await rows(db, ReconciliationFinding)) == 3
    assert len(await rows(db, AuditEvent, AuditEvent.action == "reconciliation_mismatch")) == 3
    assert len(await rows(db, Notification, Notification.kind == "reconciliation_mismatches")) == 1
    assert len(await rows(db, ReconciliationRun)) == 1


async def test_a_worker_without_the_stripe_rail_fails_the_run_and_tells_finance(sqlite_db, time_skipping_env, tmp_path):
    settings = make_settings(tmp_path, sqlite_db.url)
    order = ReconciliationOrder(day=DAY, trigger="finance", requested_by="fin-1", run_id="rc_nostripe")
    async with build_worker(time_skipping_env.client, sqlite_db, settings):
        with pytest.raises(WorkflowFailureError) as failed:
            await time_skipping_env.client.execute_workflow(
                ReconciliationWorkflow.run, order, id="rc_nostripe", task_queue=settings.task_queue
            )
    assert "Stripe rail is not configured" in str(failed.value.cause)
    (run,) = await rows(sqlite_db, ReconciliationRun)
    assert (run.status, run.finished_at is not None) == ("failed", True)
    (notice,) = await rows(sqlite_db, Notification)
    assert (notice.kind, notice.audience) == ("reconciliation_failed", "finance")


# --- the daily schedule, on the Temporal dev server (the time-skipping one has no schedules) ---


async def test_the_daily_schedule_is_created_once_and_kept_up_to_date(sqlite_db, local_stripe, tmp_path):
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=venv_binary("temporal"), data_converter=DATA_CONVERTER
    ) as env:
        await ensure_schedules(env.client, make_settings(tmp_path, sqlite_db.url))
        with pytest.raises(RPCError):  # no Stripe rail: nothing to reconcile, no schedule
            await env.client.get_schedule_handle(RECONCILIATION_SCHEDULE).describe()

        settings = make_settings(tmp_path, sqlite_db.url, **stripe_settings(local_stripe))
        await ensure_schedules(env.client, settings)
        handle = env.client.get_schedule_handle(RECONCILIATION_SCHEDULE)
        await handle.pause(note="paused by an operator")
        await ensure_schedules(env.client, settings)  # a second worker starting: updated, not duplicated
        described = await handle.describe()
        spec = described.schedule.spec
        assert [(c.hour[0].start, c.minute[0].start, len(c.day_of_week)) for c in spec.calendars] == [(RECONCILIATION_HOUR_UTC, 0, 1)]
        assert spec.time_zone_name == "UTC" and spec.calendars[0].day_of_week[0] == ScheduleRange(0, 6)
        assert described.schedule.action.task_queue == settings.task_queue
        assert described.schedule.state.paused, "an operator's pause survives a worker restart"
        schedules = [s.id async for s in await env.client.list_schedules()]
        assert schedules.count(RECONCILIATION_SCHEDULE) == 1

        # What it starts reconciles the day before its scheduled time, even when it runs later
        # (here: the run of five days ago, made up now), under its own workflow id.
        await handle.unpause()
        nominal = datetime.combine(utcnow().date() - timedelta(days=5), datetime.min.time(), tzinfo=timezone.utc)
        async with build_worker(env.client, sqlite_db, settings):
            await handle.backfill(ScheduleBackfill(start_at=nominal, end_at=nominal + timedelta(hours=4)))
            run = await _until_done(sqlite_db)
        assert (run.trigger, run.requested_by, run.day) == ("schedule", "schedule", nominal.date() - timedelta(days=1))
        assert run.id.startswith(f"{RECONCILIATION_SCHEDULE}-")
        await handle.delete()


async def _until_done(db, timeout: float = 20) -> ReconciliationRun:
    deadline = time.monotonic() + timeout
    while True:
        done = await rows(db, ReconciliationRun, ReconciliationRun.status == "done")
        if done:
            return done[0]
        assert time.monotonic() < deadline, "the scheduled run did not finish"
        await asyncio.sleep(0.1)


# --- the finance API --------------------------------------------------------------------------


@pytest.fixture
def api_settings(local_stripe) -> dict:
    return stripe_settings(local_stripe)


async def _report_when_done(api, location: str, headers, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = await api.http.get(location, headers=headers)
        assert response.status_code == 200, response.text
        if response.json()["status"] != "running":
            return response.json()
        assert time.monotonic() < deadline, "the run did not finish"
        await asyncio.sleep(0.05)


async def _runs_stored(db) -> int:
    async with db.sessions() as session:
        return await session.scalar(select(func.count()).select_from(ReconciliationRun))


async def test_finance_starts_a_reconciliation_and_reads_the_report(api, local_stripe):
    yesterday = utcnow().date() - timedelta(days=1)
    at = datetime.combine(yesterday, datetime.min.time(), tzinfo=timezone.utc) + timedelta(hours=10)
    stranger = make_transfer(local_stripe, 25_000, "gr_0000000000000000000000000000dead", at)
    local_stripe.control.set_time(None)
    finance, director = api.token("finance", "fin-1"), api.token("director", "dir-1")

    started = await api.http.post("/v1/reconciliations", json={"day": yesterday.isoformat()}, headers=finance)
    assert started.status_code == 202, started.text
    run = started.json()
    assert (run["day"], run["trigger"], run["requested_by"], run["status"]) == (yesterday.isoformat(), "finance", "fin-1", "running")
    assert started.headers["Location"] == f"/v1/reconciliations/{run['id']}"

    report = await _report_when_done(api, started.headers["Location"], director)
    assert (report["status"], report["transfers_seen"], report["mismatches"]) == ("done", 1, 1)
    (finding,) = report["findings"]
    assert (finding["kind"], finding["transfer_id"], finding["stripe_amount_minor"]) == ("missing_from_ledger", stranger, 25_000)

    listed = await api.http.get("/v1/reconciliations", params={"day": yesterday.isoformat()}, headers=finance)
    assert [r["id"] for r in listed.json()["items"]] == [run["id"]] and listed.json()["next_cursor"] is None
    other_day = await api.http.get("/v1/reconciliations", params={"day": "2026-01-01"}, headers=director)
    assert other_day.json() == {"items": [], "next_cursor": None}

    async with api.db.sessions() as session:
        requested = await session.scalar(select(AuditEvent).where(AuditEvent.action == "reconciliation_requested"))
    assert (requested.actor, requested.facts) == ("fin-1", {"run_id": run["id"], "day": yesterday.isoformat()})


async def test_the_list_is_newest_first_in_pages(api):
    finance = api.token("finance", "fin-1")
    ids = []
    for days_back in (3, 2, 1):
        response = await api.http.post("/v1/reconciliations", json={"day": (utcnow().date() - timedelta(days=days_back)).isoformat()}, headers=finance)
        ids.append(response.json()["id"])
    first = (await api.http.get("/v1/reconciliations", params={"limit": 2}, headers=finance)).json()
    second = (await api.http.get("/v1/reconciliations", params={"limit": 2, "cursor": first["next_cursor"]}, headers=finance)).json()
    assert [r["id"] for r in first["items"] + second["items"]] == ids[::-1] and second["next_cursor"] is None
    bad = await api.http.get("/v1/reconciliations", params={"cursor": "rc_nothing"}, headers=finance)
    assert assert_problem(bad, 422, "validation-error")["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize("role", ["intermediary", "caseworker", "director", "admin"])
async def test_only_finance_starts_one_and_only_finance_and_directors_read_them(api, role):
    headers = api.intermediary() if role == "intermediary" else api.token(role, f"{role}-1")
    before = await stored_counts(api.db)
    started = await api.http.post("/v1/reconciliations", json={"day": (utcnow().date() - timedelta(days=1)).isoformat()}, headers=headers)
    assert_problem(started, 403, "forbidden")
    assert await stored_counts(api.db) == before and await _runs_stored(api.db) == 0
    for path in ("/v1/reconciliations", "/v1/reconciliations/rc_unknown"):
        read = await api.http.get(path, headers=headers)
        if role == "director":
            assert read.status_code == (200 if path == "/v1/reconciliations" else 404), read.text
        else:
            assert_problem(read, 403, "forbidden")


@pytest.mark.parametrize(
    ("day", "says"),
    [
        (lambda today: (today + timedelta(days=1)).isoformat(), "future"),
        (lambda today: (today - timedelta(days=91)).isoformat(), "90 days"),
        (lambda today: "24/11/2026", "date"),
        (lambda today: None, "date"),
    ],
    ids=["tomorrow", "too-old", "not-a-date", "null"],
)
async def test_a_day_that_cannot_be_reconciled_is_refused_and_nothing_is_stored(api, day, says):
    before = await stored_counts(api.db)
    response = await api.http.post("/v1/reconciliations", json={"day": day(utcnow().date())}, headers=api.token("finance", "fin-1"))
    problem = assert_problem(response, 422, "validation-error")
    assert problem["errors"][0]["field"] == "day" and says in problem["errors"][0]["message"]
    assert await stored_counts(api.db) == before and await _runs_stored(api.db) == 0


async def test_an_unknown_run_is_not_found(api):
    assert_problem(await api.http.get("/v1/reconciliations/rc_nothing", headers=api.token("finance", "fin-1")), 404, "not-found")


async def test_without_stripe_there_is_nothing_to_reconcile(time_skipping_env, sqlite_db, tmp_path):
    app = create_app(make_settings(tmp_path, sqlite_db.url), db=sqlite_db, client=time_skipping_env.client)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://haven.test") as http:
            token = app.state.services.verifier.issue("fin-1", [Role.FINANCE], None, timedelta(minutes=5))
            response = await http.post("/v1/reconciliations", json={"day": (utcnow().date() - timedelta(days=1)).isoformat()},
                                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert_problem(response, 409, "stripe-not-configured")
    assert await _runs_stored(sqlite_db) == 0
