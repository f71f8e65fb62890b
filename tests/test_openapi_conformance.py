"""Schemathesis against the running system (`haven run`: dev server, worker, API, SQLite, the local
Stripe server) with every check it has, as each role (and without a token for what no role
guards): for every operation the role may call, the examples, the coverage cases (boundaries,
each part missing or malformed, control characters, methods the path does not take), generated
valid and invalid requests and stateful sequences. Each answer must pass every check: no 5xx;
status, content type, headers and body as the OpenAPI document says; `Allow` naming every method
of the path on a 405 and an OPTIONS; invalid input refused, a request without its token refused;
and a request the schema admits accepted.

What is excluded, and why:
- A valid request answered with a refusal the document lists for its operation is no failure of
  positive_data_acceptance: api.openapi.REFUSALS holds the rules JSON Schema cannot state (the
  fund's policy, a date measured from today, a relation between two fields, the state of the case
  or of the fund), and the answer must match one by status, problem type and the fields it names.
  Every 409 or 422 seen, valid request or not, must be `validation-error` or listed there.
- A 413 to a valid request, only on OPEN_ENDED_BODIES (below): every other body the schema admits
  fits under the limit, which test_every_body_the_schema_admits_fits_the_body_limit proves.
- A valid request naming an id that does not exist answers 404, which schemathesis accepts as it
  is; half of them name a request that exists instead, so real answers are checked too.
- negative_data_rejection also takes 413 as a refusal (a body over the limit is refused before its
  shape is read), besides schemathesis's own list.
- The coverage cases (the same whoever sends them) run under the first role that may call the
  operation; the examples, generated cases and stateful sequences under each role.
- max_response_time is not run: timing on a shared machine is not a property of the API.

Bounded for `make test` (about 30-45 s on two cores): a fixed seed, and HAVEN_FUZZ_EXAMPLES
generated cases per operation and mode (default 3; the coverage cases come on top, about 2,400
requests in all), so every run sends the same requests; HAVEN_FUZZ_EXAMPLES=100
HAVEN_FUZZ_EXPLORE=1 runs deeper with new ones. The figures (requests, answers by status, seconds
by role and phase) are written to bench/results/schemathesis.json."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import random
import re
import time
import zlib
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema
from schemathesis.specs.openapi.checks import RejectedPositiveData

from api.app import create_app, routes
from api.auth import TokenVerifier
from api.openapi import REFUSALS, Refusal
from api.permissions import PERMISSIONS, operation_of
from haven.grant_request import Role
from haven.localstack import LocalHaven
from haven.settings import REPO_ROOT, Settings
from tests.api_harness import assert_problem
from tests.conftest import make_settings
from tests.harness import SAMPLE_REQUEST

EXAMPLES_PER_OPERATION = int(os.environ.get("HAVEN_FUZZ_EXAMPLES", "3"))
SEED = random.randrange(2**32) if os.environ.get("HAVEN_FUZZ_EXPLORE") == "1" else 20261203
RESULTS = REPO_ROOT / "bench" / "results" / "schemathesis.json"
WEBHOOK_SECRET = "whsec_schemathesis_conformance"
JWT_SECRET = "schemathesis-conformance-" + "x" * 32
# Who each role's token names: the dev roster's people (`haven run` seeds them) and a partner.
PEOPLE = {
    "intermediary": ("int-ngo-1", "ngo-1"),
    "caseworker": ("cw-1", None),
    "director": ("dir-1", None),
    "finance": ("fin-1", None),
    "admin": ("adm-1", None),
}
UNGUARDED = "no token"  # the operations no role guards: health, metrics, Stripe's webhooks

# Bodies the schema cannot bound. The body limit (HAVEN_MAX_BODY_BYTES, a 413) holds
# for every operation; every other body's largest schema-valid form fits under it (see the test
# below), so a 413 answering a valid request is a failure there. These take documents whose size
# nothing fixes, so a valid one can be over the limit, and the 413 it then gets is documented.
OPEN_ENDED_BODIES = {
    "POST /v1/policies": "a policy document: its currency, country and approval tables have no fixed size",
    "POST /v1/codec/decode": "Temporal payloads: opaque bytes of any size",
    "POST /v1/codec/encode": "Temporal payloads: opaque bytes of any size",
    "POST /v1/webhooks/stripe": "Stripe's event, as Stripe sends it",
}
# Problem types any operation may answer with: the schema's own (a request that does not fit it)
# and the protocol's. Every other 409 or 422 must be one the document lists for the operation.
GENERIC_PROBLEMS = {"validation-error", "malformed-json"}
REFUSED = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"]


class Stack:
    def __init__(self, haven: LocalHaven):
        self.haven = haven
        issuer = TokenVerifier(Settings(var_dir=haven.var_dir, dev_mode=True, jwt_secret=JWT_SECRET))
        self.tokens = {
            role: {"Authorization": f"Bearer {issuer.issue(sub, [Role(role)], org, timedelta(hours=1))}"}
            for role, (sub, org) in PEOPLE.items()
        }
        self.tokens[UNGUARDED] = {}
        # Each role runs every operation it may call; the coverage cases (the same whoever asks)
        # run under the first of them only.
        self.operations: dict[str, set[str]] = {role: set() for role in self.tokens}
        self.covered_by: dict[str, str] = {}
        for route in routes():
            operation = operation_of(route)
            for method in getattr(route, "methods", ()):
                label = f"{method} {route.path}"
                roles = [r for r in self.tokens if r in {str(p) for p in PERMISSIONS[operation]}] if operation else [UNGUARDED]
                for role in roles:
                    self.operations[role].add(label)
                self.covered_by[label] = roles[0]
        with httpx.Client(base_url=haven.base_url, timeout=10) as http:
            created = http.post(
                "/v1/grant-requests", json=SAMPLE_REQUEST, headers={**self.tokens["intermediary"], "Idempotency-Key": "st-known"}
            )
            assert created.status_code == 202, created.text
            self.known_request = created.json()["id"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    haven = LocalHaven(
        tmp_path_factory.mktemp("schemathesis") / "var",
        HAVEN_INTAKE_RATE_PER_MINUTE="1000000",
        HAVEN_LOCAL_STRIPE="true",
        HAVEN_STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        HAVEN_JWT_SECRET=JWT_SECRET,
    )
    haven.start()
    figures = {"cases": 0, "statuses": {}, "seconds": {}, "phase_seconds": {}}
    figures |= {"examples_per_operation": EXAMPLES_PER_OPERATION, "seed": SEED}
    try:
        stack = Stack(haven)
        stack.figures = figures
        yield stack
    finally:
        haven.stop()
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        figures["statuses"] = dict(sorted(figures["statuses"].items()))
        Path(RESULTS).write_text(json.dumps(figures, indent=2))


@pytest.mark.parametrize("role", [*PEOPLE, UNGUARDED])
def test_every_operation_keeps_what_its_schema_promises(stack, role):
    started = time.monotonic()
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "headers": stack.tokens[role],
            "generation": {"max-examples": EXAMPLES_PER_OPERATION},
            "suppress-health-check": ["all"],
            # schemathesis's refusals, and 413: a body over the limit is refused before its shape is read.
            "checks": {"negative_data_rejection": {"expected-statuses": [*REFUSED, "413"]}},
            "request-timeout": 30,
            # (A filter on the loaded schema would be dropped once any operation has settings.)
            "operations": [
                {"include-name": label, "enabled": False}
                if label not in stack.operations[role]
                else {"include-name": label, "phases": {"coverage": {"enabled": False}}}
                for label in sorted(stack.covered_by)
                if label not in stack.operations[role] or stack.covered_by[label] != role
            ],
        }
    )
    schema = schemathesis.openapi.from_url(f"{stack.haven.base_url}/openapi.json", config=config)
    documented = {
        f"{method.upper()} {path}": REFUSALS.get((method, path), ())
        for path, methods in schema.raw_schema["paths"].items()
        for method in methods
    }

    @schema.hook
    def map_case(context, case):
        # Half of the valid requests act on a request that exists, so the answers of a real case
        # are checked too, not only "not found" (an invalid id is left alone: it is under test).
        if case.meta is not None and case.meta.generation.mode.is_positive:
            if "request_id" in (case.path_parameters or {}) and zlib.crc32(repr(case.body).encode()) % 2:
                case.path_parameters["request_id"] = stack.known_request
            if case.path == "/v1/webhooks/stripe" and isinstance(case.body, dict):
                case.headers = {**(case.headers or {}), "Stripe-Signature": _stripe_signature(case.body)}
        return case

    @schema.hook
    def filter_failure(context, failure, case, response):
        # A valid request refused as the document says it may be is no failure.
        if isinstance(failure, RejectedPositiveData):
            label = f"{case.method.upper()} {case.path}"
            if response.status_code == 413 and label in OPEN_ENDED_BODIES:
                return False
            return _documented(response, documented[label]) is None
        return True

    failures, undocumented, answered = [], [], {}
    phase_started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.PhaseFinished):
            phases = stack.figures["phase_seconds"]
            phases[event.phase.name] = round(phases.get(event.phase.name, 0) + time.monotonic() - phase_started, 1)
        if isinstance(event, (events.PhaseStarted, events.PhaseFinished)):
            phase_started = time.monotonic()
        if isinstance(event, events.ScenarioFinished):
            for case_id, interaction in event.recorder.interactions.items():
                response = interaction.response
                if response is None:
                    continue
                stack.figures["cases"] += 1
                status = str(response.status_code)
                stack.figures["statuses"][status] = stack.figures["statuses"].get(status, 0) + 1
                label = event.recorder.cases[case_id].value.operation.label
                answered.setdefault(label, set()).add(response.status_code)
                if response.status_code in (409, 422):
                    kind = _problem_kind(response.content)
                    listed = any(r.kind == kind and r.status == response.status_code for r in documented[label])
                    if kind not in GENERIC_PROBLEMS and not listed:
                        undocumented.append(f"{label}: {status} {kind} is not in api.openapi.REFUSALS")
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        answer = event.recorder.interactions.get(case_id)
                        reply = answer.response if answer else None
                        reply = f"{reply.status_code} {reply.content[:300]!r}" if reply is not None else ""
                        failures.append(
                            f"[{event.phase.name.lower()}] {failure.operation}: {failure.title} ({check.name})\n"
                            f"{failure.message}\n{check.failure_info.code_sample}\n-> {reply}"
                        )
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"schemathesis could not run: {getattr(event, 'value', None) or event.exception!r}")
    stack.figures["seconds"][role] = round(time.monotonic() - started, 1)
    if role == UNGUARDED:  # the valid events were signed as Stripe signs them, and taken
        assert 200 in answered["POST /v1/webhooks/stripe"], answered["POST /v1/webhooks/stripe"]
    assert not failures and not undocumented, "\n\n".join(sorted(set(failures)) + sorted(set(undocumented)))


def _documented(response, refusals: tuple[Refusal, ...]) -> Refusal | None:
    """The refusal of the document's list this answer is, if it is one."""
    try:
        problem = json.loads(response.content)
    except ValueError:
        return None
    named = {error.get("field") for error in problem.get("errors") or []}
    for refusal in refusals:
        if (
            response.status_code == refusal.status
            and problem.get("type") == f"urn:haven:problem:{refusal.kind}"
            and named <= set(refusal.fields)
        ):
            return refusal
    return None


def _problem_kind(content: bytes) -> str | None:
    try:
        return str(json.loads(content).get("type", "")).removeprefix("urn:haven:problem:")
    except (ValueError, AttributeError):
        return None


def _stripe_signature(body) -> str:
    # Signed over the bytes schemathesis sends (json.dumps of the body), as Stripe signs its own.
    timestamp = int(time.time())
    payload = f"{timestamp}.{json.dumps(body)}".encode()
    return f"t={timestamp},v1={hmac.new(WEBHOOK_SECRET.encode(), payload, hashlib.sha256).hexdigest()}"


# --- the body limit, checked against the schema itself ------------------------------------------


def test_every_body_the_schema_admits_fits_the_body_limit(tmp_path):
    """The largest body each operation's schema admits, written as any client may write it (every
    character as a 12-byte `\\uXXXX\\uXXXX` escape), is under the default limit; only the
    documents no schema can bound (OPEN_ENDED_BODIES) may be over it, and their 413 is documented."""
    limit = Settings.model_fields["max_body_bytes"].default
    document = create_app(make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/db")).openapi()
    largest = {}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            body = operation.get("requestBody")
            if body is not None:
                assert "413" in operation["responses"], f"{method.upper()} {path} does not document the body limit"
                schema = body["content"]["application/json"]["schema"]
                largest[f"{method.upper()} {path}"] = _largest_json(schema, document["components"]["schemas"])
    unbounded = {label for label, size in largest.items() if size > limit}
    assert unbounded == set(OPEN_ENDED_BODIES), {label: largest[label] for label in unbounded ^ set(OPEN_ENDED_BODIES)}


def _largest_json(schema: dict, definitions: dict, depth: int = 0) -> float:
    """An upper bound of the bytes of a JSON value the schema admits (infinite when nothing bounds it)."""
    while "$ref" in schema:
        schema = definitions[schema["$ref"].rsplit("/", 1)[-1]]
    if depth > 30:
        return math.inf
    if "const" in schema or "enum" in schema:
        return max(len(json.dumps(value)) for value in schema.get("enum", [schema.get("const")]))
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return max(_largest_json(option, definitions, depth + 1) for option in schema[combinator])
    kind = schema.get("type")
    if kind == "string":
        if schema.get("format") == "date":
            return len('"2026-12-03"')
        return 2 + 12 * schema["maxLength"] if "maxLength" in schema else _pattern_bound(schema.get("pattern"))
    if kind in ("integer", "number"):
        return 24  # -1.2345678901234567e+308
    if kind == "boolean":
        return len("false")
    if kind == "null":
        return len("null")
    if kind == "array":
        if "maxItems" not in schema:
            return math.inf
        return 2 + schema["maxItems"] * (_largest_json(schema.get("items", {}), definitions, depth + 1) + 1)
    if kind == "object" or "properties" in schema:
        if schema.get("additionalProperties", True) is not False:
            return math.inf
        properties = schema["properties"].items()
        return 2 + sum(len(json.dumps(name)) + 2 + _largest_json(value, definitions, depth + 1) for name, value in properties)
    return math.inf


def _pattern_bound(pattern: str | None) -> float:
    """Bytes of a string a pattern admits: bounded when it repeats nothing without a bound
    (`^acct_[A-Za-z0-9]{1,64}$`), each character counted as a 6-byte escape."""
    if pattern is None:
        return math.inf
    atoms = re.sub(r"\\.|\[(?:\\.|[^\]\\])*\]", "x", pattern)  # an escape or a class is one character
    if re.search(r"[*+]|\{\d*,\}", atoms):
        return math.inf
    repeats = sum(int(most) - 1 for most in re.findall(r"\{(?:\d*,)?(\d+)\}", atoms))
    return 2 + 6 * (len(re.sub(r"\{[\d,]*\}|[\^$()?|]", "", atoms)) + repeats)


# --- 405 ------------------------------------------------------------------------------------------


async def test_a_405_names_every_method_of_the_path(api):
    """Starlette names only the first matching route's methods; RFC 9110 asks for the target's.
    (FastAPI's routes do not answer HEAD, so it is not named.)"""
    for method, path, allowed in [
        ("OPTIONS", "/v1/grant-requests", "GET, POST"),  # two routes share the path
        ("DELETE", "/v1/policies", "GET, POST"),
        ("PATCH", "/v1/reconciliations", "GET, POST"),
        ("GET", "/v1/grant-requests/gr_x/decisions", "POST"),
    ]:
        response = await api.http.request(method, path, headers=api.token("caseworker", "cw-1"))
        assert_problem(response, 405, "method-not-allowed")
        assert response.headers["allow"] == allowed, (method, path)
