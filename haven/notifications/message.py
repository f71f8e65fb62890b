"""What a notification says, built from an allow-list: whatever else an outbox row might hold,
only these fields ever leave the system. Never anything from a request's sensitive column."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime

from haven.db.models import Notification

# The only fields of an outbox payload that are ever sent.
OUTBOUND_FIELDS = ("request_id", "kind", "status", "link")
DELIVERY_HEADER = "Haven-Delivery"


def delivery_key(delivery_id: int) -> str:
    """The id a receiver deduplicates on: one per recipient and channel, the same on every retry."""
    return f"dlv_{delivery_id}"


@dataclass(frozen=True)
class Message:
    id: str
    kind: str
    request_id: str | None
    status: str | None
    link: str | None
    created_at: datetime

    @classmethod
    def of(cls, notification: Notification, delivery_id: int) -> Message:
        payload = notification.payload or {}
        allowed = {field: payload.get(field) for field in OUTBOUND_FIELDS}
        return cls(
            id=delivery_key(delivery_id),
            kind=str(allowed["kind"] or notification.kind),
            request_id=_text(allowed["request_id"] or notification.request_id),
            status=_text(allowed["status"]),
            link=_text(allowed["link"]),
            created_at=notification.created_at,
        )

    def json_body(self) -> bytes:
        body = {
            "id": self.id,
            "kind": self.kind,
            "request_id": self.request_id,
            "status": self.status,
            "link": self.link,
            "created_at": self.created_at.isoformat(),
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()

    def email(self, sender: str, to: str, now: datetime) -> EmailMessage:
        what = self.kind.replace("_", " ")
        message = EmailMessage()
        message["From"] = sender
        message["To"] = to
        # Not every message is about one request (a reconciliation's mismatches are finance's).
        about = f" – request {self.request_id}" if self.request_id else ""
        message["Subject"] = f"[haven] {what}{about}"
        message["Date"] = format_datetime(now)
        domain = sender.rsplit("@", 1)[-1].strip("<> ") or "haven.invalid"
        message["Message-ID"] = f"<{self.id}@{domain}>"  # the same on every retry
        message[DELIVERY_HEADER] = self.id
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
        request = f"Request: {self.request_id}\n" if self.request_id else ""
        message.set_content(
            f"What:    {what}\n{request}"
            f"Open it: {self.link}\n\n"
            "Sign in to read the case; this message carries no case details.\n"
        )
        return message


def _text(value) -> str | None:
    return None if value is None else str(value)
