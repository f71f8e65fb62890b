"""One durable workflow per grant request, from intake to closed. Deterministic orchestration only:
every side effect is an activity, every time is workflow time, every rule comes from the policy
pinned at intake."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import RetryState
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutType
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from haven import search_attributes
    from activities.budget import BudgetReservations
    from activities.payments import Disbursements
    from activities.records import CaseRecords
    from activities.risk import RiskAssessor
    from activities.screening import PayeeScreening
    from haven.case_events import (
        NO_FUNDS,
        OVER_CAP,
        PAYMENT_REFUSED,
        MoneyCaps,
        DisbursementStarted,
        CaseEvent,
        DecisionEntry,
        MessageEntry,
        NotificationRequest,
        PaymentInstruction,
        PaymentUpdate,
        ReportEntry,
        TransferNotice,
        RequestProjection,
        ReservationRelease,
        ReservationRequest,
    )
    from haven.grant_request import (
        SYSTEM,
        ActionResult,
        Actor,
        Approval,
        CheckInRecord,
        DecisionCommand,
        FollowUpReport,
        GrantRequestStart,
        GrantRequestState,
        InformationResponse,
        ManualPaymentRecord,
        PaymentFailureRecord,
        PaymentRail,
        PaymentRetry,
        ReportAcceptance,
        Role,
        ScreeningClearance,
        TimelineEntry,
        Tranche,
        Withdrawal,
    )
    from haven.lifecycle import TERMINAL, Action, Status, action_allowed, check_transition
    from haven.money import Money
    from policies import PolicyVersion
    from policies import rules

SEARCH_ATTRIBUTES_PATCH = "status-search-attribute"
ACTIVITY_TIMEOUT = timedelta(seconds=30)
LOCAL_ACTIVITY_TIMEOUT = timedelta(seconds=10)
RAIL_HEARTBEAT_TIMEOUT = timedelta(seconds=5)  # a worker that died mid-payment, noticed this soon
ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=30))

def _refusal(error: ActivityError) -> str | None:
    """The reason when a rail refused a payment for good; None for anything else."""
    cause = error.cause
    if isinstance(cause, ApplicationError) and cause.type == PAYMENT_REFUSED:
        return cause.message
    return None


def _no_funds(error: ActivityError | ApplicationError) -> str | None:
    """Why the budget could not take a reservation; None for any other failure. (A local activity's
    failure arrives as the error itself, a remote one's wrapped in an ActivityError.)"""
    cause = error.cause if isinstance(error, ActivityError) else error
    if isinstance(cause, ApplicationError) and cause.type == NO_FUNDS:
        return cause.message
    return None


def _over_cap(error: ActivityError | ApplicationError) -> tuple[str, int] | None:
    """Why a reservation does not fit under the caps, and how much still fits; None otherwise."""
    cause = error.cause if isinstance(error, ActivityError) else error
    if isinstance(cause, ApplicationError) and cause.type == OVER_CAP:
        return cause.message, int(cause.details[0])
    return None


def _unanswered(error: ActivityError, minutes: int) -> str | None:
    """The reason when the rail went unanswered past the policy's patience; None otherwise."""
    timed_out = isinstance(error.cause, ActivityTimeout) and error.cause.type == TimeoutType.SCHEDULE_TO_CLOSE
    # Retries that run out of time report the last attempt's error with the retry state "timeout".
    if timed_out or error.retry_state == RetryState.TIMEOUT:
        return (
            f"the payment rail did not answer for {minutes} minutes; whether money moved is not known yet "
            "(a retry first looks for this tranche's transfer, and reconciliation reports it)"
        )
    return None


def _same_person(person: str | None, subject: str, other_person: str | None, other_subject: str) -> bool:
    """People are compared by who they are (Actor.person), which the API takes from the roster;
    by subject only where one side was recorded before `person` existed."""
    if person is not None and other_person is not None:
        return person == other_person
    return subject == other_subject


def _notify(kind: str, *audiences: str) -> list[NotificationRequest]:
    return [NotificationRequest(kind=kind, audience=a) for a in audiences]


class Refused(ApplicationError):
    """An action the rules do not allow now. The API answers it with 409 and this message."""

    def __init__(self, message: str):
        super().__init__(message, type="ActionRefused", non_retryable=True)


FIELD_REFUSED = "FieldRefused"


class FieldRefused(ApplicationError):
    """A value the action cannot take (its first detail names the field). The API answers it with
    422 and a field error."""

    def __init__(self, field: str, message: str):
        super().__init__(message, field, type=FIELD_REFUSED, non_retryable=True)


@workflow.defn
class GrantRequestWorkflow:
    @workflow.init
    def __init__(self, start: GrantRequestStart) -> None:
        self._start = start
        self._org = f"org:{start.organisation_id}"
        self._state = GrantRequestState(
            request_id=start.request_id,
            status=Status.RECEIVED,
            policy_hash=start.policy_hash,
            requested=start.amount,
            rail=start.rail,
        )
        self._pinned: PolicyVersion | None = None
        self._seq = 0
        self._reservation_number = 0
        self._reserved_base = 0
        self._payment_attempts: dict[int, int] = {}
        self._ended_attempts: dict[int, int] = {}  # per tranche: each ended attempt moves to a fresh key
        self._rail = start.rail  # finance may switch it when retrying a failed payment
        self._confirmed_transfers: dict[int, str] = {}  # tranche -> transfer id, from Stripe's webhooks
        self._retry_requested = False
        self._funds_changed = False  # finance changed an allocation: try the reservation again now
        self._check_in_open: int | None = None
        self._check_in: CheckInRecord | None = None
        self._awaiting_report = False
        self._information_asked_at: datetime | None = None
        self._last_paid_at: datetime | None = None
        self._unanswered_tranches: set[int] = set()  # an attempt went unanswered: money may have moved
        # What still fits under the caps when a reservation was refused for them (base minor units):
        # no approval may then be for more.
        self._cap_room_base: int | None = None

    # --- the lifecycle ------------------------------------------------------------------------

    @workflow.run
    async def run(self, start: GrantRequestStart) -> GrantRequestState:
        self._pinned = await self._activity(CaseRecords.load_pinned_policy, start.policy_hash)
        if await self._screening() and await self._risk_assessment():
            while True:
                await self._decision()
                if self._state.status != Status.APPROVED:
                    break
                await self._payment_and_follow_up()
                if self._state.status != Status.AWAITING_DECISION:
                    break  # else the caps refused the money: decided again, for what still fits
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._state

    async def _screening(self) -> bool:
        await self._record("screening_started", to=Status.SCREENING)
        result = await self._activity(PayeeScreening.screen_payee, self._start.request_id)
        self._state.screening = result
        facts = {"hit": result.hit, "matched_entries": result.matched_entries, "list_version": result.list_version}
        if not result.hit:
            await self._record(
                "screened", to=Status.RISK_ASSESSMENT, facts=facts, projection=RequestProjection(screening_hit=False)
            )
            return True
        # A hit never pays automatically: a caseworker clears it or rejects the request.
        await self._record(
            "screening_hit",
            to=Status.SCREENING_HOLD,
            facts=facts,
            projection=RequestProjection(screening_hit=True),
            notify=_notify("screening_hit", "caseworker"),
        )
        await workflow.wait_condition(lambda: self._state.status != Status.SCREENING_HOLD)
        return self._state.status == Status.RISK_ASSESSMENT

    async def _risk_assessment(self) -> bool:
        risk = await self._activity(RiskAssessor.assess_risk, self._start.request_id, self._pinned)
        self._state.risk = risk
        self._refresh_requirement(self._start.amount)
        await self._record(
            "risk_assessed",
            to=Status.AWAITING_DECISION,
            facts={"score": risk.score, "tier": risk.tier, "factors": risk.factors},
            projection=RequestProjection(
                risk_score=risk.score, risk_tier=risk.tier, **self._open_decision_window().model_dump(exclude_unset=True)
            ),
            notify=_notify("decision_needed", "caseworker"),
        )
        return True

    async def _decision(self) -> None:
        while self._state.status in (Status.AWAITING_DECISION, Status.INFORMATION_REQUESTED):
            if self._state.status == Status.AWAITING_DECISION:
                await self._await_decision()
            else:
                await self._await_information()

    async def _await_decision(self) -> None:
        timeline = rules.decision_timeline(self._policy, self._start.urgency)
        due = self._state.decision_due_at
        assert due is not None
        deciding = lambda: self._state.status != Status.AWAITING_DECISION  # noqa: E731
        if not self._state.escalated:
            escalate_at = due - timedelta(hours=timeline.deadline_hours) + rules.escalation_delay(timeline)
            if await self._wait_until(deciding, escalate_at):
                return
            self._state.escalated = True
            await self._record(
                "decision_escalated",
                facts={"decision_due_at": due.isoformat()},
                projection=RequestProjection(escalated=True),
                notify=_notify("decision_escalated", "caseworker", "director"),
            )
        if await self._wait_until(deciding, due):
            return
        if timeline.on_deadline == "expire":
            await self._record(
                "decision_deadline_passed",
                to=Status.EXPIRED,
                projection=RequestProjection(decision_due_at=None),
                notify=_notify("request_expired", self._org, "caseworker"),
            )
            return
        await self._record("decision_overdue", notify=_notify("decision_overdue", "director", "caseworker"))
        await workflow.wait_condition(deciding)

    async def _await_information(self) -> None:
        assert self._information_asked_at is not None
        deadline = self._information_asked_at + timedelta(days=self._policy.information_response_days)
        if await self._wait_until(lambda: self._state.status != Status.INFORMATION_REQUESTED, deadline):
            return
        await self._record(
            "information_deadline_passed",
            to=Status.EXPIRED,
            notify=_notify("request_expired", self._org, "caseworker"),
        )

    async def _payment_and_follow_up(self) -> None:
        granted = self._state.granted
        assert granted is not None
        self._state.tranches = [
            Tranche(number=n + 1, amount=amount)
            for n, amount in enumerate(rules.split_into_tranches(granted, self._start.tranches))
        ]
        for tranche in self._state.tranches:
            if tranche.number > 1:
                self._state.current_tranche = tranche.number
                await self._record(
                    "follow_up_started",
                    to=Status.FOLLOW_UP,
                    facts={"next_tranche": tranche.number},
                    projection=RequestProjection(current_tranche=tranche.number),
                )
                assert self._last_paid_at is not None
                if not await self._check_in_before(tranche, self._last_paid_at):
                    break
            if not await self._pay(tranche):
                break
        if self._state.status in (Status.WITHDRAWN, Status.EXPIRED, Status.REJECTED, Status.AWAITING_DECISION):
            return
        await self._finish_tranches()
        assert self._last_paid_at is not None
        await self._follow_up_report(self._last_paid_at)

    async def _pay(self, tranche: Tranche) -> bool:
        """Pays one tranche; returns False when the request ended or payment was given up."""
        while True:
            if self._reserved_base == 0 and not await self._reserve(check_caps=not self._money_may_have_moved(tranche)):
                return False
            attempt = self._payment_attempts.get(tranche.number, 0) + 1
            self._payment_attempts[tranche.number] = attempt
            self._state.current_tranche = tranche.number
            confirmed = self._confirmed_transfers.get(tranche.number)
            if confirmed is not None:
                # Stripe told us the transfer exists (its webhook) while the payment stood failed.
                self._retry_requested = False
                await self._payment_completed(tranche, attempt, confirmed)
            else:
                await self._disburse(tranche, attempt)
            if self._state.status == Status.PAID:
                return True
            await self._release(reason=str(self._state.status))
            if self._state.status == Status.WITHDRAWN:
                return False
            # Payment failed: the budget is released; finance may retry (it is reserved again).
            expiry = workflow.now() + timedelta(days=self._policy.payment_failed_expiry_days)
            if not await self._wait_until(
                lambda: self._retry_requested
                or self._state.status != Status.PAYMENT_FAILED
                or tranche.number in self._confirmed_transfers,
                expiry,
            ):
                anything_paid = any(t.status == "paid" for t in self._state.tranches)
                tranche.status = "failed"
                if anything_paid:
                    return False  # the rest is given up; the follow-up covers what was paid
                await self._record(
                    "payment_abandoned",
                    to=Status.EXPIRED,
                    notify=_notify("request_expired", self._org, "finance", "caseworker"),
                )
                return False
            if self._state.status != Status.PAYMENT_FAILED:
                return False

    async def _disburse(self, tranche: Tranche, attempt: int) -> None:
        """Runs the rail once (Temporal retries transient errors) and records what it answered."""
        # The rail is started before the status says payment_pending: a withdrawal is only
        # accepted once the payment exists to be cancelled, never while money is moving.
        # `_retry_requested` stays set while the rail runs: it is what refuses a withdrawal (or a
        # manual record) while money may be moving.
        instruction = PaymentInstruction(
            request_id=self._start.request_id,
            tranche=tranche.number,
            attempt=attempt,
            ended_attempts=self._ended_attempts.get(tranche.number, 0),
            rail=self._rail,
            amount=tranche.amount,
            amount_base_minor=rules.to_base(self._policy, tranche.amount),
        )
        rail = workflow.start_activity_method(
            Disbursements.start_disbursement,
            instruction,
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            schedule_to_close_timeout=timedelta(minutes=self._policy.payment_unanswered_minutes),
            heartbeat_timeout=RAIL_HEARTBEAT_TIMEOUT,
            retry_policy=ACTIVITY_RETRY,
        )
        # A webhook saying the transfer exists settles the payment even while the rail's own
        # answer is lost or still being retried.
        await workflow.wait_condition(lambda: rail.done() or tranche.number in self._confirmed_transfers)
        self._retry_requested = False
        if not rail.done():
            rail.cancel()
            await self._payment_completed(tranche, attempt, self._confirmed_transfers[tranche.number])
            return
        try:
            started: DisbursementStarted = await rail
        except ActivityError as error:
            unanswered = _unanswered(error, self._policy.payment_unanswered_minutes)
            reason = _refusal(error) or unanswered
            if reason is None:
                raise
            if reason == unanswered:
                self._unanswered_tranches.add(tranche.number)
            self._ended_attempts[tranche.number] = instruction.ended_attempts + 1
            await self._payment_refused(tranche, attempt, reason)
            return
        if started.outcome == "completed":
            # Straight to paid, in this workflow task: no action can slip in between.
            await self._payment_completed(tranche, attempt, started.reference or "")
            return
        tranche.status = "payment_pending"
        await self._record(
            "payment_started",
            to=Status.PAYMENT_PENDING,
            facts={"tranche": tranche.number, "attempt": attempt, "rail": self._rail},
            projection=RequestProjection(current_tranche=tranche.number),
            notify=_notify("payment_due", "finance"),
        )
        await workflow.wait_condition(lambda: self._state.status != Status.PAYMENT_PENDING)

    async def _payment_completed(self, tranche: Tranche, attempt: int, reference: str) -> None:
        """The rail paid (a Stripe transfer exists): no one has to confirm it."""
        tranche.status = "paid"
        tranche.reference = reference
        tranche.paid_on = workflow.now().date()
        self._last_paid_at = workflow.now()
        await self._record(
            "payment_completed",
            to=Status.PAID,
            facts={"tranche": tranche.number, "attempt": attempt, "rail": self._rail, "reference": reference},
            payment=PaymentUpdate(tranche=tranche.number, status="paid", reference=reference, paid_on=tranche.paid_on),
            projection=RequestProjection(current_tranche=tranche.number),
            notify=_notify("payment_made", self._org),
        )

    async def _payment_refused(self, tranche: Tranche, attempt: int, reason: str) -> None:
        """The rail refused for good (no such account, no balance…) or never answered: finance
        must act."""
        tranche.status = "failed"
        await self._record(
            "payment_refused",
            to=Status.PAYMENT_FAILED if self._state.status != Status.PAYMENT_FAILED else None,
            facts={"tranche": tranche.number, "attempt": attempt, "rail": self._rail},
            message=MessageEntry(kind="payment_failure", body={"reason": reason}, tranche=tranche.number),
            payment=PaymentUpdate(tranche=tranche.number, status="failed", failure_reason=reason),
            projection=RequestProjection(current_tranche=tranche.number),
            notify=_notify("payment_failed", "finance", "caseworker"),
        )

    async def _check_in_before(self, tranche: Tranche, last_paid_at: datetime) -> bool:
        """Safe housing: each further tranche is released only after the intermediary checks in."""
        housing = self._policy.housing
        due = last_paid_at + timedelta(days=housing.interval_days)
        tranche.check_in_due_at = due
        await workflow.sleep(due - workflow.now())
        self._check_in = None
        self._check_in_open = tranche.number
        await self._record(
            "check_in_due",
            facts={"tranche": tranche.number},
            projection=RequestProjection(current_tranche=tranche.number),
            notify=_notify("check_in_due", self._org),
        )
        checked_in = lambda: self._check_in is not None  # noqa: E731
        if not await self._wait_until(checked_in, due + timedelta(days=housing.check_in_reminder_after_days)):
            await self._record("check_in_reminder", facts={"tranche": tranche.number}, notify=_notify("check_in_reminder", self._org))
            if not await self._wait_until(checked_in, due + timedelta(days=housing.check_in_grace_days)):
                self._check_in_open = None
                await self._record(
                    "check_in_missed",
                    facts={"tranche": tranche.number},
                    notify=_notify("check_in_missed", self._org, "caseworker"),
                )
                return False
        self._check_in_open = None
        assert self._check_in is not None
        return self._check_in.still_needed

    async def _finish_tranches(self) -> None:
        for tranche in self._state.tranches:
            if tranche.status in ("scheduled", "failed"):
                tranche.status = "cancelled"
        await self._release(reason="tranches_finished")

    async def _follow_up_report(self, last_paid_at: datetime) -> None:
        due = last_paid_at + timedelta(days=self._policy.follow_up.report_due_days)
        self._state.report_due_at = due
        self._awaiting_report = True
        await self._record(
            "report_requested",
            to=Status.FOLLOW_UP if self._state.status != Status.FOLLOW_UP else None,
            facts={"report_due_at": due.isoformat()},
            projection=RequestProjection(report_due_at=due, current_tranche=None),
            notify=_notify("report_requested", self._org),
        )
        submitted = lambda: self._state.report_submitted or self._state.status == Status.CLOSED  # noqa: E731
        for offset in rules.report_reminders(self._policy):
            if await self._wait_until(submitted, last_paid_at + offset):
                break
            await self._record("report_reminder", notify=_notify("report_reminder", self._org))
        if not await self._wait_until(submitted, due):
            self._state.follow_up_overdue = True
            await self._record(
                "report_overdue",
                projection=RequestProjection(follow_up_overdue=True),
                notify=_notify("report_overdue", self._org, "caseworker"),
            )
        await workflow.wait_condition(lambda: self._state.status == Status.CLOSED)

    # --- caseworker decisions -------------------------------------------------------------------

    @workflow.update
    async def decide(self, command: DecisionCommand) -> ActionResult:
        self._check_decision(command)
        actor = command.actor
        if command.kind == "reject":
            status = await self._record(
                Action.REJECT,
                actor,
                to=Status.REJECTED,
                decision=DecisionEntry(kind="reject", note=command.note),
                projection=RequestProjection(decision_due_at=None),
                notify=_notify("request_rejected", self._org),
            )
            return self._result(status, "rejected")
        if command.kind == "request_information":
            self._information_asked_at = workflow.now()
            status = await self._record(
                Action.REQUEST_INFORMATION,
                actor,
                to=Status.INFORMATION_REQUESTED,
                decision=DecisionEntry(kind="request_information", note=command.note),
                message=MessageEntry(kind="information_request", body={"question": command.note}),
                projection=RequestProjection(decision_due_at=None),
                notify=_notify("information_requested", self._org),
            )
            return self._result(status, "information requested from the intermediary")
        assert command.amount is not None
        self._state.approvals.append(
            Approval(subject=actor.subject, roles=actor.roles, person=actor.person, amount=command.amount, at=workflow.now())
        )
        granted = min((a.amount for a in self._state.approvals), key=lambda m: m.minor_units)
        self._state.granted = granted
        self._refresh_requirement(granted)
        complete = self._approvals_complete()
        facts = {
            "amount_minor": command.amount.minor_units,
            "currency": command.amount.currency,
            "approvals": len(self._state.approvals),
            "approvals_required": self._state.approvals_required,
            "director_required": self._state.director_required,
        }
        decision = DecisionEntry(kind="approve", amount=command.amount, note=command.note)
        if not complete:
            status = await self._record(
                Action.APPROVE, actor, facts=facts, decision=decision, notify=_notify("approval_needed", "caseworker", "director")
            )
            return self._result(status, f"approval recorded; {self._missing_approvals()}")
        status = await self._record(
            Action.APPROVE,
            actor,
            to=Status.APPROVED,
            facts=facts,
            decision=decision,
            projection=RequestProjection(
                decision_due_at=None,
                granted_minor=granted.minor_units,
                granted_base_minor=rules.to_base(self._policy, granted),
            ),
            notify=_notify("request_approved", self._org),
        )
        return self._result(status, "approved")

    @decide.validator
    def _validate_decide(self, command: DecisionCommand) -> None:
        self._check_decision(command)

    def _check_decision(self, command: DecisionCommand) -> None:
        self._check_allowed(command.action)
        actor = command.actor
        if not (actor.has(Role.CASEWORKER) or actor.has(Role.DIRECTOR)):
            raise Refused("only caseworkers and directors decide on requests")
        if actor.organisation is not None and actor.organisation == self._start.organisation_id:
            raise Refused("nobody decides on a request from their own organisation")
        self._check_not_the_submitter(actor, "decides on")
        if command.kind == "reject" and any(t.status == "paid" for t in self._state.tranches):
            raise Refused("money has already been paid; a later tranche is stopped by checking in as not needed")
        if command.kind in ("reject", "request_information") and not command.note:
            raise Refused(f"{command.kind} needs a note saying why or what is needed")
        if command.kind != "approve":
            return
        if command.amount is None:
            raise Refused("an approval needs an amount")
        if any(_same_person(a.person, a.subject, actor.person, actor.subject) for a in self._state.approvals):
            raise Refused(f"{actor.subject} has already approved this request; four eyes need another person")
        if command.amount.currency != self._start.amount.currency:
            raise Refused(f"the approval must be in the request's currency, {self._start.amount.currency}")
        if not 0 < command.amount.minor_units <= self._start.amount.minor_units:
            raise Refused("an approval must be more than zero and no more than the amount requested")
        cap = rules.approvable_cap_base(
            self._policy, self._start.category, self._state.risk.prior_granted_base_12_months if self._state.risk else 0
        )
        if self._cap_room_base is not None:
            cap = min(cap, self._cap_room_base)
        # Measured as the reservation will measure it: tranche by tranche.
        amount_base = rules.tranches_to_base(self._policy, command.amount, self._start.tranches)
        if amount_base > cap:
            raise Refused(
                f"{amount_base} {self._policy.base_currency} minor units is above what may be granted "
                f"({cap}: the category cap, less this defender's grants in the last 12 months)"
            )

    # --- other people's actions ----------------------------------------------------------------

    @workflow.update
    async def clear_screening(self, clearance: ScreeningClearance) -> ActionResult:
        self._check_clear_screening(clearance)
        status = await self._record(
            Action.CLEAR_SCREENING,
            clearance.actor,
            to=Status.RISK_ASSESSMENT,
            message=MessageEntry(kind="screening_clearance", body={"note": clearance.note}),
        )
        return self._result(status, "screening cleared; the request goes on to risk assessment")

    @clear_screening.validator
    def _validate_clear_screening(self, clearance: ScreeningClearance) -> None:
        self._check_clear_screening(clearance)
        self._check_not_the_submitter(clearance.actor, "clears a screening hit on")

    def _check_clear_screening(self, clearance: ScreeningClearance) -> None:
        self._check_allowed(Action.CLEAR_SCREENING)
        if not (clearance.actor.has(Role.CASEWORKER) or clearance.actor.has(Role.DIRECTOR)):
            raise Refused("only caseworkers and directors clear a screening hit")
        if clearance.actor.organisation == self._start.organisation_id:
            raise Refused("nobody clears a screening hit on a request from their own organisation")

    @workflow.update
    async def provide_information(self, response: InformationResponse) -> ActionResult:
        self._check_allowed(Action.PROVIDE_INFORMATION)  # re-checked: another action may have come first
        status = await self._record(
            Action.PROVIDE_INFORMATION,
            response.actor,
            to=Status.AWAITING_DECISION,
            message=MessageEntry(kind="information_response", body={"answer": response.answer}),
            projection=self._open_decision_window(),
            notify=_notify("information_provided", "caseworker"),
        )
        return self._result(status, "information received; the request awaits a decision again")

    @provide_information.validator
    def _validate_provide_information(self, response: InformationResponse) -> None:
        self._check_submitting_organisation(response.actor)
        self._check_allowed(Action.PROVIDE_INFORMATION)

    @workflow.update
    async def record_payment(self, payment: ManualPaymentRecord) -> ActionResult:
        tranche = self._check_record_payment(payment)
        tranche.status = "paid"
        tranche.paid_on = payment.paid_on
        tranche.reference = payment.reference
        self._last_paid_at = workflow.now()
        status = await self._record(
            Action.RECORD_PAYMENT,
            payment.actor,
            to=Status.PAID,
            facts={
                "tranche": tranche.number,
                "amount_minor": payment.amount.minor_units,
                "currency": payment.amount.currency,
                "reference": payment.reference,
                "paid_on": payment.paid_on.isoformat(),
            },
            payment=PaymentUpdate(
                tranche=tranche.number, status="paid", reference=payment.reference, paid_on=payment.paid_on
            ),
            notify=_notify("payment_made", self._org),
        )
        return self._result(status, f"tranche {tranche.number} recorded as paid")

    @record_payment.validator
    def _validate_record_payment(self, payment: ManualPaymentRecord) -> None:
        self._check_record_payment(payment)
        self._check_paid_on(payment.paid_on)

    def _check_paid_on(self, paid_on: date) -> None:
        """A bank transfer is dated between the request's approval and today (UTC days). Checked by
        the validator only: validators do not run on replay, so histories recorded before this
        check replay as they ran, and the date cannot change between validation and the handler."""
        today = workflow.now().astimezone(timezone.utc).date()
        if paid_on > today:
            raise FieldRefused("paid_on", f"must not be in the future (today is {today.isoformat()}, UTC)")
        approved_on = max((a.at for a in self._state.approvals), default=None)
        if approved_on is not None and paid_on < approved_on.astimezone(timezone.utc).date():
            day = approved_on.astimezone(timezone.utc).date().isoformat()
            raise FieldRefused("paid_on", f"must not be before the request was approved ({day}, UTC)")

    def _check_record_payment(self, payment: ManualPaymentRecord) -> Tranche:
        self._check_allowed(Action.RECORD_PAYMENT)
        tranche = self._current_tranche()
        if payment.amount != tranche.amount:
            raise Refused(
                f"tranche {tranche.number} is {tranche.amount.minor_units} {tranche.amount.currency} "
                f"minor units; the payment recorded must match it"
            )
        return tranche

    @workflow.update
    async def record_payment_failure(self, failure: PaymentFailureRecord) -> ActionResult:
        self._check_allowed(Action.RECORD_PAYMENT_FAILURE)  # re-checked: another action may have come first
        tranche = self._current_tranche()
        tranche.status = "failed"
        status = await self._record(
            Action.RECORD_PAYMENT_FAILURE,
            failure.actor,
            to=Status.PAYMENT_FAILED,
            facts={"tranche": tranche.number},
            message=MessageEntry(kind="payment_failure", body={"reason": failure.reason}, tranche=tranche.number),
            payment=PaymentUpdate(tranche=tranche.number, status="failed", failure_reason=failure.reason),
            notify=_notify("payment_failed", "finance", "caseworker"),
        )
        return self._result(status, "payment failure recorded; the budget is released until finance retries")

    @record_payment_failure.validator
    def _validate_record_payment_failure(self, failure: PaymentFailureRecord) -> None:
        self._check_allowed(Action.RECORD_PAYMENT_FAILURE)

    @workflow.update
    async def retry_payment(self, retry: PaymentRetry) -> ActionResult:
        self._check_retry_payment()
        self._retry_requested = True
        switched = retry.rail is not None and retry.rail != self._rail
        if retry.rail is not None:
            self._rail = self._state.rail = retry.rail
        status = await self._record(
            Action.RETRY_PAYMENT,
            retry.actor,
            facts={"tranche": self._state.current_tranche, "rail": self._rail},
            projection=RequestProjection(rail=self._rail) if switched else None,
        )
        return self._result(status, f"payment will be retried through the {self._rail} rail")

    @retry_payment.validator
    def _validate_retry_payment(self, retry: PaymentRetry) -> None:
        self._check_retry_payment()

    def _check_retry_payment(self) -> None:
        self._check_allowed(Action.RETRY_PAYMENT)
        if self._retry_requested:
            raise Refused("a retry is already under way")

    @workflow.update
    async def check_in(self, record: CheckInRecord) -> ActionResult:
        self._check_check_in()
        tranche = self._check_in_open
        self._check_in = record
        status = await self._record(
            Action.CHECK_IN,
            record.actor,
            facts={"tranche": tranche, "still_needed": record.still_needed},
            message=MessageEntry(
                kind="check_in", body={"still_needed": record.still_needed, "note": record.note}, tranche=tranche
            ),
        )
        if record.still_needed:
            return self._result(status, f"check-in recorded; tranche {tranche} goes to payment")
        return self._result(status, "check-in recorded; no further tranches will be paid")

    @check_in.validator
    def _validate_check_in(self, record: CheckInRecord) -> None:
        self._check_submitting_organisation(record.actor)
        self._check_check_in()

    def _check_check_in(self) -> None:
        self._check_allowed(Action.CHECK_IN)
        if self._check_in_open is None or self._check_in is not None:
            raise Refused("no check-in is due for this request now")

    @workflow.update
    async def submit_report(self, report: FollowUpReport) -> ActionResult:
        self._check_submit_report()
        self._state.report_submitted = True
        status = await self._record(
            Action.SUBMIT_REPORT,
            report.actor,
            facts={"receipts": len(report.receipts)},
            report=ReportEntry(step="submitted", text=report.text, receipts=report.receipts),
            notify=_notify("report_submitted", "caseworker"),
        )
        return self._result(status, "report received; a caseworker will review it")

    @submit_report.validator
    def _validate_submit_report(self, report: FollowUpReport) -> None:
        self._check_submitting_organisation(report.actor)
        self._check_submit_report()

    def _check_submit_report(self) -> None:
        self._check_allowed(Action.SUBMIT_REPORT)
        if not self._awaiting_report:
            raise Refused("the report is due once every tranche has been paid")
        if self._state.report_submitted:
            raise Refused("a report has already been submitted")

    @workflow.update
    async def accept_report(self, acceptance: ReportAcceptance) -> ActionResult:
        self._check_accept_report(acceptance)
        status = await self._record(
            Action.ACCEPT_REPORT,
            acceptance.actor,
            to=Status.CLOSED,
            report=ReportEntry(step="accepted", note=acceptance.note),
            notify=_notify("request_closed", self._org),
        )
        return self._result(status, "report accepted; the request is closed")

    @accept_report.validator
    def _validate_accept_report(self, acceptance: ReportAcceptance) -> None:
        self._check_accept_report(acceptance)
        self._check_not_the_submitter(acceptance.actor, "accepts the report of")
        if acceptance.actor.organisation is not None and acceptance.actor.organisation == self._start.organisation_id:
            raise Refused("nobody accepts the report of a request from their own organisation")

    def _check_not_the_submitter(self, actor: Actor, doing: str) -> None:
        # For clearance and report acceptance it is checked in the Update's validator only, which
        # replay never runs: histories recorded before those checks replay unchanged.
        if _same_person(actor.person, actor.subject, self._start.submitted_by_person, self._start.submitted_by):
            raise Refused(f"nobody {doing} a request they submitted")

    def _check_accept_report(self, acceptance: ReportAcceptance) -> None:
        self._check_allowed(Action.ACCEPT_REPORT)
        if not self._state.report_submitted:
            raise Refused("there is no report to accept yet")
        if not (acceptance.actor.has(Role.CASEWORKER) or acceptance.actor.has(Role.DIRECTOR)):
            raise Refused("only caseworkers and directors accept reports")

    @workflow.update
    async def withdraw(self, withdrawal: Withdrawal) -> ActionResult:
        self._check_withdraw()
        pending = self._state.current_tranche if self._state.status == Status.PAYMENT_PENDING else None
        if pending is not None:
            self._current_tranche().status = "cancelled"
        status = await self._record(
            Action.WITHDRAW,
            withdrawal.actor,
            to=Status.WITHDRAWN,
            message=MessageEntry(kind="withdrawal", body={"reason": withdrawal.reason}),
            payment=PaymentUpdate(tranche=pending, status="cancelled") if pending is not None else None,
            projection=RequestProjection(decision_due_at=None),
            notify=_notify("request_withdrawn", "caseworker", *(["finance"] if pending else [])),
        )
        return self._result(status, "request withdrawn")

    @withdraw.validator
    def _validate_withdraw(self, withdrawal: Withdrawal) -> None:
        self._check_submitting_organisation(withdrawal.actor)
        self._check_withdraw()

    def _check_submitting_organisation(self, actor: Actor) -> None:
        # The API already confines intermediaries to their organisation; the workflow, which
        # owns the case, refuses on its own too.
        if not actor.has(Role.INTERMEDIARY) or actor.organisation != self._start.organisation_id:
            raise Refused("only an intermediary of the submitting organisation can do this")

    def _check_withdraw(self) -> None:
        self._check_allowed(Action.WITHDRAW)
        if self._retry_requested:
            raise Refused("finance is retrying the payment; it cannot be withdrawn now")
        if any(t.status == "paid" for t in self._state.tranches):
            raise Refused("money has already been paid; a later tranche is stopped by checking in as not needed")

    # --- what Stripe tells us (verified webhooks, applied to the ledger first) --------------------

    @workflow.signal
    def funds_changed(self) -> None:
        self._funds_changed = True

    @workflow.signal
    def transfer_confirmed(self, notice: TransferNotice) -> None:
        tranche = self._tranche(notice.tranche)
        # Only our transfer for this tranche, as instructed, confirms it; anything else is for
        # reconciliation to report.
        if tranche is not None and self._rail == PaymentRail.STRIPE and notice.amount == tranche.amount:
            self._confirmed_transfers.setdefault(tranche.number, notice.transfer_id)

    @workflow.signal
    def transfer_reversed(self, notice: TransferNotice) -> None:
        tranche = self._tranche(notice.tranche)
        if tranche is not None and tranche.reference == notice.transfer_id:
            tranche.reversed_minor = max(tranche.reversed_minor, notice.amount_reversed_minor)

    @workflow.query
    def state(self) -> GrantRequestState:
        return self._state

    # --- helpers ---------------------------------------------------------------------------------

    @property
    def _policy(self):
        assert self._pinned is not None, "the pinned policy is loaded before any action is accepted"
        return self._pinned.policy

    def _check_allowed(self, action: Action) -> None:
        if self._pinned is None or not action_allowed(action, self._state.status):
            raise Refused(f"cannot {action.value.replace('_', ' ')} while the request is {self._state.status.value}")

    def _tranche(self, number: int | None) -> Tranche | None:
        return next((t for t in self._state.tranches if t.number == number), None)

    def _current_tranche(self) -> Tranche:
        return self._state.tranches[(self._state.current_tranche or 1) - 1]

    def _refresh_requirement(self, amount: Money) -> None:
        assert self._state.risk is not None
        need = rules.approvals_required(self._policy, rules.to_base(self._policy, amount), self._state.risk.tier)
        self._state.approvals_required = need.caseworker_approvals + (1 if need.director_approval else 0)
        self._state.director_required = need.director_approval

    def _approvals_complete(self) -> bool:
        return not self._missing_approvals()

    def _missing_approvals(self) -> str:
        approvers = self._state.approvals
        missing = []
        if len(approvers) < (self._state.approvals_required or 0):
            missing.append(f"{self._state.approvals_required - len(approvers)} more approval(s) needed")
        if self._state.director_required and not any(Role.DIRECTOR in a.roles for a in approvers):
            missing.append("a director's approval is needed")
        return " and ".join(missing)

    def _open_decision_window(self) -> RequestProjection:
        timeline = rules.decision_timeline(self._policy, self._start.urgency)
        self._state.decision_due_at = workflow.now() + timedelta(hours=timeline.deadline_hours)
        self._state.escalated = False
        return RequestProjection(decision_due_at=self._state.decision_due_at, escalated=False)

    def _unpaid_base(self) -> int:
        return sum(rules.to_base(self._policy, t.amount) for t in self._state.tranches if t.status != "paid")

    def _unpaid_amount(self) -> Money:
        unpaid = [t.amount for t in self._state.tranches if t.status != "paid"]
        return Money(minor_units=sum(m.minor_units for m in unpaid), currency=self._start.amount.currency)

    def _rate_to_base(self):
        return self._policy.currencies[self._start.amount.currency].rate_to_base

    async def _reserve(self, *, check_caps: bool = True) -> bool:
        """Sets the unpaid tranches aside from the category's budget. While they do not fit, the
        request waits for funds (finance allocating more, or a recheck) or a caseworker's decision;
        False when it ended meanwhile. `check_caps` is False only where the money may already have
        moved: it is then counted as it is, never sent back to a decision."""
        amount_base = self._unpaid_base()
        number = self._reservation_number + 1  # a refused reservation wrote nothing: its number is reused
        while True:
            try:
                await self._activity(
                    BudgetReservations.reserve_budget,
                    ReservationRequest(
                        request_id=self._start.request_id,
                        number=number,
                        category=self._start.category,
                        amount_base_minor=amount_base,
                        amount=self._unpaid_amount(),
                        rate_to_base=self._rate_to_base(),
                        at=workflow.now(),
                        caps=MoneyCaps(
                            grant=self._policy.categories[self._start.category].max_grant,
                            defender_12_months=self._policy.per_defender_cap_12_months,
                        )
                        if check_caps
                        else None,
                    ),
                )
                break
            except (ActivityError, ApplicationError) as error:
                if self._state.status in TERMINAL:
                    return False  # withdrawn or rejected while the reservation was tried
                over = _over_cap(error)
                if over is not None:
                    await self._over_caps(*over)
                    return False
                reason = _no_funds(error)
                if reason is None:
                    raise
                if not await self._await_funds(reason, amount_base):
                    return False
        self._reservation_number = number
        self._reserved_base = amount_base
        if self._state.status in TERMINAL:
            # Withdrawn or rejected (allowed while waiting for funds) as the money was reserved:
            # it goes straight back, and nothing is paid.
            await self._release(reason=str(self._state.status))
            return False
        await self._record(
            "budget_reserved",
            to=Status.APPROVED if self._state.status == Status.AWAITING_FUNDS else None,
            facts={"reservation": number, "amount_base_minor": amount_base},
        )
        return True

    def _money_may_have_moved(self, tranche: Tranche) -> bool:
        """Stripe confirmed this tranche's transfer, or an attempt went unanswered (whether money
        moved is not known until the rail's lookup, a webhook or reconciliation says)."""
        return tranche.number in self._confirmed_transfers or tranche.number in self._unanswered_tranches

    async def _over_caps(self, reason: str, room_base: int) -> None:
        """The money does not fit under the grant's or the defender's cap any more (other money
        was committed to the same defender since the assessment). Nothing paid yet: the request
        goes back to the caseworkers, who may approve what still fits, or reject. Something paid
        (a later housing tranche): the rest is not paid, and the follow-up covers what was."""
        self._cap_room_base = room_base
        self._retry_requested = False  # the retry that asked for this money is over
        # The approval that led here may still be being recorded (its Update runs beside this):
        # once it is, this event's projection (no amount granted) is the one that stays.
        await workflow.wait_condition(workflow.all_handlers_finished)
        facts = {"room_base_minor": room_base, "reason": reason}
        if any(t.status == "paid" for t in self._state.tranches):
            for tranche in self._state.tranches:
                if tranche.status != "paid":
                    tranche.status = "failed"
            await self._record("caps_exceeded", facts=facts, notify=_notify("caps_exceeded", "caseworker", "finance"))
            return
        self._state.approvals = []
        self._state.granted = None
        self._state.tranches = []
        self._refresh_requirement(self._start.amount)
        await self._record(
            "caps_exceeded",
            to=Status.AWAITING_DECISION,
            facts=facts,
            projection=RequestProjection(granted_minor=None, granted_base_minor=None, **self._open_decision_window().model_dump(exclude_unset=True)),
            notify=_notify("caps_exceeded", "caseworker"),
        )

    async def _await_funds(self, reason: str, amount_base: int) -> bool:
        """True when funds may have come (try again); False when the request ended meanwhile."""
        if self._state.status != Status.AWAITING_FUNDS:
            await self._record(
                "funds_insufficient",
                to=Status.AWAITING_FUNDS,
                facts={"amount_base_minor": amount_base, "reason": reason},
                notify=_notify("funds_insufficient", "finance", "caseworker"),
            )
        self._funds_changed = False
        recheck = workflow.now() + timedelta(minutes=self._policy.funds_recheck_minutes)
        await self._wait_until(lambda: self._funds_changed or self._state.status != Status.AWAITING_FUNDS, recheck)
        return self._state.status == Status.AWAITING_FUNDS

    async def _release(self, *, reason: str) -> None:
        """Closes the held reservation, handing back the part that will not be paid."""
        if self._reserved_base == 0:
            return
        release = self._unpaid_base()
        await self._activity(
            BudgetReservations.release_budget,
            ReservationRelease(
                request_id=self._start.request_id,
                number=self._reservation_number,
                release_base_minor=release,
                amount=self._unpaid_amount(),
                rate_to_base=self._rate_to_base(),
                reason=reason,
                at=workflow.now(),
            ),
        )
        self._reserved_base = 0
        if release:
            await self._record(
                "budget_released",
                facts={"reservation": self._reservation_number, "amount_base_minor": release, "reason": reason},
            )

    async def _wait_until(self, condition: Callable[[], bool], when: datetime) -> bool:
        """Waits for the condition until a durable deadline; True if it came true in time."""
        remaining = when - workflow.now()
        if remaining <= timedelta(0):
            return condition()
        try:
            await workflow.wait_condition(condition, timeout=remaining)
            return True
        except TimeoutError:
            return condition()

    async def _activity(self, fn: Callable[..., Any], *args: Any) -> Any:
        """The app database's own steps: short and idempotent, so they run as local activities
        (no task-queue round trip each; still recorded in history and retried)."""
        return await workflow.execute_local_activity_method(
            fn, args=list(args), start_to_close_timeout=LOCAL_ACTIVITY_TIMEOUT, retry_policy=ACTIVITY_RETRY
        )

    async def _record(
        self,
        action: str,
        actor: Actor = SYSTEM,
        *,
        to: Status | None = None,
        facts: dict[str, Any] | None = None,
        projection: RequestProjection | None = None,
        decision: DecisionEntry | None = None,
        message: MessageEntry | None = None,
        report: ReportEntry | None = None,
        payment: PaymentUpdate | None = None,
        notify: list[NotificationRequest] | None = None,
    ) -> Status:
        """Moves the state synchronously (so a concurrent action sees it at once), then records it.
        Returns the status this step left the request in."""
        status_from = self._state.status
        if to is not None:
            check_transition(status_from, to)
            self._state.status = to
            # Workflows started before the status was a search attribute replay without it.
            if to != status_from and workflow.patched(SEARCH_ATTRIBUTES_PATCH):
                workflow.upsert_search_attributes([search_attributes.STATUS.value_set(str(to))])
        status_after = self._state.status
        self._seq += 1
        now = workflow.now()
        self._state.timeline.append(
            TimelineEntry(
                seq=self._seq, at=now, action=str(action), actor=actor.subject, status=self._state.status, facts=facts or {}
            )
        )
        await self._activity(
            CaseRecords.record_event,
            CaseEvent(
                request_id=self._start.request_id,
                seq=self._seq,
                at=now,
                action=str(action),
                actor=actor,
                status_from=status_from,
                status_to=self._state.status,
                facts=facts or {},
                projection=projection,
                decision=decision,
                message=message,
                report=report,
                payment=payment,
                notifications=notify or [],
            ),
        )
        return status_after

    def _result(self, status: Status, message: str) -> ActionResult:
        return ActionResult(request_id=self._start.request_id, status=status, message=message)
