"""Turns each new outbox row into one delivery per recipient and channel."""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import select

from haven.db import Database
from haven.db.models import Notification, NotificationDelivery, Organisation, StaffMember

log = structlog.get_logger("haven.notifications")

EMAIL, WEBHOOK = "email", "webhook"
BATCH = 100


async def fan_out(db: Database, now: datetime, *, email: bool) -> int:
    """Returns how many outbox rows were dispatched. Safe to repeat and to run in two processes:
    rows are claimed with SKIP LOCKED and (notification, channel, target) is unique."""
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
        staff = list(await session.scalars(select(StaffMember).where(StaffMember.active.is_(True))))
        organisations: dict[str, Organisation | None] = {}
        for notification in pending:
            targets = await _targets(session, notification.audience, staff, organisations, email=email)
            existing = set(
                await session.execute(
                    select(NotificationDelivery.channel, NotificationDelivery.target).where(
                        NotificationDelivery.notification_id == notification.id
                    )
                )
            )
            for channel, target in targets - {tuple(row) for row in existing}:
                session.add(
                    NotificationDelivery(
                        notification_id=notification.id, channel=channel, target=target, status="pending",
                        attempts=0, next_attempt_at=now, created_at=now,
                    )  # fmt: skip
                )
            if not targets:
                log.info("notification_without_recipients", notification=notification.id, audience=notification.audience)
            notification.dispatched_at = now
    return len(pending)


async def _targets(session, audience: str, staff, organisations, *, email: bool) -> set[tuple[str, str]]:
    if audience.startswith("org:"):
        organisation_id = audience.removeprefix("org:")
        if organisation_id not in organisations:
            organisations[organisation_id] = await session.get(Organisation, organisation_id)
        organisation = organisations[organisation_id]
        if organisation is None:
            return set()
        targets = set()
        if email and organisation.notification_email:
            targets.add((EMAIL, organisation.notification_email))
        if organisation.webhook_url and organisation.webhook_secret:
            targets.add((WEBHOOK, organisation.webhook_url))
        return targets
    if not email:
        return set()
    return {(EMAIL, member.email) for member in staff if audience in member.roles}
