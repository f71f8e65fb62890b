"""Every side effect of the lifecycle. Each activity is idempotent: a retry never repeats an effect."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.budget import BudgetReservations
from activities.payments import Disbursements
from activities.records import CaseRecords
from activities.risk import RiskAssessor
from activities.screening import PayeeScreening
from haven.db import Database
from haven.settings import Settings


def build_activities(db: Database, settings: Settings) -> list[Callable[..., Any]]:
    records = CaseRecords(db, settings.public_base_url)
    screening = PayeeScreening(db, settings.denied_parties_file)
    risk = RiskAssessor(db)
    budget = BudgetReservations(db)
    payments = Disbursements(db)
    return [
        records.load_pinned_policy,
        records.record_event,
        screening.screen_payee,
        risk.assess_risk,
        budget.reserve_budget,
        budget.release_budget,
        payments.start_disbursement,
    ]
