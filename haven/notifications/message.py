"""What a notification says, built from an allow-list: whatever else an outbox row might hold,
only these fields ever leave the system."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

from haven.db.models import Notification

OUTBOUND_FIELDS = ("request_id", "kind", "status", "link")


@dataclass(frozen=True)
class Message:
    id: str  # the same for every recipient and every retry, so receivers can deduplicate
    kind: str
    request_id: str | None
    status: str | None
    link: str | None
    created_at: datetime

    @classmethod
    def of(cls, notification: Notification) -> "Message":
        payload = {field: notification.payload.get(field) for field in OUTBOUND_FIELDS}
        return cls(
            id=f"ntf_{notification.id}",
            kind=str(payload["kind"] or notification.kind),
            request_id=payload["request_id"],
            status=payload["status"],
            link=payload["link"],
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

    def email(self, sender: str, to: str, delivery_id: int) -> EmailMessage:
        message = EmailMessage()
        message["From"] = sender
        message["To"] = to
        message["Subject"] = f"[haven] {self.kind.replace('_', ' ')} – request {self.request_id}"
        domain = sender.rsplit("@", 1)[-1] or "haven"
        message["Message-ID"] = f"<{self.id}.{delivery_id}@{domain}>"
        message.set_content(
            f"A grant request needs your attention.\n\n"
            f"What:    {self.kind.replace('_', ' ')}\n"
            f"Request: {self.request_id}\n"
            f"Status:  {self.status}\n"
            f"Open it: {self.link}\n\n"
            "This message carries no case details: sign in to read them.\n"
        )
        return message
