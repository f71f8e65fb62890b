"""The dispatcher: fans out new outbox rows, then delivers what is due, retrying with back-off.

A delivery is claimed by pushing its next attempt a lease into the future (in a short
transaction), sent outside any transaction, then marked delivered or failed. If the process
dies mid-send the lease runs out and it is sent again: delivery is at least once, and every
message carries a stable id for the receiver to deduplicate."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select

from haven.db import Database, utcnow
from haven.db.models import Notification, NotificationDelivery, Organisation
from haven.notifications.fanout import EMAIL, WEBHOOK, fan_out
from haven.notifications.mail import mail_transport
from haven.notifications.message import Message
from haven.notifications.webhooks import WebhookSender
from haven.settings import Settings

log = structlog.get_logger("haven.notifications")

LEASE = timedelta(minutes=5)
MAX_BACKOFF = timedelta(hours=6)
BATCH = 20


@dataclass
class Round:
    dispatched: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


class NotificationDispatcher:
    def __init__(self, db: Database, settings: Settings, clock: Callable[[], datetime] = utcnow):
        self.db = db
        self.settings = settings
        self.clock = clock
        self.mail = mail_transport(settings)
        self.webhooks = WebhookSender(settings.webhook_timeout_seconds)
        if self.mail is None:
            log.warning("email_notifications_off", reason="no SMTP host configured (HAVEN_SMTP_HOST)")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as error:  # a database hiccup must not end notification delivery
                log.error("notification_round_failed", error=type(error).__name__)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.notification_poll_seconds)

    async def run_once(self) -> Round:
        result = Round(dispatched=await fan_out(self.db, self.clock(), email=self.mail is not None))
        for delivery_id in await self._claim_due():
            outcome = await self._deliver(delivery_id)
            setattr(result, outcome, getattr(result, outcome) + 1)
        return result

    async def _claim_due(self) -> list[int]:
        now = self.clock()
        async with self.db.transaction() as session:
            due = list(
                await session.scalars(
                    select(NotificationDelivery)
                    .where(NotificationDelivery.status == "pending", NotificationDelivery.next_attempt_at <= now)
                    .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.id)
                    .limit(BATCH)
                    .with_for_update(skip_locked=True)
                )
            )
            for delivery in due:
                delivery.attempts += 1
                delivery.next_attempt_at = now + LEASE
        return [d.id for d in due]

    async def _deliver(self, delivery_id: int) -> str:
        async with self.db.sessions() as session:
            delivery = await session.get(NotificationDelivery, delivery_id)
            notification = await session.get(Notification, delivery.notification_id)
            secret = None
            if delivery.channel == WEBHOOK:
                organisation = await session.get(Organisation, notification.audience.removeprefix("org:"))
                secret = organisation.webhook_secret if organisation else None
        message = Message.of(notification)
        try:
            await self._send(delivery, message, secret)
        except Exception as error:
            return await self._failed(delivery, error)
        async with self.db.transaction() as session:
            row = await session.get(NotificationDelivery, delivery_id)
            row.status, row.delivered_at, row.last_error = "delivered", self.clock(), None
        return "delivered"

    async def _send(self, delivery: NotificationDelivery, message: Message, secret: str | None) -> None:
        if delivery.channel == EMAIL:
            if self.mail is None:
                raise RuntimeError("no e-mail channel is configured")
            await self.mail.send(message.email(self.settings.smtp_sender, delivery.target, delivery.id))
        elif delivery.channel == WEBHOOK:
            if not secret:
                raise RuntimeError("the organisation has no webhook secret")
            await self.webhooks.send(delivery.target, secret, message.id, message.json_body())
        else:
            raise RuntimeError(f"unknown channel {delivery.channel}")

    async def _failed(self, delivery: NotificationDelivery, error: Exception) -> str:
        # The reason is kept short and never includes the message or a secret.
        reason = f"{type(error).__name__}: {error}"[:300]
        async with self.db.transaction() as session:
            row = await session.get(NotificationDelivery, delivery.id)
            row.last_error = reason
            if row.attempts >= self.settings.notification_max_attempts:
                row.status = "failed"
                log.error("notification_given_up", delivery=row.id, channel=row.channel, attempts=row.attempts)
                return "failed"
            backoff = timedelta(seconds=self.settings.notification_retry_base_seconds * 2 ** (row.attempts - 1))
            row.next_attempt_at = self.clock() + min(backoff, MAX_BACKOFF)
        log.warning("notification_retrying", delivery=delivery.id, channel=delivery.channel, attempts=delivery.attempts)
        return "retrying"
