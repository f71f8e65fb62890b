"""What a policy change would change, before it is activated: the settings that differ from the
active policy, and a dry run against requests already received (how many would have needed a
different number of approvals, how many would have been over a cap). Pure: the caller reads the
requests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from haven.grant_request import Category, RiskTier
from haven.money import Money
from policies.model import Policy
from policies.rules import PolicyViolation, approvals_required, check_intake, to_base

ABSENT = None  # a setting one of the two policies does not have


@dataclass(frozen=True)
class Change:
    path: str  # dotted, list items by index: "categories.legal_fees.max_grant", "approval_matrix.1"
    active: Any
    proposed: Any


def differences(active: Policy, proposed: Policy) -> list[Change]:
    """Every setting whose value differs, in the order of the policy file."""
    changes: list[Change] = []
    _compare("", active.model_dump(mode="json"), proposed.model_dump(mode="json"), changes)
    return changes


def _compare(path: str, old: Any, new: Any, changes: list[Change]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            _compare(f"{path}.{key}" if path else str(key), old.get(key, ABSENT), new.get(key, ABSENT), changes)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new)):
            _compare(f"{path}.{index}", a, b, changes)
    elif old != new:
        changes.append(Change(path, old, new))


@dataclass(frozen=True)
class PastRequest:
    """What the dry run needs of a request received: its ask, its risk tier as assessed (None if
    not assessed yet) and the policy it is pinned to."""

    category: Category
    amount: Money
    tranche_count: int
    risk_tier: RiskTier | None
    pinned: Policy


@dataclass
class DryRun:
    requests: int = 0
    different_approvals: int = 0  # a different number of caseworkers, or a director where none was needed (or back)
    over_a_cap: int = 0  # over the category's cap, in a currency no longer paid, or in too many tranches
    not_assessed: int = 0  # no risk tier yet: approvals not compared
    over_a_cap_by_category: dict[str, int] = field(default_factory=dict)


def dry_run(proposed: Policy, requests: Iterable[PastRequest]) -> DryRun:
    """Each request against the proposed policy and the one it was pinned to. Approvals are compared
    at the risk tier the request was assessed at (the proposed risk model is not re-applied: that
    needs the defender's history at the time); caps are the category caps and currencies, not the
    per-defender cap."""
    result = DryRun()
    for request in requests:
        result.requests += 1
        try:
            check_intake(proposed, request.category, request.amount, request.tranche_count)
        except PolicyViolation:
            result.over_a_cap += 1
            key = str(request.category)
            result.over_a_cap_by_category[key] = result.over_a_cap_by_category.get(key, 0) + 1
            continue  # refused at intake: no approvals to compare
        if request.risk_tier is None:
            result.not_assessed += 1
            continue
        then = approvals_required(request.pinned, to_base(request.pinned, request.amount), request.risk_tier)
        now = approvals_required(proposed, to_base(proposed, request.amount), request.risk_tier)
        if then != now:
            result.different_approvals += 1
    return result
