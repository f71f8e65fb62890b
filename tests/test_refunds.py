"""Money returned to the fund after payment: finance records it once per reference, never more than
was paid, and the ledger, the summary and the audit log show it."""

from __future__ import annotations

from datetime import date, timedelta

from haven import ledger
from haven.db.models import BudgetAllocation
from tests.api_harness import Api, assert_problem, stored_counts
from tests.conftest import GENEROUS_PERIOD
from tests.ledger_checks import assert_ledger_balances

EUR = "EUR"


async def _paid_request(api: Api) -> str:
    request_id = (await api.submit()).json()["id"]
    await api.until_status(request_id, "awaiting_decision")
    amount = {"minor_units": 150_000, "currency": EUR}
    approved = await api.http.post(f"/v1/grant-requests/{request_id}/decisions", json={"kind": "approve", "amount": amount},
                                   headers=api.token("caseworker", "cw-1"))  # fmt: skip
    assert approved.status_code == 200, approved.text
    await api.until_status(request_id, "payment_pending")
    paid = await api.http.post(f"/v1/grant-requests/{request_id}/payments", headers=api.token("finance", "fin-1"),
                               json={"amount": amount, "reference": "SEPA-OUT-1", "paid_on": date.today().isoformat()})  # fmt: skip
    assert paid.status_code == 200, paid.text
    await api.until_status(request_id, "follow_up")
    return request_id


async def _paid_from_allocation(api: Api) -> int:
    async with api.db.sessions() as session:
        return (await session.get(BudgetAllocation, ledger.allocation_id("legal_fees", GENEROUS_PERIOD[0]))).paid_base_minor


def _refund(amount: int, reference: str = "SEPA-IN-1", **overrides) -> dict:
    return {"tranche": 1, "amount": {"minor_units": amount, "currency": EUR}, "reference": reference,
            "received_on": date.today().isoformat(), **overrides}  # fmt: skip


async def test_a_refund_is_recorded_once_and_never_exceeds_what_was_paid(api: Api):
    request_id = await _paid_request(api)
    url = f"/v1/grant-requests/{request_id}/refunds"
    finance = api.token("finance", "fin-1")
    paid_before = await _paid_from_allocation(api)

    first = await api.http.post(url, json=_refund(20_000), headers=finance)
    assert first.status_code == 201, first.text
    assert first.json()["amount_base"] == {"minor_units": 20_000, "currency": EUR}
    assert await _paid_from_allocation(api) == paid_before - 20_000
    again = await api.http.post(url, json=_refund(20_000), headers=finance)
    assert again.status_code == 200 and again.json() == first.json()
    assert await _paid_from_allocation(api) == paid_before - 20_000

    counts = await stored_counts(api.db)
    refusals = [
        (_refund(25_000), 409, "refund-refused"),  # the same reference with another amount
        (_refund(130_001, "SEPA-IN-2"), 409, "refund-refused"),  # more than is left of the 150,000 paid
        (_refund(1_000, "SEPA-IN-3", tranche=2), 409, "refund-refused"),  # no second tranche was paid
        ({**_refund(1_000, "SEPA-IN-4"), "amount": {"minor_units": 1_000, "currency": "USD"}}, 409, "refund-refused"),
        (_refund(1_000, "SEPA-IN-5", received_on=(date.today() + timedelta(days=1)).isoformat()), 422, "validation-error"),
        (_refund(0, "SEPA-IN-6"), 422, "validation-error"),
        ({**_refund(1_000, "SEPA-IN-7"), "note": "unexpected"}, 422, "validation-error"),
    ]
    for body, status, kind in refusals:
        assert_problem(await api.http.post(url, json=body, headers=finance), status, kind)
    assert_problem(await api.http.post("/v1/grant-requests/gr_unknown/refunds", json=_refund(1_000, "X"), headers=finance), 404, "not-found")
    assert_problem(await api.http.post(url, json=_refund(1_000, "SEPA-IN-8"), headers=api.token("caseworker", "cw-1")), 403, "forbidden")
    assert await stored_counts(api.db) == counts
    assert await _paid_from_allocation(api) == paid_before - 20_000

    rest = await api.http.post(url, json=_refund(130_000, "SEPA-IN-9"), headers=finance)  # exactly what is left
    assert rest.status_code == 201, rest.text
    await assert_ledger_balances(api.db)

    summary = (await api.http.get("/v1/budget/summary", headers=finance)).json()
    assert summary["by_category"]["legal_fees"]["given_back"]["minor_units"] == 150_000
    assert summary["by_category"]["legal_fees"]["net_paid"]["minor_units"] == 0
    verification = (await api.http.get("/v1/audit/verification", headers=finance)).json()
    assert verification["intact"]
