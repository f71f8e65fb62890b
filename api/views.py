"""What the API returns about a grant request, and to whom."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field

from haven.case_keys import ERASED_DETAILS
from haven.db.models import GrantRequestRecord
from haven.db.queries import CaseFile
from haven.grant_request import Actor
from haven.lifecycle import Status
from haven.money import Money
from api.permissions import may_read_case, scoped_to_organisation


class RiskView(BaseModel):
    score: int
    tier: str


class GrantRequestSummary(BaseModel):
    id: str
    organisation_id: str
    status: Status
    category: str
    urgency: str
    country: str
    amount: Money
    granted: Money | None
    tranches: int
    risk: RiskView | None
    decision_due_at: datetime | None
    escalated: bool
    current_tranche: int | None
    report_due_at: datetime | None
    follow_up_overdue: bool
    assigned_to: str | None
    created_at: datetime
    updated_at: datetime


class SubmissionAccepted(GrantRequestSummary):
    earlier_requests_for_defender: int = Field(
        description="Your organisation's requests of the last 12 months for a defender whose pseudonym is the same "
        "name as this one, however it was written (case, width, invisible characters, look-alike letters): the fund "
        "counts them together against the defender's cap and in the risk assessment. Check it is the person you mean."
    )


class DecisionView(BaseModel):
    kind: str
    actor: str
    amount: Money | None
    note: str | None
    decided_at: datetime


class PaymentView(BaseModel):
    tranche: int
    rail: str
    amount: Money
    status: str = Field(description="pending, paid, failed, cancelled, or reversed (paid, then all of it came back)")
    attempts: int
    reference: str | None
    paid_on: date | None
    reversed_minor: int = Field(description="What came back after payment (a Stripe transfer reversal), in minor units.")
    reversed_at: datetime | None
    idempotency_key: str


class TimelineView(BaseModel):
    seq: int
    at: datetime
    action: str
    actor: str
    status_from: str | None
    status_to: str | None
    facts: dict[str, Any]


class MessageView(BaseModel):
    seq: int
    kind: str
    author: str
    tranche: int | None
    body: dict[str, Any]
    written_at: datetime


class ReportView(BaseModel):
    text: str
    receipts: list[str]
    submitted_by: str
    submitted_at: datetime
    accepted_by: str | None
    accepted_at: datetime | None
    acceptance_note: str | None


class GrantRequestView(GrantRequestSummary):
    threat_level: str
    rail: str
    policy_hash: str
    screening_hit: bool | None
    details: dict[str, Any] | None
    decisions: list[DecisionView]
    payments: list[PaymentView]
    timeline: list[TimelineView]
    messages: list[MessageView] | None
    report: ReportView | None


def summary(record: GrantRequestRecord) -> GrantRequestSummary:
    return GrantRequestSummary(**_summary_fields(record))


def _summary_fields(record: GrantRequestRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "organisation_id": record.organisation_id,
        "status": record.status,
        "category": record.category,
        "urgency": record.urgency,
        "country": record.country,
        "amount": Money(minor_units=record.amount_minor, currency=record.currency),
        "granted": Money(minor_units=record.granted_minor, currency=record.currency)
        if record.granted_minor is not None
        else None,
        "tranches": record.tranche_count,
        "risk": RiskView(score=record.risk_score, tier=record.risk_tier) if record.risk_score is not None else None,
        "decision_due_at": record.decision_due_at,
        "escalated": record.escalated,
        "current_tranche": record.current_tranche,
        "report_due_at": record.report_due_at,
        "follow_up_overdue": record.follow_up_overdue,
        "assigned_to": record.assigned_to,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


# Facts that count what other organisations' requests for the same defender hold (prior grants,
# what is committed under the defender's cap): the fund's staff see them, a partner does not.
STAFF_ONLY_FACTS = frozenset({"risk_assessed", "caps_exceeded"})


def full_view(case: CaseFile, reader: Actor) -> GrantRequestView:
    record = case.request
    reads_case = may_read_case(reader)
    partner = scoped_to_organisation(reader) is not None
    # Finance needs the payee to pay; only people working the case see the defender and narrative.
    if record.sensitive == ERASED_DETAILS:  # its key was destroyed: the details are gone for good
        details = ERASED_DETAILS
    else:
        details = record.sensitive if reads_case else {"payee": record.sensitive["payee"]}
    return GrantRequestView(
        **_summary_fields(record),
        threat_level=record.threat_level,
        rail=record.rail,
        policy_hash=record.policy_hash,
        screening_hit=record.screening_hit,
        details=details,
        decisions=[
            DecisionView(
                kind=d.kind,
                actor=d.actor,
                amount=Money(minor_units=d.amount_minor, currency=d.currency) if d.amount_minor is not None else None,
                note=d.note if reads_case else None,
                decided_at=d.decided_at,
            )
            for d in case.decisions
        ],
        payments=[
            PaymentView(
                tranche=p.tranche,
                rail=p.rail,
                amount=Money(minor_units=p.amount_minor, currency=p.currency),
                # Reversed in full: the money came back, whatever the lifecycle recorded.
                status="reversed" if p.status == "paid" and p.reversed_minor >= p.amount_minor else p.status,
                attempts=p.attempts,
                reference=p.reference,
                paid_on=p.paid_on,
                reversed_minor=p.reversed_minor,
                reversed_at=p.reversed_at,
                idempotency_key=p.idempotency_key,
            )
            for p in case.payments
        ],
        timeline=[
            TimelineView(
                seq=e.seq or 0,
                at=e.occurred_at,
                action=e.action,
                actor=e.actor,
                status_from=e.status_from,
                status_to=e.status_to,
                facts={} if partner and e.action in STAFF_ONLY_FACTS else e.facts,
            )
            for e in case.events
        ],
        messages=[
            MessageView(seq=m.seq, kind=m.kind, author=m.author, tranche=m.tranche, body=m.body, written_at=m.written_at)
            for m in case.messages
        ]
        if reads_case
        else None,
        report=ReportView.model_validate(case.report, from_attributes=True) if case.report and reads_case else None,
    )
