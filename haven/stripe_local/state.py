"""State, rules and webhook delivery of the local Stripe-compatible server.

`LocalStripeState` is both what the HTTP app works on and the in-process control handle
(`LocalStripe.control`). Every method is thread-safe: the server runs in its own thread.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

try:  # the API version the installed stripe package speaks, stamped on events
    from stripe._api_version import _ApiVersion

    API_VERSION = _ApiVersion.CURRENT
except ImportError:  # pragma: no cover - older/newer package layouts
    API_VERSION = "2025-01-27.acacia"

TRANSFER_PARAMS = {
    "amount", "currency", "destination", "metadata", "transfer_group", "description",
    "source_transaction", "source_type", "expand",
}
REVERSAL_PARAMS = {"amount", "metadata", "description", "refund_application_fee", "expand"}
WEBHOOK_MODES = ("async", "sync", "hold")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def sign_payload(payload: bytes | str, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header value for `payload`, as Stripe computes it."""
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8")
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class StripeError(Exception):
    """An error answered with Stripe's error body. `stored`: kept for an idempotency key."""

    def __init__(self, status: int, type_: str, message: str, *, code: str | None = None,
                 param: str | None = None, stored: bool = False):
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message
        self.code, self.param, self.stored = code, param, stored

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
        if self.param:
            error["param"] = self.param
        return {"error": error}


def invalid(message: str, *, param: str | None = None, code: str | None = None,
            status: int = 400, stored: bool = False) -> StripeError:
    return StripeError(status, "invalid_request_error", message, code=code, param=param,
                       stored=stored)


def fault_error(status: int, code: str | None = None, message: str | None = None) -> StripeError:
    """The error an injected `{"kind": "error"}` fault answers with."""
    if status == 429:
        return StripeError(429, "invalid_request_error",
                           message or "Request rate limit exceeded. (injected fault)",
                           code=code or "rate_limit")
    if status >= 500:
        return StripeError(status, "api_error",
                           message or "An unknown error occurred. (injected fault)", code=code)
    if status == 409:
        return StripeError(409, "idempotency_error",
                           message or "A request with this key is in progress. (injected fault)",
                           code=code or "idempotency_key_in_use")
    return invalid(message or "Injected fault.", code=code, status=status)


@dataclass
class Fault:
    kind: str  # "error" | "delay" | "drop_after_commit"
    method: str = "POST"
    path: str = "/v1/transfers"
    status: int = 500
    seconds: float = 0.0
    code: str | None = None
    message: str | None = None
    times: int = 1

    def matches(self, method: str, path: str) -> bool:
        return self.method in (method.upper(), "*") and path.startswith(self.path)


@dataclass
class Webhook:
    url: str
    secret: str
    mode: str = "async"  # async: background thread; sync: before the API answers; hold: never


@dataclass
class _Stored:
    method: str
    path: str
    params: list[tuple[str, str]]
    status: int
    body: dict[str, Any]


class LocalStripeState:
    """The server's state and the control handle for tests."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._deliveries_q: queue.Queue[tuple[dict, dict] | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._reset_locked()

    # ---- lifecycle -------------------------------------------------------------------

    def _reset_locked(self) -> None:
        self.accounts: dict[str, dict] = {}
        self.balances: dict[str, int] = {}
        self._transfers: dict[str, dict] = {}  # insertion order = creation order
        self._created_precise: dict[str, float] = {}  # transfer id -> time.time() at creation
        self._events: dict[str, dict] = {}
        self._idempotency: dict[tuple[str, str], _Stored] = {}
        self._faults: list[Fault] = []
        self._deliveries: list[dict] = []
        self.webhook: Webhook | None = None
        self._clock: float | None = None

    def reset(self) -> None:
        """Forget everything: accounts, balance, transfers, events, keys, faults, webhook."""
        with self._lock:
            self._reset_locked()

    def seed_dev(self) -> None:
        """The dev seed: connected account `acct_devpayee` (letters and digits after `acct_`, as
        Stripe's ids and haven's payee validation have it), platform balance in EUR/USD/GBP."""
        self.create_account("acct_devpayee")
        for currency in ("eur", "usd", "gbp"):
            self.top_up(100_000_000, currency)  # 1,000,000.00 each

    def now(self) -> int:
        with self._lock:
            return int(self._clock if self._clock is not None else time.time())

    def set_time(self, unix_seconds: float | None) -> None:
        """Freeze `created` timestamps at `unix_seconds` (None: the real clock again)."""
        with self._lock:
            self._clock = unix_seconds

    # ---- accounts and balance ----------------------------------------------------------

    def create_account(self, account_id: str | None = None, *, country: str = "DE",
                       default_currency: str = "eur", transfers_enabled: bool = True) -> dict:
        """A connected account; `transfers_enabled=False` makes transfers to it fail."""
        with self._lock:
            account_id = account_id or new_id("acct")
            account = {
                "id": account_id, "object": "account", "type": "express",
                "country": country, "default_currency": default_currency.lower(),
                "capabilities": {"transfers": "active" if transfers_enabled else "inactive"},
                "charges_enabled": transfers_enabled, "payouts_enabled": transfers_enabled,
                "details_submitted": True, "created": self.now(), "metadata": {},
                "livemode": False,
            }
            self.accounts[account_id] = account
            return dict(account)

    def top_up(self, amount: int, currency: str) -> dict:
        """Add `amount` (minor units) to the platform's available balance; returns the balance."""
        with self._lock:
            currency = currency.lower()
            self.balances[currency] = self.balances.get(currency, 0) + int(amount)
            return self.balance_object()

    def balance(self, currency: str) -> int:
        with self._lock:
            return self.balances.get(currency.lower(), 0)

    def balance_object(self) -> dict:
        with self._lock:
            available = [{"amount": amount, "currency": currency, "source_types": {"card": amount}}
                         for currency, amount in sorted(self.balances.items())]
            pending = [{"amount": 0, "currency": c, "source_types": {"card": 0}}
                       for c in sorted(self.balances)]
            return {"object": "balance", "available": available, "pending": pending,
                    "livemode": False}

    # ---- transfers ---------------------------------------------------------------------

    def transfers(self) -> list[dict]:
        """Every transfer, oldest first (copies)."""
        with self._lock:
            return [json.loads(json.dumps(t)) for t in self._transfers.values()]

    def created_at_precise(self, transfer_id: str) -> float | None:
        """When the transfer was made, as `time.time()` (not Stripe's: `created` is whole
        seconds); the control listing shows it as `_created_at_precise`, for benchmarks."""
        with self._lock:
            return self._created_precise.get(transfer_id)

    def transfer_count(self) -> int:
        with self._lock:
            return len(self._transfers)

    def get_transfer(self, transfer_id: str) -> dict:
        with self._lock:
            transfer = self._transfers.get(transfer_id)
            if transfer is None:
                raise invalid(f"No such transfer: '{transfer_id}'", param="id",
                              code="resource_missing", status=404)
            return json.loads(json.dumps(transfer))

    def create_transfer(self, params: dict[str, Any]) -> tuple[dict, list[dict]]:
        with self._lock:
            _reject_unknown(params, TRANSFER_PARAMS)
            amount = _positive_int(params.get("amount"), "amount")
            currency = params.get("currency")
            if not currency:
                raise invalid("Missing required param: currency.", param="currency",
                              code="parameter_missing")
            if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
                raise invalid(f"Invalid currency: {currency}", param="currency",
                              code="parameter_invalid_string")
            currency = currency.lower()
            destination = params.get("destination")
            if not destination:
                raise invalid("Missing required param: destination.", param="destination",
                              code="parameter_missing")
            account = self.accounts.get(destination)
            if account is None:
                raise invalid(f"No such destination: '{destination}'", param="destination",
                              code="resource_missing")
            if account["capabilities"]["transfers"] != "active":
                raise invalid("Your destination account needs to have the transfers "
                              "capability enabled.", param="destination",
                              code="insufficient_capabilities_for_transfer", stored=True)
            metadata = _metadata(params.get("metadata"))
            if self.balances.get(currency, 0) < amount:
                raise invalid("You have insufficient available funds in your Stripe account.",
                              code="balance_insufficient", stored=True)
            self.balances[currency] -= amount
            transfer_id = new_id("tr")
            transfer = {
                "id": transfer_id, "object": "transfer", "amount": amount,
                "amount_reversed": 0, "balance_transaction": new_id("txn"),
                "created": self.now(), "currency": currency,
                "description": params.get("description") or None,
                "destination": destination, "destination_payment": new_id("py"),
                "livemode": False, "metadata": metadata,
                "reversals": {"object": "list", "data": [], "has_more": False,
                              "total_count": 0, "url": f"/v1/transfers/{transfer_id}/reversals"},
                "reversed": False, "source_transaction": None, "source_type": "card",
                "transfer_group": params.get("transfer_group") or None,
            }
            self._transfers[transfer_id] = transfer
            self._created_precise[transfer_id] = time.time()
            return self.get_transfer(transfer_id), [self._event("transfer.created", transfer)]

    def reverse_transfer(self, transfer_id: str, params: dict[str, Any] | None = None
                         ) -> tuple[dict, list[dict]]:
        """Reverse (part of) a transfer; the handle may call it too, as the Dashboard would."""
        params = params or {}
        with self._lock:
            _reject_unknown(params, REVERSAL_PARAMS)
            self.get_transfer(transfer_id)
            transfer = self._transfers[transfer_id]
            remaining = transfer["amount"] - transfer["amount_reversed"]
            amount = (_positive_int(params["amount"], "amount") if params.get("amount")
                      not in (None, "") else remaining)
            if remaining <= 0:
                raise invalid(f"Transfer {transfer_id} has already been fully reversed.",
                              param="amount", code="transfer_already_reversed")
            if amount > remaining:
                raise invalid(f"Refund amount ({amount}) is greater than unrefunded amount "
                              f"on transfer ({remaining})", param="amount")
            reversal = {
                "id": new_id("trr"), "object": "transfer_reversal", "amount": amount,
                "balance_transaction": new_id("txn"), "created": self.now(),
                "currency": transfer["currency"], "destination_payment_refund": new_id("pyr"),
                "metadata": _metadata(params.get("metadata")), "source_refund": None,
                "transfer": transfer_id,
            }
            transfer["amount_reversed"] += amount
            transfer["reversed"] = transfer["amount_reversed"] >= transfer["amount"]
            transfer["reversals"]["data"].insert(0, reversal)
            transfer["reversals"]["total_count"] += 1
            self.balances[transfer["currency"]] = self.balances.get(transfer["currency"], 0) + amount
            return dict(reversal), [self._event("transfer.reversed", transfer)]

    def list_transfers(self, query: dict[str, Any]) -> dict:
        with self._lock:
            items = list(reversed(self._transfers.values()))  # newest first
            created = query.get("created")
            if isinstance(created, dict):
                ops = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}
                for op, value in created.items():
                    if op not in ops:
                        raise invalid(f"Invalid created[{op}]", param=f"created[{op}]")
                    bound = _int(value, f"created[{op}]")
                    items = [t for t in items if ops[op](t["created"], bound)]
            elif created not in (None, ""):
                bound = _int(created, "created")
                items = [t for t in items if t["created"] == bound]
            for key in ("destination", "transfer_group"):
                if query.get(key):
                    items = [t for t in items if t[key] == query[key]]
            limit = _int(query.get("limit") or 10, "limit")
            if not 1 <= limit <= 100:
                raise invalid("Invalid limit: must be between 1 and 100", param="limit")
            after, before = query.get("starting_after"), query.get("ending_before")
            ids = [t["id"] for t in items]
            if after:
                if after not in self._transfers:
                    raise invalid(f"No such transfer: '{after}'", param="starting_after",
                                  code="resource_missing")
                items = items[ids.index(after) + 1:] if after in ids else []
                page, has_more = items[:limit], len(items) > limit
            elif before:
                if before not in self._transfers:
                    raise invalid(f"No such transfer: '{before}'", param="ending_before",
                                  code="resource_missing")
                items = items[:ids.index(before)] if before in ids else []
                page, has_more = items[-limit:], len(items) > limit
            else:
                page, has_more = items[:limit], len(items) > limit
            return {"object": "list", "data": json.loads(json.dumps(page)),
                    "has_more": has_more, "url": "/v1/transfers"}

    # ---- idempotency -------------------------------------------------------------------

    def run_post(self, api_key: str, idempotency_key: str | None, method: str, path: str,
                 params: list[tuple[str, str]], handler: Callable[[], tuple[dict, list[dict]]]
                 ) -> tuple[int, dict, dict[str, str], list[dict]]:
        """Run a mutating request under Stripe's idempotency rules.

        Returns (status, body, extra headers, events to deliver)."""
        with self._lock:
            slot = (api_key, idempotency_key) if idempotency_key else None
            stored = self._idempotency.get(slot) if slot else None
            if stored is not None:
                if (stored.method, stored.path, sorted(stored.params)) != (method, path,
                                                                           sorted(params)):
                    error = StripeError(
                        400, "idempotency_error",
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with. Try using a key other than "
                        f"'{idempotency_key}' if you meant to execute a different request.")
                    return 400, error.body(), {}, []
                return stored.status, stored.body, {"Idempotent-Replayed": "true"}, []
            try:
                body, events = handler()
                status, keep = 200, True
            except StripeError as error:
                body, events, status, keep = error.body(), [], error.status, error.stored
            if slot and keep and status < 500:
                self._idempotency[slot] = _Stored(method, path, list(params), status, body)
            return status, body, {}, events

    # ---- faults ------------------------------------------------------------------------

    def inject_fault(self, kind: str, *, method: str = "POST", path: str = "/v1/transfers",
                     status: int = 500, seconds: float = 0.0, times: int = 1,
                     code: str | None = None, message: str | None = None) -> None:
        """Queue a fault for the next `times` requests matching method + path prefix.

        kind: "error" (answer `status` with a Stripe error body, nothing is executed),
        "delay" (sleep `seconds`, then execute normally: the client may have given up),
        "drop_after_commit" (execute and store the idempotent result, then drop the
        connection without answering)."""
        if kind not in ("error", "delay", "drop_after_commit"):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._faults.append(Fault(kind, method.upper(), path, int(status), float(seconds),
                                      code, message, int(times)))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[dict]:
        with self._lock:
            return [dict(vars(f)) for f in self._faults]

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
            return None

    # ---- events and webhooks -----------------------------------------------------------

    def _event(self, type_: str, obj: dict) -> dict:
        event = {
            "id": new_id("evt"), "object": "event", "api_version": API_VERSION,
            "created": self.now(), "data": {"object": json.loads(json.dumps(obj))},
            "livemode": False, "pending_webhooks": 1 if self.webhook else 0,
            "request": {"id": None, "idempotency_key": None}, "type": type_,
        }
        self._events[event["id"]] = event
        return event

    def events(self, type: str | None = None) -> list[dict]:
        """Every event, oldest first; `type` filters (e.g. "transfer.reversed")."""
        with self._lock:
            return [json.loads(json.dumps(e)) for e in self._events.values()
                    if type is None or e["type"] == type]

    def register_webhook(self, url: str, secret: str, *, mode: str = "async") -> None:
        """Where events go. mode "async": delivered from a background thread right away;
        "sync": delivered before the API call that caused it answers; "hold": only stored,
        sent by `send_event` (for duplicate, late and out-of-order deliveries)."""
        if mode not in WEBHOOK_MODES:
            raise ValueError(f"mode must be one of {WEBHOOK_MODES}")
        with self._lock:
            self.webhook = Webhook(url, secret, mode)

    def deliveries(self) -> list[dict]:
        """Every delivery attempt: event_id, type, url, status (None on error), error, at."""
        with self._lock:
            return [dict(d) for d in self._deliveries]

    def dispatch(self, events: list[dict]) -> list[dict]:
        """Deliver fresh events per the webhook mode; returns those to deliver synchronously."""
        with self._lock:
            hook = self.webhook
        if hook is None or hook.mode == "hold":
            return []
        if hook.mode == "sync":
            return events
        for event in events:
            self._enqueue(event, {})
        return []

    def send_event(self, event_id: str, *, times: int = 1, timestamp: int | None = None,
                   secret: str | None = None, wait: bool = True) -> list[dict]:
        """(Re-)send a stored event `times` times to the registered endpoint.

        `timestamp` signs with another time (stale signatures), `secret` with another secret
        (forged signatures). wait=True delivers from the calling thread and returns the
        attempts; wait=False queues them on the background sender (do that from an event
        loop that also serves the webhook endpoint)."""
        with self._lock:
            if event_id not in self._events:
                raise KeyError(event_id)
            event = self._events[event_id]
        options = {"timestamp": timestamp, "secret": secret}
        if not wait:
            for _ in range(times):
                self._enqueue(event, options)
            return []
        return [self.deliver(event, **options) for _ in range(times)]

    def wait_for_deliveries(self, timeout: float = 5.0) -> bool:
        """Block until the background sender has nothing left; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True

    def deliver(self, event: dict, *, timestamp: int | None = None,
                secret: str | None = None) -> dict:
        """POST one event, signed, to the registered endpoint, and record the attempt."""
        with self._lock:
            hook = self.webhook
        attempt = {"event_id": event["id"], "type": event["type"], "url": None,
                   "status": None, "error": None, "at": time.time()}
        if hook is None:
            attempt["error"] = "no webhook endpoint registered"
        else:
            attempt["url"] = hook.url
            payload = json.dumps(event, indent=2)
            ts = int(time.time()) if timestamp is None else int(timestamp)
            headers = {"Content-Type": "application/json; charset=utf-8",
                       "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                       "Stripe-Signature": sign_payload(payload, secret or hook.secret, ts)}
            try:
                response = httpx.post(hook.url, content=payload.encode(), headers=headers,
                                      timeout=10)
                attempt["status"] = response.status_code
            except httpx.HTTPError as error:
                attempt["error"] = f"{type(error).__name__}: {error}"
        with self._lock:
            self._deliveries.append(attempt)
        return attempt

    def _enqueue(self, event: dict, options: dict) -> None:
        with self._idle:
            self._pending += 1
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._sender, name="stripe-local-webhooks",
                                                daemon=True)
                self._worker.start()
        self._deliveries_q.put((event, options))

    def _sender(self) -> None:
        while True:
            item = self._deliveries_q.get()
            if item is None:
                return
            event, options = item
            try:
                self.deliver(event, **options)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def close(self) -> None:
        """Stop the background webhook sender."""
        if self._worker is not None and self._worker.is_alive():
            self._deliveries_q.put(None)
            self._worker.join(timeout=5)


# ---- parameter helpers -------------------------------------------------------------------

def _reject_unknown(params: dict[str, Any], allowed: set[str]) -> None:
    for key in params:
        if key not in allowed:
            raise invalid(f"Received unknown parameter: {key}", param=key,
                          code="parameter_unknown")


def _int(value: Any, param: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise invalid(f"Invalid integer: {value}", param=param,
                      code="parameter_invalid_integer") from None


def _positive_int(value: Any, param: str) -> int:
    if value in (None, ""):
        raise invalid(f"Missing required param: {param}.", param=param, code="parameter_missing")
    if not str(value).isdigit():
        raise invalid(f"Invalid integer: {value}", param=param, code="parameter_invalid_integer")
    number = int(str(value))
    if number < 1:
        raise invalid("This value must be greater than or equal to 1.", param=param,
                      code="parameter_invalid_integer")
    return number


def _metadata(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise invalid("Invalid object", param="metadata", code="parameter_invalid_string")
    if len(value) > 50:
        raise invalid("Metadata can have at most 50 keys.", param="metadata")
    for key, item in value.items():
        if len(key) > 40 or not isinstance(item, str) or len(item) > 500:
            raise invalid(f"Invalid metadata entry: {key}", param=f"metadata[{key}]")
    return {k: v for k, v in value.items() if v != ""}
