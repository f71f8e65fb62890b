"""Who may do what: the one permission table, enforced by `require` on every route.

Business rules that depend on the case (four eyes, conflicts of interest, the approval matrix)
are the workflow's; this table says only which roles may reach an operation at all, and
organisation scoping says which requests they can see."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request

from haven.grant_request import Actor, Role
from haven.roster import NotAdmitted, admit
from api.auth import current_actor
from api.problems import Problem

R = Role


class Operation(StrEnum):
    SUBMIT = "submit a grant request"
    READ = "read a grant request"
    LIST = "list grant requests"
    DECIDE = "decide (approve, reject, request information)"
    CLEAR_SCREENING = "clear a screening hit"
    PROVIDE_INFORMATION = "answer an information request"
    RECORD_PAYMENT = "record a manual payment"
    RECORD_PAYMENT_FAILURE = "record a failed payment"
    RETRY_PAYMENT = "retry a failed payment, on the same rail or another"
    CHECK_IN = "check in for a housing tranche"
    SUBMIT_REPORT = "submit the follow-up report"
    ACCEPT_REPORT = "accept the follow-up report"
    WITHDRAW = "withdraw a request"
    ASSIGN = "assign or hand over a request"
    LIST_STAFF = "list the staff roster"
    MANAGE_STAFF = "add or change a staff member"
    LIST_ORGANISATIONS = "list organisations"
    MANAGE_ORGANISATIONS = "register, suspend or change an organisation"
    ROTATE_WEBHOOK_SECRET = "rotate an organisation's webhook secret"
    RECONCILE = "reconcile a day's Stripe transfers with the ledger"
    READ_RECONCILIATION = "read reconciliation reports"
    RECORD_REFUND = "record money returned to the fund after payment"
    READ_BUDGET = "read budget allocations and balances"
    MANAGE_BUDGET = "set a category's budget allocation for a period"
    EXPORT = "export the ledger or the audit log"
    READ_SUMMARY = "read the fund's totals and open commitments"
    VERIFY_AUDIT = "verify the audit log's hash chain"
    ERASE = "erase a request that is over (its details destroyed for good)"
    DECODE_PAYLOADS = "open or seal Temporal payloads for the web UI (opening is audited)"
    MANAGE_POLICY = "propose, review and activate a policy version"


PERMISSIONS: dict[Operation, frozenset[Role]] = {
    Operation.SUBMIT: frozenset({R.INTERMEDIARY}),
    Operation.READ: frozenset({R.INTERMEDIARY, R.CASEWORKER, R.DIRECTOR, R.FINANCE}),
    Operation.LIST: frozenset({R.INTERMEDIARY, R.CASEWORKER, R.DIRECTOR, R.FINANCE}),
    Operation.DECIDE: frozenset({R.CASEWORKER, R.DIRECTOR}),
    Operation.CLEAR_SCREENING: frozenset({R.CASEWORKER, R.DIRECTOR}),
    Operation.PROVIDE_INFORMATION: frozenset({R.INTERMEDIARY}),
    Operation.RECORD_PAYMENT: frozenset({R.FINANCE}),
    Operation.RECORD_PAYMENT_FAILURE: frozenset({R.FINANCE}),
    Operation.RETRY_PAYMENT: frozenset({R.FINANCE}),
    Operation.CHECK_IN: frozenset({R.INTERMEDIARY}),
    Operation.SUBMIT_REPORT: frozenset({R.INTERMEDIARY}),
    Operation.ACCEPT_REPORT: frozenset({R.CASEWORKER, R.DIRECTOR}),
    Operation.WITHDRAW: frozenset({R.INTERMEDIARY}),
    Operation.ASSIGN: frozenset({R.CASEWORKER, R.DIRECTOR}),
    Operation.LIST_STAFF: frozenset({R.CASEWORKER, R.DIRECTOR, R.ADMIN}),
    Operation.MANAGE_STAFF: frozenset({R.ADMIN}),
    Operation.LIST_ORGANISATIONS: frozenset({R.ADMIN}),
    Operation.MANAGE_ORGANISATIONS: frozenset({R.ADMIN}),
    Operation.ROTATE_WEBHOOK_SECRET: frozenset({R.ADMIN}),
    Operation.RECONCILE: frozenset({R.FINANCE}),
    Operation.READ_RECONCILIATION: frozenset({R.FINANCE, R.DIRECTOR}),
    Operation.RECORD_REFUND: frozenset({R.FINANCE}),
    Operation.READ_BUDGET: frozenset({R.FINANCE, R.DIRECTOR}),
    Operation.MANAGE_BUDGET: frozenset({R.FINANCE}),
    Operation.EXPORT: frozenset({R.FINANCE}),
    Operation.READ_SUMMARY: frozenset({R.FINANCE, R.DIRECTOR}),
    Operation.VERIFY_AUDIT: frozenset({R.FINANCE, R.DIRECTOR, R.ADMIN}),
    Operation.ERASE: frozenset({R.ADMIN}),
    Operation.DECODE_PAYLOADS: frozenset({R.CASEWORKER, R.DIRECTOR}),
    Operation.MANAGE_POLICY: frozenset({R.ADMIN}),
}

# Intermediaries see and act on their own organisation's requests only.
ORGANISATION_SCOPED: frozenset[Role] = frozenset({R.INTERMEDIARY})
# Who may read the case narrative and the defender's details; finance sees the payee only.
CASE_READERS: frozenset[Role] = frozenset({R.INTERMEDIARY, R.CASEWORKER, R.DIRECTOR})


def require(operation: Operation):
    allowed = PERMISSIONS[operation]

    async def dependency(request: Request, actor: Annotated[Actor, Depends(current_actor)]) -> Actor:
        try:
            actor = await admit(request.app.state.services.db, actor)
        except NotAdmitted as refusal:
            raise Problem(403, "forbidden", str(refusal)) from None
        scoped = ORGANISATION_SCOPED.intersection(actor.roles)
        if scoped and not actor.organisation:
            raise Problem(
                403,
                "forbidden",
                "an intermediary's token must name its organisation (the claim set by HAVEN_JWT_ORGANISATION_CLAIM)",
            )
        if not allowed.intersection(actor.roles):
            raise Problem(403, "forbidden", f"your roles may not {operation.value}")
        return actor

    dependency.operation = operation  # lets the permission table be printed from the routes themselves
    return dependency


def operation_of(route) -> Operation | None:
    """The operation a route requires, read from its dependencies."""
    dependant = getattr(route, "dependant", None)  # plain routes (docs, openapi.json) have none
    for dependency in dependant.dependencies if dependant else ():
        operation = getattr(dependency.call, "operation", None)
        if operation is not None:
            return operation
    return None


def permission_table(routes) -> str:
    """The README's permission table, built from the routes and PERMISSIONS (a test keeps them equal)."""
    roles = list(Role)
    lines = [
        "| Endpoint | Operation | " + " | ".join(r.value for r in roles) + " |",
        "|---|---|" + "---|" * len(roles),
    ]
    for route in routes:
        operation = operation_of(route)
        if operation is None:
            continue
        for method in sorted(route.methods):
            marks = []
            for role in roles:
                if role not in PERMISSIONS[operation]:
                    marks.append("")
                elif role in ORGANISATION_SCOPED:
                    marks.append("own org")
                elif operation is Operation.READ and role not in CASE_READERS:
                    marks.append("payment data, no narrative")
                else:
                    marks.append("yes")
            lines.append(f"| `{method} {route.path}` | {operation.value} | " + " | ".join(marks) + " |")
    return "\n".join(lines)


def scoped_to_organisation(actor: Actor) -> str | None:
    """The organisation an actor is confined to, or None when they may see every request.
    (`require` has already refused scoped actors without an organisation or with staff roles.)"""
    if ORGANISATION_SCOPED.intersection(actor.roles):
        return actor.organisation
    return None


def may_read_case(actor: Actor) -> bool:
    return bool(CASE_READERS.intersection(actor.roles))
