"""Bearer JWT authentication: tokens from an OIDC identity provider (RS256/ES256, keys from its
JWKS) and, in dev mode only, HS256 tokens signed with a local secret (`haven token`)."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from datetime import timedelta

import structlog
from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jose import jws, jwt
from jose.exceptions import JOSEError

from haven.db import utcnow
from haven.grant_request import Actor, Role
from haven.keys import jwt_secret
from haven.settings import Settings
from api.jwks import ConfigurationError, KeySet
from api.problems import Problem

log = structlog.get_logger("haven.auth")

bearer = HTTPBearer(auto_error=False, description="A JWT with claims sub, roles, org (intermediaries), aud, iss, exp.")

DEV_ALGORITHM = "HS256"
KNOWN_ROLES = frozenset(role.value for role in Role)
DEV_MODE_BANNER = """
========================================================================
  haven is running in DEV MODE (HAVEN_DEV_MODE=true)

  HS256 tokens signed with the local dev secret are accepted: whoever
  has that secret can act as anyone, with any role.

  NEVER use dev mode in production. Configure an identity provider
  (HAVEN_JWKS_URL or HAVEN_JWKS_FILE) and leave HAVEN_DEV_MODE unset.
========================================================================
"""


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def claim_at(claims: dict, path: str) -> object:
    """A claim by dotted path (`realm_access.roles`); a literal name wins, since namespaced claim
    names such as `https://haven.example/roles` contain dots themselves."""
    if path in claims:
        return claims[path]
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _put(claims: dict, path: str, value: object) -> None:
    *parents, last = path.split(".")
    for part in parents:
        claims = claims.setdefault(part, {})
    claims[last] = value


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class TokenVerifier:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.keys = KeySet.from_settings(settings, clock=clock)
        if self.keys is None and not settings.dev_mode:
            raise ConfigurationError(
                "no identity provider is configured: set HAVEN_JWKS_URL (https) or HAVEN_JWKS_FILE to its JWKS. "
                "HAVEN_DEV_MODE=true accepts locally signed HS256 tokens instead, for development only"
            )
        # The HS256 secret exists only in dev mode, so outside it no token can take that route.
        self.key = jwt_secret(settings) if settings.dev_mode else None
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.leeway = settings.jwt_leeway_seconds
        accepted = sorted(self.keys.algorithms) if self.keys else []
        self._accepted = ", ".join(accepted + ([DEV_ALGORITHM] if self.key else []))

    async def start(self) -> None:
        """At app start: shout about dev mode, and load the provider's keys once up front."""
        if self.settings.dev_mode:
            log.warning("dev_mode_hs256_tokens_accepted", detail="never use dev mode in production")
            print(DEV_MODE_BANNER, file=sys.stderr, flush=True)
        # A missing or broken key file is a deployment mistake; an unreachable provider may recover.
        if self.keys is not None and not await self.keys.refresh() and self.keys.from_file:
            raise ConfigurationError(f"HAVEN_JWKS_FILE {self.keys.source} holds no usable signing key (see the log)")

    async def verify(self, token: str) -> Actor:
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError:
            raise _unauthorized("the bearer token is not a well-formed JWT") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if "crit" in header:
            raise _unauthorized("tokens with critical header extensions (crit) are not accepted")
        # Keys named in the header (jwk, jku, x5u) are never used: only our own keys count.
        if algorithm == DEV_ALGORITHM and self.key is not None:
            key = self.key
        elif self.keys is not None and isinstance(algorithm, str) and algorithm in self.keys.algorithms:
            if not isinstance(kid, str):
                raise _unauthorized("the token header names no signing key (kid)")
            signing = await self.keys.get(kid)
            if signing is None:
                raise _unauthorized("the token's signing key (kid) is not among the identity provider's keys")
            if signing.algorithm != algorithm:
                raise _unauthorized("the token's algorithm (alg) is not the algorithm of its signing key")
            key = signing.key
        else:
            raise _unauthorized(f"the token's signing algorithm is not accepted; accepted: {self._accepted}")
        try:
            payload = jws.verify(token, key, algorithms=[algorithm])
        except JOSEError:
            raise _unauthorized("the token's signature does not verify") from None
        try:
            claims = json.loads(payload)
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            raise _unauthorized("the token's payload is not a JSON object")
        self._check_registered_claims(claims)
        return self._actor(claims)

    def _check_registered_claims(self, claims: dict) -> None:
        for name in ("iss", "aud", "exp", "sub"):
            if name not in claims:
                raise _unauthorized(f"the token has no {name!r} claim")
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_time(claims[name]):
                raise _unauthorized(f"the {name!r} claim must be a number of seconds since the epoch")
        now = time.time()
        if now >= claims["exp"] + self.leeway:
            raise _unauthorized("the token has expired")
        if "nbf" in claims and now + self.leeway < claims["nbf"]:
            raise _unauthorized("the token is not valid yet (nbf)")
        if "iat" in claims and claims["iat"] > now + self.leeway:
            raise _unauthorized("the token was issued in the future (iat); check the clocks")
        if claims["iss"] != self.issuer:
            raise _unauthorized(f"the token's issuer (iss) is not the configured issuer {self.issuer!r}")
        audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if self.audience not in audience:
            raise _unauthorized(f"the token's audience (aud) does not include {self.audience!r}")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise _unauthorized("the 'sub' claim must be a non-empty string")

    def _actor(self, claims: dict) -> Actor:
        path = self.settings.jwt_roles_claim
        roles = claim_at(claims, path)
        if not isinstance(roles, list) or not roles:
            raise _unauthorized(f"the token has no roles (claim {path!r}, a list)")
        known = list(dict.fromkeys(Role(r) for r in roles if isinstance(r, str) and r in KNOWN_ROLES))
        if not known:
            raise _unauthorized(f"none of the token's roles is a role of this system ({', '.join(sorted(KNOWN_ROLES))})")
        path = self.settings.jwt_organisation_claim
        organisation = claim_at(claims, path)
        if organisation is not None and not isinstance(organisation, str):
            raise _unauthorized(f"the organisation claim {path!r} must be a string")
        return Actor(subject=claims["sub"], roles=known, organisation=organisation or None, issuer=claims["iss"])

    def issue(self, subject: str, roles: list[Role], organisation: str | None, ttl: timedelta) -> str:
        """Dev tokens for `haven token` and the tests."""
        if self.key is None:
            raise ConfigurationError("dev tokens can be issued only in dev mode (HAVEN_DEV_MODE=true)")
        now = utcnow()
        claims: dict = {
            "sub": subject,
            "aud": self.audience,
            "iss": self.issuer,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
        }
        # Where the configured provider would put them, so dev tokens read like the real ones.
        _put(claims, self.settings.jwt_roles_claim, [str(r) for r in roles])
        if organisation:
            _put(claims, self.settings.jwt_organisation_claim, organisation)
        return jwt.encode(claims, self.key, algorithm=DEV_ALGORITHM)


async def current_actor(request: Request) -> Actor:
    credentials: HTTPAuthorizationCredentials | None = await bearer(request)
    if credentials is None:
        raise Problem(401, "unauthorized", "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    return await request.app.state.services.verifier.verify(credentials.credentials)
