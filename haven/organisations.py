"""Intermediary organisations: who may submit (active or suspended), how much they are trusted,
and where they hear about their requests. Managed by administrators; every change is audited."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from typing import Annotated

import httpx
from pydantic import ConfigDict, EmailStr, Field, StrictBool, StringConstraints, field_validator
from sqlalchemy import select

from haven import destinations
from haven.audit import record_change
from haven.db import Database, upsert_once_more_on_conflict, utcnow
from haven.db.models import Organisation
from haven.grant_request import Actor, ShortText, Strict, TrustLevel
from haven.roster import registered_organisation

ORGANISATION_ID = r"^[a-z0-9][a-z0-9-]{1,62}$"
LOOPBACK_HOSTS = {"localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# check_webhook_url's shape, stated in the API's schema: https (plain http only to this machine),
# a host, no credentials. Whether the host is a public address is checked when it is saved.
WEBHOOK_URL = (
    r"^(https://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])|http://(localhost|127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|\[::1\]))"
    r"(:[0-9]{1,5})?([/?#][^\x00-\x20\x7F]*)?$"
)


def check_webhook_url(url: str) -> str:
    """https only (plain http to this machine is allowed, for development), no credentials, and
    not an address inside a private network: the worker must not be pointed at internal services
    (haven.destinations; a name is resolved and checked when saved and when each delivery is sent).
    Read as the sender reads it (httpx), so both agree on the host."""
    try:
        parts = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise ValueError("must be an absolute https URL") from None
    host = parts.raw_host.decode("ascii")
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError("must be an absolute https URL")
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError("must use https (plain http only to this machine)")
    if parts.userinfo:
        raise ValueError("must not carry credentials; requests are signed instead")
    try:
        address = destinations.host_address(host)
    except ValueError as error:
        raise ValueError(f"host {host}: {error}") from None
    if address is not None and destinations.refusal(address, allow_loopback=True) is not None:
        raise ValueError(f"must point at a public address, not {destinations.NOT_PUBLIC}")
    return url


class OrganisationInput(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Partner Network East Africa",
                    "trust_level": "standard",
                    "active": True,
                    "notification_email": "alerts@partner.example.org",
                    "webhook_url": "https://partner.example.org/haven-webhook",
                }
            ]
        }
    )

    name: ShortText
    trust_level: TrustLevel
    active: StrictBool = True
    notification_email: EmailStr | None = Field(default=None, max_length=320)
    webhook_url: Annotated[str, StringConstraints(max_length=2000)] | None = Field(
        default=None, json_schema_extra={"pattern": WEBHOOK_URL}
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return check_webhook_url(value) if value is not None else None


class UnknownOrganisation(LookupError):
    pass


class OrganisationRefused(ValueError):
    """An id that is the same name as a registered organisation's (haven.identifiers): tokens
    naming either would be taken for the other."""


class NoWebhook(ValueError):
    pass


@dataclass(frozen=True)
class Saved:
    organisation: Organisation
    created: bool
    # Shown once, when a webhook is first configured or its secret rotated; never readable later.
    new_webhook_secret: str | None = None


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


async def list_organisations(db: Database) -> list[Organisation]:
    async with db.sessions() as session:
        return list(await session.scalars(select(Organisation).order_by(Organisation.id)))


async def save_organisation(db: Database, actor: Actor, organisation_id: str, data: OrganisationInput) -> Saved:
    return await upsert_once_more_on_conflict(lambda: _save_organisation(db, actor, organisation_id, data))


async def _save_organisation(db: Database, actor: Actor, organisation_id: str, data: OrganisationInput) -> Saved:
    now = utcnow()
    async with db.transaction() as session:
        organisation = await session.get(Organisation, organisation_id, with_for_update=True)
        created = organisation is None
        if organisation is None:
            namesake = await registered_organisation(session, organisation_id)
            if namesake != organisation_id:
                raise OrganisationRefused(f"{organisation_id!r} is the same name as the registered organisation {namesake!r}")
            organisation = Organisation(id=organisation_id, created_at=now)
            session.add(organisation)
        before = {
            "trust_level": organisation.trust_level,
            "active": organisation.active,
            "notification_email": organisation.notification_email,
            "webhook_url": organisation.webhook_url,
        }
        organisation.name = data.name
        organisation.trust_level = str(data.trust_level)
        organisation.active = data.active
        organisation.notification_email = data.notification_email
        organisation.webhook_url = data.webhook_url
        organisation.updated_at = now
        secret = None
        if not data.webhook_url:
            organisation.webhook_secret = None
        elif data.webhook_url != before["webhook_url"] or not organisation.webhook_secret:
            # A new endpoint gets a new secret: the old receiver's secret must not sign for it.
            secret = organisation.webhook_secret = _new_secret()
        changed = sorted(
            field for field, old in before.items() if created or old != getattr(organisation, field)
        )
        await record_change(
            session,
            actor,
            "organisation_registered" if created else "organisation_updated",
            organisation=organisation_id,
            changed=changed,
            trust_level=organisation.trust_level,
            active=organisation.active,
        )
    return Saved(organisation, created, secret)


async def rotate_webhook_secret(db: Database, actor: Actor, organisation_id: str) -> Saved:
    async with db.transaction() as session:
        organisation = await session.get(Organisation, organisation_id, with_for_update=True)
        if organisation is None:
            raise UnknownOrganisation(organisation_id)
        if not organisation.webhook_url:
            raise NoWebhook(f"organisation {organisation_id} has no webhook URL")
        secret = organisation.webhook_secret = _new_secret()
        organisation.updated_at = utcnow()
        await record_change(session, actor, "webhook_secret_rotated", organisation=organisation_id)
    return Saved(organisation, False, secret)
