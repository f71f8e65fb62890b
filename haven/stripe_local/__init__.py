"""A local Stripe-compatible server for tests and `make run`.

Real HTTP (uvicorn, h11) on loopback, serving the part of Stripe's v1 API the payment rail
uses, with Stripe's JSON shapes, error bodies and idempotency rules, so production code reaches
it only through the `stripe` package's base-URL setting::

    with LocalStripe() as server:            # or: server = LocalStripe().start(); server.stop()
        server.control.create_account("acct_payee")
        server.control.top_up(50_000, "eur")
        client = stripe.StripeClient(server.api_key, base_addresses={"api": server.url},
                                     max_network_retries=0)
        client.v1.transfers.create(params={...}, options={"idempotency_key": "..."})

Stripe's API served (form-encoded bodies, `Authorization: Bearer sk_test_...` - any key that
starts with `sk_test_`, otherwise 401):

    POST /v1/transfers                  amount, currency, destination, metadata, transfer_group,
                                        description -> transfer (event transfer.created)
    GET  /v1/transfers                  created[gt|gte|lt|lte], destination, transfer_group,
                                        limit, starting_after, ending_before (newest first)
    GET  /v1/transfers/{id}
    POST /v1/transfers/{id}/reversals   amount (default: the rest), metadata -> transfer_reversal
                                        (event transfer.reversed, balance credited)
    GET  /v1/accounts/{id}, GET /v1/balance

Idempotency: a POST's `Idempotency-Key` is scoped to the API key. The same key with the same
method, path and parameters replays the stored status and body with `Idempotent-Replayed: true`;
other parameters -> 400 `idempotency_error`. Stored: successes and errors of requests that
began executing (e.g. `balance_insufficient`). Not stored: 5xx, injected faults, parameter
validation errors (missing/invalid params, unknown destination), as Stripe documents.
Keys never expire (use reset).

Control API (not Stripe's; JSON bodies, no auth, loopback only). The same operations exist on
`LocalStripe.control` (a `LocalStripeState`) for in-process tests:

    POST   /_control/accounts           {"id"?, "country"?, "default_currency"?, "transfers_enabled"?}
    GET    /_control/balance; POST {"amount", "currency"}    top up the platform balance
    GET    /_control/transfers          {"count", "data": every transfer, oldest first, each
                                         with `_created_at_precise` (unix seconds, float)}
    POST   /_control/transfers/{id}/reverse  {"amount"?}    a reversal made outside the API
    POST   /_control/faults             {"kind", "method"="POST", "path"="/v1/transfers",
                                         "status"=500, "seconds"=0, "times"=1, "code"?, "message"?}
           kinds: "error" (Stripe-shaped error with `status`: 5xx api_error, 429 rate_limit,
                  409 idempotency_error; nothing executed, nothing stored),
                  "delay" (sleep `seconds`, then execute normally - a client timeout whose
                  transfer still happens),
                  "drop_after_commit" (execute and store the idempotent result, then abort the
                  TCP connection without an answer - a lost response).
           Faults match method + path prefix and are consumed in order. GET lists, DELETE clears.
    POST   /_control/reset              {"seed_dev"?: bool}  forget everything
    POST   /_control/webhook_endpoint   {"url", "secret", "mode"?: "async"|"sync"|"hold"}
    GET    /_control/events?type=...    every event, oldest first
    POST   /_control/events/{id}/send   {"times"?, "timestamp"?, "secret"?} re-send (twice, late,
                                        out of order, stale or forged signature)
    GET    /_control/deliveries         every webhook delivery attempt
    POST   /_control/clock              {"now": unix seconds | null} freeze `created` timestamps

Webhooks: each event is POSTed as JSON with `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256
of "<t>.<payload>" with the endpoint secret>`, which `stripe.Webhook.construct_event` verifies.
Mode "async" sends from a background thread as soon as the event exists (it may arrive before
the API answer), "sync" sends before the API call answers, "hold" only stores events.

Run it alone: `python -m haven.stripe_local --port 12111` (prints URL and API key; seeds
`acct_devpayee` and a balance in EUR, USD and GBP).
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from typing import Any, Self

import uvicorn

from .app import create_app
from .state import API_VERSION, LocalStripeState, sign_payload

__all__ = ["API_VERSION", "LocalStripe", "LocalStripeState", "sign_payload"]


class LocalStripe:
    """The server in a background thread, on a free loopback port unless `port` is given."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 seed_dev: bool = False, log_level: str = "warning") -> None:
        self.host, self._port = host, port
        self.api_key = api_key or f"sk_test_local_{secrets.token_hex(8)}"
        self.control = LocalStripeState()
        if seed_dev:
            self.control.seed_dev()
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("LocalStripe is not started")
        return self._socket.getsockname()[1]

    @property
    def running(self) -> bool:
        """Started, and its server thread has not stopped."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def url(self) -> str:
        """The base address for `StripeClient(base_addresses={"api": url})`."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalStripe:
        if self._server is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._socket = sock
        config = uvicorn.Config(create_app(self.control), http="h11", loop="asyncio",
                                lifespan="off", log_level=self._log_level,
                                timeout_graceful_shutdown=1, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="stripe-local", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local Stripe server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self.control.close()
        self._server = self._thread = None

    def client(self, *, max_network_retries: int = 0, timeout: float = 10.0, **kwargs: Any):
        """A `stripe.StripeClient` pointed at this server (sync calls via requests, async via
        httpx, both with `timeout` seconds)."""
        import stripe

        http_client = stripe.RequestsClient(
            timeout=timeout, async_fallback_client=stripe.HTTPXClient(timeout=timeout))
        return stripe.StripeClient(self.api_key, base_addresses={"api": self.url},
                                   max_network_retries=max_network_retries,
                                   http_client=http_client, **kwargs)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        import asyncio

        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)
