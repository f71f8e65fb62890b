"""Small pure functions that apply a pinned policy. No I/O, no clock: safe inside workflows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from haven.grant_request import Category, RiskAssessment, RiskTier, ThreatLevel, TrustLevel, Urgency
from haven.money import Money, convert_minor_units
from policies.model import DecisionTimeline, Policy


class PolicyViolation(ValueError):
    """A request or action that the pinned policy does not allow; the message says why."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def to_base(policy: Policy, money: Money) -> int:
    rule = policy.currencies.get(money.currency)
    if rule is None:
        raise PolicyViolation(f"the fund does not pay in {money.currency}", field="amount.currency")
    base = policy.currencies[policy.base_currency]
    return convert_minor_units(
        money.minor_units, from_exponent=rule.exponent, to_exponent=base.exponent, rate=rule.rate_to_base
    )


def check_intake(policy: Policy, category: Category, amount: Money, tranches: int) -> None:
    """Refuses a submission the policy could never grant, before anything is stored."""
    amount_base = to_base(policy, amount)
    rule = policy.categories[category]
    if amount_base > rule.max_grant:
        raise PolicyViolation(
            f"{category} grants are capped at {rule.max_grant} {policy.base_currency} minor units; "
            f"this request is {amount_base}",
            field="amount.minor_units",
        )
    if rule.tranched:
        if tranches > policy.housing.max_tranches:
            raise PolicyViolation(
                f"{category} is paid in at most {policy.housing.max_tranches} tranches", field="tranches"
            )
        if amount.minor_units < tranches:
            raise PolicyViolation("the amount is too small to split into that many tranches", field="tranches")
    elif tranches != 1:
        raise PolicyViolation(f"{category} is paid in one payment; tranches must be 1", field="tranches")


def approvable_cap_base(policy: Policy, category: Category, prior_granted_base_12_months: int) -> int:
    """The most that may be granted now: the category cap and what is left of the defender's cap."""
    left_for_defender = max(0, policy.per_defender_cap_12_months - prior_granted_base_12_months)
    return min(policy.categories[category].max_grant, left_for_defender)


def room_under_caps(grant_cap: int, defender_cap: int, committed_to_request: int, committed_to_defender: int) -> int:
    """How much more (base minor units) may be committed to a request now: what is left of the
    grant's cap and of the defender's 12-month cap, counting what is reserved and paid less what
    came back. Decided where the money is reserved, under the defender's lock."""
    return max(0, min(grant_cap - committed_to_request, defender_cap - committed_to_defender))


@dataclass(frozen=True)
class ApprovalRequirement:
    caseworker_approvals: int
    director_approval: bool


def approvals_required(policy: Policy, amount_base: int, tier: RiskTier) -> ApprovalRequirement:
    for row in policy.approval_matrix:
        if tier in row.tiers and (row.max_amount is None or amount_base <= row.max_amount):
            return ApprovalRequirement(row.caseworker_approvals, row.director_approval)
    raise AssertionError("a validated policy always has an unbounded row for every tier")


def country_tier(policy: Policy, country: str) -> str:
    for tier, codes in policy.country_risk.items():
        if country in codes:
            return tier
    return "low"


def assess_risk(
    policy: Policy,
    *,
    urgency: Urgency,
    threat_level: ThreatLevel,
    country: str,
    prior_grants_12_months: int,
    prior_granted_base_12_months: int,
    trust_level: TrustLevel,
) -> RiskAssessment:
    model = policy.risk
    factors = {
        "urgency": model.urgency_points[urgency],
        "threat": model.threat_points[threat_level],
        "country": model.country_points[country_tier(policy, country)],  # type: ignore[index]
        "prior_grants": min(model.max_prior_grant_points, model.points_per_prior_grant * prior_grants_12_months),
        "intermediary_trust": model.trust_points[trust_level],
    }
    score = sum(factors.values())
    tier = RiskTier.HIGH if score >= model.high_from else RiskTier.MEDIUM if score >= model.medium_from else RiskTier.LOW
    return RiskAssessment(
        score=score,
        tier=tier,
        factors=factors,
        prior_grants_12_months=prior_grants_12_months,
        prior_granted_base_12_months=prior_granted_base_12_months,
    )


def decision_timeline(policy: Policy, urgency: Urgency) -> DecisionTimeline:
    return policy.decision_timelines[urgency]


def escalation_delay(timeline: DecisionTimeline) -> timedelta:
    return timedelta(hours=timeline.deadline_hours) * timeline.escalate_at


def split_into_tranches(total: Money, count: int) -> list[Money]:
    """Even tranches; the remainder of the division goes to the last so the sum is exact."""
    each, remainder = divmod(total.minor_units, count)
    return [
        Money(minor_units=each + (remainder if n == count - 1 else 0), currency=total.currency)
        for n in range(count)
    ]


def tranches_to_base(policy: Policy, total: Money, count: int) -> int:
    """What a grant paid in `count` tranches costs in base minor units: each tranche converted, as
    each is reserved and paid (it may differ from converting the total by a few minor units)."""
    return sum(to_base(policy, tranche) for tranche in split_into_tranches(total, count))


def report_reminders(policy: Policy) -> list[timedelta]:
    """Offsets after the final payment at which to remind, earliest first, then the due date."""
    due = timedelta(days=policy.follow_up.report_due_days)
    offsets = sorted({due - timedelta(days=d) for d in policy.follow_up.reminder_days_before_due if d < policy.follow_up.report_due_days})
    return offsets
