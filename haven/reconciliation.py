"""Reconciliation of one day's Stripe transfers with the payments ledger: the comparison alone,
data in and findings out, so that every rule can be read and tested without Stripe or a database.

A transfer is matched to the ledger by its id (the payment's `reference`), whatever day the ledger
says it was paid: a transfer made just before midnight (UTC) may be recorded paid just after. A
transfer that no payment names is looked up by the request and tranche in its metadata, only to
say what the ledger holds instead. A ledger payment paid that day whose transfer is not among the
day's is fetched by id before it is called missing (`references_to_look_up`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from haven.grant_request import PaymentRail, Strict
from haven.stripe_transfers import Transfer

# Finance can reconcile a past day on demand, back to this many days (Stripe keeps transfers for
# longer; older questions are an audit's, not a reconciliation's).
RECONCILABLE_DAYS = 90
PAID = "paid"


class FindingKind(StrEnum):
    MISSING_FROM_LEDGER = "missing_from_ledger"  # Stripe moved money the ledger does not show paid by it
    MISSING_FROM_STRIPE = "missing_from_stripe"  # the ledger shows a Stripe payment Stripe does not have
    AMOUNT_DIFFERS = "amount_differs"  # both have it, with another amount, currency or reversal
    # Found while a Stripe reversal was applied to the ledger (haven.ledger.money_back):
    REVERSAL_MATCHED_REFUND = "reversal_matched_refund"  # reversed money already recorded back as a refund: counted once
    MONEY_BACK_NOT_APPLIED = "money_back_not_applied"  # money Stripe says came back that the ledger could not credit


# --- what the workflow, its activities and the API pass each other ----------------------------


class ReconciliationOrder(Strict):
    """What is asked: a day (None: the day before the run starts, as the schedule asks) and, when
    finance asks through the API, the run id the API handed out (None: the workflow id)."""

    day: date | None = None
    trigger: Literal["schedule", "finance"]
    requested_by: str
    run_id: str | None = None

    def for_run(self, workflow_id: str, now: datetime) -> DayReconciliation:
        day = self.day or (now.astimezone(timezone.utc).date() - timedelta(days=1))
        return DayReconciliation(
            run_id=self.run_id or workflow_id, day=day, trigger=self.trigger, requested_by=self.requested_by
        )


class DayReconciliation(Strict):
    """One run: every write it makes is keyed by `run_id`, so a retry adds nothing."""

    run_id: str = Field(max_length=100)
    day: date
    trigger: Literal["schedule", "finance"]
    requested_by: str


class ReconciliationSummary(Strict):
    run_id: str
    day: date
    status: str
    transfers_seen: int
    payments_seen: int
    mismatches: int


def refusal_of_day(day: date, today: date) -> str | None:
    """Why `day` cannot be reconciled now (None: it can). Days are UTC days."""
    if day > today:
        return "must not be in the future (UTC)"
    if day < today - timedelta(days=RECONCILABLE_DAYS):
        return f"must be within the last {RECONCILABLE_DAYS} days"
    return None


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC day as [start, end): what Stripe's `created[gte]` and `created[lt]` take."""
    start = datetime.combine(day, time.min, tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


# --- the two sides --------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerPayment:
    """One row of the payments ledger (a request's tranche)."""

    request_id: str
    tranche: int
    rail: str
    status: str
    amount_minor: int
    currency: str
    reference: str | None = None
    paid_on: date | None = None
    reversed_minor: int = 0

    @property
    def subject(self) -> str:
        return f"{self.request_id}:{self.tranche}"

    def paid_by_stripe_on(self, day: date) -> bool:
        return self.rail == PaymentRail.STRIPE and self.status == PAID and self.paid_on == day


@dataclass(frozen=True)
class Finding:
    """A mismatch. `subject` is the transfer id, or `<request id>:<tranche>` when there is no
    transfer; a run holds at most one finding per kind and subject."""

    kind: FindingKind
    subject: str
    detail: str
    transfer_id: str | None = None
    request_id: str | None = None
    tranche: int | None = None
    ledger_amount_minor: int | None = None
    stripe_amount_minor: int | None = None
    currency: str | None = None
    ledger_reversed_minor: int | None = None
    stripe_reversed_minor: int | None = None

    def facts(self) -> dict[str, Any]:
        """Ids and amounts only, for the audit trail (never the detail text or a reference that
        finance typed)."""
        facts = {
            "kind": str(self.kind),
            "subject": self.subject,
            "transfer_id": self.transfer_id,
            "tranche": self.tranche,
            "ledger_amount_minor": self.ledger_amount_minor,
            "stripe_amount_minor": self.stripe_amount_minor,
            "currency": self.currency,
            "ledger_reversed_minor": self.ledger_reversed_minor,
            "stripe_reversed_minor": self.stripe_reversed_minor,
        }
        return {name: value for name, value in facts.items() if value is not None}


# --- the comparison -------------------------------------------------------------------------


def references_to_look_up(day: date, transfers: Iterable[Transfer], ledger: Iterable[LedgerPayment]) -> list[str]:
    """Transfers the ledger says were paid on `day` but that are not among the day's: they may
    have been created the day before, so they are fetched by id before being called missing."""
    listed = {t.id for t in transfers}
    return sorted({p.reference for p in ledger if p.paid_by_stripe_on(day) and p.reference and p.reference not in listed})


def compare(
    day: date, transfers: Iterable[Transfer], ledger: Iterable[LedgerPayment], elsewhere: Iterable[Transfer] = ()
) -> list[Finding]:
    """The mismatches between the day's transfers and the ledger. `ledger` holds the payments
    paid by Stripe that day and every payment the day's transfers name or belong to; `elsewhere`
    the transfers of `references_to_look_up` that Stripe has (created on another day)."""
    ledger = list(ledger)
    by_reference = {p.reference: p for p in ledger if p.reference}
    by_tranche = {(p.request_id, p.tranche): p for p in ledger}
    findings = _Findings()
    accounted: set[str] = set()  # ledger payments a transfer of the day accounts for
    for transfer in transfers:
        payment = by_reference.get(transfer.id)
        if payment is None:
            findings.add(_not_in_ledger(transfer, by_tranche.get((transfer.request_id, transfer.tranche))))
            continue
        accounted.add(payment.subject)
        if payment.status != PAID:
            findings.add(_not_in_ledger(transfer, payment))
        else:
            findings.add(_differences(transfer, payment))
    found = {t.id: t for t in elsewhere}
    for payment in ledger:
        if payment.subject in accounted or not payment.paid_by_stripe_on(day):
            continue
        transfer = found.get(payment.reference) if payment.reference else None
        if transfer is None:
            findings.add(_not_at_stripe(payment))
        else:
            findings.add(_differences(transfer, payment))
    return findings.items


@dataclass
class _Findings:
    """At most one finding per kind and subject, in the order found."""

    by_key: dict[tuple[FindingKind, str], Finding] = field(default_factory=dict)

    def add(self, finding: Finding | None) -> None:
        if finding is not None:
            self.by_key.setdefault((finding.kind, finding.subject), finding)

    @property
    def items(self) -> list[Finding]:
        return list(self.by_key.values())


def _tranche_name(request_id: str | None, tranche: int | None) -> str:
    return f"request {request_id} tranche {tranche}"


def _not_in_ledger(transfer: Transfer, payment: LedgerPayment | None) -> Finding:
    if transfer.request_id is None:
        detail = "the transfer names no request and tranche in its metadata: haven did not make it"
    elif payment is None:
        detail = f"the ledger has no payment for {_tranche_name(transfer.request_id, transfer.tranche)}"
    elif payment.status != PAID:
        detail = f"the ledger shows {_tranche_name(payment.request_id, payment.tranche)} as {payment.status}, not paid"
    elif payment.reference:
        detail = (
            f"the ledger shows {_tranche_name(payment.request_id, payment.tranche)} paid by another "
            f"{payment.rail} payment ({payment.reference}): it may have been paid twice"
        )
    else:
        detail = f"the ledger shows {_tranche_name(payment.request_id, payment.tranche)} paid without a reference"
    return Finding(
        kind=FindingKind.MISSING_FROM_LEDGER,
        subject=transfer.id,
        detail=detail,
        transfer_id=transfer.id,
        request_id=transfer.request_id or (payment.request_id if payment else None),
        tranche=transfer.tranche if transfer.request_id else (payment.tranche if payment else None),
        ledger_amount_minor=payment.amount_minor if payment else None,
        stripe_amount_minor=transfer.amount_minor,
        currency=transfer.currency,
    )


def _not_at_stripe(payment: LedgerPayment) -> Finding:
    if payment.reference:
        detail = f"the ledger shows {_tranche_name(payment.request_id, payment.tranche)} paid by transfer {payment.reference}, which Stripe does not have"
    else:
        detail = f"the ledger shows {_tranche_name(payment.request_id, payment.tranche)} paid through Stripe without a transfer id"
    return Finding(
        kind=FindingKind.MISSING_FROM_STRIPE,
        subject=payment.subject,
        detail=detail,
        transfer_id=payment.reference,
        request_id=payment.request_id,
        tranche=payment.tranche,
        ledger_amount_minor=payment.amount_minor,
        currency=payment.currency,
    )


def _differences(transfer: Transfer, payment: LedgerPayment) -> Finding | None:
    differences = []
    if transfer.currency != payment.currency:
        differences.append(f"currency {payment.currency} in the ledger, {transfer.currency} at Stripe")
    if transfer.amount_minor != payment.amount_minor:
        differences.append(f"amount {payment.amount_minor} in the ledger, {transfer.amount_minor} at Stripe")
    if transfer.reversed_minor != payment.reversed_minor:
        differences.append(f"reversed {payment.reversed_minor} in the ledger, {transfer.reversed_minor} at Stripe")
    if not differences:
        return None
    return Finding(
        kind=FindingKind.AMOUNT_DIFFERS,
        subject=transfer.id,
        detail=f"{_tranche_name(payment.request_id, payment.tranche)}: " + "; ".join(differences) + " (minor units)",
        transfer_id=transfer.id,
        request_id=payment.request_id,
        tranche=payment.tranche,
        ledger_amount_minor=payment.amount_minor,
        stripe_amount_minor=transfer.amount_minor,
        currency=transfer.currency,
        ledger_reversed_minor=payment.reversed_minor,
        stripe_reversed_minor=transfer.reversed_minor,
    )
