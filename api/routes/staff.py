"""The staff roster: administrators maintain it; caseworkers and directors read it to hand over."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel

from haven.db.models import StaffMember
from haven.grant_request import Actor
from haven.roster import SUBJECT, RosterRefused, StaffMemberInput, list_staff, save_staff_member
from api.permissions import Operation, require
from api.problems import PROBLEM_RESPONSES as PROBLEMS
from api.problems import Problem
from api.services import Svc

router = APIRouter(prefix="/v1/staff", tags=["administration"])


class StaffMemberView(BaseModel):
    issuer: str
    subject: str
    name: str
    email: str
    roles: list[str]
    active: bool
    created_at: datetime
    updated_at: datetime


def _view(member: StaffMember) -> StaffMemberView:
    return StaffMemberView.model_validate(member, from_attributes=True)


@router.get("", response_model=list[StaffMemberView], responses=PROBLEMS)
async def list_roster(svc: Svc, actor: Annotated[Actor, Depends(require(Operation.LIST_STAFF))]) -> list[StaffMemberView]:
    return [_view(m) for m in await list_staff(svc.db)]


@router.put("/{subject}", response_model=StaffMemberView, responses={**PROBLEMS, 201: {"model": StaffMemberView, "description": "Created"}})
async def put_staff_member(
    subject: Annotated[str, Path(pattern=SUBJECT, description="the person's `sub` at the identity provider")],
    body: StaffMemberInput,
    response: Response,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.MANAGE_STAFF))],
) -> StaffMemberView:
    """Add someone to the roster or change them; `active: false` takes them off it. The subject is
    the person's `sub` at the configured identity provider (HAVEN_JWT_ISSUER), matched exactly;
    409 when it is the same name as someone already on the roster (differing only in case, width,
    invisible characters or look-alike letters)."""
    try:
        member, created = await save_staff_member(svc.db, actor, svc.settings.jwt_issuer, subject, body)
    except RosterRefused as refusal:
        raise Problem(409, "roster-refused", str(refusal)) from None
    if created:
        response.status_code = 201
    return _view(member)
