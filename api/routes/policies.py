"""Administrators change the fund's policy: a proposed version is validated and stored, reviewed
(its changes against the active version and a dry run over the last 90 days of requests), then
activated. New requests are pinned to the active version; running requests keep theirs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, Field

from haven.grant_request import Actor, LongText, Strict
from haven.policy_versions import (
    DRY_RUN_DAYS,
    AlreadyActive,
    Review,
    UnknownPolicy,
    activate,
    active_version,
    list_versions,
    record_policy_version,
    review,
    stored_version,
)
from policies import Policy, version_of
from api.permissions import Operation, require
from api.problems import PROBLEM_RESPONSES as PROBLEMS
from api.problems import Problem
from api.services import Svc

router = APIRouter(prefix="/v1/policies", tags=["administration"])
PolicyHash = Annotated[str, Path(pattern=r"^sha256:[0-9a-f]{64}$", description="the version's content hash")]


class ChangeView(BaseModel):
    path: str = Field(description="the setting, dotted; list items by index")
    active: Any = Field(description="its value in the active version (null: not there)")
    proposed: Any = Field(description="its value in this version (null: not there)")


class DryRunView(BaseModel):
    days: int
    requests: int = Field(description="requests received in those days")
    different_approvals: int = Field(description="would have needed a different number of approvals (at their assessed risk tier)")
    over_a_cap: int = Field(description="would have been over a category cap, in a currency not paid, or in too many tranches")
    not_assessed: int = Field(description="not risk-assessed yet, so their approvals are not compared")
    over_a_cap_by_category: dict[str, int]


class PolicyReview(BaseModel):
    hash: str
    name: str
    active: bool
    active_hash: str | None
    changes: list[ChangeView]
    dry_run: DryRunView
    policy: dict[str, Any]


class PolicyVersionView(BaseModel):
    hash: str
    name: str
    recorded_at: datetime
    active: bool


class Activation(Strict):
    note: LongText | None = Field(default=None, description="why, for the audit log")


class ActivationView(BaseModel):
    hash: str
    activated_by: str
    activated_at: datetime
    note: str | None


def _view(result: Review) -> PolicyReview:
    dry = result.dry_run
    return PolicyReview(
        hash=result.version.hash,
        name=result.version.policy.name,
        active=result.active is not None and result.active.hash == result.version.hash,
        active_hash=result.active.hash if result.active else None,
        changes=[ChangeView(path=c.path, active=c.active, proposed=c.proposed) for c in result.changes],
        dry_run=DryRunView(days=DRY_RUN_DAYS, requests=dry.requests, different_approvals=dry.different_approvals,
                           over_a_cap=dry.over_a_cap, not_assessed=dry.not_assessed,
                           over_a_cap_by_category=dry.over_a_cap_by_category),  # fmt: skip
        policy=result.version.policy.model_dump(mode="json"),
    )


async def _stored(svc: Svc, hash: str):
    try:
        return await stored_version(svc.db, hash)
    except UnknownPolicy:
        raise Problem(404, "not-found", f"no policy version {hash}") from None


@router.post("", response_model=PolicyReview, status_code=201, responses={**PROBLEMS, 200: {"model": PolicyReview, "description": "Already recorded"}})
async def propose(body: Policy, response: Response, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.MANAGE_POLICY))]) -> PolicyReview:
    """Validates a policy (the same document as a policy file, as JSON) and records it as a version,
    not yet active; answers with its review. The same document again is the same version (200)."""
    active = await active_version(svc.db)
    if active is not None and body.base_currency != active.policy.base_currency:
        raise Problem(422, "validation-error", f"the base currency cannot change ({active.policy.base_currency}): the ledger is kept in it",
                      errors=[{"field": "base_currency", "message": "must stay the same"}])  # fmt: skip
    version = version_of(body)
    if not await record_policy_version(svc.db, version, actor):
        response.status_code = 200
    return _view(await review(svc.db, version))


@router.get("", response_model=list[PolicyVersionView], responses=PROBLEMS)
async def list_all(svc: Svc, actor: Annotated[Actor, Depends(require(Operation.MANAGE_POLICY))]) -> list[PolicyVersionView]:
    records, activation = await list_versions(svc.db)
    active = activation.policy_hash if activation else None
    return [PolicyVersionView(hash=r.hash, name=r.name, recorded_at=r.created_at, active=r.hash == active) for r in records]


@router.get("/{policy_hash}", response_model=PolicyReview, responses=PROBLEMS)
async def get_review(policy_hash: PolicyHash, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.MANAGE_POLICY))]) -> PolicyReview:
    """A version and its review against the active one, as of now."""
    return _view(await review(svc.db, await _stored(svc, policy_hash)))


@router.post("/{policy_hash}/activation", response_model=ActivationView, status_code=201, responses=PROBLEMS)
async def activate_version(
    policy_hash: PolicyHash, body: Activation, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.MANAGE_POLICY))]
) -> ActivationView:
    """Makes a recorded version the active one: requests submitted from now on are pinned to it
    (every API process within seconds); running requests keep theirs."""
    try:
        activation = await activate(svc.db, actor, policy_hash, body.note)
    except UnknownPolicy:
        raise Problem(404, "not-found", f"no policy version {policy_hash}") from None
    except AlreadyActive:
        raise Problem(409, "conflict", f"{policy_hash} is already the active policy") from None
    if svc.intake.policies is not None:
        svc.intake.policies.invalidate()
    return ActivationView(hash=activation.policy_hash, activated_by=activation.activated_by,
                          activated_at=activation.activated_at, note=activation.note)  # fmt: skip
