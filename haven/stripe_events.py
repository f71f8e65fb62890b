"""What Stripe's webhooks tell us about our transfers.

An event is believed only once `stripe.Webhook.construct_event` has checked its signature with
the endpoint secret and its timestamp against the tolerance. Of what it says, only ids and
amounts are kept: a transfer's metadata carries our request id and tranche, nothing else."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import stripe

from haven.case_events import TransferNotice
from haven.money import Money
from haven.stripe_transfers import Transfer

TRANSFER_CREATED = "transfer.created"
TRANSFER_REVERSED = "transfer.reversed"
HANDLED = frozenset({TRANSFER_CREATED, TRANSFER_REVERSED})

# Stripe's own default: a signature older (or newer) than five minutes is refused as stale.
SIGNATURE_TOLERANCE_SECONDS = 300

_EVENT_ID = re.compile(r"^evt_[A-Za-z0-9]{1,200}$")
_TRANSFER_ID = re.compile(r"^tr_[A-Za-z0-9]{1,200}$")


class UnverifiedEvent(ValueError):
    """The body is not an event Stripe signed with our secret, or the signature is stale."""


def verified_event(payload: bytes, signature_header: str | None, secret: str) -> dict[str, Any]:
    if not signature_header:
        raise UnverifiedEvent("the Stripe-Signature header is missing")
    try:
        event = stripe.Webhook.construct_event(payload, signature_header, secret, SIGNATURE_TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as error:
        raise UnverifiedEvent(f"the signature does not verify: {error.user_message or error}") from None
    except ValueError:
        raise UnverifiedEvent("the body is not a JSON event") from None
    return event.to_dict()


def transfer_notice(event: dict[str, Any]) -> TransferNotice | None:
    """The notice for an event we act on; None for every other kind of event."""
    if event.get("type") not in HANDLED or not _EVENT_ID.match(str(event.get("id", ""))):
        return None
    transfer = (event.get("data") or {}).get("object") or {}
    if transfer.get("object") != "transfer" or not _TRANSFER_ID.match(str(transfer.get("id", ""))):
        return None
    try:
        return _notice(event, transfer)
    except (KeyError, TypeError, ValueError):
        return None  # signed by Stripe but not a transfer as we know it: nothing to act on


def _notice(event: dict[str, Any], transfer: dict[str, Any]) -> TransferNotice:
    read = Transfer.from_stripe(transfer)
    return TransferNotice(
        event_id=event["id"],
        event_type=event["type"],
        created=datetime.fromtimestamp(int(event.get("created", 0)), tz=timezone.utc),
        transfer_id=read.id,
        request_id=read.request_id,
        tranche=read.tranche,
        amount=Money(minor_units=read.amount_minor, currency=read.currency),
        amount_reversed_minor=read.reversed_minor,
    )
