"""The Stripe rail through the real `stripe` package against the local Stripe-compatible server:
exactly one transfer per tranche however the call fails, permanent refusals told apart from
transient ones, and a grant paid end to end by the workflow on the time-skipping server."""

from __future__ import annotations

import pytest
import stripe
from temporalio.exceptions import ApplicationError

from activities.stripe_rail import StripeRail, stripe_client
from haven.case_events import PAYMENT_REFUSED, PaymentInstruction
from haven.grant_request import PaymentRail
from haven.intake import Intake
from haven.lifecycle import Status
from haven.money import Money
from haven.stripe_local import LocalStripe
from haven.worker import build_worker
from tests.conftest import TEST_CASE_KEYS, make_settings
from tests.harness import Harness, caseworker

PAYEE = {"name": "Digital Safety Partners", "country": "LT", "rail": "stripe", "stripe_account": "acct_payee1"}


def _rail(server: LocalStripe, tmp_path, **settings) -> StripeRail:
    values = {"stripe_api_key": server.api_key, "stripe_api_base": server.url, "stripe_timeout_seconds": 2.0, **settings}
    return StripeRail(stripe_client(make_settings(tmp_path, "sqlite://", **values)))


def _instruction(request_id: str = "gr_rail1", tranche: int = 1, minor_units: int = 150_000) -> PaymentInstruction:
    return PaymentInstruction(
        request_id=request_id, tranche=tranche, attempt=1, rail=PaymentRail.STRIPE,
        amount=Money(minor_units=minor_units, currency="EUR"), amount_base_minor=minor_units,
    )  # fmt: skip


async def test_a_transfer_carries_ids_only_and_a_retry_returns_it(local_stripe, tmp_path):
    rail = _rail(local_stripe, tmp_path)
    first = await rail.start(_instruction(), PAYEE)
    again = await rail.start(_instruction().model_copy(update={"attempt": 2}), PAYEE)
    assert first.outcome == "completed" and first.reference == again.reference
    (transfer,) = local_stripe.control.transfers()
    assert transfer["amount"] == 150_000 and transfer["currency"] == "eur" and transfer["destination"] == "acct_payee1"
    assert transfer["metadata"] == {"request_id": "gr_rail1", "tranche": "1"}


async def test_a_retry_after_the_key_expired_finds_the_transfer_made_before(local_stripe, tmp_path):
    rail = _rail(local_stripe, tmp_path)
    first = await rail.start(_instruction(), PAYEE)
    # Another key, as after Stripe forgot the first one: still the same transfer, not a second.
    later = await rail.start(_instruction().model_copy(update={"ended_attempts": 3}), PAYEE)
    assert later.reference == first.reference and local_stripe.control.transfer_count() == 1
    other_tranche = await rail.start(_instruction(tranche=2), PAYEE)
    assert other_tranche.reference != first.reference and local_stripe.control.transfer_count() == 2


@pytest.mark.parametrize("fault", ["error-500", "error-429", "drop_after_commit", "delay"])
async def test_however_the_call_fails_there_is_exactly_one_transfer(local_stripe, tmp_path, fault):
    rail = _rail(local_stripe, tmp_path)
    if fault.startswith("error"):
        local_stripe.control.inject_fault("error", status=int(fault.split("-")[1]))
    elif fault == "delay":
        local_stripe.control.inject_fault("delay", seconds=3)  # longer than the client's 2 s timeout
    else:
        local_stripe.control.inject_fault(fault)
    with pytest.raises(stripe.StripeError):  # transient: raised as it is, for Temporal to retry
        await rail.start(_instruction(), PAYEE)
    if fault == "delay":
        import asyncio

        await asyncio.sleep(1.5)  # the slow request still completes on the server
    retried = await rail.start(_instruction(), PAYEE)  # what Temporal's retry does
    assert local_stripe.control.transfer_count() == 1
    assert retried.reference == local_stripe.control.transfers()[0]["id"]


@pytest.mark.parametrize(
    ("payee", "balance", "code"),
    [
        ({**PAYEE, "stripe_account": "acct_unknown"}, None, "resource_missing"),
        (PAYEE, 0, "balance_insufficient"),
        ({k: v for k, v in PAYEE.items() if k != "stripe_account"}, None, "no Stripe connected account"),
    ],
    ids=["unknown-account", "insufficient-balance", "no-account-on-payee"],
)
async def test_permanent_refusals_fail_the_payment_step(local_stripe, tmp_path, payee, balance, code):
    if balance == 0:
        local_stripe.control.reset()
        local_stripe.control.create_account("acct_payee1")
    with pytest.raises(ApplicationError) as refused:
        await _rail(local_stripe, tmp_path).start(_instruction(), payee)
    assert refused.value.type == PAYMENT_REFUSED and refused.value.non_retryable
    assert code in refused.value.message
    assert local_stripe.control.transfer_count() == 0


async def test_a_rejected_api_key_is_retried_not_a_refusal(local_stripe, tmp_path):
    # A configuration fault the operators fix; it proves nothing about whether money moved.
    rail = _rail(local_stripe, tmp_path, stripe_api_key="rk_live_wrong")
    with pytest.raises(stripe.AuthenticationError):
        await rail.start(_instruction(), PAYEE)


async def test_after_a_refusal_is_fixed_the_retry_pays(local_stripe, tmp_path):
    local_stripe.control.reset()
    local_stripe.control.create_account("acct_payee1")  # no balance yet
    rail = _rail(local_stripe, tmp_path)
    with pytest.raises(ApplicationError):
        await rail.start(_instruction(), PAYEE)
    local_stripe.control.top_up(1_000_000, "eur")  # finance tops up the platform balance
    with pytest.raises(ApplicationError):  # the same key replays the stored refusal, as Stripe does
        await rail.start(_instruction(), PAYEE)
    paid = await rail.start(_instruction().model_copy(update={"ended_attempts": 1}), PAYEE)
    assert paid.outcome == "completed" and local_stripe.control.transfer_count() == 1


@pytest.mark.parametrize("fault", ["drop_after_commit", "error-500", "error-429"])
async def test_a_grant_is_paid_through_stripe_end_to_end(local_stripe, time_skipping_env, db, tmp_path, default_policy, fault):
    """The first transfer call fails (the answer lost after the transfer was made, or a 500 or 429
    before it): the workflow's retry ends with exactly one transfer and a ledger that matches."""
    if fault.startswith("error"):
        local_stripe.control.inject_fault("error", status=int(fault.split("-")[1]))
    else:
        local_stripe.control.inject_fault(fault)
    harness, settings = _harness(local_stripe, time_skipping_env, db, tmp_path, default_policy)
    async with build_worker(time_skipping_env.client, db, settings):
        handle = await harness.submit(payee=PAYEE)
        await harness.until(handle, Status.AWAITING_DECISION)
        await harness.approve(handle, caseworker(1), 150_000)
        await harness.until(handle, Status.FOLLOW_UP)
        (payment,) = await harness.payments(handle.id)
    (transfer,) = local_stripe.control.transfers()
    assert (payment.status, payment.reference, payment.amount_minor) == ("paid", transfer["id"], transfer["amount"])
    assert transfer["metadata"]["request_id"] == handle.id


async def test_a_refusal_by_stripe_releases_the_budget(local_stripe, time_skipping_env, db, tmp_path, default_policy):
    local_stripe.control.top_up(-local_stripe.control.balance("eur"), "eur")
    harness, settings = _harness(local_stripe, time_skipping_env, db, tmp_path, default_policy)
    async with build_worker(time_skipping_env.client, db, settings):
        handle = await harness.submit(payee=PAYEE)
        await harness.until(handle, Status.AWAITING_DECISION)
        await harness.approve(handle, caseworker(1), 150_000)
        await harness.until(handle, Status.PAYMENT_FAILED)
        (payment,) = await harness.payments(handle.id)
        (reservation,) = await harness.reservations(handle.id)
    assert payment.status == "failed" and "balance_insufficient" in payment.failure_reason
    assert reservation.status == "released" and local_stripe.control.transfer_count() == 0


def _harness(local_stripe, time_skipping_env, db, tmp_path, default_policy):
    settings = make_settings(tmp_path, db.url, stripe_api_key=local_stripe.api_key, stripe_api_base=local_stripe.url)
    intake = Intake(db, time_skipping_env.client, settings.task_queue, default_policy, b"index-key", settings.payment_rails, case_keys=TEST_CASE_KEYS)
    return Harness(time_skipping_env, intake, db), settings
