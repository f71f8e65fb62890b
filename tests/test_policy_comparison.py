"""A policy change shown before it is activated: the settings that differ, and a dry run against
requests received under the policy they are pinned to."""

from __future__ import annotations

from haven.grant_request import Category, RiskTier
from haven.money import Money
from policies import Policy
from policies.comparison import Change, PastRequest, differences, dry_run


def _changed(policy: Policy, **updates) -> Policy:
    data = policy.model_dump(mode="json")
    for dotted, value in updates.items():
        *parents, last = dotted.split("__")
        place = data
        for key in parents:
            place = place[int(key)] if isinstance(place, list) else place[key]
        place[int(last) if isinstance(place, list) else last] = value
    return Policy.model_validate(data)


def _request(policy: Policy, category=Category.LEGAL_FEES, minor=200_000, currency="EUR", tier=RiskTier.LOW, tranches=1):
    return PastRequest(category, Money(minor_units=minor, currency=currency), tranches, tier, policy)


def test_the_same_policy_differs_in_nothing(default_policy):
    assert differences(default_policy.policy, default_policy.policy) == []


def test_each_changed_setting_is_named_with_both_values(default_policy):
    active = default_policy.policy
    proposed = _changed(active, categories__legal_fees__max_grant=600_000, approval_matrix__0__caseworker_approvals=2,
                        follow_up__reminder_days_before_due=[14, 7, 3])  # fmt: skip
    assert differences(active, proposed) == [
        Change("categories.legal_fees.max_grant", 750_000, 600_000),
        Change("approval_matrix.0.caseworker_approvals", 1, 2),
        Change("follow_up.reminder_days_before_due", [14, 3], [14, 7, 3]),  # a longer list: shown whole
    ]


def test_a_currency_added_and_one_removed(default_policy):
    active = default_policy.policy
    data = active.model_dump(mode="json")
    data["currencies"]["BRL"] = {"exponent": 2, "rate_to_base": "0.17"}
    del data["currencies"]["UGX"]
    changes = differences(active, Policy.model_validate(data))
    assert Change("currencies.UGX", {"exponent": 0, "rate_to_base": "0.00025"}, None) in changes
    assert Change("currencies.BRL", None, {"exponent": 2, "rate_to_base": "0.17"}) in changes


def test_a_dry_run_counts_requests_that_would_need_other_approvals_or_be_over_a_cap(default_policy):
    active = default_policy.policy
    # Four eyes from EUR 1,000 for low and medium risk (it was EUR 2,500); legal fees capped at EUR 4,000.
    proposed = _changed(active, approval_matrix__0__max_amount=100_000, categories__legal_fees__max_grant=400_000)
    requests = [
        _request(active, minor=50_000),  # EUR 500: one caseworker then and now
        _request(active, minor=200_000),  # EUR 2,000: one then, two now
        _request(active, minor=450_000, tier=RiskTier.HIGH),  # over the new legal fees cap
        _request(active, category=Category.SECURE_COMMUNICATIONS, minor=200_000, currency="USD"),  # 1,840 EUR: two now
        _request(active, minor=200_000, tier=None),  # not assessed yet
    ]
    result = dry_run(proposed, requests)
    assert (result.requests, result.different_approvals, result.over_a_cap, result.not_assessed) == (5, 2, 1, 1)
    assert result.over_a_cap_by_category == {"legal_fees": 1}


def test_a_request_in_a_currency_no_longer_paid_is_over_a_cap(default_policy):
    active = default_policy.policy
    data = active.model_dump(mode="json")
    del data["currencies"]["KES"]
    result = dry_run(Policy.model_validate(data), [_request(active, minor=1_000_000, currency="KES")])
    assert result.over_a_cap == 1


def test_each_request_is_compared_with_the_policy_it_was_pinned_to(default_policy):
    active = default_policy.policy
    older = _changed(active, approval_matrix__0__caseworker_approvals=2)  # a request pinned to an older policy
    result = dry_run(active, [_request(older, minor=50_000), _request(active, minor=50_000)])
    assert result.different_approvals == 1
