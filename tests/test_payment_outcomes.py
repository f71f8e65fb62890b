"""What the workflow does with each answer a payment rail can give, on SQLite and PostgreSQL:
the payment completed (a Stripe transfer exists), a permanent refusal (the budget is released and
finance told; a retry can then succeed), and transient errors that Temporal retries until the
rail answers. The rail here is a scripted stand-in for any rail; the Stripe rail itself is tested
against the local Stripe-compatible server."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from haven.case_events import PAYMENT_REFUSED, DisbursementStarted, PaymentInstruction
from haven.grant_request import PaymentRail, Withdrawal
from haven.intake import Intake
from haven.lifecycle import Status
from haven.worker import build_worker
from tests.conftest import TEST_CASE_KEYS, make_settings
from tests.harness import Harness, caseworker, intermediary
from workflows.grant_request import GrantRequestWorkflow

STRIPE_PAYEE = {"name": "Digital Safety Partners", "country": "LT", "rail": "stripe", "stripe_account": "acct_1DSP"}


class ScriptedRail:
    """Answers each call with the next step of its script: "ok", "refuse", "fail" (transient) or
    "hold" (answers ok once `release` is set, so a test can act while money is moving)."""

    def __init__(self, *script: str, then: str = "ok"):
        self.script = list(script)
        self.then = then
        self.calls: list[str] = []
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def start(self, instruction: PaymentInstruction, payee: dict[str, Any]) -> DisbursementStarted:
        self.calls.append(instruction.idempotency_key)
        step = self.script.pop(0) if self.script else self.then
        if step == "hold":
            self.holding.set()
            await self.release.wait()
        if step == "refuse":
            raise ApplicationError("the rail refused the transfer (balance_insufficient)", type=PAYMENT_REFUSED, non_retryable=True)
        if step == "fail":
            raise RuntimeError("connection reset")
        return DisbursementStarted(outcome="completed", reference=f"tr_{len(self.calls)}")


@pytest.fixture
def run(time_skipping_env, db, tmp_path, default_policy):
    async def start(rail: ScriptedRail) -> tuple[Harness, Any]:
        settings = make_settings(tmp_path, db.url)
        worker = build_worker(time_skipping_env.client, db, settings, {PaymentRail.STRIPE: rail})
        rails = frozenset({PaymentRail.MANUAL, PaymentRail.STRIPE})
        intake = Intake(db, time_skipping_env.client, settings.task_queue, default_policy, b"index-key", rails, case_keys=TEST_CASE_KEYS)
        return Harness(time_skipping_env, intake, db), worker

    return start


async def test_a_completed_transfer_pays_the_tranche_without_anyone_confirming(run):
    rail = ScriptedRail("ok")
    harness, worker = await run(rail)
    async with worker:
        handle = await _approved(harness)
        await harness.until(handle, Status.FOLLOW_UP)
        (payment,) = await harness.payments(handle.id)
        assert (payment.status, payment.reference, payment.rail) == ("paid", "tr_1", "stripe")
        actions = [e.action for e in await harness.audit(handle.id)]
        # Straight from approved to paid: never "pending", when a withdrawal could slip in.
        assert "payment_completed" in actions and "payment_started" not in actions
        assert "payment_due" not in [n.kind for n in await harness.notifications(handle.id)]
    assert rail.calls == [f"{handle.id}:tranche:1"]


async def test_a_refusal_releases_the_budget_and_a_retry_can_pay(run):
    rail = ScriptedRail("refuse", "ok")
    harness, worker = await run(rail)
    async with worker:
        handle = await _approved(harness)
        await harness.until(handle, Status.PAYMENT_FAILED)
        (payment,) = await harness.payments(handle.id)
        assert payment.status == "failed" and "balance_insufficient" in payment.failure_reason
        (reservation,) = await harness.reservations(handle.id)
        assert reservation.status == "released"
        told = {(n.kind, n.audience) for n in await harness.notifications(handle.id)}
        assert ("payment_failed", "finance") in told

        await harness.retry(handle)
        await harness.until(handle, Status.FOLLOW_UP)
        (payment,) = await harness.payments(handle.id)
        assert (payment.status, payment.attempts, payment.reference) == ("paid", 2, "tr_2")
    # A definite refusal paid nothing, so the retry uses a fresh key (the payment service would
    # otherwise replay its stored refusal).
    assert rail.calls == [f"{handle.id}:tranche:1", f"{handle.id}:tranche:1:after-1"]


async def test_transient_errors_are_retried_until_the_rail_answers(run):
    rail = ScriptedRail("fail", "fail", "ok")
    harness, worker = await run(rail)
    async with worker:
        handle = await _approved(harness)
        await harness.until(handle, Status.FOLLOW_UP)
        assert [e.action for e in await harness.audit(handle.id)].count("payment_refused") == 0
    assert rail.calls == [f"{handle.id}:tranche:1"] * 3


async def test_nobody_can_withdraw_while_a_retried_payment_is_moving(run):
    rail = ScriptedRail("refuse", "hold")
    harness, worker = await run(rail)
    async with worker:
        handle = await _approved(harness)
        await harness.until(handle, Status.PAYMENT_FAILED)
        await harness.retry(handle)
        await asyncio.wait_for(rail.holding.wait(), 10)  # the transfer call is in flight
        refusal = await harness.refused(handle, GrantRequestWorkflow.withdraw, _withdrawal())
        assert "retrying the payment" in refusal
        rail.release.set()
        await harness.until(handle, Status.FOLLOW_UP)
        (payment,) = await harness.payments(handle.id)
        assert payment.status == "paid"


async def test_a_rail_left_unanswered_past_the_policy_fails_the_payment_for_finance(run, time_skipping_env, default_policy):
    rail = ScriptedRail(then="fail")  # every call a network error, as when Stripe is down
    harness, worker = await run(rail)
    async with worker:
        handle = await _approved(harness)
        await harness.until(handle, lambda s: len(rail.calls) >= 2)
        patience = default_policy.policy.payment_unanswered_minutes
        await time_skipping_env.sleep(timedelta(minutes=patience + 1))
        await harness.until(handle, Status.PAYMENT_FAILED)
        (payment,) = await harness.payments(handle.id)
        assert payment.status == "failed" and f"did not answer for {patience} minutes" in payment.failure_reason
        assert ("payment_failed", "finance") in {(n.kind, n.audience) for n in await harness.notifications(handle.id)}
        (reservation,) = await harness.reservations(handle.id)
        assert reservation.status == "released"

        rail.then = "ok"
        await harness.retry(handle)
        await harness.until(handle, Status.FOLLOW_UP)
    # Whether the unanswered calls moved money is unknown, so the retry moves to a fresh key
    # (a stored 500 would be replayed for a day) only after the rail looked for a transfer.
    assert set(rail.calls) == {f"{handle.id}:tranche:1", f"{handle.id}:tranche:1:after-1"}


async def test_finance_can_switch_a_refused_payment_to_the_manual_rail(run):
    harness, worker = await run(ScriptedRail("refuse"))
    async with worker:
        handle = await _approved(harness)
        await harness.until(handle, Status.PAYMENT_FAILED)
        result = await harness.retry(handle, PaymentRail.MANUAL)
        assert "manual rail" in result.message
        state = await harness.until(handle, Status.PAYMENT_PENDING)
        assert state.rail == PaymentRail.MANUAL
        await harness.pay(handle, 150_000, reference="SEPA-2026-77")
        await harness.until(handle, Status.FOLLOW_UP)
        (payment,) = await harness.payments(handle.id)
        assert (payment.status, payment.rail, payment.reference) == ("paid", "manual", "SEPA-2026-77")
        assert (await harness.record(handle.id)).rail == "manual"


async def _approved(harness: Harness):
    """A request paid through the scripted rail, approved by one caseworker."""
    handle = await harness.submit(payee=STRIPE_PAYEE)
    await harness.until(handle, Status.AWAITING_DECISION)
    await harness.approve(handle, caseworker(1), 150_000)
    return handle


def _withdrawal() -> Withdrawal:
    return Withdrawal(actor=intermediary(), reason="the defender left the country")
