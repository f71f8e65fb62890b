"""Schemathesis against the running system (`haven run`: dev server, worker, API, SQLite): for
every operation, generated valid and invalid requests, with a token of a role the operation
admits, must never get a 5xx and every response must match the published OpenAPI document
(status code, content type, headers, body schema); calls without a token must be refused.

The figures (cases run, failures) are written to bench/results/schemathesis.json."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from api.app import routes
from api.permissions import PERMISSIONS, operation_of
from haven.localstack import LocalHaven
from haven.settings import REPO_ROOT
from tests.harness import SAMPLE_REQUEST

# 25 per operation and mode keeps `make test` quick; HAVEN_FUZZ_EXAMPLES=200 runs deeper.
EXAMPLES_PER_OPERATION = int(os.environ.get("HAVEN_FUZZ_EXAMPLES", "25"))
# The role whose token each operation is called with: the first the operation admits.
ROLE_PREFERENCE = ["caseworker", "intermediary", "finance", "admin", "director"]
RESULTS = REPO_ROOT / "bench" / "results" / "schemathesis.json"
figures = {"failures": 0, "cases": 0, "operations": set(), "statuses": {}, "started": time.monotonic()}


class Stack:
    def __init__(self, haven: LocalHaven):
        self.haven = haven
        self.tokens = {
            role: haven.token("--role", role, "--sub", f"st-{role}", *(["--org", "ngo-1"] if role == "intermediary" else []))
            for role in ROLE_PREFERENCE
        }
        self.role_for = {}
        for route in routes():
            operation = operation_of(route)
            for method in getattr(route, "methods", ()):
                if operation is not None:
                    permitted = {str(r) for r in PERMISSIONS[operation]}
                    self.role_for[(method, route.path)] = next(r for r in ROLE_PREFERENCE if r in permitted)
        with httpx.Client(base_url=haven.base_url, timeout=10) as http:
            created = http.post(
                "/v1/grant-requests", json=SAMPLE_REQUEST, headers={**self.tokens["intermediary"], "Idempotency-Key": "st-known"}
            )
            assert created.status_code == 202, created.text
            self.known_request = created.json()["id"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    haven = LocalHaven(
        tmp_path_factory.mktemp("schemathesis") / "var", HAVEN_INTAKE_RATE_PER_MINUTE="1000000", HAVEN_LOCAL_STRIPE="true"
    )
    haven.start()
    figures["started"] = time.monotonic()
    try:
        yield Stack(haven)
    finally:
        haven.stop()
        _write_figures()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_every_operation_matches_its_schema(stack, mode):
    loaded = schemathesis.openapi.from_url(f"{stack.haven.base_url}/openapi.json")
    failures = {}
    for result in loaded.get_all_operations():
        operation = result.ok()
        try:
            _fuzz(operation, mode, stack)
        except Unsatisfiable:
            # An operation without parameters or body (the health check) has no invalid input.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except (Exception, BaseExceptionGroup) as failure:  # one operation's counterexample; go on
            failures[operation.label] = failure
            figures["failures"] += 1
    assert not failures, "\n\n".join(f"{label}:\n{failure}" for label, failure in failures.items())


def _fuzz(operation, mode: GenerationMode, stack: Stack) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        # The same cases on every run, so CI is repeatable; HAVEN_FUZZ_EXPLORE=1 tries new ones.
        derandomize=os.environ.get("HAVEN_FUZZ_EXPLORE") != "1",
    )
    def run(case) -> None:
        role = stack.role_for.get((case.method.upper(), case.path))
        # In negative mode the missing or broken token may be the very thing under test.
        negated = mode is GenerationMode.NEGATIVE and case.operation.schema.is_security_param_negated(case)
        headers = dict(stack.tokens[role]) if role and not negated else {}
        # Half the time act on a request that exists, so the refusals and answers of real cases
        # are exercised too, not only "not found" (valid ids only: an invalid one is under test).
        valid = mode is GenerationMode.POSITIVE
        if valid and "request_id" in (case.path_parameters or {}) and hash(repr(case.body)) % 2:
            case.path_parameters["request_id"] = stack.known_request
        response = case.call(headers=headers, timeout=30)
        figures["cases"] += 1
        figures["operations"].add(operation.label)
        figures["statuses"][str(response.status_code)] = figures["statuses"].get(str(response.status_code), 0) + 1
        # Schema-valid but refused by the fund's policy (a currency it does not pay in, an amount
        # over a cap) is a correct 422, so "positive data must be accepted" cannot hold here.
        case.validate_response(response, headers=headers, excluded_checks=[positive_data_acceptance])

    run()


def _write_figures() -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "cases": figures["cases"],
        "operations_failed": figures["failures"],
        "operations": len(figures["operations"]),
        "statuses": dict(sorted(figures["statuses"].items())),
        "seconds": round(time.monotonic() - figures["started"], 1),
        "examples_per_operation": EXAMPLES_PER_OPERATION,
    }
    Path(RESULTS).write_text(json.dumps(result, indent=2))
    print(f"\nschemathesis: {result}")
