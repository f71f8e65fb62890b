"""The fund's staff roster: who can be assigned requests and who is notified by e-mail. People
sign in through the identity provider; the roster links their subject to a name and inbox."""

from __future__ import annotations


from pydantic import ConfigDict, EmailStr, Field, StrictBool, field_validator
from sqlalchemy import select

from haven.audit import record_change
from haven.db import Database, upsert_once_more_on_conflict, utcnow
from haven.db.models import StaffMember
from haven.grant_request import Actor, Role, ShortText, Strict

SUBJECT = r"^[A-Za-z0-9._:|@+-]{1,200}$"
STAFF_ROLES = frozenset({Role.CASEWORKER, Role.DIRECTOR, Role.FINANCE, Role.ADMIN})
# Who can hold a request in the queue.
ASSIGNABLE_ROLES = frozenset({Role.CASEWORKER, Role.DIRECTOR})


class StaffMemberInput(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "Amina K.", "email": "amina@fund.example.org", "roles": ["caseworker"]}]}
    )

    name: ShortText
    email: EmailStr = Field(max_length=320)
    roles: list[Role] = Field(min_length=1, max_length=4)
    active: StrictBool = True

    @field_validator("roles")
    @classmethod
    def _staff_roles(cls, roles: list[Role]) -> list[Role]:
        outside = [str(r) for r in roles if r not in STAFF_ROLES]
        if outside:
            raise ValueError(f"not a staff role: {', '.join(outside)} (intermediaries belong to organisations)")
        return sorted(set(roles))


async def list_staff(db: Database) -> list[StaffMember]:
    async with db.sessions() as session:
        return list(await session.scalars(select(StaffMember).order_by(StaffMember.subject)))


async def save_staff_member(db: Database, actor: Actor, subject: str, data: StaffMemberInput) -> tuple[StaffMember, bool]:
    return await upsert_once_more_on_conflict(lambda: _save_staff_member(db, actor, subject, data))


async def _save_staff_member(db: Database, actor: Actor, subject: str, data: StaffMemberInput) -> tuple[StaffMember, bool]:
    now = utcnow()
    async with db.transaction() as session:
        member = await session.get(StaffMember, subject, with_for_update=True)
        created = member is None
        if member is None:
            member = StaffMember(subject=subject, created_at=now)
            session.add(member)
        member.name, member.email, member.active = data.name, str(data.email), data.active
        member.roles = [str(r) for r in data.roles]
        member.updated_at = now
        await record_change(
            session,
            actor,
            "staff_added" if created else "staff_updated",
            staff=subject,
            roles=member.roles,
            active=member.active,
        )
    return member, created


async def assignable(db: Database, subject: str) -> bool:
    async with db.sessions() as session:
        member = await session.get(StaffMember, subject)
    return member is not None and member.active and bool(ASSIGNABLE_ROLES.intersection(Role(r) for r in member.roles))
