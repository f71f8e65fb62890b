"""The app database. The workflow is the source of truth for a request's lifecycle; these tables
are its durable record (written only by idempotent activities) and what the API lists and reads."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from haven.identifiers import canonical

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite would otherwise hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: every time in haven is timezone-aware UTC")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class Organisation(Base):
    """A trusted intermediary (or the fund itself). Suspended organisations cannot submit."""

    __tablename__ = "organisations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The id's canonical form (haven.identifiers): no two organisations' ids are the same name.
    id_key: Mapped[str] = mapped_column(String(64), unique=True, default=lambda context: canonical(context.get_current_parameters()["id"]))
    name: Mapped[str] = mapped_column(String(200))
    trust_level: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Where the organisation hears about its requests: an inbox and/or a signed webhook.
    notification_email: Mapped[str | None] = mapped_column(String(320))
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime | None]


class StaffMember(Base):
    """The fund's roster: who the fund's staff are, what they may do, whether they are active, where
    they are notified. A person is the identity provider's issuer (`iss`) and stable subject
    (`sub`); no two people of one issuer have subjects that are the same name (`subject_key`,
    haven.identifiers)."""

    __tablename__ = "staff_members"
    __table_args__ = (UniqueConstraint("issuer", "subject_key", name="uq_staff_members_person"),)

    issuer: Mapped[str] = mapped_column(String(300), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    subject_key: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    roles: Mapped[list[Any]]
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class PolicyRecord(Base):
    """Every policy version a request was ever pinned to, by content hash."""

    __tablename__ = "policy_versions"

    hash: Mapped[str] = mapped_column(String(80), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    content: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class PolicyActivation(Base):
    """Which policy version new requests are pinned to: the latest activation. Running requests
    keep the version they were pinned to."""

    __tablename__ = "policy_activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    policy_hash: Mapped[str] = mapped_column(ForeignKey("policy_versions.hash"))
    activated_by: Mapped[str] = mapped_column(String(200))
    activated_at: Mapped[datetime]
    note: Mapped[str | None] = mapped_column(String(2000))


class GrantRequestRecord(Base):
    __tablename__ = "grant_requests"
    __table_args__ = (
        UniqueConstraint("organisation_id", "idempotency_key", name="uq_grant_requests_idempotency"),
        Index("ix_grant_requests_queue", "status", "decision_due_at"),
        Index("ix_grant_requests_defender", "defender_ref", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organisation_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"), index=True)
    submitted_by: Mapped[str] = mapped_column(String(200))
    # Who the submitter is (Actor.person): conflicts of interest compare it with the decider's.
    submitted_by_person: Mapped[str | None] = mapped_column(String(600))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    body_hash: Mapped[str] = mapped_column(String(80))

    category: Mapped[str] = mapped_column(String(32))
    urgency: Mapped[str] = mapped_column(String(16))
    country: Mapped[str] = mapped_column(String(2))
    threat_level: Mapped[str] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    amount_base_minor: Mapped[int] = mapped_column(BigInteger)
    tranche_count: Mapped[int] = mapped_column(Integer)
    rail: Mapped[str] = mapped_column(String(16))
    policy_hash: Mapped[str] = mapped_column(ForeignKey("policy_versions.hash"))
    # Keyed hash of the defender's pseudonym: finds prior grants without storing the pseudonym.
    defender_ref: Mapped[str] = mapped_column(String(64))
    # Defender, payee and narrative: never in Temporal, never in logs.
    sensitive: Mapped[dict[str, Any]]

    # The projection of the workflow's state, written by record_event.
    status: Mapped[str] = mapped_column(String(32), index=True)
    status_seq: Mapped[int] = mapped_column(Integer, default=0)
    risk_score: Mapped[int | None] = mapped_column(Integer)
    risk_tier: Mapped[str | None] = mapped_column(String(16))
    screening_hit: Mapped[bool | None] = mapped_column(Boolean)
    decision_due_at: Mapped[datetime | None]
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
    granted_minor: Mapped[int | None] = mapped_column(BigInteger)
    granted_base_minor: Mapped[int | None] = mapped_column(BigInteger)
    current_tranche: Mapped[int | None] = mapped_column(Integer)
    report_due_at: Mapped[datetime | None]
    follow_up_overdue: Mapped[bool] = mapped_column(Boolean, default=False)

    # The caseworker holding the request; set and handed over through the API, not the workflow.
    assigned_to: Mapped[str | None] = mapped_column(String(200), index=True)
    assigned_at: Mapped[datetime | None]

    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CaseKey(Base):
    """A request's data key, wrapped by a master key (haven.case_keys). Destroying it (the wrapped
    key overwritten with NULL) makes the request's sealed details unreadable for good."""

    __tablename__ = "case_keys"

    request_id: Mapped[str] = mapped_column(ForeignKey("grant_requests.id"), primary_key=True)
    master_key_id: Mapped[str] = mapped_column(String(64))
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    destroyed_at: Mapped[datetime | None]
    destroyed_why: Mapped[str | None] = mapped_column(String(200))


class AuditEvent(Base):
    """Append-only record of every state change and decision. Each event carries the hash of the
    one before it (`chain_seq` orders the chain), so an altered, inserted or removed row shows."""

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("request_id", "seq", name="uq_audit_events_request_seq"),
        UniqueConstraint("chain_seq", name="uq_audit_events_chain_seq"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str | None] = mapped_column(String(40), index=True)
    seq: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[Any]]
    status_from: Mapped[str | None] = mapped_column(String(32))
    status_to: Mapped[str | None] = mapped_column(String(32))
    facts: Mapped[dict[str, Any]]
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime]
    chain_seq: Mapped[int | None] = mapped_column(BigInteger)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class AuditChainHead(Base):
    """The newest link of the audit chain: one row, locked by whoever appends an event."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class Decision(Base):
    __tablename__ = "decisions"
    __table_args__ = (UniqueConstraint("request_id", "seq", name="uq_decisions_request_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("grant_requests.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[Any]]
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    note: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime]


class BudgetAllocation(Base):
    """What finance gives a category for a period (inclusive dates, never overlapping within a
    category). The running totals change only with ledger entries, in the same transaction, under
    this row's lock: that is what keeps concurrent reservations from overspending."""

    __tablename__ = "budget_allocations"
    __table_args__ = (UniqueConstraint("category", "starts_on", name="uq_budget_allocations_category_start"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "<category>:<starts_on>"
    category: Mapped[str] = mapped_column(String(32))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    amount_base_minor: Mapped[int] = mapped_column(BigInteger)
    reserved_base_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    paid_base_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    set_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class LedgerEntry(Base):
    """The fund ledger, append-only: each entry moves base-currency money between an allocation's
    buckets (available, reserved, paid), keeping the original amount and the pinned rate beside it.
    `entry_key` makes each write happen once however often an activity is retried."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_occurred", "occurred_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry_key: Mapped[str] = mapped_column(String(200), unique=True)
    allocation_id: Mapped[str] = mapped_column(ForeignKey("budget_allocations.id"), index=True)
    category: Mapped[str] = mapped_column(String(32))
    # allocation (± available) | reservation (available -> reserved) | release (reserved -> available)
    # | payment (reserved -> paid) | reversal, refund (paid -> available)
    kind: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(40), index=True)
    tranche: Mapped[int | None] = mapped_column(Integer)
    # The request's country and defender_ref (a keyed pseudonym) as they were when the money
    # moved: the ledger reads on its own, in exports and after a request's details are gone.
    country: Mapped[str | None] = mapped_column(String(2))
    defender_ref: Mapped[str | None] = mapped_column(String(64))
    amount_base_minor: Mapped[int] = mapped_column(BigInteger)  # signed only for allocation changes
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    rate_to_base: Mapped[str] = mapped_column(String(40))  # the pinned policy's rate, as a decimal string
    actor: Mapped[str] = mapped_column(String(200))
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime]


class BudgetReservation(Base):
    """Money set aside at approval; released (in part or whole) if it will not be paid."""

    __tablename__ = "budget_reservations"
    __table_args__ = (UniqueConstraint("request_id", "number", name="uq_budget_reservations_request_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("grant_requests.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    allocation_id: Mapped[str | None] = mapped_column(ForeignKey("budget_allocations.id"))
    category: Mapped[str] = mapped_column(String(32))
    amount_base_minor: Mapped[int] = mapped_column(BigInteger)
    released_base_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16))  # held | released | settled
    reserved_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]


class Payment(Base):
    """One row per tranche; its idempotency key is derived from the request and tranche only."""

    __tablename__ = "payments"
    __table_args__ = (UniqueConstraint("request_id", "tranche", name="uq_payments_request_tranche"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("grant_requests.id"), index=True)
    tranche: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(120), unique=True)
    rail: Mapped[str] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    amount_base_minor: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # pending | paid | failed
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    reference: Mapped[str | None] = mapped_column(String(200))
    paid_on: Mapped[date | None] = mapped_column(Date)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    recorded_by: Mapped[str | None] = mapped_column(String(200))
    # Money that came back after the payment (a Stripe transfer reversal). Kept apart from
    # `status`, which the lifecycle owns, so a reversal that arrives before the payment is
    # recorded as paid is not overwritten by it.
    reversed_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    reversed_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CaseMessage(Base):
    """What intermediaries and caseworkers write into a case: information requests and answers,
    check-ins, screening notes, reasons for withdrawals and failed payments. Sensitive text."""

    __tablename__ = "case_messages"
    __table_args__ = (UniqueConstraint("request_id", "seq", name="uq_case_messages_request_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("grant_requests.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    author: Mapped[str] = mapped_column(String(200))
    tranche: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[dict[str, Any]]
    written_at: Mapped[datetime]


class FollowUpReportRecord(Base):
    """The intermediary's report and receipts after payment, and the caseworker's acceptance."""

    __tablename__ = "follow_up_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("grant_requests.id"), unique=True)
    text: Mapped[str] = mapped_column(Text)
    receipts: Mapped[list[Any]]
    submitted_by: Mapped[str] = mapped_column(String(200))
    submitted_at: Mapped[datetime]
    accepted_by: Mapped[str | None] = mapped_column(String(200))
    accepted_at: Mapped[datetime | None]
    acceptance_note: Mapped[str | None] = mapped_column(Text)


class Notification(Base):
    """The outbox. Payloads carry ids and links only, never personal data. The dispatcher fans
    each row out into deliveries (one per inbox or webhook) and stamps `dispatched_at`."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    request_id: Mapped[str | None] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    audience: Mapped[str] = mapped_column(String(64))  # a role, or "org:<id>"
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    dispatched_at: Mapped[datetime | None] = mapped_column(index=True)


class NotificationDelivery(Base):
    """One notification to one recipient over one channel, retried with back-off until delivered
    or given up. (notification, channel, target) is unique so fan-out can be repeated safely."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        UniqueConstraint("notification_id", "channel", "target", name="uq_notification_deliveries_target"),
        Index("ix_notification_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))  # email | webhook
    target: Mapped[str] = mapped_column(String(2000))  # an address or a URL
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class StripeEvent(Base):
    """Each Stripe webhook event applied, once: its id is the key. Only ids and amounts are kept."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str | None] = mapped_column(String(255), index=True)
    request_id: Mapped[str | None] = mapped_column(String(40), index=True)
    tranche: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]  # when Stripe created it
    applied_at: Mapped[datetime]


class ReconciliationRun(Base):
    """One comparison of a day's Stripe transfers with the payments ledger."""

    __tablename__ = "reconciliation_runs"
    __table_args__ = (Index("ix_reconciliation_runs_day", "day", "started_at"),)

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    trigger: Mapped[str] = mapped_column(String(16))  # schedule | finance
    requested_by: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # running | done
    transfers_seen: Mapped[int] = mapped_column(Integer, default=0)
    payments_seen: Mapped[int] = mapped_column(Integer, default=0)
    mismatches: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class ReconciliationFinding(Base):
    """A mismatch between Stripe and the ledger. `subject` is the transfer id, or
    `<request id>:<tranche>` for a ledger payment with no transfer; unique per run and kind."""

    __tablename__ = "reconciliation_findings"
    __table_args__ = (UniqueConstraint("run_id", "kind", "subject", name="uq_reconciliation_findings_subject"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("reconciliation_runs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # missing_from_ledger | missing_from_stripe | amount_differs | status_differs
    subject: Mapped[str] = mapped_column(String(300))
    transfer_id: Mapped[str | None] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(40), index=True)
    tranche: Mapped[int | None] = mapped_column(Integer)
    ledger_amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    stripe_amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    detail: Mapped[str] = mapped_column(Text)
    found_at: Mapped[datetime]
