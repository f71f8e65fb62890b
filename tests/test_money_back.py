"""Money coming back (issue 18, finding 4): finance's refunds and Stripe's transfer reversals go
through one path per tranche, so together they never exceed what was paid; a reversal of money
already recorded back is counted once; what cannot be applied is a finding finance reads, never an
endless retry. And dates: a refund before its payment, a payment before its approval or in the
future, are refused with a field error (finding 6)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from activities.records import CaseRecords
from activities.stripe_events import StripeEvents
from haven import ledger
from haven.case_events import CaseEvent, PaymentUpdate, TransferNotice
from haven.db import utcnow
from haven.db.models import (
    AuditEvent, BudgetAllocation, BudgetReservation, GrantRequestRecord, LedgerEntry, Payment, ReconciliationFinding,
)  # fmt: skip
from haven.grant_request import SYSTEM
from haven.intake import Intake
from haven.lifecycle import Status
from haven.money import Money
from haven.stripe_events import TRANSFER_REVERSED
from tests.api_harness import Api, assert_problem, serving, stored_counts
from tests.conftest import GENEROUS_PERIOD, TEST_CASE_KEYS
from tests.harness import intermediary, submission
from tests.ledger_checks import assert_ledger_balances
from tests.workflow_histories import keep
from workflows.stripe_event import StripeEventWorkflow, stripe_event_workflow_id

EUR = "EUR"
PAID = 90_000  # EUR 900, the tranche of the report
CATEGORY = "legal_fees"
_keys = itertools.count()


class _NoTemporal:
    async def start_workflow(self, *args, **kwargs):
        raise ConnectionError("the request's workflow is not what is tested here")


@pytest.fixture
async def api(time_skipping_env, db, tmp_path):
    """The app and a worker over SQLite and PostgreSQL."""
    async with serving(time_skipping_env, db, tmp_path) as api:
        yield api


def today() -> date:
    return utcnow().date()


async def paid_tranche(
    db, policy, *, amount: int = PAID, transfer: str | None = None, status: str = "paid", in_ledger: bool = True,
    paid_on: date | None = None,
) -> tuple[str, str]:
    """A request whose first tranche was paid through Stripe (transfer `tr_…`), reserved from and paid
    in the fund ledger as the workflow's activities do it (`in_ledger=False`: paid before the fund
    ledger existed); returns the request id and transfer id."""
    n = next(_keys)
    intake = Intake(db, _NoTemporal(), "q", policy, b"index-key", case_keys=TEST_CASE_KEYS)
    request_id = (await intake.submit(submission(), intermediary(), f"mb-{n}")).record.id
    transfer = transfer or f"tr_moneyback{n}x{request_id[-6:]}"
    now = utcnow()
    async with db.transaction() as session:
        # As far as its workflow had taken it (so the worker's sweep never starts one for it).
        record = await session.get(GrantRequestRecord, request_id)
        record.status, record.status_seq = ("follow_up" if status == "paid" else "payment_pending"), 9
        if in_ledger:
            await _reserve(session, request_id, amount, now)
        session.add(
            Payment(request_id=request_id, tranche=1, idempotency_key=f"{request_id}:1", rail="stripe", amount_minor=amount,
                    currency=EUR, amount_base_minor=amount, status=status, reference=transfer if status == "paid" else None,
                    paid_on=(paid_on or now.date()) if status == "paid" else None, created_at=now, updated_at=now)
        )  # fmt: skip
    if status == "paid" and in_ledger:
        await mark_paid(db, request_id)
    return request_id, transfer


async def _reserve(session, request_id: str, amount: int, now) -> None:
    movement = ledger.Movement(
        key=f"{request_id}:reservation:1", request_id=request_id, tranche=None, amount_base_minor=amount,
        amount=Money(minor_units=amount, currency=EUR), rate_to_base=Decimal(1), actor="test", at=now,
    )  # fmt: skip
    allocation = await ledger.reserve(session, CATEGORY, now.date(), movement)
    session.add(
        BudgetReservation(request_id=request_id, number=1, allocation_id=allocation, category=CATEGORY,
                          amount_base_minor=amount, status="held", reserved_at=now)
    )  # fmt: skip


async def mark_paid(db, request_id: str) -> None:
    async with db.transaction() as session:
        await ledger.record_payment(session, request_id, 1, "test", utcnow())


def reversal(request_id: str | None, transfer: str, reversed_total: int, event: str, *, amount: int = PAID,
             tranche: int | None = 1, currency: str = EUR) -> TransferNotice:  # fmt: skip
    return TransferNotice(
        event_id=event, event_type=TRANSFER_REVERSED, created=utcnow(), transfer_id=transfer, request_id=request_id,
        tranche=tranche if request_id else None, amount=Money(minor_units=amount, currency=currency),
        amount_reversed_minor=reversed_total,
    )  # fmt: skip


async def deliver(api: Api, notice: TransferNotice) -> bool:
    """The Stripe event's ledger step, as its workflow runs it (a local activity)."""
    return await StripeEvents(api.db, api.settings.public_base_url).apply_transfer_notice(notice)


def refund(amount: int, reference: str, **overrides) -> dict:
    return {"tranche": 1, "amount": {"minor_units": amount, "currency": EUR}, "reference": reference,
            "received_on": today().isoformat(), **overrides}  # fmt: skip


async def post_refund(api: Api, request_id: str, body: dict):
    return await api.http.post(f"/v1/grant-requests/{request_id}/refunds", json=body, headers=api.token("finance", "fin-1"))


async def back(db, request_id: str) -> dict[str, int]:
    """Per kind, what the ledger credited back for the request's tranche 1 (minor units)."""
    async with db.sessions() as session:
        rows = await session.execute(
            select(LedgerEntry.kind, func.sum(LedgerEntry.amount_minor))
            .where(LedgerEntry.request_id == request_id, LedgerEntry.tranche == 1, LedgerEntry.kind.in_([ledger.REFUND, ledger.REVERSAL]))
            .group_by(LedgerEntry.kind)
        )
        return {kind: int(total) for kind, total in rows}


async def payment_row(db, request_id: str) -> Payment:
    async with db.sessions() as session:
        return await session.scalar(select(Payment).where(Payment.request_id == request_id))


async def findings(db, **where) -> list[ReconciliationFinding]:
    async with db.sessions() as session:
        query = select(ReconciliationFinding).order_by(ReconciliationFinding.id)
        for name, value in where.items():
            query = query.where(getattr(ReconciliationFinding, name) == value)
        return list(await session.scalars(query))


async def audit(db, action: str, request_id: str | None = None) -> list[AuditEvent]:
    async with db.sessions() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        if request_id is not None:
            query = query.where(AuditEvent.request_id == request_id)
        return list(await session.scalars(query))


async def net_paid(db) -> int:
    async with db.sessions() as session:
        return (await session.get(BudgetAllocation, ledger.allocation_id(CATEGORY, GENEROUS_PERIOD[0]))).paid_base_minor


async def ledger_rows(db) -> int:
    async with db.sessions() as session:
        return await session.scalar(select(func.count()).select_from(LedgerEntry))


async def assert_verified(api: Api) -> None:
    verification = (await api.http.get("/v1/audit/verification", headers=api.token("finance", "fin-1"))).json()
    assert verification["intact"], verification


# --- the two orders ---------------------------------------------------------------------------


async def test_a_reversal_of_a_refunded_tranche_is_counted_once_and_finance_sees_it(api: Api, default_policy):
    """The report: a full refund of a EUR 900 tranche recorded, then Stripe reverses the transfer."""
    request_id, transfer = await paid_tranche(api.db, default_policy)
    assert (await post_refund(api, request_id, refund(PAID, "SEPA-IN-1"))).status_code == 201
    assert await deliver(api, reversal(request_id, transfer, PAID, "evt_full1")) is True

    assert await back(api.db, request_id) == {ledger.REFUND: PAID}  # not EUR 1,800
    assert await net_paid(api.db) == 0
    assert (await payment_row(api.db, request_id)).reversed_minor == PAID  # what Stripe says, for reconciliation
    (finding,) = await findings(api.db, request_id=request_id)
    assert (finding.kind, finding.transfer_id, finding.tranche, finding.currency) == ("reversal_matched_refund", transfer, 1, EUR)
    assert "refund" in finding.detail and str(PAID) in finding.detail
    (event,) = await audit(api.db, "payment_reversed", request_id)
    assert (event.facts["reversed_minor"], event.facts["credited_minor"], event.facts["matched_minor"]) == (PAID, 0, PAID)
    assert [a.facts["kind"] for a in await audit(api.db, "reconciliation_mismatch", request_id)] == ["reversal_matched_refund"]

    # Finance reads it in the reconciliation reports.
    finance = api.token("finance", "fin-1")
    runs = (await api.http.get("/v1/reconciliations", headers=finance)).json()["items"]
    (run,) = [r for r in runs if r["trigger"] == "stripe_event"]
    assert run["mismatches"] == 1 and run["status"] == "done"
    report = (await api.http.get(f"/v1/reconciliations/{run['id']}", headers=finance)).json()
    assert [(f["kind"], f["request_id"], f["transfer_id"]) for f in report["findings"]] == [("reversal_matched_refund", request_id, transfer)]
    await assert_ledger_balances(api.db)
    await assert_verified(api)


async def test_a_refund_of_money_stripe_already_reversed_is_refused_naming_the_reversal(api: Api, default_policy):
    request_id, transfer = await paid_tranche(api.db, default_policy)
    assert await deliver(api, reversal(request_id, transfer, 30_000, "evt_part1"))
    assert await back(api.db, request_id) == {ledger.REVERSAL: 30_000}
    counts, rows = await stored_counts(api.db), await ledger_rows(api.db)

    # The same EUR 300 recorded again by finance: refused, and the answer names the reversal.
    same = assert_problem(await post_refund(api, request_id, refund(30_000, "SEPA-IN-1")), 409, "refund-refused")
    assert transfer in same["detail"] and "30000" in same["detail"]
    # All of it again, too.
    assert transfer in assert_problem(await post_refund(api, request_id, refund(PAID, "SEPA-IN-2")), 409, "refund-refused")["detail"]
    assert (await stored_counts(api.db), await ledger_rows(api.db)) == (counts, rows)

    # Other money (it came back by bank transfer), said so: recorded, within what is left.
    other = await post_refund(api, request_id, refund(20_000, "SEPA-IN-3", separate_from_reversal=True))
    assert other.status_code == 201, other.text
    too_much = await post_refund(api, request_id, refund(40_001, "SEPA-IN-4", separate_from_reversal=True))
    assert transfer in assert_problem(too_much, 409, "refund-refused")["detail"]
    assert await back(api.db, request_id) == {ledger.REVERSAL: 30_000, ledger.REFUND: 20_000}
    (recorded,) = await audit(api.db, "refund_recorded", request_id)
    assert recorded.facts["separate_from_reversal"] is True
    await assert_ledger_balances(api.db)
    await assert_verified(api)


async def test_a_partial_refund_then_a_full_reversal_credits_only_the_rest(api: Api, default_policy):
    request_id, transfer = await paid_tranche(api.db, default_policy)
    assert (await post_refund(api, request_id, refund(20_000, "SEPA-IN-1"))).status_code == 201
    assert await deliver(api, reversal(request_id, transfer, PAID, "evt_full1"))
    assert await back(api.db, request_id) == {ledger.REFUND: 20_000, ledger.REVERSAL: 70_000}
    assert await net_paid(api.db) == 0
    (event,) = await audit(api.db, "payment_reversed", request_id)
    assert (event.facts["credited_minor"], event.facts["matched_minor"], event.facts["not_applied_minor"]) == (70_000, 20_000, 0)
    (finding,) = await findings(api.db, request_id=request_id)
    assert finding.kind == "reversal_matched_refund"
    # Nothing is left to refund.
    assert_problem(await post_refund(api, request_id, refund(1, "SEPA-IN-2", separate_from_reversal=True)), 409, "refund-refused")
    await assert_ledger_balances(api.db)


async def test_reversal_events_out_of_order_after_a_refund_never_count_twice(api: Api, default_policy):
    request_id, transfer = await paid_tranche(api.db, default_policy)
    assert (await post_refund(api, request_id, refund(20_000, "SEPA-IN-1"))).status_code == 201
    # Stripe reversed EUR 300, then the rest; the second event arrives first.
    assert await deliver(api, reversal(request_id, transfer, PAID, "evt_second"))
    assert await deliver(api, reversal(request_id, transfer, 30_000, "evt_first"))
    assert await back(api.db, request_id) == {ledger.REFUND: 20_000, ledger.REVERSAL: 70_000}
    assert (await payment_row(api.db, request_id)).reversed_minor == PAID
    events = await audit(api.db, "payment_reversed", request_id)
    assert [e.facts["stripe_event"] for e in events] == ["evt_second"]  # the late, older figure changed nothing

    # In order, on another tranche: EUR 300 reversed, EUR 100 refunded as other money, then all of it reversed.
    second, other_transfer = await paid_tranche(api.db, default_policy)
    assert await deliver(api, reversal(second, other_transfer, 30_000, "evt_o1"))
    assert (await post_refund(api, second, refund(10_000, "SEPA-IN-9", separate_from_reversal=True))).status_code == 201
    assert await deliver(api, reversal(second, other_transfer, PAID, "evt_o2"))
    assert sum((await back(api.db, second)).values()) == PAID
    await assert_ledger_balances(api.db)


async def test_a_duplicate_or_concurrent_delivery_of_a_reversal_changes_nothing_more(api: Api, default_policy):
    request_id, transfer = await paid_tranche(api.db, default_policy)
    assert (await post_refund(api, request_id, refund(PAID, "SEPA-IN-1"))).status_code == 201
    notice = reversal(request_id, transfer, PAID, "evt_dup1")
    outcomes = []
    for _ in range(3):  # each a retry of the SQLite writer's "database is locked", as the activity is retried
        try:
            outcomes += await asyncio.gather(deliver(api, notice), deliver(api, notice))
            break
        except Exception as error:  # noqa: BLE001
            assert "locked" in str(error), error
    assert sorted(outcomes) == [False, True]
    assert await deliver(api, notice) is False
    # Another event with the same figure (Stripe also sends transfer.updated-like repeats): nothing new.
    assert await deliver(api, reversal(request_id, transfer, PAID, "evt_dup2")) is True
    assert await back(api.db, request_id) == {ledger.REFUND: PAID}
    assert len(await findings(api.db, request_id=request_id)) == 1
    assert len(await audit(api.db, "payment_reversed", request_id)) == 1
    await assert_ledger_balances(api.db)
    await assert_verified(api)


# --- what cannot be applied -----------------------------------------------------------------


async def test_a_reversal_the_ledger_cannot_apply_is_a_finding_not_a_retry(api: Api, default_policy):
    # Paid as the payments table says, but not in the fund ledger (paid before the ledger existed).
    legacy, legacy_transfer = await paid_tranche(api.db, default_policy, in_ledger=False)
    rows = await ledger_rows(api.db)
    assert await deliver(api, reversal(legacy, legacy_transfer, PAID, "evt_legacy")) is True
    assert await ledger_rows(api.db) == rows
    (finding,) = await findings(api.db, request_id=legacy)
    assert (finding.kind, finding.transfer_id) == ("money_back_not_applied", legacy_transfer)

    # A transfer that is not ours, and one that names a tranche the ledger has no payment for.
    assert await deliver(api, reversal(None, "tr_strangerx1", 5_000, "evt_stranger", amount=5_000)) is True
    assert await deliver(api, reversal("gr_0000000000000000000000000000dead", "tr_unknown1", PAID, "evt_unknown")) is True
    assert {f.transfer_id for f in await findings(api.db, kind="money_back_not_applied")} == {
        legacy_transfer, "tr_strangerx1", "tr_unknown1",
    }  # fmt: skip
    assert await ledger_rows(api.db) == rows

    # Stripe says more came back than was paid: what was paid is credited, the rest is a finding.
    over, over_transfer = await paid_tranche(api.db, default_policy)
    assert await deliver(api, reversal(over, over_transfer, PAID + 10_000, "evt_over", amount=PAID + 10_000)) is True
    assert await back(api.db, over) == {ledger.REVERSAL: PAID}
    (finding,) = await findings(api.db, request_id=over)
    assert finding.kind == "money_back_not_applied" and "10000" in finding.detail

    # A second transfer for a tranche paid by another one (it may have been paid twice): its
    # reversal is not this payment's money back.
    twice, paid_by = await paid_tranche(api.db, default_policy)
    assert await deliver(api, reversal(twice, "tr_secondtransfer", PAID, "evt_twice")) is True
    assert await back(api.db, twice) == {}
    assert (await payment_row(api.db, twice)).reversed_minor == 0
    (finding,) = await findings(api.db, request_id=twice)
    assert finding.kind == "money_back_not_applied" and paid_by in finding.detail

    # A reversal in another currency than the tranche was paid in.
    usd, usd_transfer = await paid_tranche(api.db, default_policy)
    assert await deliver(api, reversal(usd, usd_transfer, PAID, "evt_usd", currency="USD")) is True
    assert await back(api.db, usd) == {}
    assert [f.kind for f in await findings(api.db, request_id=usd)] == ["money_back_not_applied"]
    await assert_ledger_balances(api.db)
    await assert_verified(api)


async def test_the_event_workflow_ends_when_a_reversal_cannot_be_applied(api: Api, default_policy):
    """Its webhook was answered 200: the event's workflow must finish, not retry for ever (Stripe
    says more was reversed than paid: crediting it all would take the allocation below zero)."""
    request_id, transfer = await paid_tranche(api.db, default_policy)
    notice = reversal(request_id, transfer, PAID + 1, "evt_wfnotapplied", amount=PAID + 1)
    client = api.app.state.services.client
    workflow_id = stripe_event_workflow_id(notice.event_id)
    applied = await asyncio.wait_for(
        client.execute_workflow(StripeEventWorkflow.run, notice, id=workflow_id, task_queue=api.settings.task_queue), 30
    )
    keep(client, workflow_id)
    assert applied is True
    assert [f.kind for f in await findings(api.db, request_id=request_id)] == ["money_back_not_applied"]
    assert await back(api.db, request_id) == {ledger.REVERSAL: PAID}
    await assert_ledger_balances(api.db)


async def test_a_reversal_before_the_payment_is_recorded_is_applied_when_it_is(api: Api, default_policy):
    request_id, _ = await paid_tranche(api.db, default_policy, status="pending")
    transfer = "tr_earlyreversal1"
    assert await deliver(api, reversal(request_id, transfer, PAID, "evt_early")) is True
    assert await back(api.db, request_id) == {}
    assert (await payment_row(api.db, request_id)).reversed_minor == PAID
    (event,) = await audit(api.db, "payment_reversed", request_id)
    assert event.facts["deferred_minor"] == PAID
    # The workflow records the payment (activities/records.py): the reversal Stripe reported is applied with it.
    paid = PaymentUpdate(tranche=1, status="paid", reference=transfer, paid_on=today())
    event = CaseEvent(request_id=request_id, seq=50, at=utcnow(), action="payment_completed", actor=SYSTEM,
                      status_from=Status.PAYMENT_PENDING, status_to=Status.PAID, payment=paid)  # fmt: skip
    assert await CaseRecords(api.db, api.settings.public_base_url).record_event(event) is True
    assert await back(api.db, request_id) == {ledger.REVERSAL: PAID}
    (applied,) = await audit(api.db, "reversal_applied", request_id)
    assert (applied.facts["transfer_id"], applied.facts["credited_minor"]) == (transfer, PAID)
    assert await net_paid(api.db) == 0
    await assert_ledger_balances(api.db)


# --- dates ------------------------------------------------------------------------------------


async def test_a_refund_received_before_its_payment_is_refused_with_a_field_error(api: Api, default_policy):
    paid_on = today() - timedelta(days=10)
    request_id, _ = await paid_tranche(api.db, default_policy, paid_on=paid_on)
    counts, rows = await stored_counts(api.db), await ledger_rows(api.db)
    for received_on in ("1900-01-01", (paid_on - timedelta(days=1)).isoformat()):
        body = assert_problem(await post_refund(api, request_id, refund(1_000, f"SEPA-{received_on}", received_on=received_on)), 422, "validation-error")
        assert [e["field"] for e in body["errors"]] == ["received_on"]
        assert paid_on.isoformat() in body["errors"][0]["message"]
    assert (await stored_counts(api.db), await ledger_rows(api.db)) == (counts, rows)
    on_the_day = await post_refund(api, request_id, refund(1_000, "SEPA-SAMEDAY", received_on=paid_on.isoformat()))
    assert on_the_day.status_code == 201, on_the_day.text


async def _approved(api: Api) -> str:
    request_id = (await api.submit()).json()["id"]
    await api.until_status(request_id, "awaiting_decision")
    decision = {"kind": "approve", "amount": {"minor_units": 150_000, "currency": EUR}}
    approved = await api.http.post(f"/v1/grant-requests/{request_id}/decisions", json=decision, headers=api.token("caseworker", "cw-1"))
    assert approved.status_code == 200, approved.text
    await api.until_status(request_id, "payment_pending")
    return request_id


async def test_a_payment_dated_before_its_approval_or_in_the_future_is_refused_with_a_field_error(api: Api):
    request_id = await _approved(api)
    url = f"/v1/grant-requests/{request_id}/payments"
    finance = api.token("finance", "fin-1")
    counts = await stored_counts(api.db)
    for paid_on in ("1900-01-01", (today() - timedelta(days=1)).isoformat(), (today() + timedelta(days=1)).isoformat()):
        body = {"amount": {"minor_units": 150_000, "currency": EUR}, "reference": "SEPA-OUT-1", "paid_on": paid_on}
        problem = assert_problem(await api.http.post(url, json=body, headers=finance), 422, "validation-error")
        assert [e["field"] for e in problem["errors"]] == ["paid_on"], problem
    assert await stored_counts(api.db) == counts
    assert (await payment_row(api.db, request_id)).status != "paid"
    body = {"amount": {"minor_units": 150_000, "currency": EUR}, "reference": "SEPA-OUT-1", "paid_on": today().isoformat()}
    paid = await api.http.post(url, json=body, headers=finance)
    assert paid.status_code == 200, paid.text
    await api.until_status(request_id, "follow_up")


async def test_a_refund_and_a_reversal_racing_for_the_same_money_count_it_once(api: Api, default_policy):
    """Finance records the full refund while Stripe's reversal of the same transfer is applied:
    whichever goes first, EUR 900 came back, not 1,800."""
    for n in range(3):
        request_id, transfer = await paid_tranche(api.db, default_policy)
        refunded, reversed_ = await asyncio.gather(
            post_refund(api, request_id, refund(PAID, f"SEPA-RACE-{n}")), deliver(api, reversal(request_id, transfer, PAID, f"evt_race{n}"))
        )
        assert reversed_ is True
        assert refunded.status_code in (201, 409), refunded.text
        assert sum((await back(api.db, request_id)).values()) == PAID
        if refunded.status_code == 409:  # the reversal went first
            assert transfer in refunded.json()["detail"] and await back(api.db, request_id) == {ledger.REVERSAL: PAID}
        else:  # the refund went first: the reversal matched it
            assert [f.kind for f in await findings(api.db, request_id=request_id)] == ["reversal_matched_refund"]
    await assert_ledger_balances(api.db)
    await assert_verified(api)
