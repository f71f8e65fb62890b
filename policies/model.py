"""The schema of a policy file. A policy that does not fit it is refused when loaded."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, WithJsonSchema, model_validator

from haven.grant_request import Category, RiskTier, ThreatLevel, TrustLevel, Urgency


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A rate written as text (to keep every digit) is digits with at most one point, more than zero.
RATE_TEXT = r"^0*([1-9][0-9]*(\.[0-9]+)?|\.[0-9]*[1-9][0-9]*)$"


def _rate_text(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(RATE_TEXT, value):
        raise ValueError("must be a number more than 0, or such a number written with digits and at most one point")
    return value


class CurrencyRule(Rule):
    exponent: int = Field(ge=0, le=4, description="Digits of the minor unit: 2 for EUR, 0 for JPY.")
    rate_to_base: Annotated[
        Decimal,
        BeforeValidator(_rate_text),
        WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": RATE_TEXT}]}),
    ] = Field(gt=0, description="Base-currency units for one unit of this currency.")


class CategoryRule(Rule):
    max_grant: PositiveInt = Field(description="Largest grant in base-currency minor units.")
    tranched: bool = False


class ApprovalRule(Rule):
    """Rows are read in order; the first whose amount bound and tier fit applies."""

    max_amount: PositiveInt | None = Field(description="Inclusive bound in base minor units; null = no bound.")
    tiers: list[RiskTier]
    caseworker_approvals: int = Field(ge=1, le=5)
    director_approval: bool = False


class DecisionTimeline(Rule):
    deadline_hours: PositiveInt
    escalate_at: float = Field(gt=0, lt=1, description="Share of the deadline after which it escalates.")
    on_deadline: Literal["expire", "keep_waiting"]


class FollowUpRule(Rule):
    report_due_days: PositiveInt
    reminder_days_before_due: list[PositiveInt]


class HousingRule(Rule):
    max_tranches: PositiveInt
    interval_days: PositiveInt
    check_in_grace_days: PositiveInt
    check_in_reminder_after_days: PositiveInt


class RiskModel(Rule):
    urgency_points: dict[Urgency, int]
    threat_points: dict[ThreatLevel, int]
    country_points: dict[Literal["low", "elevated", "high"], int]
    points_per_prior_grant: int
    max_prior_grant_points: int
    trust_points: dict[TrustLevel, int]
    medium_from: int
    high_from: int


class Policy(Rule):
    name: str
    base_currency: str = Field(pattern=r"^[A-Z]{3}$")
    currencies: dict[str, CurrencyRule]
    categories: dict[Category, CategoryRule]
    per_defender_cap_12_months: PositiveInt
    approval_matrix: list[ApprovalRule]
    decision_timelines: dict[Urgency, DecisionTimeline]
    information_response_days: PositiveInt
    payment_failed_expiry_days: PositiveInt
    # How long a rail may go unanswered (network errors, 5xx, 429, all retried) before the
    # payment is marked failed and finance is asked to look; whether money moved is then unknown,
    # which the rail's lookup, a webhook or reconciliation settles.
    payment_unanswered_minutes: PositiveInt = 60
    # While a category's budget cannot take an approved request, it is tried again this often (and
    # at once when finance changes an allocation).
    funds_recheck_minutes: PositiveInt = 60
    # Days after a request is over (closed, rejected, withdrawn, expired) until its details are
    # destroyed by crypto-shredding (haven.retention); the ledger and the audit log stay.
    retention_days: PositiveInt = 730
    follow_up: FollowUpRule
    housing: HousingRule
    country_risk: dict[Literal["elevated", "high"], list[str]]
    risk: RiskModel

    @model_validator(mode="after")
    def _complete_and_consistent(self) -> "Policy":
        problems: list[str] = []
        base = self.currencies.get(self.base_currency)
        if base is None or base.rate_to_base != 1:
            problems.append("the base currency must be listed with rate_to_base 1")
        for missing in set(Category) - set(self.categories):
            problems.append(f"categories: no rule for {missing}")
        for missing in set(Urgency) - set(self.decision_timelines):
            problems.append(f"decision_timelines: no rule for {missing}")
        for tier in RiskTier:
            if not any(r.max_amount is None and tier in r.tiers for r in self.approval_matrix):
                problems.append(f"approval_matrix: no unbounded row for tier {tier}")
        for field, table in (("urgency_points", Urgency), ("threat_points", ThreatLevel), ("trust_points", TrustLevel)):
            for missing in set(table) - set(getattr(self.risk, field)):
                problems.append(f"risk.{field}: no points for {missing}")
        if not self.risk.medium_from < self.risk.high_from:
            problems.append("risk: medium_from must be below high_from")
        listed = [c for codes in self.country_risk.values() for c in codes]
        if len(listed) != len(set(listed)):
            problems.append("country_risk: a country is listed in two tiers")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class PolicyVersion(Rule):
    """A policy and the content hash that pins it to requests."""

    hash: str
    policy: Policy
