"""Production identity: tokens from an OIDC provider checked against its JWKS (file or URL), key
rotation without a restart, the refresh rate limit, Keycloak-shaped tokens, dev mode, and token
attacks refused with 401 through the real app with nothing recorded."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Self

import httpx
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwt

from api.app import create_app
from api.auth import DEV_MODE_BANNER, TokenVerifier
from api.jwks import ConfigurationError, signing_keys
from api.problems import Problem
from haven.grant_request import Role
from tests.api_harness import stored_counts
from tests.conftest import make_settings
from tests.harness import SAMPLE_REQUEST

ISSUER = "https://idp.test/realms/haven"
AUDIENCE = "haven-api"
LEEWAY = 30
DROP = object()  # a claim left out of the token


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(data: dict) -> str:
    return b64(json.dumps(data).encode())


@dataclass
class Signer:
    kid: str
    algorithm: str
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @property
    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    @property
    def public_pem(self) -> str:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def jwk(self, **members) -> dict:
        """The public JWK, built from the key's numbers (not by the library under test)."""
        numbers = self.private_key.public_key().public_numbers()
        if isinstance(numbers, rsa.RSAPublicNumbers):
            fields = {"kty": "RSA", "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                      "e": b64(numbers.e.to_bytes(3, "big"))}  # fmt: skip
        else:
            size, crv = {"secp256r1": (32, "P-256"), "secp384r1": (48, "P-384")}[numbers.curve.name]
            fields = {"kty": "EC", "crv": crv, "x": b64(numbers.x.to_bytes(size, "big")), "y": b64(numbers.y.to_bytes(size, "big"))}
        return {**fields, "kid": self.kid, "use": "sig", "alg": self.algorithm, **members}

    def sign(self, claims: dict, **header) -> str:
        return jwt.encode(claims, self.private_pem, algorithm=self.algorithm, headers={"kid": self.kid, **header})


@dataclass
class Keys:
    rsa: Signer  # published as rsa-1
    ec: Signer  # published as ec-1
    rotated: Signer  # rsa-2: published later
    stranger: Signer  # never published

    def jwks(self, *signers: Signer) -> dict:
        return {"keys": [s.jwk() for s in signers or (self.rsa, self.ec)]}


@pytest.fixture(scope="module")
def keys() -> Keys:
    def rsa_key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    return Keys(
        rsa=Signer("rsa-1", "RS256", rsa_key()),
        ec=Signer("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1())),
        rotated=Signer("rsa-2", "RS256", rsa_key()),
        stranger=Signer("rsa-stranger", "RS256", rsa_key()),
    )


def now() -> int:
    return int(time.time())


def claims(**changes) -> dict:
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "int-ngo-1", "iat": now(), "exp": now() + 300,
            "roles": ["intermediary"], "org": "ngo-1"}  # fmt: skip
    base.update(changes)
    return {name: value for name, value in base.items() if value is not DROP}


def unsigned(payload: dict, **header) -> str:
    return f"{b64json({'alg': 'none', 'typ': 'JWT', **header})}.{b64json(payload)}."


def hmac_signed(payload: dict, secret: bytes, **header) -> str:
    """HS256 by hand: the library refuses to use a public key as an HMAC secret, an attacker would not."""
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', **header})}.{b64json(payload)}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def tampered(k: Keys) -> str:
    """A valid header and signature for one payload, put on another (org ngo-2)."""
    header, _, signature = k.rsa.sign(claims()).split(".")
    other = b64json(claims(org="ngo-2"))
    return f"{header}.{other}.{signature}"


def jwks_settings(tmp_path: Path, jwks_file: Path | None = None, **changes):
    """Production-like settings: no dev mode; the HS256 secret is still set, to show it is not used."""
    settings = make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'haven.db'}")
    production = {"dev_mode": False, "jwks_file": jwks_file, "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE,
                  "jwt_leeway_seconds": LEEWAY}  # fmt: skip
    return settings.model_copy(update={**production, **changes})


def write_jwks(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


class Clock:
    """Monotonic time the tests move by hand, for the cache and the refresh rate limit."""

    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Problem) as caught:
        await verifier.verify(token)
    assert caught.value.status == 401
    assert caught.value.headers == {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    return caught.value.detail


# --- the app over the real workflow stack, outside dev mode ------------------------------------


class Api:
    def __init__(self, http: httpx.AsyncClient, db, keys: Keys, settings):
        self.http, self.db, self.keys, self.settings = http, db, keys, settings
        self._n = 0
        self.baseline = (0, 0)  # what the database held before the test (the pinned policy's audit event)

    async def submit(self, token: str | None) -> httpx.Response:
        self._n += 1
        headers = {"Idempotency-Key": f"auth-{self._n}"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.http.post("/v1/grant-requests", json=SAMPLE_REQUEST, headers=headers)

    async def counts(self) -> tuple[int, int]:
        """Grant requests and audit events written since the test began."""
        requests, events = await stored_counts(self.db)
        return requests - self.baseline[0], events - self.baseline[1]


@pytest.fixture
async def api(time_skipping_env, sqlite_db, tmp_path, keys):
    settings = jwks_settings(tmp_path, write_jwks(tmp_path / "jwks.json", keys.jwks()), database_url=sqlite_db.url)
    app = create_app(settings, db=sqlite_db, client=time_skipping_env.client)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://haven.test") as http:
            api = Api(http, sqlite_db, keys, settings)
            api.baseline = await stored_counts(sqlite_db)
            yield api


@pytest.mark.parametrize("signer", ["rsa", "ec"], ids=["RS256", "ES256"])
async def test_a_valid_provider_token_is_accepted(api: Api, signer: str):
    assert await api.counts() == (0, 0)
    response = await api.submit(getattr(api.keys, signer).sign(claims()))
    assert response.status_code == 202, response.text
    assert (await api.counts())[0] == 1


Attack = Callable[[Keys], "str | None"]
ATTACKS = [
    pytest.param(lambda k: None, "a bearer token is required", id="no-authorization-header"),
    pytest.param(lambda k: "not-a-jwt", "not a well-formed JWT", id="garbage"),
    pytest.param(lambda k: "a.b.c", "not a well-formed JWT", id="three-garbage-segments"),
    pytest.param(lambda k: unsigned(claims()), "algorithm is not accepted", id="alg-none"),
    pytest.param(lambda k: unsigned(claims(), kid="rsa-1"), "algorithm is not accepted", id="alg-none-with-a-known-kid"),
    pytest.param(lambda k: hmac_signed(claims(), k.rsa.public_pem.encode(), kid="rsa-1"), "algorithm is not accepted",
                 id="hs256-keyed-with-the-rsa-public-pem"),
    pytest.param(lambda k: hmac_signed(claims(), json.dumps(k.rsa.jwk()).encode(), kid="rsa-1"), "algorithm is not accepted",
                 id="hs256-keyed-with-the-rsa-public-jwk"),
    pytest.param(lambda k: hmac_signed(claims(), ("test-secret-" + "x" * 32).encode()), "algorithm is not accepted",
                 id="dev-hs256-token-outside-dev-mode"),
    pytest.param(lambda k: k.rsa.sign(claims(exp=now() - 3600)), "expired", id="expired"),
    pytest.param(lambda k: k.rsa.sign(claims(nbf=now() + 3600)), "not valid yet", id="not-yet-valid-nbf"),
    pytest.param(lambda k: k.rsa.sign(claims(iat=now() + 3600)), "issued in the future", id="issued-in-the-future"),
    pytest.param(lambda k: k.rsa.sign(claims(exp=str(now() + 300))), "must be a number", id="exp-not-a-number"),
    pytest.param(lambda k: k.rsa.sign(claims(exp=DROP)), "no 'exp' claim", id="missing-exp"),
    pytest.param(lambda k: k.rsa.sign(claims(aud="another-api")), "audience", id="wrong-audience"),
    pytest.param(lambda k: k.rsa.sign(claims(aud=["account", "another-api"])), "audience", id="wrong-audience-list"),
    pytest.param(lambda k: k.rsa.sign(claims(aud=DROP)), "no 'aud' claim", id="missing-audience"),
    pytest.param(lambda k: k.rsa.sign(claims(iss="https://evil.example/realms/haven")), "issuer", id="wrong-issuer"),
    pytest.param(lambda k: k.rsa.sign(claims(iss=DROP)), "no 'iss' claim", id="missing-issuer"),
    pytest.param(lambda k: k.stranger.sign(claims()), "kid", id="unknown-kid"),
    pytest.param(lambda k: jwt.encode(claims(), k.rsa.private_pem, algorithm="RS256"), "names no signing key", id="no-kid"),
    pytest.param(lambda k: k.stranger.sign(claims(), kid="rsa-1"), "signature does not verify", id="another-key-under-a-known-kid"),
    pytest.param(lambda k: k.stranger.sign(claims(), kid="rsa-1", jwk=k.stranger.jwk(kid="rsa-1")), "signature does not verify",
                 id="attacker-key-embedded-in-header"),
    pytest.param(tampered, "signature does not verify", id="tampered-payload"),
    pytest.param(lambda k: k.ec.sign(claims(), kid="rsa-1"), "not the algorithm of its signing key", id="es256-header-with-rsa-kid"),
    pytest.param(lambda k: k.rsa.sign(claims(), kid="ec-1"), "not the algorithm of its signing key", id="rs256-header-with-ec-kid"),
    pytest.param(lambda k: k.rsa.sign(claims(), crit=["exp"]), "crit", id="critical-header-extension"),
    pytest.param(lambda k: k.rsa.sign(claims(roles=DROP)), "no roles", id="missing-roles"),
    pytest.param(lambda k: k.rsa.sign(claims(roles="intermediary")), "no roles", id="roles-not-a-list"),
    pytest.param(lambda k: k.rsa.sign(claims(roles=["superuser", "default-roles-haven", {"x": 1}])), "none of the token's roles",
                 id="roles-of-no-known-kind"),
    pytest.param(lambda k: k.rsa.sign(claims(sub=DROP)), "no 'sub' claim", id="missing-sub"),
    pytest.param(lambda k: k.rsa.sign(claims(sub="")), "'sub' claim must be", id="empty-sub"),
    pytest.param(lambda k: k.rsa.sign(claims(org=["ngo-1", "ngo-2"])), "organisation claim", id="organisation-not-a-string"),
]  # fmt: skip


@pytest.mark.parametrize(("attack", "reason"), ATTACKS)
async def test_token_attacks_get_401_and_record_nothing(api: Api, attack: Attack, reason: str):
    token = attack(api.keys)
    response = await api.submit(token)
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:haven:problem:unauthorized" and body["status"] == 401
    # The reason names the actual defect, so a token refused for some other cause fails the test.
    assert reason in body["detail"], body["detail"]
    challenge = "Bearer" if token is None else 'Bearer error="invalid_token"'
    assert response.headers["www-authenticate"] == challenge
    if token is not None:
        assert not any(len(part) > 8 and part in response.text for part in token.split("."))
    assert await api.counts() == (0, 0)


@pytest.mark.parametrize(
    ("expired_for", "status"), [(LEEWAY - 10, 202), (LEEWAY + 10, 401)], ids=["within-leeway", "beyond-leeway"]
)
async def test_clock_skew_is_tolerated_up_to_the_leeway(api: Api, expired_for: int, status: int):
    response = await api.submit(api.keys.rsa.sign(claims(exp=now() - expired_for)))
    assert response.status_code == status, response.text
    assert (await api.counts())[0] == (1 if status == 202 else 0)


async def test_a_keycloak_token_is_accepted_by_configuration_alone(time_skipping_env, sqlite_db, tmp_path, keys):
    settings = jwks_settings(
        tmp_path, write_jwks(tmp_path / "jwks.json", keys.jwks()), database_url=sqlite_db.url,
        jwt_roles_claim="realm_access.roles", jwt_organisation_claim="haven.organisation",
    )  # fmt: skip
    keycloak = {
        "exp": now() + 300, "iat": now(), "auth_time": now(), "jti": "0b7f4c1e-6d0e-4a4b-9a1e-3f1c2b8d9e70",
        "iss": ISSUER, "aud": ["haven-api", "account"], "sub": "f2c1d6a4-8f3e-4b8e-9c55-1e2d3c4b5a69",
        "typ": "Bearer", "azp": "haven-portal", "session_state": "5e1c", "acr": "1",
        "realm_access": {"roles": ["default-roles-haven", "offline_access", "uma_authorization", "intermediary"]},
        "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
        "scope": "openid profile email", "email_verified": True, "preferred_username": "amina",
        "haven": {"organisation": "ngo-1"},
    }  # fmt: skip
    actor = await TokenVerifier(settings).verify(keys.rsa.sign(keycloak))
    assert (actor.subject, actor.roles, actor.organisation) == (keycloak["sub"], [Role.INTERMEDIARY], "ngo-1")
    # The default claim names do not find Keycloak's roles.
    assert "no roles" in await refused(TokenVerifier(jwks_settings(tmp_path, settings.jwks_file)), keys.rsa.sign(keycloak))

    app = create_app(settings, db=sqlite_db, client=time_skipping_env.client)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://haven.test") as http:
        headers = {"Authorization": f"Bearer {keys.rsa.sign(keycloak)}", "Idempotency-Key": "kc-1"}
        response = await http.post("/v1/grant-requests", json=SAMPLE_REQUEST, headers=headers)
    assert response.status_code == 202, response.text


# --- the key set: file, URL, rotation, rate limit, failures ----------------------------------------


class JwksServer:
    """A loopback HTTP server that serves a JWKS and counts how often it is asked."""

    def __init__(self, document: dict):
        self.document = document
        self.status = 200
        self.fetches = 0

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.fetches += 1
        body = json.dumps(self.document).encode() if self.status == 200 else b"{}"
        head = f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/realms/haven/protocol/openid-connect/certs"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def served(keys):
    async with JwksServer(keys.jwks(keys.rsa)) as server:
        yield server


def url_verifier(tmp_path, server: JwksServer, clock: Clock, **changes) -> TokenVerifier:
    settings = jwks_settings(tmp_path, jwks_url=server.url, jwks_min_refresh_seconds=30, jwks_cache_seconds=600, **changes)
    return TokenVerifier(settings, clock=clock)


async def test_keys_come_from_a_url_and_are_cached(tmp_path, keys, served):
    verifier = url_verifier(tmp_path, served, Clock())
    for _ in range(3):
        assert (await verifier.verify(keys.rsa.sign(claims()))).subject == "int-ngo-1"
    assert served.fetches == 1


async def test_a_rotated_key_is_accepted_without_a_restart(tmp_path, keys, served):
    clock = Clock()
    verifier = url_verifier(tmp_path, served, clock)
    await verifier.start()
    assert served.fetches == 1
    served.document = keys.jwks(keys.rsa, keys.rotated)
    clock.now += 31
    assert (await verifier.verify(keys.rotated.sign(claims()))).subject == "int-ngo-1"
    assert (await verifier.verify(keys.rsa.sign(claims()))).subject == "int-ngo-1"
    assert served.fetches == 2


async def test_unknown_kids_refresh_at_most_once_per_interval(tmp_path, keys, served):
    clock = Clock()
    verifier = url_verifier(tmp_path, served, clock)
    await verifier.start()
    flood = [Signer(f"made-up-{i}", "RS256", keys.stranger.private_key).sign(claims()) for i in range(25)]
    for _ in range(3):
        clock.now += 31
        before = served.fetches
        details = await asyncio.gather(*(refused(verifier, token) for token in flood))
        details += [await refused(verifier, token) for token in flood]
        assert all("kid" in detail for detail in details)
        assert served.fetches == before + 1
    # Within the interval a key that has just appeared waits for the next one.
    served.document = keys.jwks(keys.rsa, keys.rotated)
    assert "kid" in await refused(verifier, keys.rotated.sign(claims()))
    clock.now += 31
    assert (await verifier.verify(keys.rotated.sign(claims()))).subject == "int-ngo-1"


async def test_a_withdrawn_key_is_refused_once_the_cache_expires(tmp_path, keys, served):
    clock = Clock()
    verifier = url_verifier(tmp_path, served, clock)
    token = keys.rsa.sign(claims())
    await verifier.verify(token)
    served.document = keys.jwks(keys.rotated)
    clock.now += 599
    await verifier.verify(token)
    clock.now += 2
    assert "kid" in await refused(verifier, token)
    assert served.fetches == 2


@pytest.mark.parametrize("failure", ["server-error", "not-a-jwks", "no-usable-key", "unreachable"])
async def test_a_failed_refresh_keeps_the_keys_and_warns(tmp_path, keys, served, failure):
    clock = Clock()
    verifier = url_verifier(tmp_path, served, clock)
    await verifier.start()
    if failure == "server-error":
        served.status = 503
    elif failure == "not-a-jwks":
        served.document = {"issuer": ISSUER}
    elif failure == "no-usable-key":
        served.document = {"keys": [keys.rsa.jwk(use="enc")]}
    else:
        served.server.close()
        await served.server.wait_closed()
    clock.now += 601
    with structlog.testing.capture_logs() as logs:
        assert (await verifier.verify(keys.rsa.sign(claims()))).subject == "int-ngo-1"
    assert [log["log_level"] for log in logs if log["event"] == "jwks_refresh_failed"] == ["warning"]


async def test_keys_come_from_a_file_and_its_rotation_is_picked_up(tmp_path, keys):
    path = write_jwks(tmp_path / "jwks.json", keys.jwks(keys.rsa))
    clock = Clock()
    verifier = TokenVerifier(jwks_settings(tmp_path, path, jwks_min_refresh_seconds=30), clock=clock)
    await verifier.start()
    assert (await verifier.verify(keys.rsa.sign(claims()))).subject == "int-ngo-1"
    write_jwks(path, keys.jwks(keys.rsa, keys.rotated))
    clock.now += 31
    assert (await verifier.verify(keys.rotated.sign(claims()))).subject == "int-ngo-1"


def test_only_signing_keys_of_allowed_algorithms_are_used(keys):
    small = Signer("rsa-1024", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    p384 = Signer("ec-p384", "ES384", ec.generate_private_key(ec.SECP384R1()))
    document = {"keys": [
        keys.rsa.jwk(),
        keys.ec.jwk(),
        keys.rotated.jwk(kid="encryption", use="enc"),
        keys.rotated.jwk(kid="claims-ps256", alg="PS256"),
        keys.rotated.jwk(kid="rsa-claims-es256", alg="ES256"),
        {k: v for k, v in keys.rotated.jwk().items() if k != "kid"},
        keys.rotated.jwk(kid="rsa-1"),  # a second key under a kid already seen
        small.jwk(),
        p384.jwk(),
        p384.jwk(kid="p384-claims-es256", alg="ES256"),
        {"kty": "oct", "kid": "hmac", "k": b64(b"secret"), "alg": "HS256"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not-a-jwk",
    ]}  # fmt: skip
    found = signing_keys(document, ["RS256", "ES256"])
    assert {kid: key.algorithm for kid, key in found.items()} == {"rsa-1": "RS256", "ec-1": "ES256"}
    assert set(signing_keys(document, ["ES256"])) == {"ec-1"}
    with pytest.raises(TypeError):
        signing_keys({"issuer": ISSUER}, ["RS256"])


# --- configuration and dev mode ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({}, "no identity provider is configured", id="no-jwks-outside-dev-mode"),
        pytest.param({"jwks_url": "http://idp.example/certs"}, "https URL", id="plain-http-to-a-remote-host"),
        pytest.param({"jwks_url": "idp.example/certs"}, "https URL", id="not-a-url"),
        pytest.param({"jwks_url": "https://idp.example/certs", "jwks_file": Path("jwks.json")}, "not both", id="url-and-file"),
        pytest.param({"jwks_url": "https://idp.example/certs", "jwt_algorithms": ["RS256", "HS256"]}, "RS256", id="hs256-allowed"),
        pytest.param({"jwks_url": "https://idp.example/certs", "jwt_algorithms": []}, "HAVEN_JWT_ALGORITHMS", id="no-algorithm"),
    ],
)  # fmt: skip
def test_the_app_refuses_to_start_with_unsafe_authentication(tmp_path, changes, message):
    with pytest.raises(ConfigurationError, match=message):
        create_app(jwks_settings(tmp_path, **changes))


@pytest.mark.parametrize(
    "url",
    ["https://idp.example/certs", "http://127.0.0.1:8080/c", "http://localhost/c", "http://[::1]:8080/c"],
    ids=["https", "ipv4-loopback", "localhost", "ipv6-loopback"],
)
def test_https_or_loopback_jwks_urls_are_accepted(tmp_path, url):
    assert TokenVerifier(jwks_settings(tmp_path, jwks_url=url)).keys is not None


async def test_a_jwks_file_without_usable_keys_stops_the_start(tmp_path, keys):
    path = write_jwks(tmp_path / "jwks.json", {"keys": [keys.rsa.jwk(use="enc")]})
    with pytest.raises(ConfigurationError, match="no usable signing key"):
        await TokenVerifier(jwks_settings(tmp_path, path)).start()


@pytest.mark.parametrize("dev_mode", [True, False], ids=["dev-mode", "production"])
async def test_dev_mode_is_announced_loudly_at_start(time_skipping_env, sqlite_db, tmp_path, keys, capsys, dev_mode):
    settings = jwks_settings(tmp_path, write_jwks(tmp_path / "jwks.json", keys.jwks()), database_url=sqlite_db.url,
                             dev_mode=dev_mode)  # fmt: skip
    app = create_app(settings, db=sqlite_db, client=time_skipping_env.client)
    capsys.readouterr()
    with structlog.testing.capture_logs() as logs:
        async with app.router.lifespan_context(app):
            pass
    stderr = capsys.readouterr().err
    warned = [log for log in logs if log["event"] == "dev_mode_hs256_tokens_accepted" and log["log_level"] == "warning"]
    assert (DEV_MODE_BANNER in stderr, len(warned)) == ((True, 1) if dev_mode else (False, 0))
    if dev_mode:
        assert "HS256" in stderr and "NEVER use dev mode in production" in stderr


async def test_dev_mode_accepts_both_routes_but_no_key_confusion(tmp_path, keys):
    settings = jwks_settings(tmp_path, write_jwks(tmp_path / "jwks.json", keys.jwks()), dev_mode=True)
    verifier = TokenVerifier(settings)
    dev_token = verifier.issue("cw-1", [Role.CASEWORKER], None, timedelta(minutes=5))
    assert (await verifier.verify(dev_token)).roles == [Role.CASEWORKER]
    assert (await verifier.verify(keys.ec.sign(claims()))).organisation == "ngo-1"
    for secret in (keys.rsa.public_pem.encode(), json.dumps(keys.rsa.jwk()).encode()):
        for header in ({"kid": "rsa-1"}, {}):
            assert "signature does not verify" in await refused(verifier, hmac_signed(claims(), secret, **header))


async def test_dev_tokens_follow_the_configured_claim_paths(tmp_path):
    settings = make_settings(tmp_path, "sqlite://", jwt_roles_claim="realm_access.roles", jwt_organisation_claim="haven.org")
    verifier = TokenVerifier(settings)
    token = verifier.issue("int-1", [Role.INTERMEDIARY], "ngo-1", timedelta(minutes=5))
    assert jwt.get_unverified_claims(token)["realm_access"] == {"roles": ["intermediary"]}
    actor = await verifier.verify(token)
    assert (actor.roles, actor.organisation) == ([Role.INTERMEDIARY], "ngo-1")
