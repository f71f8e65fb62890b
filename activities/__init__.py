"""Every side effect of the lifecycle. Each activity is idempotent: a retry never repeats an effect."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.budget import BudgetReservations
from activities.payments import Disbursements, ManualRail, Rail
from activities.reconciliation import StripeReconciliation
from activities.records import CaseRecords
from activities.retention import CaseDataRetention
from activities.risk import RiskAssessor
from activities.screening import PayeeScreening
from activities.stripe_events import StripeEvents
from activities.stripe_rail import StripeRail, stripe_client
from haven.db import Database
from haven.grant_request import PaymentRail
from haven.keys import case_keys
from haven.settings import Settings


def rails(settings: Settings) -> dict[PaymentRail, Rail]:
    """The payment rails this worker can use: manual always, Stripe when it has an API key."""
    available: dict[PaymentRail, Rail] = {PaymentRail.MANUAL: ManualRail()}
    if PaymentRail.STRIPE in settings.payment_rails:
        available[PaymentRail.STRIPE] = StripeRail(stripe_client(settings))
    return available


def build_activities(
    db: Database, settings: Settings, payment_rails: dict[PaymentRail, Rail] | None = None
) -> list[Callable[..., Any]]:
    sealed = case_keys(settings)
    records = CaseRecords(db, settings.public_base_url)
    screening = PayeeScreening(db, settings.denied_parties_file, sealed)
    risk = RiskAssessor(db)
    budget = BudgetReservations(db)
    payments = Disbursements(db, payment_rails or rails(settings), sealed)
    stripe_events = StripeEvents(db, settings.public_base_url)
    retention = CaseDataRetention(db, sealed)
    # Always registered: on a worker without the Stripe rail a run fails and says why.
    stripe = stripe_client(settings) if PaymentRail.STRIPE in settings.payment_rails else None
    reconciliation = StripeReconciliation(db, stripe, settings.public_base_url)
    return [
        records.load_pinned_policy,
        records.record_event,
        screening.screen_payee,
        risk.assess_risk,
        budget.reserve_budget,
        budget.release_budget,
        payments.start_disbursement,
        stripe_events.apply_transfer_notice,
        reconciliation.open_reconciliation_run,
        reconciliation.reconcile_stripe_day,
        reconciliation.fail_reconciliation_run,
        retention.destroy_expired_case_data,
    ]
