"""Writing to the outbox: one row per notification, keyed so that a retried write adds nothing.
The payload holds ids, a status and a link only; `message` decides what of it is ever sent."""

from __future__ import annotations

from haven.db import utcnow
from haven.db.models import Notification


def outbox_entry(
    dedupe_key: str, *, kind: str, audience: str, request_id: str | None, status: str | None, link: str | None
) -> Notification:
    return Notification(
        dedupe_key=dedupe_key,
        request_id=request_id,
        kind=kind,
        audience=audience,
        payload={"request_id": request_id, "kind": kind, "status": status, "link": link},
        created_at=utcnow(),
        dispatched_at=None,
    )
