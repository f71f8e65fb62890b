"""The fund's staff roster: who the fund's people are. People sign in through the identity
provider; the roster, keyed by the provider's issuer and the person's stable subject, says whether
they are staff, which roles the fund gives them, whether they are active, and where they are
notified. A token alone makes nobody staff: every staff action is taken by an active rostered
person, with a role both the token and the roster give (`admit`).

How subjects are matched: a token's subject must equal a roster subject exactly (as OpenID Connect
compares them), under the same issuer. And since people are compared by the canonical form of their
subject (haven.identifiers.person_key), the roster never holds two subjects of one issuer that are
the same name (`cw-1` and `CW-1`, or one with an invisible character): the second is refused."""

from __future__ import annotations


from pydantic import ConfigDict, EmailStr, Field, StrictBool, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from haven.audit import record_change
from haven.db import Database, upsert_once_more_on_conflict, utcnow
from haven.db.models import Organisation, StaffMember
from haven.grant_request import Actor, Role, ShortText, Strict
from haven.identifiers import canonical, person_key

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
    roles: list[Role] = Field(
        min_length=1, max_length=4, json_schema_extra={"items": {"type": "string", "enum": sorted(str(r) for r in STAFF_ROLES)}}
    )  # _staff_roles, stated in the schema
    active: StrictBool = True

    @field_validator("roles")
    @classmethod
    def _staff_roles(cls, roles: list[Role]) -> list[Role]:
        outside = [str(r) for r in roles if r not in STAFF_ROLES]
        if outside:
            raise ValueError(f"not a staff role: {', '.join(outside)} (intermediaries belong to organisations)")
        return sorted(set(roles))


class RosterRefused(ValueError):
    """A roster change that would make one person two (a subject that is the same name as another's)."""


class NotAdmitted(Exception):
    """A token the fund does not accept for what it asks: not an active rostered person with the
    role, or staff roles mixed with a partner's. The message says which."""


async def list_staff(db: Database) -> list[StaffMember]:
    async with db.sessions() as session:
        return list(await session.scalars(select(StaffMember).order_by(StaffMember.issuer, StaffMember.subject)))


async def save_staff_member(
    db: Database, actor: Actor, issuer: str, subject: str, data: StaffMemberInput
) -> tuple[StaffMember, bool]:
    return await upsert_once_more_on_conflict(lambda: _save_staff_member(db, actor, issuer, subject, data))


async def _save_staff_member(
    db: Database, actor: Actor, issuer: str, subject: str, data: StaffMemberInput
) -> tuple[StaffMember, bool]:
    now = utcnow()
    async with db.transaction() as session:
        member = await session.get(StaffMember, (issuer, subject), with_for_update=True)
        created = member is None
        if member is None:
            key = canonical(subject)
            namesake = await session.scalar(
                select(StaffMember.subject).where(
                    StaffMember.issuer == issuer, StaffMember.subject_key == key, StaffMember.subject != subject
                )
            )
            if namesake is not None:
                raise RosterRefused(
                    f"{subject!r} is the same name as {namesake!r}, already on the roster (they differ only in case, "
                    "width, invisible characters or look-alike letters); one person is on the roster once"
                )
            member = StaffMember(issuer=issuer, subject=subject, subject_key=key, created_at=now)
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


async def assignable(db: Database, issuer: str, subject: str) -> bool:
    async with db.sessions() as session:
        member = await session.get(StaffMember, (issuer, subject))
    return member is not None and member.active and bool(ASSIGNABLE_ROLES.intersection(Role(r) for r in member.roles))


async def registered_organisation(session: AsyncSession, claim: str | None) -> str | None:
    """The registered organisation a token's organisation claim names, however it is written; a
    claim that names none stays as it is (intake refuses it; for staff it still marks a conflict)."""
    if not claim:
        return None
    if await session.get(Organisation, claim) is not None:
        return claim
    registered = await session.scalar(select(Organisation.id).where(Organisation.id_key == canonical(claim)))
    return registered if registered is not None else claim


async def admit(db: Database, actor: Actor) -> Actor:
    """The token's actor as the fund knows them: staff roles only as the roster gives them, the
    organisation as registered, and `person`, which every rule comparing people uses."""
    assert actor.issuer is not None, "tokens always carry their issuer"
    staff_roles = STAFF_ROLES.intersection(actor.roles)
    async with db.sessions() as session:
        organisation = await registered_organisation(session, actor.organisation)
        if not staff_roles:
            return actor.model_copy(update={"organisation": organisation, "person": person_key(actor.issuer, actor.subject)})
        if Role.INTERMEDIARY in actor.roles:
            # Partners and fund staff are different people; one token holding both would escape
            # organisation scoping through its staff role.
            raise NotAdmitted("a token may not combine the intermediary role with staff roles")
        member = await session.get(StaffMember, (actor.issuer, actor.subject))
    if member is None or not member.active:
        raise NotAdmitted(
            f"{actor.subject!r} is not an active member of the fund's staff roster; an administrator adds people "
            "to it (PUT /v1/staff/{subject}) before they act as staff"
        )
    roles = [role for role in actor.roles if role in staff_roles and str(role) in member.roles]
    if not roles:
        raise NotAdmitted(
            f"the roster gives {actor.subject!r} the roles {', '.join(member.roles)}, none of which the token carries"
        )
    return actor.model_copy(
        update={"roles": roles, "organisation": organisation, "person": person_key(member.issuer, member.subject)}
    )
