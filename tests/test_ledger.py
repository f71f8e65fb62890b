"""The fund ledger: concurrent reservations never overspend a budget (PostgreSQL's row lock; SQLite's
single writer), an approved request that does not fit waits for funds, and finance sets budgets
through the API. Every path here leaves a ledger that balances."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from sqlalchemy.exc import DBAPIError

from haven import ledger
from haven.db import utcnow
from haven.db.models import BudgetAllocation
from haven.lifecycle import Status
from haven.money import Money
from tests.api_harness import assert_problem
from tests.conftest import GENEROUS_PERIOD
from tests.harness import Harness, caseworker
from tests.ledger_checks import assert_ledger_balances
from workflows.grant_request import GrantRequestWorkflow

START, END = GENEROUS_PERIOD
EUR = "EUR"


async def _set_budget(db, category: str, minor_units: int) -> None:
    async with db.transaction() as session:
        await ledger.set_allocation(session, category, START, END, Money(minor_units=minor_units, currency=EUR), "fin-1")


async def _reserve_once(db, n: int, amount: int) -> bool:
    """One reservation in its own transaction, retried (as the activity is) when SQLite's single
    writer turns it away; True when it fitted."""
    movement = ledger.Movement(
        key=f"race:{n}", request_id=None, tranche=None, amount_base_minor=amount,
        amount=Money(minor_units=amount, currency=EUR), rate_to_base=Decimal(1), actor="test", at=utcnow(),
    )  # fmt: skip
    while True:
        try:
            async with db.transaction() as session:
                await ledger.reserve(session, "secure_communications", utcnow().date(), movement)
            return True
        except ledger.NoFunds:
            return False
        except DBAPIError:
            await asyncio.sleep(0.01)  # "database is locked": the activity's retry


async def test_concurrent_reservations_never_exceed_a_small_budget(db):
    await _set_budget(db, "secure_communications", 10_000)
    fitted = await asyncio.gather(*(_reserve_once(db, n, 1_000) for n in range(40)))
    assert sum(fitted) == 10
    async with db.sessions() as session:
        allocation = await session.get(BudgetAllocation, ledger.allocation_id("secure_communications", START))
        assert (allocation.reserved_base_minor, ledger.available(allocation)) == (10_000, 0)
    await assert_ledger_balances(db)


async def test_a_reservation_written_twice_reserves_once(db):
    await _set_budget(db, "secure_communications", 5_000)
    assert await _reserve_once(db, 1, 2_000) and await _reserve_once(db, 1, 2_000)
    async with db.sessions() as session:
        allocation = await session.get(BudgetAllocation, ledger.allocation_id("secure_communications", START))
        assert allocation.reserved_base_minor == 2_000


async def test_an_approved_request_that_does_not_fit_waits_for_funds(harness: Harness):
    await _set_budget(harness.db, "legal_fees", 100_000)  # less than the 150,000 granted below
    handle = await harness.submit()
    await harness.until(handle, Status.AWAITING_DECISION)
    await harness.approve(handle, caseworker(), 150_000)
    await harness.until(handle, Status.AWAITING_FUNDS)
    told = {(n.kind, n.audience) for n in await harness.notifications(handle.id)}
    assert {("funds_insufficient", "finance"), ("funds_insufficient", "caseworker")} <= told
    assert await harness.reservations(handle.id) == []

    await _set_budget(harness.db, "legal_fees", 1_000_000)
    await handle.signal(GrantRequestWorkflow.funds_changed)
    await harness.until(handle, Status.PAYMENT_PENDING)
    await harness.pay(handle, 150_000)
    await harness.until(handle, Status.FOLLOW_UP)
    async with harness.db.sessions() as session:
        allocation = await session.get(BudgetAllocation, ledger.allocation_id("legal_fees", START))
        assert (allocation.paid_base_minor, allocation.reserved_base_minor) == (150_000, 0)


async def test_a_caseworker_can_reject_a_request_waiting_for_funds(harness: Harness):
    await _set_budget(harness.db, "legal_fees", 0)
    handle = await harness.submit()
    await harness.until(handle, Status.AWAITING_DECISION)
    await harness.approve(handle, caseworker(), 150_000)
    await harness.until(handle, Status.AWAITING_FUNDS)
    await harness.reject(handle, caseworker(2))
    final = await handle.result()
    assert final.status == Status.REJECTED


async def test_finance_sets_budgets_through_the_api_and_waiting_requests_try_again(api):
    finance = api.token("finance", "fin-1")
    url = f"/v1/budget/allocations/legal_fees/{START.isoformat()}"
    lowered = await api.http.put(url, json={"ends_on": END.isoformat(), "amount": {"minor_units": 0, "currency": EUR}}, headers=finance)
    assert lowered.status_code == 200, lowered.text
    assert lowered.json()["available"] == {"minor_units": 0, "currency": EUR}

    created = await api.submit()
    request_id = created.json()["id"]
    await api.until_status(request_id, "awaiting_decision")
    decision = {"kind": "approve", "amount": {"minor_units": 150_000, "currency": EUR}}
    approved = await api.http.post(f"/v1/grant-requests/{request_id}/decisions", json=decision, headers=api.token("caseworker", "cw-1"))
    assert approved.status_code == 200, approved.text
    await api.until_status(request_id, "awaiting_funds")

    raised = await api.http.put(url, json={"ends_on": END.isoformat(), "amount": {"minor_units": 500_000, "currency": EUR}}, headers=finance)
    assert raised.status_code == 200, raised.text
    await api.until_status(request_id, "payment_pending")  # woken at once, not at the next recheck
    listed = (await api.http.get("/v1/budget/allocations", headers=api.token("director", "dir-1"))).json()
    (legal,) = [a for a in listed if a["category"] == "legal_fees"]
    assert (legal["reserved"]["minor_units"], legal["available"]["minor_units"]) == (150_000, 350_000)

    # Less than is committed, an overlapping period, another currency: refused, nothing changed.
    before = await api.counts()
    too_low = await api.http.put(url, json={"ends_on": END.isoformat(), "amount": {"minor_units": 1, "currency": EUR}}, headers=finance)
    assert_problem(too_low, 409, "allocation-refused")
    overlap = await api.http.put(
        "/v1/budget/allocations/legal_fees/2026-01-01",
        json={"ends_on": "2026-12-31", "amount": {"minor_units": 1, "currency": EUR}}, headers=finance,
    )  # fmt: skip
    assert_problem(overlap, 409, "allocation-refused")
    other_currency = await api.http.put(url, json={"ends_on": END.isoformat(), "amount": {"minor_units": 1, "currency": "USD"}}, headers=finance)
    assert_problem(other_currency, 422, "validation-error")
    assert await api.counts() == before
    refused = await api.http.put(url, json={"ends_on": END.isoformat(), "amount": {"minor_units": 1, "currency": EUR}}, headers=api.token("caseworker", "cw-1"))
    assert_problem(refused, 403, "forbidden")
    await assert_ledger_balances(api.db)
