"""The ASGI app: Stripe's v1 endpoints the payment rail uses, plus `/_control/...`."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from .state import LocalStripeState, StripeError, fault_error, invalid, new_id


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (`metadata[request_id]=x`, `created[gte]=1`) into nested dicts.

    Lists arrive as `expand[0]=a` and stay dicts keyed "0", "1", ...: nothing here needs more."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        path = [key.split("[", 1)[0], *re.findall(r"\[([^\]]*)\]", key)]
        target = result
        for part in path[:-1]:
            nested = target.get(part)
            if not isinstance(nested, dict):
                nested = target[part] = {}
            target = nested
        target[path[-1]] = value
    return result


def stripe_json(status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status,
                        headers={"Request-Id": new_id("req"), **(headers or {})})


def error_response(error: StripeError) -> JSONResponse:
    return stripe_json(error.status, error.body())


def api_key_of(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, credential = auth.partition(" ")
    if scheme.lower() == "bearer":
        key = credential.strip()
    elif scheme.lower() == "basic":
        try:
            key = base64.b64decode(credential).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return None
    else:
        return None
    return key if key.startswith("sk_test_") and len(key) > len("sk_test_") else None


class _Gate:
    """Auth and fault injection around the v1 API (pure ASGI, so it can drop connections)."""

    def __init__(self, app, state: LocalStripeState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if api_key_of(request) is None:
            auth = request.headers.get("authorization")
            message = ("You did not provide an API key. You need to provide your API key in "
                       "the Authorization header, using Bearer auth." if not auth else
                       "Invalid API Key provided. Test keys start with sk_test_.")
            await error_response(invalid(message, status=401))(scope, receive, send)
            return
        fault = self.state.take_fault(scope["method"], scope["path"])
        if fault is None:
            await self.app(scope, receive, send)
        elif fault.kind == "error":
            await error_response(fault_error(fault.status, fault.code, fault.message))(
                scope, receive, send)
        elif fault.kind == "delay":  # the request arrived; the answer is slow
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await asyncio.sleep(fault.seconds)
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
        else:  # drop_after_commit: run the request, swallow its answer, kill the connection
            async def swallow(message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
            _drop_connection(send)


def _drop_connection(send: Send) -> None:
    """Abort the TCP connection under uvicorn's h11 protocol without a response."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("drop_after_commit needs uvicorn's h11 server (http='h11')")
    transport.abort()
    cycle.disconnected = True  # so uvicorn does not try to answer 500 on a dead socket


def create_app(state: LocalStripeState) -> Any:
    async def form_of(request: Request) -> list[tuple[str, str]]:
        return parse_qsl((await request.body()).decode(), keep_blank_values=True)

    async def mutate(request: Request, handler) -> Response:
        pairs = await form_of(request)
        params = parse_form(pairs)
        status, body, headers, events = state.run_post(
            api_key_of(request) or "", request.headers.get("idempotency-key"),
            request.method, request.url.path, pairs, lambda: handler(params))
        for event in state.dispatch(events):  # webhook mode "sync": before we answer
            await asyncio.to_thread(state.deliver, event)
        return stripe_json(status, body, headers)

    def answer(fn):
        async def endpoint(request: Request) -> Response:
            try:
                return stripe_json(200, await fn(request))
            except StripeError as error:
                return error_response(error)
        return endpoint

    async def create_transfer(request: Request) -> Response:
        return await mutate(request, state.create_transfer)

    async def create_reversal(request: Request) -> Response:
        transfer_id = request.path_params["id"]
        return await mutate(request, lambda p: state.reverse_transfer(transfer_id, p))

    @answer
    async def list_transfers(request: Request) -> dict:
        return state.list_transfers(parse_form(list(request.query_params.multi_items())))

    @answer
    async def get_transfer(request: Request) -> dict:
        return state.get_transfer(request.path_params["id"])

    @answer
    async def get_account(request: Request) -> dict:
        account = state.accounts.get(request.path_params["id"])
        if account is None:
            raise invalid(f"No such account: '{request.path_params['id']}'", param="account",
                          code="resource_missing", status=404)
        return dict(account)

    @answer
    async def get_balance(request: Request) -> dict:
        return state.balance_object()

    # ---- /_control (not Stripe's API; JSON in and out, no auth: loopback only) ----------

    async def body_of(request: Request) -> dict:
        raw = await request.body()
        return json.loads(raw) if raw.strip() else {}

    async def control_accounts(request: Request) -> Response:
        b = await body_of(request)
        return JSONResponse(state.create_account(
            b.get("id"), country=b.get("country", "DE"),
            default_currency=b.get("default_currency", "eur"),
            transfers_enabled=b.get("transfers_enabled", True)))

    async def control_balance(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(state.balance_object())
        b = await body_of(request)
        return JSONResponse(state.top_up(int(b["amount"]), b["currency"]))

    async def control_transfers(request: Request) -> Response:
        transfers = [{**t, "_created_at_precise": state.created_at_precise(t["id"])}
                     for t in state.transfers()]
        return JSONResponse({"count": len(transfers), "data": transfers})

    async def control_faults(request: Request) -> Response:
        if request.method == "DELETE":
            state.clear_faults()
        elif request.method == "POST":
            b = await body_of(request)
            try:
                state.inject_fault(b.pop("kind", ""), **b)
            except (TypeError, ValueError) as error:
                return JSONResponse({"error": str(error)}, status_code=400)
        return JSONResponse({"faults": state.faults()})

    async def control_reset(request: Request) -> Response:
        state.reset()
        if (await body_of(request)).get("seed_dev"):
            state.seed_dev()
        return JSONResponse({"reset": True})

    async def control_webhook(request: Request) -> Response:
        b = await body_of(request)
        try:
            state.register_webhook(b["url"], b["secret"], mode=b.get("mode", "async"))
        except (KeyError, ValueError) as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        return JSONResponse({"url": b["url"], "mode": b.get("mode", "async")})

    async def control_events(request: Request) -> Response:
        return JSONResponse({"data": state.events(request.query_params.get("type"))})

    async def control_send_event(request: Request) -> Response:
        b = await body_of(request)
        try:
            state.send_event(request.path_params["id"], times=int(b.get("times", 1)),
                             timestamp=b.get("timestamp"), secret=b.get("secret"), wait=False)
        except KeyError:
            return JSONResponse({"error": "no such event"}, status_code=404)
        return JSONResponse({"queued": int(b.get("times", 1))})

    async def control_deliveries(request: Request) -> Response:
        return JSONResponse({"data": state.deliveries()})

    async def control_clock(request: Request) -> Response:
        state.set_time((await body_of(request)).get("now"))
        return JSONResponse({"now": state.now()})

    async def control_reverse(request: Request) -> Response:
        b = await body_of(request)
        try:
            reversal, events = state.reverse_transfer(
                request.path_params["id"], {"amount": b["amount"]} if b.get("amount") else {})
        except StripeError as error:
            return error_response(error)
        for event in state.dispatch(events):
            await asyncio.to_thread(state.deliver, event)
        return JSONResponse(reversal)

    routes = [
        Route("/v1/transfers", create_transfer, methods=["POST"]),
        Route("/v1/transfers", list_transfers, methods=["GET"]),
        Route("/v1/transfers/{id}", get_transfer, methods=["GET"]),
        Route("/v1/transfers/{id}/reversals", create_reversal, methods=["POST"]),
        Route("/v1/accounts/{id}", get_account, methods=["GET"]),
        Route("/v1/balance", get_balance, methods=["GET"]),
        Route("/_control/accounts", control_accounts, methods=["POST"]),
        Route("/_control/balance", control_balance, methods=["GET", "POST"]),
        Route("/_control/transfers", control_transfers, methods=["GET"]),
        Route("/_control/transfers/{id}/reverse", control_reverse, methods=["POST"]),
        Route("/_control/faults", control_faults, methods=["GET", "POST", "DELETE"]),
        Route("/_control/reset", control_reset, methods=["POST"]),
        Route("/_control/webhook_endpoint", control_webhook, methods=["POST"]),
        Route("/_control/events", control_events, methods=["GET"]),
        Route("/_control/events/{id}/send", control_send_event, methods=["POST"]),
        Route("/_control/deliveries", control_deliveries, methods=["GET"]),
        Route("/_control/clock", control_clock, methods=["POST"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/v1/"):
            return error_response(invalid(f"Unrecognized request URL ({request.method}: "
                                          f"{request.url.path}).", status=404))
        return JSONResponse({"error": "not found"}, status_code=404)

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(StripeError(500, "api_error", f"Internal error: {exc}"))

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found,
                                                       Exception: server_error})
    return _Gate(app, state)
