"""Our Stripe transfers as haven writes and reads them. A transfer's metadata names the request
and the tranche it pays, and nothing else; whatever reads a transfer back (the rail looking for
one it made, a webhook event, reconciliation) reads it here."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

_REQUEST_ID = re.compile(r"^gr_[A-Za-z0-9]{1,37}$")


def transfer_metadata(request_id: str, tranche: int) -> dict[str, str]:
    """Ids only: Stripe is a third party and sees nothing about the defender or the case."""
    return {"request_id": request_id, "tranche": str(tranche)}


def tranche_paid_by(metadata: Mapping[str, Any] | None) -> tuple[str, int] | None:
    """The request and tranche a transfer pays, when its metadata is ours and well formed."""
    metadata = metadata or {}
    request_id, tranche = metadata.get("request_id"), str(metadata.get("tranche", ""))
    if isinstance(request_id, str) and _REQUEST_ID.match(request_id) and tranche.isdigit():
        return request_id, int(tranche)
    return None


@dataclass(frozen=True)
class Transfer:
    """A Stripe transfer; the currency upper-case, as in the ledger."""

    id: str
    amount_minor: int
    currency: str
    created: datetime
    reversed_minor: int = 0
    request_id: str | None = None
    tranche: int | None = None

    @classmethod
    def from_stripe(cls, transfer: Mapping[str, Any]) -> Transfer:
        """From Stripe's JSON shape. Metadata that is not ours, or none, leaves it unattributed."""
        paid = tranche_paid_by(transfer.get("metadata"))
        return cls(
            id=str(transfer["id"]),
            amount_minor=int(transfer["amount"]),
            currency=str(transfer["currency"]).upper(),
            created=datetime.fromtimestamp(int(transfer["created"]), tz=timezone.utc),
            reversed_minor=int(transfer.get("amount_reversed") or 0),
            request_id=paid[0] if paid else None,
            tranche=paid[1] if paid else None,
        )
