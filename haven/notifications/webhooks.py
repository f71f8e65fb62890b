"""Signed webhooks. The signature covers a timestamp and the exact body, so a receiver can check
both who sent it and that it is fresh: `Haven-Signature: t=<unix>,v1=<hex HMAC-SHA256>` over
`f"{t}.{body}"`, keyed with the organisation's webhook secret."""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx

from haven import destinations
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


async def _checked_addresses(url: httpx.URL, allow_loopback: bool) -> list[destinations.IPAddress]:
    """Every address the URL's host resolves to, each one checked: the URL was checked when it was
    configured, but a name can later resolve to an internal address, and the worker must never be
    made to call services inside the fund's network (nor, outside dev mode, on its own machine).
    One non-public address among public ones refuses them all."""
    host = url.raw_host.decode("ascii")
    try:
        destinations.host_address(host)
    except ValueError as error:
        raise WebhookFailed(f"the endpoint's host {error}") from None
    try:
        addresses = await destinations.resolve(host, url.port or (443 if url.scheme == "https" else 80))
    except (OSError, UnicodeError):
        raise WebhookFailed("the endpoint's host name does not resolve") from None
    for address in addresses:
        if destinations.refusal(address, allow_loopback=allow_loopback) is not None:
            raise WebhookFailed("the endpoint resolves to a private, shared, reserved or loopback address, not a public one")
    return addresses


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
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            raise WebhookFailed("the endpoint's URL is not valid") from None
        addresses = await _checked_addresses(target, self.allow_loopback)
        # The connection goes to an address just checked, never to a second lookup of the name
        # (which could answer differently: DNS rebinding). The name stays in the Host header, and
        # TLS is with the name (SNI, and the certificate is checked against it).
        host = target.raw_host.decode("ascii")
        headers["Host"] = target.netloc.decode("ascii")
        tls = {"sni_hostname": host} if target.scheme == "https" and destinations.host_address(host) is None else {}
        # Redirects are not followed: a signed delivery goes only where the organisation said. A
        # transport of its own: no proxy from the environment, which would look the name up again.
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False, transport=httpx.AsyncHTTPTransport()) as client:
            status, failure = None, None
            for address in addresses:  # the next address only when this one cannot be reached
                try:
                    # Streamed so that the answer's body, which we do not need, is never read.
                    request = client.build_request("POST", target.copy_with(host=str(address)), content=body, headers=headers, extensions=tls)
                    response = await client.send(request, stream=True)
                    status = response.status_code
                    await response.aclose()
                    break
                except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                    failure = error
                except httpx.HTTPError as error:
                    raise WebhookFailed(f"{type(error).__name__} reaching the endpoint") from None
            if status is None:
                raise WebhookFailed(f"{type(failure).__name__} reaching the endpoint")
        if not 200 <= status < 300:
            raise WebhookFailed(f"the endpoint answered {status}")
