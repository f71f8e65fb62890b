"""Where haven may send a webhook: only to globally routable addresses, never into the fund's own
networks (nor, outside dev mode, to its own machine). Checked when a URL is configured and again,
for every address its name resolves to, when each delivery is sent (haven.notifications.webhooks
then connects to an address it checked, so a name that resolves differently a moment later is not
followed).

Python's `is_global` is the base (the IANA special-purpose registries), with what it leaves out:
multicast, site-local and a few special-purpose prefixes it does not know are refused too, and
an IPv6 address that carries an IPv4 address is judged by that address as well: IPv4-mapped
(`::ffff:10.0.0.1`) and NAT64 (`64:ff9b::a00:1`) addresses are their IPv4 address; 6to4
(`2002:a00:1::`) and Teredo addresses must carry public IPv4 addresses; IPv4-compatible,
IPv4-translated and local-use NAT64 (`64:ff9b:1::/48`) addresses are reserved, so refused."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from urllib.parse import unquote

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: the last 32 bits are the destination
# Not globally reachable, though this Python's `is_global` says they are: IETF protocol assignments
# (it knows only parts of the /24), the deprecated 6to4 relay anycast prefix (RFC 7526), and the
# newer IPv6 documentation prefix (RFC 9637). Nothing there is a webhook.
NOT_PUBLIC_V4 = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("192.88.99.0/24"))
NOT_PUBLIC_V6 = (ipaddress.ip_network("3fff::/20"),)
# What inet_aton (and so getaddrinfo) reads as an IPv4 address though ipaddress does not:
# 2130706433, 0x7f.1, 0177.0.0.1, 10.1, a trailing dot, other scripts' digits.
NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|\d+)(\.(0x[0-9a-f]*|\d+)){0,3}\.?$", re.IGNORECASE)
RESOLVE_TIMEOUT = 3.0  # seconds, when a URL is configured

NOT_PUBLIC = "a private, shared, link-local, reserved or otherwise non-public address (or an IPv6 form of one)"


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: where a packet to it goes or is relayed through."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)  # the Teredo server, and the client's public address
    return []


def _public_v4(address: ipaddress.IPv4Address) -> bool:
    return address.is_global and not address.is_multicast and not any(address in net for net in NOT_PUBLIC_V4)


def is_public(address: IPAddress) -> bool:
    """Globally routable, and so is every IPv4 address it carries."""
    if address.version == 4:
        return _public_v4(address)
    carried = embedded_ipv4(address)
    if address.ipv4_mapped is not None or address in NAT64:
        return _public_v4(carried[0])  # the packet goes to this IPv4 address
    return (
        address.is_global and not address.is_multicast and not address.is_site_local and not address.is_reserved
        and address.scope_id is None and not any(address in net for net in NOT_PUBLIC_V6)
        and all(_public_v4(v4) for v4 in carried)
    )  # fmt: skip


def is_loopback(address: IPAddress) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def host_address(host: str) -> IPAddress | None:
    """The address a URL's host names literally, or None for a name. Raises ValueError for a
    host that only looks like a name: a number getaddrinfo would read as an IPv4 address, or an
    IPv6 address that does not parse."""
    try:
        return ipaddress.ip_address(unquote(host) if ":" in host else host)
    except ValueError:
        pass
    if ":" in host or "%" in host:
        raise ValueError("is not a valid IPv6 address")
    if NUMERIC_HOST.match(host):
        raise ValueError("write an IPv4 address as four decimal numbers (a.b.c.d)")
    return None


def refusal(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why haven must not connect to `address`; None when it may."""
    if is_loopback(address):
        return None if allow_loopback else "a loopback address (this machine)"
    if not is_public(address):
        return NOT_PUBLIC
    return None


async def resolve(host: str, port: int, timeout: float | None = None) -> list[IPAddress]:
    """Every address (A and AAAA) the host resolves to, in the resolver's order, once each.
    Raises OSError when it does not resolve (asyncio.TimeoutError past `timeout`)."""
    lookup = asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = await (asyncio.wait_for(lookup, timeout) if timeout else lookup)
    addresses: list[IPAddress] = []
    for *_, sockaddr in found:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OSError("no address")
    return addresses


async def configured_refusal(host: str, port: int) -> str | None:
    """When a URL is configured: why its host resolves somewhere haven must not send to, if it
    does now. A name that does not resolve (yet) is let through; each delivery checks again."""
    if host_address(host) is not None:
        return None  # the literal address was checked with the URL
    try:
        addresses = await resolve(host, port, RESOLVE_TIMEOUT)
    except (OSError, asyncio.TimeoutError, UnicodeError):
        return None
    for address in addresses:
        # Loopback is allowed when configuring, as for literal addresses (development); outside
        # dev mode a delivery to it is refused.
        if (why := refusal(address, allow_loopback=True)) is not None:
            return f"{host} resolves to {why}"
    return None
