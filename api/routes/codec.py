"""The codec endpoint Temporal's web UI calls to show (and to send) payloads: the UI holds only
ciphertext, and asks haven to open it for a person entitled to read cases. Every decode is an
audited read of sensitive data.

The UI sends `POST /v1/codec/decode` (and `/encode`) with `{"payloads": [{"metadata": {...},
"data": "..."}]}`, bytes in base64, from its own origin: the answers carry the CORS headers that
origin needs (HAVEN_CODEC_CORS_ORIGINS), and only that origin's browser preflight is answered.

Who may call it: caseworkers and directors, with their bearer token (configure the UI to pass
the user's access token). An `Origin` header proves nothing (any script can send one), so it
never stands in for a token. In dev mode only, Temporal's dev-server UI, which has no sign-in,
calls an address of its own instead, `/v1/codec/ui/<secret>/decode` (and `/encode`), where the
secret is HAVEN_CODEC_UI_SECRET: `haven run` makes one per run (secrets.token_urlsafe) and hands
it to the dev server's UI only; any other secret, and every such address outside dev mode, is
refused. Whoever can reach that UI can read the address from it (and use the UI itself): the UI
with sign-in is issue 10."""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from temporalio.api.common.v1 import Payloads

from haven.audit import record_change
from haven.grant_request import Actor, Role
from haven.keyring import KeyRingError
from haven.payload_codec import EncryptionCodec
from api.auth import current_actor
from api.permissions import Operation, require
from api.problems import PROBLEM_RESPONSES as PROBLEMS
from api.problems import Problem
from api.services import Services, Svc

router = APIRouter(prefix="/v1/codec", tags=["temporal ui"])
DEV_UI = Actor(subject="temporal-ui (dev mode, no token)", roles=[Role.CASEWORKER])
MAX_PAYLOADS = 1000

_decode_payloads = require(Operation.DECODE_PAYLOADS)


async def codec_reader(request: Request) -> Actor:
    """A staff member with a token (whatever origin the request claims)."""
    return await _decode_payloads(request, await current_actor(request))


codec_reader.operation = Operation.DECODE_PAYLOADS  # the permission table reads it


async def dev_ui(request: Request, secret: str) -> Actor:
    """The dev server's UI, by the secret in its codec address (dev mode only)."""
    settings = request.app.state.services.settings
    expected = settings.codec_ui_secret if settings.dev_mode else ""
    if not expected or not hmac.compare_digest(secret.encode(), expected.encode()):
        raise Problem(404, "not-found", "no codec endpoint at this address (the dev UI's address changes with each `haven run`)")
    return DEV_UI


class CodecCors:
    """CORS for /v1/codec only: the UI's origin may call it from the browser, no other path."""

    def __init__(self, app, origins: list[str]):
        self.app, self.origins = app, set(origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(router.prefix + "/"):
            return await self.app(scope, receive, send)
        origin = dict(scope["headers"]).get(b"origin", b"").decode("latin-1")
        allowed = origin in self.origins
        cors = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-credentials", b"true"),
            (b"vary", b"Origin"),
        ] if allowed else []  # fmt: skip
        if scope["method"] == "OPTIONS" and allowed:
            headers = cors + [
                (b"access-control-allow-methods", b"POST, OPTIONS"),
                (b"access-control-allow-headers", b"authorization, content-type, x-namespace"),
                (b"access-control-max-age", b"600"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            return await send({"type": "http.response.body", "body": b""})

        async def send_with_cors(message):
            if message["type"] == "http.response.start" and cors:
                message = {**message, "headers": list(message.get("headers", [])) + cors}
            await send(message)

        await self.app(scope, receive, send_with_cors)


# Base64, standard or URL-safe, padded or not: what the payloads' JSON form is read with.
BASE64 = r"^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}(?:==)?|[A-Za-z0-9+/_-]{3}=?)?$"
Base64 = Annotated[str, StringConstraints(pattern=BASE64)]


class PayloadJson(BaseModel):
    """A Temporal payload as the UI sends it: metadata values and data in base64."""

    metadata: dict[str, Base64] = Field(default_factory=dict)
    data: Base64 = ""


class PayloadsJson(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"payloads": [{"metadata": {"encoding": "YmluYXJ5L2VuY3J5cHRlZA=="}, "data": "…"}]}]}
    )

    payloads: list[PayloadJson] = Field(default_factory=list, max_length=MAX_PAYLOADS)


def _payloads(body: PayloadsJson) -> Payloads:
    try:
        return json_format.ParseDict(body.model_dump(), Payloads())
    except (json_format.ParseError, DecodeError) as error:
        detail = f"payloads: not base64 ({error})"
        raise Problem(422, "validation-error", detail, errors=[{"field": "payloads", "message": detail}]) from None


async def _transcode(svc: Services, request: Request, body: PayloadsJson, actor: Actor, direction: Literal["decode", "encode"]) -> PayloadsJson:
    payloads = _payloads(body)
    codec = EncryptionCodec(svc.payload_keys)
    try:
        done = await (codec.decode if direction == "decode" else codec.encode)(list(payloads.payloads))
    except KeyRingError as error:
        raise Problem(422, "payload-refused", str(error)) from None
    if direction == "decode":
        async with svc.db.transaction() as session:
            await record_change(
                session, actor, "payloads_decoded", None, payloads=len(done), namespace=request.headers.get("x-namespace", "")
            )
    return PayloadsJson.model_validate(json_format.MessageToDict(Payloads(payloads=done)))


@router.post("/decode", response_model=PayloadsJson, responses=PROBLEMS)
async def decode_payloads(
    body: PayloadsJson, request: Request, svc: Svc, actor: Annotated[Actor, Depends(codec_reader)]
) -> PayloadsJson:
    """Opens sealed payloads for Temporal's UI (audited); others are returned unchanged."""
    return await _transcode(svc, request, body, actor, "decode")


@router.post("/ui/{secret}/decode", response_model=PayloadsJson, include_in_schema=False)
async def dev_ui_decode_payloads(body: PayloadsJson, request: Request, svc: Svc, actor: Annotated[Actor, Depends(dev_ui)]) -> PayloadsJson:
    return await _transcode(svc, request, body, actor, "decode")


@router.post("/ui/{secret}/encode", response_model=PayloadsJson, include_in_schema=False)
async def dev_ui_encode_payloads(body: PayloadsJson, request: Request, svc: Svc, actor: Annotated[Actor, Depends(dev_ui)]) -> PayloadsJson:
    return await _transcode(svc, request, body, actor, "encode")


@router.post("/encode", response_model=PayloadsJson, responses=PROBLEMS)
async def encode_payloads(
    body: PayloadsJson, request: Request, svc: Svc, actor: Annotated[Actor, Depends(codec_reader)]
) -> PayloadsJson:
    """Seals payloads the UI sends (a signal or a query typed in by hand) under the current key."""
    return await _transcode(svc, request, body, actor, "encode")
