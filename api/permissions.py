"""Who may do what: the one permission table, enforced by `require` on every route.

Business rules that depend on the case (four eyes, conflicts of interest, the approval matrix)
are the workflow's; this table says only which roles may reach an operation at all, and
organisation scoping says which requests they can see."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import Depends

from haven.grant_request import Actor, Role
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
    RETRY_PAYMENT = "retry a failed payment"
    CHECK_IN = "check in for a housing tranche"
    SUBMIT_REPORT = "submit the follow-up report"
    ACCEPT_REPORT = "accept the follow-up report"
    WITHDRAW = "withdraw a request"


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
}

# Intermediaries see and act on their own organisation's requests only.
ORGANISATION_SCOPED: frozenset[Role] = frozenset({R.INTERMEDIARY})
# Who may read the case narrative and the defender's details; finance sees the payee only.
CASE_READERS: frozenset[Role] = frozenset({R.INTERMEDIARY, R.CASEWORKER, R.DIRECTOR})


def require(operation: Operation):
    allowed = PERMISSIONS[operation]

    async def dependency(actor: Annotated[Actor, Depends(current_actor)]) -> Actor:
        if not allowed.intersection(actor.roles):
            raise Problem(403, "forbidden", f"your roles may not {operation.value}")
        if operation is Operation.SUBMIT and not actor.organisation:
            raise Problem(403, "forbidden", "an intermediary's token must name its organisation (claim 'org')")
        return actor

    return dependency


def scoped_to_organisation(actor: Actor) -> str | None:
    """The organisation an actor is confined to, or None when they may see every request."""
    if set(actor.roles) <= ORGANISATION_SCOPED:
        return actor.organisation or "\x00no-organisation"
    return None


def may_read_case(actor: Actor) -> bool:
    return bool(CASE_READERS.intersection(actor.roles))
