"""The OpenAPI document as integrators need it: the bearer scheme on every guarded operation with
the roles it admits, and errors documented as what they are (application/problem+json), listing
only the problems an operation can actually answer with.

The schema states every rule on a request's shape. What it cannot state (a relation between two
fields, a date measured from today, the fund's policy, the state of the case or of the fund) is
listed in REFUSALS: each operation's answer, problem type and the fields it names, written into
that answer's description. tests/test_openapi_conformance.py holds the server to both: a request
the schema admits is answered 2xx, or with one of these refusals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.permissions import ORGANISATION_SCOPED, PERMISSIONS, operation_of
from api.problems import PROBLEM_JSON, TITLES
from haven.exports.spec import MAX_PERIOD_DAYS
from haven.reconciliation import RECONCILABLE_DAYS

SCHEME = "bearer"
BODY_PROBLEMS = ("400", "413", "415")


@dataclass(frozen=True)
class Refusal:
    """A request that fits the schema, refused: answered `status` with problem type `kind`,
    naming (in `errors[].field`) only `fields`."""

    status: int
    kind: str
    rule: str
    fields: tuple[str, ...] = ()


_ACTION = Refusal(
    409, "action-refused", "the request's state does not allow it now (the detail says why), or its details were erased"
)
_PERIOD = Refusal(422, "validation-error", f"`to` must be after `from`, and at most {MAX_PERIOD_DAYS} days later", ("to",))
_PAYLOADS = Refusal(422, "payload-refused", "a payload is sealed under a key this deployment does not hold")

REFUSALS: dict[tuple[str, str], tuple[Refusal, ...]] = {
    ("post", "/v1/grant-requests"): (
        Refusal(422, "intake-policy", "the fund's policy refuses it: a currency or rail the fund does not pay in, an amount "
                "over the category's cap, or more tranches than the category is paid in",
                ("amount.currency", "amount.minor_units", "tranches", "payee.rail")),
        Refusal(422, "intake-idempotency", "this Idempotency-Key was used for a different request", ("Idempotency-Key",)),
        Refusal(403, "intake-forbidden", "the organisation is not registered with the fund, or is suspended"),
    ),  # fmt: skip
    ("put", "/v1/grant-requests/{request_id}/assignment"): (
        Refusal(422, "assignment-refused", "the assignee is not an active caseworker or director on the roster", ("assignee",)),
        Refusal(409, "assignment-refused", "the request is no longer in the queue"),
    ),
    **{
        ("post", f"/v1/grant-requests/{{request_id}}/{action}"): (_ACTION,)
        for action in ("decisions", "screening-clearance", "information", "payment-failures", "check-ins",
                       "reports", "report-acceptance", "withdraw")  # fmt: skip
    },
    ("post", "/v1/grant-requests/{request_id}/payments"): (
        Refusal(422, "validation-error", "`paid_on` must not be in the future, nor before the request was approved", ("paid_on",)),
        _ACTION,
    ),
    ("post", "/v1/grant-requests/{request_id}/payment-retries"): (
        Refusal(422, "rail-unavailable", "this fund does not pay through the rail, or the payee has no account for it", ("rail",)),
        _ACTION,
    ),
    ("post", "/v1/grant-requests/{request_id}/refunds"): (
        Refusal(422, "validation-error", "`received_on` must not be in the future, nor before the tranche was paid",
                ("received_on",)),
        Refusal(409, "refund-refused", "the tranche is not paid, is paid in another currency, more would come back than "
                "was paid, or the reference is recorded with another amount"),
    ),  # fmt: skip
    ("post", "/v1/grant-requests/{request_id}/erasure"): (
        Refusal(409, "erasure-refused", "only a request that is over (closed, rejected, withdrawn, expired) is erased"),
    ),
    ("put", "/v1/budget/allocations/{category}/{starts_on}"): (
        Refusal(422, "validation-error", "the amount must be in the fund's base currency", ("amount.currency",)),
        Refusal(409, "allocation-refused", "the period ends before it starts, overlaps another of the category, or the "
                "amount is less than is already reserved or paid from it"),
    ),  # fmt: skip
    ("get", "/v1/budget/summary"): (_PERIOD,),
    ("get", "/v1/exports/{kind}"): (_PERIOD, Refusal(409, "export-failed", "the stored data cannot be exported as it is")),
    ("put", "/v1/organisations/{organisation_id}"): (
        Refusal(422, "validation-error", "`webhook_url` must reach a public address (its host name is resolved and checked)",
                ("webhook_url",)),
        Refusal(409, "organisation-refused", "the change is refused (the detail says why)"),
    ),  # fmt: skip
    ("post", "/v1/organisations/{organisation_id}/webhook-secret"): (
        Refusal(409, "no-webhook", "the organisation has no webhook URL"),
    ),
    ("post", "/v1/policies"): (
        Refusal(422, "validation-error", "the policy must be complete and consistent: every category and urgency has its "
                "rule, the base currency is listed at rate 1, each risk tier has an unbounded approval row, `medium_from` "
                "is below `high_from`, and no country is in two tiers", ("body",)),
        Refusal(422, "validation-error", "the base currency never changes: the ledger is kept in it", ("base_currency",)),
    ),  # fmt: skip
    ("post", "/v1/policies/{policy_hash}/activation"): (Refusal(409, "conflict", "the version is already active"),),
    ("put", "/v1/staff/{subject}"): (
        Refusal(409, "roster-refused", "someone on the roster has the same name, differing only in case, width, invisible "
                "characters or look-alike letters"),
    ),  # fmt: skip
    ("post", "/v1/reconciliations"): (
        Refusal(422, "validation-error", f"`day` must not be in the future nor more than {RECONCILABLE_DAYS} days back",
                ("day",)),
        Refusal(409, "stripe-not-configured", "this deployment does not pay through Stripe"),
    ),  # fmt: skip
    ("post", "/v1/codec/decode"): (_PAYLOADS,),
    ("post", "/v1/codec/encode"): (_PAYLOADS,),
    ("post", "/v1/webhooks/stripe"): (
        Refusal(400, "invalid-signature", "`Stripe-Signature` does not verify with the endpoint's secret, or is stale"),
    ),
}


def install(app: FastAPI, routes: list, *, max_body_bytes: int | None = None) -> None:
    guarded = {(route.path, method.lower()): operation_of(route) for route in routes for method in getattr(route, "methods", ())}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "An access token from the fund's identity provider (OIDC), with the user's "
                "roles and, for intermediaries, their organisation. See the README.",
            }
        }
        for path, methods in schema["paths"].items():
            for method, operation in methods.items():
                permitted = guarded.get((path, method))
                if permitted is not None:
                    roles = sorted(str(r) for r in PERMISSIONS[permitted])
                    scoped = [str(r) for r in ORGANISATION_SCOPED if r in PERMISSIONS[permitted]]
                    note = f"\n\n**Roles:** {', '.join(roles)}" + (
                        f" ({', '.join(scoped)}: own organisation only)" if scoped else ""
                    )
                    operation["description"] = (operation.get("description") or "") + note
                    operation["security"] = [{SCHEME: []}]
                _problems_as_problems(path, method, operation)
                _refusals(REFUSALS.get((method, path), ()), operation, max_body_bytes)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def _problems_as_problems(path: str, method: str, operation: dict[str, Any]) -> None:
    responses = operation.get("responses", {})
    if "requestBody" not in operation:
        for code in BODY_PROBLEMS:
            responses.pop(code, None)
    if "{" not in path:
        responses.pop("404", None)
    if not (path == "/v1/grant-requests" and method == "post"):
        responses.pop("429", None)
    if method == "get":
        responses.pop("409", None)
    if "security" not in operation:
        for code in ("401", "403"):
            responses.pop(code, None)
    for code, response in responses.items():
        if code.startswith(("4", "5")):
            content = response.get("content", {})
            schema = content.get("application/json", {}).get("schema") or content.get(PROBLEM_JSON, {}).get("schema")
            if schema:
                response["content"] = {PROBLEM_JSON: {"schema": schema}}


def _refusals(refusals: tuple[Refusal, ...], operation: dict[str, Any], max_body_bytes: int | None) -> None:
    responses = operation.setdefault("responses", {})
    if "413" in responses and max_body_bytes:
        responses["413"]["description"] = f"The body is over {max_body_bytes} bytes, as sent."
    if "422" in responses:
        responses["422"]["description"] = (
            f"{TITLES[422]}.\n- `validation-error`: the request does not fit this schema; `errors` names each field"
        )
    for refusal in refusals:
        problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemBody"}}}
        response = responses.setdefault(str(refusal.status), {"description": TITLES[refusal.status], "content": problem})
        fields = f" ({', '.join(f'`{f}`' for f in refusal.fields)})" if refusal.fields else ""
        response["description"] += f"\n- `{refusal.kind}`{fields}: {refusal.rule}"
