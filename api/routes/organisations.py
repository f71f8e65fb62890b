"""Administrators manage intermediary organisations: trust level, active or suspended, and where
they are notified. Administrators see nothing of cases."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel

from haven.db.models import Organisation
from haven.destinations import configured_refusal
from haven.grant_request import Actor
from haven.organisations import (
    ORGANISATION_ID,
    NoWebhook,
    OrganisationInput,
    OrganisationRefused,
    UnknownOrganisation,
    list_organisations,
    rotate_webhook_secret,
    save_organisation,
)
from api.permissions import Operation, require
from api.problems import Problem
from api.problems import PROBLEM_RESPONSES as PROBLEMS
from api.services import Svc

router = APIRouter(prefix="/v1/organisations", tags=["administration"])
OrganisationId = Annotated[str, Path(pattern=ORGANISATION_ID, description="lower-case letters, digits and dashes")]


class OrganisationView(BaseModel):
    id: str
    name: str
    trust_level: str
    active: bool
    notification_email: str | None
    webhook_url: str | None
    created_at: datetime
    updated_at: datetime | None


class OrganisationSaved(OrganisationView):
    webhook_secret: str | None = None


def _view(organisation: Organisation) -> OrganisationView:
    return OrganisationView.model_validate(organisation, from_attributes=True)


@router.get("", response_model=list[OrganisationView], responses=PROBLEMS)
async def list_all(svc: Svc, actor: Annotated[Actor, Depends(require(Operation.LIST_ORGANISATIONS))]) -> list[OrganisationView]:
    return [_view(o) for o in await list_organisations(svc.db)]


@router.put("/{organisation_id}", response_model=OrganisationSaved, responses={**PROBLEMS, 201: {"model": OrganisationSaved, "description": "Created"}})
async def put_organisation(
    organisation_id: OrganisationId,
    body: OrganisationInput,
    response: Response,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.MANAGE_ORGANISATIONS))],
) -> OrganisationSaved:
    """Register or change an organisation; `active: false` suspends it (it can no longer submit).
    The webhook signing secret is returned once, when a webhook is first configured."""
    await _webhook_resolves_to_public_addresses(body)
    try:
        saved = await save_organisation(svc.db, actor, organisation_id, body)
    except OrganisationRefused as refusal:
        raise Problem(409, "organisation-refused", str(refusal)) from None
    if saved.created:
        response.status_code = 201
    return OrganisationSaved(**_view(saved.organisation).model_dump(), webhook_secret=saved.new_webhook_secret)


async def _webhook_resolves_to_public_addresses(body: OrganisationInput) -> None:
    """The URL's form was checked with the body; its host name is resolved now, and refused if
    any address it resolves to is not a public one (each delivery checks again)."""
    if not body.webhook_url:
        return
    url = httpx.URL(body.webhook_url)
    refusal = await configured_refusal(url.raw_host.decode("ascii"), url.port or (443 if url.scheme == "https" else 80))
    if refusal:
        message = f"{refusal}: webhooks go to public addresses only"
        raise Problem(422, "validation-error", f"webhook_url: {message}", errors=[{"field": "webhook_url", "message": message}])


@router.post("/{organisation_id}/webhook-secret", response_model=OrganisationSaved, responses=PROBLEMS)
async def rotate_secret(
    organisation_id: OrganisationId,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.ROTATE_WEBHOOK_SECRET))],
) -> OrganisationSaved:
    """A new webhook signing secret, returned once; the old one stops working at once."""
    try:
        saved = await rotate_webhook_secret(svc.db, actor, organisation_id)
    except UnknownOrganisation:
        raise Problem(404, "not-found", f"no organisation {organisation_id}") from None
    except NoWebhook as error:
        raise Problem(409, "no-webhook", str(error)) from None
    return OrganisationSaved(**_view(saved.organisation).model_dump(), webhook_secret=saved.new_webhook_secret)
