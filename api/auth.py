"""Bearer JWT authentication with python-jose: allow-listed algorithms, aud/iss/exp required."""

from __future__ import annotations

from datetime import timedelta

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jose import JWTError, jwt

from haven.db import utcnow
from haven.grant_request import Actor, Role
from haven.keys import jwt_secret
from haven.settings import Settings
from api.problems import Problem

bearer = HTTPBearer(auto_error=False, description="A JWT with claims sub, roles, org (intermediaries), aud, iss, exp.")

LEEWAY_SECONDS = 30
REQUIRED = {"require_exp": True, "require_aud": True, "require_iss": True, "require_sub": True, "leeway": LEEWAY_SECONDS}


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class TokenVerifier:
    def __init__(self, settings: Settings):
        if not settings.dev_mode:
            raise RuntimeError(
                "HS256 tokens are accepted only in dev mode (HAVEN_DEV_MODE=true); "
                "production keys from an identity provider are configured with a JWKS"
            )
        self.key = jwt_secret(settings)
        self.algorithms = ["HS256"]
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer

    def verify(self, token: str) -> Actor:
        try:
            header = jwt.get_unverified_header(token)
        except JWTError:
            raise _unauthorized("the bearer token is not a well-formed JWT") from None
        if header.get("alg") not in self.algorithms:
            raise _unauthorized(f"tokens signed with {header.get('alg')!r} are not accepted")
        try:
            claims = jwt.decode(
                token, self.key, algorithms=self.algorithms, audience=self.audience, issuer=self.issuer, options=REQUIRED
            )
        except JWTError as error:
            raise _unauthorized(f"the bearer token is not valid: {error}") from None
        roles = claims.get("roles")
        if not isinstance(roles, list) or not roles:
            raise _unauthorized("the token has no roles claim")
        known = [Role(r) for r in roles if isinstance(r, str) and r in {role.value for role in Role}]
        if not known:
            raise _unauthorized("the token's roles are not roles of this system")
        organisation = claims.get("org")
        if organisation is not None and not isinstance(organisation, str):
            raise _unauthorized("the org claim must be a string")
        return Actor(subject=str(claims["sub"]), roles=known, organisation=organisation)

    def issue(self, subject: str, roles: list[Role], organisation: str | None, ttl: timedelta) -> str:
        """Dev tokens for `haven token` and the tests."""
        now = utcnow()
        claims = {
            "sub": subject,
            "roles": [str(r) for r in roles],
            "aud": self.audience,
            "iss": self.issuer,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
        }
        if organisation:
            claims["org"] = organisation
        return jwt.encode(claims, self.key, algorithm="HS256")


async def current_actor(request: Request) -> Actor:
    credentials: HTTPAuthorizationCredentials | None = await bearer(request)
    if credentials is None:
        raise Problem(401, "unauthorized", "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    return request.app.state.services.verifier.verify(credentials.credentials)
