"""Who hears about what: turns each new outbox row into one delivery per recipient and channel.

A role audience ("caseworker", "director", "finance") is every active staff member holding the
role, by e-mail; "org:<id>" is the organisation's inbox and its signed webhook, where set."""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from haven.db import Database
from haven.db.models import (
    Notification,
    NotificationDelivery,
    Organisation,
    StaffMember,
)

log = structlog.get_logger("haven.notifications")

EMAIL, WEBHOOK = "email", "webhook"
ORG_PREFIX = "org:"
BATCH = 100


class Recipients:
    """The current recipients of an audience, read within one session (and cached for it)."""

    def __init__(self, session: AsyncSession, *, email: bool):
        self.session = session
        self.email = email
        self._staff: list[StaffMember] | None = None
        self._organisations: dict[str, Organisation | None] = {}

    async def of(self, audience: str) -> set[tuple[str, str]]:
        if audience.startswith(ORG_PREFIX):
            organisation = await self.organisation(audience.removeprefix(ORG_PREFIX))
            if organisation is None:
                return set()
            targets = set()
            if self.email and organisation.notification_email:
                targets.add((EMAIL, organisation.notification_email))
            if organisation.webhook_url and organisation.webhook_secret:
                targets.add((WEBHOOK, organisation.webhook_url))
            elif organisation.webhook_url:
                log.warning("webhook_without_secret", organisation=organisation.id)
            return targets
        if not self.email:
            return set()
        if self._staff is None:
            self._staff = list(await self.session.scalars(select(StaffMember).where(StaffMember.active.is_(True))))
        return {(EMAIL, member.email) for member in self._staff if audience in (member.roles or [])}

    async def organisation(self, organisation_id: str) -> Organisation | None:
        if organisation_id not in self._organisations:
            self._organisations[organisation_id] = await self.session.get(Organisation, organisation_id)
        return self._organisations[organisation_id]


async def fan_out(db: Database, now: datetime, *, email: bool) -> int:
    """Creates the deliveries of up to BATCH undispatched outbox rows and stamps them dispatched,
    in one transaction; returns how many rows it dispatched. Safe to repeat and to run in two
    processes: rows are claimed with SKIP LOCKED (PostgreSQL), and a delivery that already
    exists is not created again."""
    async with db.transaction() as session:
        pending = list(
            await session.scalars(
                select(Notification)
                .where(Notification.dispatched_at.is_(None))
                .order_by(Notification.id)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
        )
        if not pending:
            return 0
        recipients = Recipients(session, email=email)
        rows = await session.execute(
            select(NotificationDelivery.notification_id, NotificationDelivery.channel, NotificationDelivery.target)
            .where(NotificationDelivery.notification_id.in_([n.id for n in pending]))
        )  # fmt: skip
        existing = {tuple(row) for row in rows}
        for notification in pending:
            targets = await recipients.of(notification.audience)
            if not targets:
                # An organisation may choose no channel; fund staff must always be reachable, so an
                # empty roster for a role is an operational error someone has to see.
                report = log.info if notification.audience.startswith("org:") else log.error
                report("notification_without_recipients", notification=notification.id, audience=notification.audience)
            for channel, target in sorted(targets):
                if (notification.id, channel, target) in existing:
                    continue
                session.add(
                    NotificationDelivery(
                        notification_id=notification.id, channel=channel, target=target, status="pending",
                        attempts=0, next_attempt_at=now, created_at=now,
                    )
                )  # fmt: skip
            notification.dispatched_at = now
    return len(pending)
