"""The identity provider's signing keys: a JWKS read from a file or fetched over https, cached, and
refreshed when a token names a key we do not know yet (so the provider can rotate keys without a
restart)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import structlog
from jose import jwk
from jose.backends.base import Key
from jose.exceptions import JWKError
from jose.utils import base64url_decode

from haven.settings import Settings

log = structlog.get_logger("haven.auth")

# Each key verifies exactly one algorithm, decided by its type, never by the token: this is what
# stops a token from choosing how it is checked (RS/HS confusion, `none`).
SUPPORTED_ALGORITHMS = frozenset({"RS256", "ES256"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
FETCH_TIMEOUT_SECONDS = 5.0
MIN_RSA_BITS = 2048


class ConfigurationError(RuntimeError):
    """Authentication is configured in a way the API must not start with."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    key: Key


def _algorithm_of(entry: dict) -> str | None:
    if entry.get("kty") == "RSA":
        return "RS256"
    if entry.get("kty") == "EC" and entry.get("crv") == "P-256":
        return "ES256"
    return None


def _rsa_bits(entry: dict) -> int:
    return int.from_bytes(base64url_decode(str(entry.get("n", "")).encode()), "big").bit_length()


def signing_keys(document: object, algorithms: Iterable[str]) -> dict[str, SigningKey]:
    """The usable verification keys of a JWKS document, by kid; anything else in it is skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise TypeError("the document is not a JWKS (no 'keys' list)")
    allowed = SUPPORTED_ALGORITHMS.intersection(algorithms)
    keys: dict[str, SigningKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            continue
        kid, algorithm = entry.get("kid"), _algorithm_of(entry)
        # Providers publish encryption keys and other algorithms next to signing keys.
        if not isinstance(kid, str) or algorithm not in allowed:
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", algorithm) != algorithm:
            continue
        if kid in keys:
            log.warning("jwks_duplicate_kid_ignored", kid=kid)
            continue
        try:
            if algorithm == "RS256" and _rsa_bits(entry) < MIN_RSA_BITS:
                raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits")
            # public_key() drops private members should a provider ever publish them.
            key = jwk.construct(entry, algorithm).public_key()
        except (JWKError, ValueError, TypeError, KeyError) as error:
            log.warning("jwks_key_unusable", kid=kid, error=str(error))
            continue
        keys[kid] = SigningKey(kid, algorithm, key)
    return keys


def checked_url(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = httpx.URL()
    # Keys fetched in clear text could be swapped on the way; only a provider on this machine may use http.
    if parsed.host and (parsed.scheme == "https" or (parsed.scheme == "http" and parsed.host in LOOPBACK_HOSTS)):
        return url
    raise ConfigurationError("HAVEN_JWKS_URL must be an https URL (plain http is allowed only for a loopback host)")


class KeySet:
    """Keys are kept for `cache_seconds`. Whatever triggers a reload (expiry, an unknown kid), a
    reload is attempted at most once per `min_refresh_seconds`, so a flood of tokens with made-up
    kids cannot turn us into a load generator against the provider. A failed reload keeps the keys
    we have."""

    def __init__(
        self,
        source: str | Path,
        algorithms: Iterable[str],
        *,
        cache_seconds: float,
        min_refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.source = source
        self.algorithms = frozenset(algorithms)
        self.cache_seconds = cache_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> KeySet | None:
        if settings.jwks_url and settings.jwks_file:
            raise ConfigurationError("set HAVEN_JWKS_URL or HAVEN_JWKS_FILE, not both")
        if not settings.jwks_url and not settings.jwks_file:
            return None
        unsupported = set(settings.jwt_algorithms) - SUPPORTED_ALGORITHMS
        if unsupported or not settings.jwt_algorithms:
            raise ConfigurationError(
                f"HAVEN_JWT_ALGORITHMS may list only {', '.join(sorted(SUPPORTED_ALGORITHMS))} "
                f"(got {', '.join(sorted(settings.jwt_algorithms)) or 'none'})"
            )
        source = checked_url(settings.jwks_url) if settings.jwks_url else Path(settings.jwks_file)
        return cls(
            source,
            settings.jwt_algorithms,
            cache_seconds=settings.jwks_cache_seconds,
            min_refresh_seconds=settings.jwks_min_refresh_seconds,
            clock=clock,
        )

    @property
    def from_file(self) -> bool:
        return isinstance(self.source, Path)

    async def get(self, kid: str) -> SigningKey | None:
        loaded_at = self._loaded_at
        if loaded_at is None or self._clock() - loaded_at >= self.cache_seconds:
            await self.refresh()
        found = self._keys.get(kid)
        if found is None and await self.refresh():
            found = self._keys.get(kid)
        return found

    async def refresh(self) -> bool:
        """Reloads the keys unless a reload was attempted too recently; True when keys were loaded."""
        async with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self.min_refresh_seconds:
                return False
            self._attempted_at = now
            try:
                keys = signing_keys(await self._read(), self.algorithms)
                if not keys:
                    raise ValueError(f"no usable signing key for {', '.join(sorted(self.algorithms))}")
            except (httpx.HTTPError, OSError, ValueError, TypeError) as error:
                log.warning(
                    "jwks_refresh_failed", source=str(self.source), error=f"{type(error).__name__}: {error}",
                    keeping=len(self._keys),
                )  # fmt: skip
                return False
            self._keys, self._loaded_at = keys, now
            log.info("jwks_loaded", source=str(self.source), kids=sorted(keys))
            return True

    async def _read(self) -> object:
        if isinstance(self.source, Path):
            return json.loads(self.source.read_text())
        # Redirects are not followed: the keys must come from the configured address itself.
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False) as client:
            response = await client.get(self.source, headers={"Accept": "application/json"})
            response.raise_for_status()
            return response.json()
