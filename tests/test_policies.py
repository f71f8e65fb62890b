"""The policy file and the pure rules that apply it."""

from __future__ import annotations

import copy

import pytest
import yaml
from pydantic import ValidationError

from haven.grant_request import Category, RiskTier, ThreatLevel, TrustLevel, Urgency
from haven.money import Money, format_decimal
from haven.settings import REPO_ROOT
from policies import load_policy
from policies.loader import parse_policy
from policies.rules import (
    PolicyViolation,
    approvable_cap_base,
    approvals_required,
    assess_risk,
    check_intake,
    report_reminders,
    split_into_tranches,
    to_base,
)
from policies.screening import load_denied_parties, screen

RAW = yaml.safe_load((REPO_ROOT / "policies" / "default.yaml").read_text())


def test_default_policy_loads_and_its_hash_pins_its_content():
    pinned = load_policy(REPO_ROOT / "policies" / "default.yaml")
    assert pinned.hash.startswith("sha256:") and pinned.hash == parse_policy(yaml.safe_dump(RAW)).hash
    changed = copy.deepcopy(RAW)
    changed["categories"]["legal_fees"]["max_grant"] = 700_000
    assert parse_policy(yaml.safe_dump(changed)).hash != pinned.hash


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p["approval_matrix"].pop(), "no unbounded row for tier"),
        (lambda p: p["currencies"]["EUR"].update(rate_to_base="0.9"), "base currency"),
        (lambda p: p["categories"].pop("safe_housing"), "no rule for safe_housing"),
        (lambda p: p["country_risk"]["elevated"].append("RU"), "listed in two tiers"),
        (lambda p: p["decision_timelines"]["high"].update(escalate_at=1.5), "escalate_at"),
        (lambda p: p["currencies"]["USD"].update(rate_to_base=0.92), None),  # a float rate is read exactly
        (lambda p: p.update(per_defender_cap_12_months=-1), "per_defender_cap_12_months"),
        (lambda p: p.update(unknown_rule=1), "unknown_rule"),
    ],
)
def test_invalid_policies_are_refused_when_loaded(mutate, message):
    policy = copy.deepcopy(RAW)
    mutate(policy)
    if message is None:
        parse_policy(yaml.safe_dump(policy))
        return
    with pytest.raises(ValidationError, match=message):
        parse_policy(yaml.safe_dump(policy))


@pytest.fixture(scope="module")
def policy():
    return load_policy(REPO_ROOT / "policies" / "default.yaml").policy


def test_currency_conversion_rounds_to_the_base_minor_unit(policy):
    assert to_base(policy, Money(minor_units=100_000, currency="USD")) == 92_000
    assert to_base(policy, Money(minor_units=1_000_000, currency="UGX")) == 25_000  # exponent 0
    assert to_base(policy, Money(minor_units=1, currency="COP")) == 0
    with pytest.raises(PolicyViolation, match="does not pay in JPY"):
        to_base(policy, Money(minor_units=1, currency="JPY"))
    assert format_decimal(123_450, 2) == "1234.50" and format_decimal(-5, 2) == "-0.05" and format_decimal(7, 0) == "7"


@pytest.mark.parametrize(
    ("amount", "tier", "caseworkers", "director"),
    [
        (250_000, RiskTier.LOW, 1, False),
        (250_000, RiskTier.HIGH, 2, False),
        (250_001, RiskTier.MEDIUM, 2, False),
        (500_000, RiskTier.HIGH, 2, False),
        (500_001, RiskTier.LOW, 2, True),
    ],
)
def test_approval_matrix(policy, amount, tier, caseworkers, director):
    need = approvals_required(policy, amount, tier)
    assert (need.caseworker_approvals, need.director_approval) == (caseworkers, director)


def test_intake_checks_and_caps(policy):
    check_intake(policy, Category.LEGAL_FEES, Money(minor_units=750_000, currency="EUR"), 1)
    with pytest.raises(PolicyViolation, match="capped"):
        check_intake(policy, Category.LEGAL_FEES, Money(minor_units=750_001, currency="EUR"), 1)
    with pytest.raises(PolicyViolation, match="too small"):
        check_intake(policy, Category.SAFE_HOUSING, Money(minor_units=2, currency="EUR"), 3)
    assert approvable_cap_base(policy, Category.LEGAL_FEES, 0) == 750_000
    assert approvable_cap_base(policy, Category.LEGAL_FEES, 900_000) == 100_000
    assert approvable_cap_base(policy, Category.LEGAL_FEES, 2_000_000) == 0


def test_tranches_add_up_exactly():
    parts = split_into_tranches(Money(minor_units=100_000, currency="EUR"), 3)
    assert [p.minor_units for p in parts] == [33_333, 33_333, 33_334]
    assert sum(p.minor_units for p in parts) == 100_000


def test_risk_score_and_tier(policy):
    low = assess_risk(policy, urgency=Urgency.NORMAL, threat_level=ThreatLevel.MODERATE, country="KE",
                      prior_grants_12_months=0, prior_granted_base_12_months=0, trust_level=TrustLevel.STANDARD)  # fmt: skip
    assert (low.score, low.tier) == (35, RiskTier.LOW)
    high = assess_risk(policy, urgency=Urgency.CRITICAL, threat_level=ThreatLevel.SEVERE, country="BY",
                       prior_grants_12_months=5, prior_granted_base_12_months=0, trust_level=TrustLevel.LOW)  # fmt: skip
    assert high.factors == {"urgency": 30, "threat": 40, "country": 20, "prior_grants": 30, "intermediary_trust": 20}
    assert high.tier == RiskTier.HIGH


def test_report_reminders_come_before_the_due_date(policy):
    offsets = report_reminders(policy)
    assert [o.days for o in offsets] == [46, 57]


@pytest.mark.parametrize(
    ("name", "hit"),
    [
        ("Northwind Security Services", True),
        ("NORTHWIND SECURITY SERVICES LTD.", True),
        ("Sidorov, Ivan Petrovich", True),
        ("Orion Surveillance", True),
        ("Orión Surveillance", True),
        ("Northwind Legal Aid", False),
        ("Avocats Sans Frontières", False),
        ("", False),
    ],
)
def test_screening_matches_despite_case_accents_order_and_suffixes(name, hit):
    denied = load_denied_parties(REPO_ROOT / "policies" / "denied_parties.yaml")
    assert screen(name, denied).hit is hit
