"""Delivering the outbox: e-mail to rostered staff and organisation inboxes, signed webhooks to
organisations. Messages carry a request id, its status and a link; never personal data."""

from haven.notifications.dispatcher import NotificationDispatcher
from haven.notifications.webhooks import verify_signature

__all__ = ["NotificationDispatcher", "verify_signature"]
