"""Delivering the outbox: e-mail to rostered staff and organisation inboxes, signed webhooks to
organisations. Messages carry a request id, its status and a link; never personal data.

Modules, one job each: `fanout` (who hears about what), `message` (the allow-listed content),
`mail` (SMTP, or .eml files in dev mode), `webhooks` (signing, verifying, posting) and
`dispatcher` (claiming due deliveries, retrying with back-off, giving up)."""

from haven.notifications.dispatcher import NotificationDispatcher, Round
from haven.notifications.webhooks import verify_signature

__all__ = ["NotificationDispatcher", "Round", "verify_signature"]
