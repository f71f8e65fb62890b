"""Signed webhooks. The signature covers a timestamp and the exact body, so a receiver can check
both who sent it and that it is fresh: `Haven-Signature: t=<unix>,v1=<hex HMAC-SHA256>` over
`f"{t}.{body}"`, keyed with the organisation's webhook secret."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import socket
import time
from urllib.parse import urlsplit

import httpx

from haven.organisations import is_internal_address

from haven.notifications.message import DELIVERY_HEADER

SIGNATURE_HEADER = "Haven-Signature"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str, header: str, body: bytes, tolerance: float = 300, now: float | None = None
) -> bool:
    """For receivers (and the tests): was this exact body signed with our secret, within
    `tolerance` seconds of now? Check the `Haven-Delivery` id too, to drop repeats."""
    try:
        parts = dict(item.strip().split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected.encode(), given.encode())


class WebhookFailed(Exception):
    """The endpoint did not take the delivery; the message never includes the body or secret."""


async def _refuse_internal_destinations(url: str, allow_loopback: bool) -> None:
    """The URL was checked when it was configured, but a name can later resolve to an internal
    address: the worker must never be made to call services inside the fund's network (nor, outside
    dev mode, on its own machine)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        addresses = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError:
        raise WebhookFailed("the endpoint's host name does not resolve") from None
    for address in {str(a[4][0]) for a in addresses}:
        if is_internal_address(address) or (not allow_loopback and ipaddress.ip_address(address).is_loopback):
            raise WebhookFailed("the endpoint resolves to a private, reserved or loopback address")


class WebhookSender:
    def __init__(self, timeout_seconds: float, allow_loopback: bool = False):
        self.timeout = timeout_seconds
        self.allow_loopback = allow_loopback  # dev mode and tests run receivers on this machine

    async def send(self, url: str, secret: str, delivery_id: str, body: bytes) -> None:
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: delivery_id,
            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
            "User-Agent": "haven-webhooks",
        }
        await _refuse_internal_destinations(url, self.allow_loopback)
        # Redirects are not followed: a signed delivery goes only where the organisation said.
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            try:
                # Streamed so that the answer's body, which we do not need, is never read.
                async with client.stream("POST", url, content=body, headers=headers) as response:
                    status = response.status_code
            except httpx.HTTPError as error:
                raise WebhookFailed(f"{type(error).__name__} reaching the endpoint") from None
        if not 200 <= status < 300:
            raise WebhookFailed(f"the endpoint answered {status}")
