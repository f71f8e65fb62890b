"""Every path of the grant request lifecycle on the time-skipping server, with the real
activities and database. Durable timers that run for days or months take milliseconds here."""

from __future__ import annotations

from datetime import timedelta


from haven.lifecycle import Status
from tests.harness import FINANCE, Harness, caseworker, director, intermediary
from workflows.grant_request import GrantRequestWorkflow

S = Status


async def test_single_approval_runs_to_closed(harness: Harness):
    handle = await harness.submit()
    state = await harness.until(handle, S.AWAITING_DECISION)
    assert state.risk.tier == "low" and state.approvals_required == 1 and not state.director_required

    result = await harness.approve(handle, caseworker(), 150_000)
    assert result.status == S.APPROVED
    await harness.until(handle, S.PAYMENT_PENDING)
    [reservation] = await harness.reservations(handle.id)
    assert (reservation.status, reservation.amount_base_minor) == ("held", 150_000)

    await harness.pay(handle, 150_000)
    state = await harness.until(handle, lambda s: s.status == S.FOLLOW_UP and s.report_due_at is not None)
    await harness.report(handle)
    result = await harness.accept(handle)
    assert result.status == S.CLOSED

    final = await handle.result()
    assert final.status == S.CLOSED
    record = await harness.until_recorded(handle.id, S.CLOSED)
    assert record.granted_minor == 150_000
    [payment] = await harness.payments(handle.id)
    assert (payment.status, payment.reference, payment.idempotency_key) == ("paid", "BANK-REF-1", f"{handle.id}:tranche:1")
    [reservation] = await harness.reservations(handle.id)
    assert (reservation.status, reservation.released_base_minor) == ("settled", 0)
    report = await harness.report_row(handle.id)
    assert (report.receipts, report.submitted_by, report.accepted_by) == (["INV-7"], "int-ngo-1-1", "cw-1")
    actions = [e.action for e in await harness.audit(handle.id)]
    assert actions == [
        "screening_started", "screened", "risk_assessed", "approve", "budget_reserved", "payment_started",
        "record_payment", "report_requested", "submit_report", "accept_report",
    ]
    assert [e.seq for e in await harness.audit(handle.id)] == list(range(1, 11))


async def test_two_approvals_four_eyes(harness: Harness):
    handle = await harness.submit(amount={"minor_units": 400_000, "currency": "EUR"})
    state = await harness.until(handle, S.AWAITING_DECISION)
    assert state.approvals_required == 2 and not state.director_required

    first = await harness.approve(handle, caseworker(1), 400_000)
    assert first.status == S.AWAITING_DECISION and "1 more approval" in first.message
    reason = await harness.refused(
        handle, GrantRequestWorkflow.decide, _approval(caseworker(1), 400_000)
    )
    assert "already approved" in reason
    second = await harness.approve(handle, caseworker(2), 400_000)
    assert second.status == S.APPROVED
    await harness.until(handle, S.PAYMENT_PENDING)
    assert [e.kind for e in await _decisions(harness, handle.id)] == ["approve", "approve"]


async def test_director_required_for_the_largest_grants(harness: Harness):
    handle = await harness.submit(amount={"minor_units": 700_000, "currency": "EUR"})
    state = await harness.until(handle, S.AWAITING_DECISION)
    assert state.approvals_required == 3 and state.director_required

    await harness.approve(handle, caseworker(1), 700_000)
    result = await harness.approve(handle, caseworker(2), 700_000)
    assert result.status == S.AWAITING_DECISION and "director" in result.message
    result = await harness.approve(handle, director(), 700_000)
    assert result.status == S.APPROVED


async def test_lower_approved_amount_is_what_is_granted_and_paid(harness: Harness):
    handle = await harness.submit(amount={"minor_units": 300_000, "currency": "EUR"})
    await harness.until(handle, S.AWAITING_DECISION)
    # Approving 2,000 EUR instead of 3,000 EUR brings it under the one-approval bound.
    result = await harness.approve(handle, caseworker(), 200_000)
    assert result.status == S.APPROVED
    state = await harness.until(handle, S.PAYMENT_PENDING)
    assert state.granted.minor_units == 200_000
    reason = await harness.refused(handle, GrantRequestWorkflow.record_payment, _manual_payment(300_000))
    assert "must match" in reason
    [reservation] = await harness.reservations(handle.id)
    assert reservation.amount_base_minor == 200_000


async def test_conflicts_and_caps_are_refused(harness: Harness):
    handle = await harness.submit(amount={"minor_units": 700_000, "currency": "EUR"})
    await harness.until(handle, S.AWAITING_DECISION)
    own_org = caseworker(5, org="ngo-1")
    assert "own organisation" in await harness.refused(handle, GrantRequestWorkflow.decide, _approval(own_org, 700_000))
    assert "more than zero and no more than" in await harness.refused(
        handle, GrantRequestWorkflow.decide, _approval(caseworker(), 800_000)
    )
    assert "currency" in await harness.refused(handle, GrantRequestWorkflow.decide, _approval(caseworker(), 1_000, "USD"))
    finance_decides = _approval(FINANCE, 100_000)
    assert "only caseworkers" in await harness.refused(handle, GrantRequestWorkflow.decide, finance_decides)
    assert "cannot record payment" in await harness.refused(handle, GrantRequestWorkflow.record_payment, _manual_payment(700_000))
    assert (await harness.state(handle)).approvals == []


async def test_approval_above_the_defenders_yearly_cap_is_refused(harness: Harness):
    first = await harness.submit(amount={"minor_units": 700_000, "currency": "EUR"})
    await harness.until(first, S.AWAITING_DECISION)
    for actor in (caseworker(1), caseworker(2), director()):
        await harness.approve(first, actor, 700_000)
    await harness.until(first, S.PAYMENT_PENDING)

    second = await harness.submit(amount={"minor_units": 500_000, "currency": "EUR"})
    state = await harness.until(second, S.AWAITING_DECISION)
    assert state.risk.prior_grants_12_months == 1 and state.risk.factors["prior_grants"] == 10
    reason = await harness.refused(second, GrantRequestWorkflow.decide, _approval(caseworker(), 500_000))
    assert "above what may be granted (300000" in reason
    assert (await harness.approve(second, caseworker(1), 300_000)).status == S.AWAITING_DECISION


async def test_rejection_ends_the_request(harness: Harness):
    handle = await harness.submit(amount={"minor_units": 400_000, "currency": "EUR"})
    await harness.until(handle, S.AWAITING_DECISION)
    await harness.approve(handle, caseworker(1), 400_000)
    result = await harness.reject(handle, caseworker(2))
    assert result.status == S.REJECTED
    assert (await handle.result()).status == S.REJECTED
    assert "cannot" in await harness.refused(
        handle, GrantRequestWorkflow.decide, _approval(caseworker(3), 400_000)
    )
    assert await harness.reservations(handle.id) == []
    kinds = {n.kind for n in await harness.notifications(handle.id)}
    assert "request_rejected" in kinds


async def test_information_loop(harness: Harness):
    handle = await harness.submit()
    await harness.until(handle, S.AWAITING_DECISION)
    assert (await harness.ask(handle, caseworker())).status == S.INFORMATION_REQUESTED
    assert "cannot approve" in await harness.refused(handle, GrantRequestWorkflow.decide, _approval(caseworker(), 150_000))
    assert (await harness.answer(handle)).status == S.AWAITING_DECISION
    assert (await harness.ask(handle, caseworker(2), "And the court date?")).status == S.INFORMATION_REQUESTED
    assert (await harness.answer(handle, answer="12 December.")).status == S.AWAITING_DECISION
    assert (await harness.approve(handle, caseworker(), 150_000)).status == S.APPROVED
    messages = [e.action for e in await harness.audit(handle.id) if "information" in e.action]
    assert messages == ["request_information", "provide_information"] * 2


async def test_unanswered_information_request_expires(harness: Harness):
    handle = await harness.submit()
    await harness.until(handle, S.AWAITING_DECISION)
    await harness.ask(handle, caseworker())
    await harness.env.sleep(timedelta(days=15))
    state = await harness.until(handle, S.EXPIRED)
    assert state.timeline[-1].action == "information_deadline_passed"


async def test_escalation_then_expiry(harness: Harness):
    handle = await harness.submit(urgency="high")  # 72 h deadline, escalation at 36 h, then expiry
    await harness.until(handle, S.AWAITING_DECISION)
    await harness.env.sleep(timedelta(hours=37))
    state = await harness.until(handle, lambda s: s.escalated)
    assert state.status == S.AWAITING_DECISION
    record = await harness.record(handle.id)
    kinds = [(n.kind, n.audience) for n in await harness.notifications(handle.id)]
    assert ("decision_escalated", "director") in kinds and ("decision_escalated", "caseworker") in kinds

    await harness.env.sleep(timedelta(hours=36))
    state = await harness.until(handle, S.EXPIRED)
    assert [e.action for e in state.timeline][-2:] == ["decision_escalated", "decision_deadline_passed"]
    record = await harness.until_recorded(handle.id, S.EXPIRED)
    assert record.escalated and record.decision_due_at is None
    assert ("request_expired", "org:ngo-1") in [(n.kind, n.audience) for n in await harness.notifications(handle.id)]


async def test_critical_request_keeps_waiting_past_its_deadline(harness: Harness):
    handle = await harness.submit(urgency="critical")  # policy: keep_waiting after 24 h
    await harness.until(handle, S.AWAITING_DECISION)
    await harness.env.sleep(timedelta(hours=25))
    state = await harness.until(handle, lambda s: s.timeline[-1].action == "decision_overdue")
    assert state.status == S.AWAITING_DECISION
    assert (await harness.approve(handle, caseworker(), 150_000)).status == S.APPROVED


async def test_screening_hit_holds_the_request_for_a_caseworker(harness: Harness):
    payee = {"name": "NORTHWIND SECURITY SERVICES LTD", "country": "KE"}
    held = await harness.submit(payee=payee)
    state = await harness.until(held, S.SCREENING_HOLD)
    assert state.screening.matched_entries == ["DP-0001"]
    assert "cannot approve" in await harness.refused(held, GrantRequestWorkflow.decide, _approval(caseworker(), 150_000))
    assert (await harness.clear(held, caseworker())).status == S.RISK_ASSESSMENT
    await harness.until(held, S.AWAITING_DECISION)

    rejected = await harness.submit(payee=payee)
    await harness.until(rejected, S.SCREENING_HOLD)
    assert (await harness.reject(rejected, caseworker(), "Payee is a denied party.")).status == S.REJECTED
    assert (await harness.record(rejected.id)).screening_hit is True


async def test_payment_failure_releases_the_budget_and_finance_can_retry(harness: Harness):
    handle = await harness.submit()
    await harness.until(handle, S.AWAITING_DECISION)
    await harness.approve(handle, caseworker(), 150_000)
    await harness.until(handle, S.PAYMENT_PENDING)

    assert (await harness.payment_failed(handle)).status == S.PAYMENT_FAILED
    await harness.until(handle, lambda s: s.timeline[-1].action == "budget_released")
    [reservation] = await harness.reservations(handle.id)
    assert (reservation.status, reservation.released_base_minor) == ("released", 150_000)
    [payment] = await harness.payments(handle.id)
    assert payment.status == "failed"

    await harness.retry(handle)
    await harness.until(handle, S.PAYMENT_PENDING)
    first, second = await harness.reservations(handle.id)
    assert (first.status, second.status, second.amount_base_minor) == ("released", "held", 150_000)
    [payment] = await harness.payments(handle.id)
    assert (payment.status, payment.attempts) == ("pending", 2)
    await harness.pay(handle, 150_000)
    await harness.until(handle, S.FOLLOW_UP)
    [payment] = await harness.payments(handle.id)
    assert payment.status == "paid"


async def test_payment_failure_never_retried_expires_with_nothing_held(harness: Harness):
    handle = await harness.submit()
    await harness.until(handle, S.AWAITING_DECISION)
    await harness.approve(handle, caseworker(), 150_000)
    await harness.until(handle, S.PAYMENT_PENDING)
    await harness.payment_failed(handle)
    await harness.until(handle, lambda s: s.timeline[-1].action == "budget_released")
    await harness.env.sleep(timedelta(days=31))
    await harness.until(handle, S.EXPIRED)
    assert [r.status for r in await harness.reservations(handle.id)] == ["released"]


async def test_follow_up_reminders_then_overdue(harness: Harness):
    handle = await harness.submit()
    await harness.until(handle, S.AWAITING_DECISION)
    await harness.approve(handle, caseworker(), 150_000)
    await harness.until(handle, S.PAYMENT_PENDING)
    await harness.pay(handle, 150_000)
    state = await harness.until(handle, lambda s: s.report_due_at is not None)
    [paid] = [e for e in state.timeline if e.action == "record_payment"]
    assert state.report_due_at - paid.at == timedelta(days=60)

    await harness.env.sleep(timedelta(days=47))  # first reminder 14 days before the due date
    await harness.until(handle, lambda s: [e.action for e in s.timeline].count("report_reminder") == 1)
    await harness.env.sleep(timedelta(days=11))  # second reminder 3 days before
    await harness.until(handle, lambda s: [e.action for e in s.timeline].count("report_reminder") == 2)
    await harness.env.sleep(timedelta(days=3))
    state = await harness.until(handle, lambda s: s.follow_up_overdue)
    assert state.status == S.FOLLOW_UP
    assert (await harness.until_recorded(handle.id, S.FOLLOW_UP)).follow_up_overdue
    kinds = [(n.kind, n.audience) for n in await harness.notifications(handle.id)]
    assert kinds.count(("report_reminder", "org:ngo-1")) == 2 and ("report_overdue", "caseworker") in kinds

    await harness.report(handle)
    assert (await harness.accept(handle)).status == S.CLOSED


async def test_report_before_reminders_sends_none(harness: Harness):
    handle = await harness.submit()
    await harness.until(handle, S.AWAITING_DECISION)
    await harness.approve(handle, caseworker(), 150_000)
    await harness.until(handle, S.PAYMENT_PENDING)
    assert "cannot submit report" in await harness.refused(handle, GrantRequestWorkflow.submit_report, _report())
    await harness.pay(handle, 150_000)
    await harness.until(handle, lambda s: s.report_due_at is not None)
    await harness.report(handle)
    await harness.env.sleep(timedelta(days=61))
    state = await harness.state(handle)
    assert "report_reminder" not in [e.action for e in state.timeline] and not state.follow_up_overdue
    assert "already been submitted" in await harness.refused(handle, GrantRequestWorkflow.submit_report, _report())
    await harness.accept(handle)
    assert (await handle.result()).status == S.CLOSED


async def test_three_monthly_housing_tranches_each_after_a_check_in(harness: Harness):
    handle = await harness.submit(
        category="safe_housing", amount={"minor_units": 300_000, "currency": "EUR"}, tranches=3
    )
    await harness.until(handle, S.AWAITING_DECISION)
    await harness.approve(handle, caseworker(1), 300_000)
    await harness.approve(handle, caseworker(2), 300_000)
    state = await harness.until(handle, S.PAYMENT_PENDING)
    assert [t.amount.minor_units for t in state.tranches] == [100_000, 100_000, 100_000]
    await harness.pay(handle, 100_000, reference="RENT-1")

    for number in (2, 3):
        state = await harness.until(handle, lambda s, n=number: s.status == S.FOLLOW_UP and s.current_tranche == n)
        assert "no check-in is due" in await harness.refused(handle, GrantRequestWorkflow.check_in, _check_in())
        await harness.env.sleep(timedelta(days=30))
        await harness.until(handle, lambda s: s.timeline[-1].action == "check_in_due")
        await harness.check_in(handle)
        await harness.until(handle, S.PAYMENT_PENDING)
        await harness.pay(handle, 100_000, reference=f"RENT-{number}")

    state = await harness.until(handle, lambda s: s.report_due_at is not None)
    assert [t.status for t in state.tranches] == ["paid"] * 3
    payments = await harness.payments(handle.id)
    assert [(p.tranche, p.status, p.reference) for p in payments] == [(n, "paid", f"RENT-{n}") for n in (1, 2, 3)]
    [reservation] = await harness.reservations(handle.id)
    assert (reservation.status, reservation.released_base_minor) == ("settled", 0)
    await harness.report(handle)
    assert (await harness.accept(handle)).status == S.CLOSED


async def test_housing_stops_when_no_longer_needed_or_check_in_missed(harness: Harness):
    handle = await harness.submit(category="safe_housing", amount={"minor_units": 240_000, "currency": "EUR"}, tranches=3)
    await harness.until(handle, S.AWAITING_DECISION)
    await harness.approve(handle, caseworker(), 240_000)
    await harness.until(handle, S.PAYMENT_PENDING)
    await harness.pay(handle, 80_000)
    await harness.env.sleep(timedelta(days=30))
    await harness.until(handle, lambda s: s.timeline[-1].action == "check_in_due")
    await harness.check_in(handle, still_needed=False)
    state = await harness.until(handle, lambda s: s.report_due_at is not None)
    assert [t.status for t in state.tranches] == ["paid", "cancelled", "cancelled"]
    [reservation] = await harness.reservations(handle.id)
    assert (reservation.status, reservation.released_base_minor) == ("settled", 160_000)

    missed = await harness.submit(category="safe_housing", amount={"minor_units": 200_000, "currency": "EUR"}, tranches=2)
    await harness.until(missed, S.AWAITING_DECISION)
    await harness.approve(missed, caseworker(), 200_000)
    await harness.until(missed, S.PAYMENT_PENDING)
    await harness.pay(missed, 100_000)
    await harness.env.sleep(timedelta(days=30))
    await harness.until(missed, lambda s: s.timeline[-1].action == "check_in_due")
    await harness.env.sleep(timedelta(days=11))
    state = await harness.until(missed, lambda s: s.report_due_at is not None)
    actions = [e.action for e in state.timeline]
    assert actions.index("check_in_reminder") < actions.index("check_in_missed")
    assert [t.status for t in state.tranches] == ["paid", "cancelled"]


async def test_withdrawal_before_payment_releases_the_reservation(harness: Harness):
    handle = await harness.submit()
    await harness.until(handle, S.AWAITING_DECISION)
    await harness.approve(handle, caseworker(), 150_000)
    await harness.until(handle, S.PAYMENT_PENDING)
    assert (await harness.withdraw(handle)).status == S.WITHDRAWN
    assert (await handle.result()).status == S.WITHDRAWN
    [reservation] = await harness.reservations(handle.id)
    assert reservation.status == "released"
    [payment] = await harness.payments(handle.id)
    assert payment.status == "cancelled"

    paid = await harness.submit()
    await harness.until(paid, S.AWAITING_DECISION)
    await harness.approve(paid, caseworker(), 150_000)
    await harness.until(paid, S.PAYMENT_PENDING)
    await harness.pay(paid, 150_000)
    await harness.until(paid, S.FOLLOW_UP)
    assert "cannot withdraw" in await harness.refused(paid, GrantRequestWorkflow.withdraw, _withdrawal())


async def test_concurrent_approvals_record_exactly_what_the_matrix_asks(harness: Harness):
    import asyncio

    handle = await harness.submit(amount={"minor_units": 400_000, "currency": "EUR"})
    await harness.until(handle, S.AWAITING_DECISION)

    async def attempt(n: int):
        try:
            return await harness.approve(handle, caseworker(n), 400_000)
        except Exception as error:  # refused: the request was already approved
            return error

    outcomes = await asyncio.gather(*(attempt(n) for n in range(1, 7)))
    accepted = [o for o in outcomes if not isinstance(o, Exception)]
    state = await harness.until(handle, S.PAYMENT_PENDING)
    assert len(state.approvals) == 2 and len(accepted) == 2
    assert len(await _decisions(harness, handle.id)) == 2
    assert len(await harness.reservations(handle.id)) == 1


# --- small builders --------------------------------------------------------------------------


def _approval(actor, minor_units, currency="EUR"):
    from haven.grant_request import DecisionCommand
    from haven.money import Money

    return DecisionCommand(actor=actor, kind="approve", amount=Money(minor_units=minor_units, currency=currency))


def _manual_payment(minor_units):
    from datetime import date

    from haven.grant_request import ManualPaymentRecord
    from haven.money import Money

    return ManualPaymentRecord(actor=FINANCE, amount=Money(minor_units=minor_units, currency="EUR"), reference="R", paid_on=date(2026, 11, 24))


def _check_in():
    from haven.grant_request import CheckInRecord

    return CheckInRecord(actor=intermediary(), still_needed=True)


def _report():
    from haven.grant_request import FollowUpReport

    return FollowUpReport(actor=intermediary(), text="Report.")


def _withdrawal():
    from haven.grant_request import Withdrawal

    return Withdrawal(actor=intermediary(), reason="No longer needed.")


async def _decisions(harness: Harness, request_id: str):
    from sqlalchemy import select

    from haven.db.models import Decision

    async with harness.db.sessions() as session:
        return list(await session.scalars(select(Decision).where(Decision.request_id == request_id).order_by(Decision.seq)))
