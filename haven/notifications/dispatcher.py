"""The dispatcher: fans out new outbox rows, then delivers what is due, retrying with back-off.

Due deliveries are claimed in small batches, oldest first (on PostgreSQL with SKIP LOCKED), by
pushing their next attempt a lease into the future in a short transaction. They are sent outside
any transaction, concurrently, each within a time limit shorter than the lease, then marked
delivered or failed. So two dispatchers never send one delivery at the same time; if a process
dies mid-send the lease runs out and the delivery is sent again. Delivery is at least once, and
every message carries a stable id (`dlv_<n>`) for the receiver to deduplicate."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select

from haven.db import Database, utcnow
from haven.db.models import Notification, NotificationDelivery
from haven.notifications import fanout
from haven.notifications.fanout import EMAIL, ORG_PREFIX, WEBHOOK, Recipients
from haven.notifications.mail import SMTP_TIMEOUT_SECONDS, MailTransport, mail_transport
from haven.notifications.message import Message
from haven.notifications.webhooks import WebhookSender
from haven.settings import Settings

log = structlog.get_logger("haven.notifications")

BATCH = 10
MAX_BACKOFF = timedelta(hours=6)
MIN_LEASE = timedelta(minutes=5)


def backoff(base_seconds: float, attempts: int) -> timedelta:
    """How long to wait after the `attempts`-th failed attempt: base, 2 x base, 4 x base... capped."""
    exponent = min(max(attempts - 1, 0), 32)
    return min(timedelta(seconds=base_seconds * 2**exponent), MAX_BACKOFF)


@dataclass
class Round:
    """What one round did, in numbers."""

    dispatched: int = 0  # outbox rows fanned out
    delivered: int = 0
    retrying: int = 0  # failed this time, tried again later
    failed: int = 0  # given up on
    dropped: int = 0  # no longer a recipient (left the roster, changed its inbox or webhook)

    @property
    def attempted(self) -> int:
        return self.delivered + self.retrying + self.failed + self.dropped


@dataclass(frozen=True)
class Claimed:
    """A delivery taken for one attempt, with what sending it needs."""

    id: int
    channel: str
    target: str
    attempts: int
    message: Message
    secret: str | None  # the organisation's webhook secret, for webhooks
    still_wanted: bool  # is the target still a recipient of the audience?


class NotificationDispatcher:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        mail: MailTransport | None = None,
    ):
        self.db = db
        self.settings = settings
        self.clock = clock
        self.mail = mail if mail is not None else mail_transport(settings)
        self.webhooks = WebhookSender(settings.webhook_timeout_seconds, allow_loopback=settings.dev_mode)
        # No send outlives its lease: then no two dispatchers send the same delivery at once.
        self.send_limit = 2 * max(settings.webhook_timeout_seconds, SMTP_TIMEOUT_SECONDS) + 5
        self.lease = max(MIN_LEASE, timedelta(seconds=2 * self.send_limit))
        if self.mail is None:
            log.warning("email_notifications_off", why="no SMTP host configured (HAVEN_SMTP_HOST)")

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until `stop` is set: at once again after a full batch, else after the poll interval."""
        log.info("notification_dispatcher_started", mailer=type(self.mail).__name__ if self.mail else None)
        while not stop.is_set():
            busy = False
            try:
                result = await self.run_once()
                busy = result.dispatched >= fanout.BATCH or result.attempted >= BATCH
            except Exception as error:  # noqa: BLE001 - a database hiccup must not end delivery for good
                log.error("notification_round_failed", error=type(error).__name__)
            if not busy:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.notification_poll_seconds)
        log.info("notification_dispatcher_stopped")

    async def run_once(self) -> Round:
        """Fans out new outbox rows, then makes one attempt at up to BATCH due deliveries."""
        result = Round(dispatched=await fanout.fan_out(self.db, self.clock(), email=self.mail is not None))
        claimed = await self._claim_due()
        for outcome in await asyncio.gather(*(self._attempt(delivery) for delivery in claimed)):
            setattr(result, outcome, getattr(result, outcome) + 1)
        return result

    async def _claim_due(self) -> list[Claimed]:
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
            if not due:
                return []
            notifications = {
                n.id: n
                for n in await session.scalars(
                    select(Notification).where(Notification.id.in_({d.notification_id for d in due}))
                )
            }
            recipients = Recipients(session, email=self.mail is not None)
            claimed = []
            for delivery in due:
                delivery.attempts += 1
                delivery.next_attempt_at = now + self.lease
                notification = notifications[delivery.notification_id]
                secret = None
                if delivery.channel == WEBHOOK and notification.audience.startswith(ORG_PREFIX):
                    organisation = await recipients.organisation(notification.audience.removeprefix(ORG_PREFIX))
                    secret = organisation.webhook_secret if organisation else None
                claimed.append(
                    Claimed(
                        id=delivery.id, channel=delivery.channel, target=delivery.target, attempts=delivery.attempts,
                        message=Message.of(notification, delivery.id), secret=secret,
                        still_wanted=(delivery.channel, delivery.target) in await recipients.of(notification.audience),
                    )
                )  # fmt: skip
        return claimed

    async def _attempt(self, delivery: Claimed) -> str:
        if not delivery.still_wanted:
            await self._finish(delivery.id, status="failed", error="dropped: no longer a recipient of this audience")
            log.info("notification_dropped", delivery=delivery.id, channel=delivery.channel)
            return "dropped"
        try:
            await asyncio.wait_for(self._send(delivery), self.send_limit)
        except Exception as error:  # noqa: BLE001 - every failure of a send is retried
            return await self._failed(delivery, error)
        await self._finish(delivery.id, status="delivered", delivered_at=self.clock())
        return "delivered"

    async def _send(self, delivery: Claimed) -> None:
        if delivery.channel == EMAIL:
            if self.mail is None:
                raise RuntimeError("no e-mail channel is configured")
            await self.mail.send(delivery.message.email(self.settings.smtp_sender, delivery.target, self.clock()))
        elif delivery.channel == WEBHOOK:
            if not delivery.secret:
                raise RuntimeError("the organisation has no webhook secret")
            await self.webhooks.send(delivery.target, delivery.secret, delivery.message.id, delivery.message.json_body())
        else:
            raise RuntimeError(f"unknown channel {delivery.channel!r}")

    async def _failed(self, delivery: Claimed, error: Exception) -> str:
        # Short, and never the message or a secret: exception texts here are our own, httpx's
        # class names, or what the SMTP server answered.
        reason = f"{type(error).__name__}: {error}".strip().removesuffix(":")[:300]
        if delivery.attempts >= self.settings.notification_max_attempts:
            await self._finish(delivery.id, status="failed", error=reason)
            log.error(
                "notification_given_up", delivery=delivery.id, channel=delivery.channel,
                attempts=delivery.attempts, error=reason,
            )  # fmt: skip
            return "failed"
        retry_at = self.clock() + backoff(self.settings.notification_retry_base_seconds, delivery.attempts)
        await self._finish(delivery.id, status="pending", error=reason, next_attempt_at=retry_at)
        log.warning(
            "notification_retrying", delivery=delivery.id, channel=delivery.channel,
            attempts=delivery.attempts, retry_at=retry_at.isoformat(), error=reason,
        )  # fmt: skip
        return "retrying"

    async def _finish(
        self,
        delivery_id: int,
        *,
        status: str,
        error: str | None = None,
        delivered_at: datetime | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        async with self.db.transaction() as session:
            row = await session.get(NotificationDelivery, delivery_id)
            row.status, row.last_error = status, error
            if delivered_at is not None:
                row.delivered_at = delivered_at
            if next_attempt_at is not None:
                row.next_attempt_at = next_attempt_at
