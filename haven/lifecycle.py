"""The grant request state machine: the one place that says which status follows which,
and in which statuses each action may be taken."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    RECEIVED = "received"
    SCREENING = "screening"
    SCREENING_HOLD = "screening_hold"
    RISK_ASSESSMENT = "risk_assessment"
    AWAITING_DECISION = "awaiting_decision"
    INFORMATION_REQUESTED = "information_requested"
    APPROVED = "approved"
    AWAITING_FUNDS = "awaiting_funds"
    PAYMENT_PENDING = "payment_pending"
    PAYMENT_FAILED = "payment_failed"
    PAID = "paid"
    FOLLOW_UP = "follow_up"
    CLOSED = "closed"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"


class Action(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    REQUEST_INFORMATION = "request_information"
    CLEAR_SCREENING = "clear_screening"
    PROVIDE_INFORMATION = "provide_information"
    RECORD_PAYMENT = "record_payment"
    RECORD_PAYMENT_FAILURE = "record_payment_failure"
    RETRY_PAYMENT = "retry_payment"
    CHECK_IN = "check_in"
    SUBMIT_REPORT = "submit_report"
    ACCEPT_REPORT = "accept_report"
    WITHDRAW = "withdraw"


S = Status

TERMINAL: frozenset[Status] = frozenset({S.CLOSED, S.REJECTED, S.WITHDRAWN, S.EXPIRED})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.RECEIVED: frozenset({S.SCREENING}),
    S.SCREENING: frozenset({S.SCREENING_HOLD, S.RISK_ASSESSMENT}),
    S.SCREENING_HOLD: frozenset({S.RISK_ASSESSMENT, S.REJECTED, S.WITHDRAWN}),
    S.RISK_ASSESSMENT: frozenset({S.AWAITING_DECISION}),
    S.AWAITING_DECISION: frozenset(
        {S.INFORMATION_REQUESTED, S.APPROVED, S.REJECTED, S.WITHDRAWN, S.EXPIRED}
    ),
    S.INFORMATION_REQUESTED: frozenset({S.AWAITING_DECISION, S.REJECTED, S.WITHDRAWN, S.EXPIRED}),
    # A rail may pay at once (a Stripe transfer) or refuse outright, without ever being pending.
    # Back to a decision when the money no longer fits under the grant's or the defender's cap.
    S.APPROVED: frozenset({S.PAYMENT_PENDING, S.PAID, S.PAYMENT_FAILED, S.AWAITING_FUNDS, S.AWAITING_DECISION}),
    # The category's budget cannot take the reservation: it waits for funds or a caseworker.
    S.AWAITING_FUNDS: frozenset({S.APPROVED, S.REJECTED, S.WITHDRAWN, S.AWAITING_DECISION}),
    S.PAYMENT_PENDING: frozenset({S.PAID, S.PAYMENT_FAILED, S.WITHDRAWN}),
    S.PAYMENT_FAILED: frozenset({S.PAYMENT_PENDING, S.PAID, S.WITHDRAWN, S.EXPIRED, S.FOLLOW_UP, S.AWAITING_FUNDS, S.AWAITING_DECISION}),
    S.PAID: frozenset({S.FOLLOW_UP}),
    S.FOLLOW_UP: frozenset({S.PAYMENT_PENDING, S.PAID, S.PAYMENT_FAILED, S.CLOSED}),
    S.CLOSED: frozenset(),
    S.REJECTED: frozenset(),
    S.WITHDRAWN: frozenset(),
    S.EXPIRED: frozenset(),
}

# Actions are only ever taken in statuses where the workflow is waiting for a person, so an
# action never races the workflow's own automatic steps (screening, risk, reservation).
ALLOWED_IN: dict[Action, frozenset[Status]] = {
    Action.APPROVE: frozenset({S.AWAITING_DECISION}),
    Action.REJECT: frozenset({S.SCREENING_HOLD, S.AWAITING_DECISION, S.INFORMATION_REQUESTED, S.AWAITING_FUNDS}),
    Action.REQUEST_INFORMATION: frozenset({S.AWAITING_DECISION}),
    Action.CLEAR_SCREENING: frozenset({S.SCREENING_HOLD}),
    Action.PROVIDE_INFORMATION: frozenset({S.INFORMATION_REQUESTED}),
    Action.RECORD_PAYMENT: frozenset({S.PAYMENT_PENDING}),
    Action.RECORD_PAYMENT_FAILURE: frozenset({S.PAYMENT_PENDING}),
    Action.RETRY_PAYMENT: frozenset({S.PAYMENT_FAILED}),
    Action.CHECK_IN: frozenset({S.FOLLOW_UP}),
    Action.SUBMIT_REPORT: frozenset({S.FOLLOW_UP}),
    Action.ACCEPT_REPORT: frozenset({S.FOLLOW_UP}),
    Action.WITHDRAW: frozenset(
        {S.SCREENING_HOLD, S.AWAITING_DECISION, S.INFORMATION_REQUESTED, S.AWAITING_FUNDS, S.PAYMENT_PENDING, S.PAYMENT_FAILED}
    ),
}


class InvalidTransition(Exception):
    pass


def check_transition(current: Status, target: Status) -> None:
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(f"a request cannot go from {current} to {target}")


def action_allowed(action: Action, status: Status) -> bool:
    return status in ALLOWED_IN[action]
