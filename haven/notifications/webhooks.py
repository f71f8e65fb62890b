"""Signed webhooks. The signature covers a timestamp and the exact body, so a receiver can check
both who sent it and that it is fresh: `Haven-Signature: t=<unix>,v1=<hex HMAC-SHA256>`."""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx

SIGNATURE_HEADER = "Haven-Signature"
DELIVERY_HEADER = "Haven-Delivery"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: str, header: str, body: bytes, tolerance_seconds: int = 300, now: float | None = None) -> bool:
    """For receivers (and the tests): is this body signed with our secret, recently?"""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class WebhookFailed(Exception):
    pass


class WebhookSender:
    def __init__(self, timeout_seconds: float):
        self.timeout = timeout_seconds

    async def send(self, url: str, secret: str, message_id: str, body: bytes) -> None:
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: message_id,
            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
            "User-Agent": "haven-webhooks",
        }
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as error:
                raise WebhookFailed(f"{type(error).__name__} reaching the endpoint") from None
        if not 200 <= response.status_code < 300:
            raise WebhookFailed(f"the endpoint answered {response.status_code}")
