"""The local Stripe-compatible server, driven through the real `stripe` package.

Clients are built with `max_network_retries=0` (no automatic retries: each test says what the
caller does next) except where a test checks the package's own retry of a 500.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import stripe

from haven.stripe_local import LocalStripe

PAYEE = "acct_test_payee"


@pytest.fixture(scope="module")
def server():
    with LocalStripe() as running:
        yield running


@pytest.fixture
def local(server):
    server.control.reset()
    server.control.create_account(PAYEE)
    server.control.top_up(100_000, "eur")
    return server


@pytest.fixture
def client(local):
    return stripe.StripeClient(local.api_key, base_addresses={"api": local.url},
                               max_network_retries=0)


def transfer_params(**overrides):
    params = {"amount": 2500, "currency": "eur", "destination": PAYEE,
              "metadata": {"request_id": "req-1", "tranche": "1"}, "transfer_group": "req-1"}
    return {**params, **overrides}


class Receiver:
    """A webhook endpoint: records each POST's body and headers."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.arrived = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.arrived:
                    outer.received.append((body, dict(self.headers)))
                    outer.arrived.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/webhooks/stripe"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[bytes, dict[str, str]]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.received) >= count, timeout), \
                f"{len(self.received)} webhook(s) arrived, wanted {count}"
            return list(self.received)


@pytest.fixture
def receiver(local):
    rx = Receiver()
    local.control.register_webhook(rx.url, "whsec_right")
    yield rx
    rx.httpd.shutdown()


def test_create_get_and_list_transfers(local, client):
    created = client.v1.transfers.create(params=transfer_params())
    assert created.id.startswith("tr_") and created.object == "transfer"
    assert (created.amount, created.currency, created.destination) == (2500, "eur", PAYEE)
    assert created.metadata.to_dict() == {"request_id": "req-1", "tranche": "1"}
    assert created.livemode is False and created.reversed is False
    assert abs(created.created - time.time()) < 5

    fetched = client.v1.transfers.retrieve(created.id)
    assert fetched.id == created.id and fetched.transfer_group == "req-1"
    listed = client.v1.transfers.list(params={"limit": 10})
    assert [t.id for t in listed.data] == [created.id] and listed.has_more is False
    assert listed.url == "/v1/transfers"

    balance = client.v1.balance.retrieve()
    assert {(b.currency, b.amount) for b in balance.available} == {("eur", 100_000 - 2500)}
    assert client.v1.accounts.retrieve(PAYEE).id == PAYEE


def test_unknown_transfer_is_404_resource_missing(client):
    with pytest.raises(stripe.InvalidRequestError) as error:
        client.v1.transfers.retrieve("tr_nope")
    assert error.value.http_status == 404 and error.value.code == "resource_missing"


def test_api_key_is_required(local):
    for key in ("sk_live_nope", "pk_test_nope"):
        bad = stripe.StripeClient(key, base_addresses={"api": local.url}, max_network_retries=0)
        with pytest.raises(stripe.AuthenticationError):
            bad.v1.balance.retrieve()
    response = httpx.get(f"{local.url}/v1/balance")
    assert response.status_code == 401 and response.json()["error"]["type"]


def test_idempotent_replay_returns_the_first_transfer(local, client):
    options = {"idempotency_key": "req-1/1"}
    first = client.v1.transfers.create(params=transfer_params(), options=options)
    again = client.v1.transfers.create(params=transfer_params(), options=options)
    assert again.id == first.id
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    assert local.control.transfer_count() == 1
    assert local.control.balance("eur") == 100_000 - 2500


def test_idempotency_key_is_per_api_key(local, client):
    other = stripe.StripeClient("sk_test_someone_else", base_addresses={"api": local.url},
                                max_network_retries=0)
    a = client.v1.transfers.create(params=transfer_params(), options={"idempotency_key": "k"})
    b = other.v1.transfers.create(params=transfer_params(), options={"idempotency_key": "k"})
    assert a.id != b.id and local.control.transfer_count() == 2


def test_same_key_other_parameters_is_an_idempotency_error(local, client):
    options = {"idempotency_key": "req-1/1"}
    client.v1.transfers.create(params=transfer_params(), options=options)
    with pytest.raises(stripe.IdempotencyError) as error:
        client.v1.transfers.create(params=transfer_params(amount=9999), options=options)
    assert error.value.http_status == 400
    assert local.control.transfer_count() == 1


def test_unknown_destination(local, client):
    with pytest.raises(stripe.InvalidRequestError) as error:
        client.v1.transfers.create(params=transfer_params(destination="acct_unknown"))
    assert error.value.code == "resource_missing" and error.value.param == "destination"
    assert error.value.http_status == 400
    assert local.control.transfer_count() == 0


def test_insufficient_balance(local, client):
    with pytest.raises(stripe.InvalidRequestError) as error:
        client.v1.transfers.create(params=transfer_params(amount=100_001))
    assert error.value.code == "balance_insufficient"
    assert local.control.transfer_count() == 0 and local.control.balance("eur") == 100_000
    with pytest.raises(stripe.InvalidRequestError) as error:
        client.v1.transfers.create(params=transfer_params(currency="usd"))
    assert error.value.code == "balance_insufficient"


def test_invalid_amount(client):
    for amount in (0, -5):
        with pytest.raises(stripe.InvalidRequestError) as error:
            client.v1.transfers.create(params=transfer_params(amount=amount))
        assert error.value.param == "amount"


def test_500_then_retry_with_the_same_key_makes_one_transfer(local, client):
    local.control.inject_fault("error", status=500)
    options = {"idempotency_key": "req-1/1"}
    with pytest.raises(stripe.APIError) as error:
        client.v1.transfers.create(params=transfer_params(), options=options)
    assert error.value.http_status == 500
    assert local.control.transfer_count() == 0
    transfer = client.v1.transfers.create(params=transfer_params(), options=options)
    assert [t["id"] for t in local.control.transfers()] == [transfer.id]


def test_stripe_package_retries_a_500_itself_with_the_same_key(local):
    retrying = stripe.StripeClient(local.api_key, base_addresses={"api": local.url},
                                   max_network_retries=1)
    local.control.inject_fault("error", status=500)
    transfer = retrying.v1.transfers.create(params=transfer_params())
    assert [t["id"] for t in local.control.transfers()] == [transfer.id]
    assert local.control.faults() == []  # the fault was consumed by the first attempt


def test_429_is_a_rate_limit_error(local, client):
    local.control.inject_fault("error", status=429)
    with pytest.raises(stripe.RateLimitError) as error:
        client.v1.transfers.create(params=transfer_params())
    assert error.value.http_status == 429
    assert error.value.json_body["error"]["code"] == "rate_limit"  # the package drops .code
    assert local.control.transfer_count() == 0


def test_faults_match_method_and_path(local, client):
    local.control.inject_fault("error", method="GET", path="/v1/balance", status=503)
    client.v1.transfers.create(params=transfer_params())  # not matched
    with pytest.raises(stripe.APIError):
        client.v1.balance.retrieve()
    client.v1.balance.retrieve()  # consumed


def test_lost_response_then_retry_returns_the_first_transfer(local, client):
    local.control.inject_fault("drop_after_commit")
    options = {"idempotency_key": "req-1/1"}
    with pytest.raises(stripe.APIConnectionError):
        client.v1.transfers.create(params=transfer_params(), options=options)
    made = local.control.transfers()
    assert len(made) == 1  # the transfer exists although the client never heard of it
    transfer = client.v1.transfers.create(params=transfer_params(), options=options)
    assert transfer.id == made[0]["id"]
    assert transfer.last_response.headers.get("Idempotent-Replayed") == "true"
    assert local.control.transfer_count() == 1
    assert local.control.balance("eur") == 100_000 - 2500


def test_delay_longer_than_the_client_timeout(local):
    impatient = stripe.StripeClient(local.api_key, base_addresses={"api": local.url},
                                    max_network_retries=0,
                                    http_client=stripe.RequestsClient(timeout=0.3))
    local.control.inject_fault("delay", seconds=1.0)
    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError) as error:
        impatient.v1.transfers.create(params=transfer_params())
    assert time.monotonic() - started < 0.9
    assert "timed out" in str(error.value).lower() or "timeout" in str(error.value).lower()
    deadline = time.monotonic() + 3  # the server still makes the transfer after the delay
    while local.control.transfer_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert local.control.transfer_count() == 1


def test_webhook_is_signed_as_stripe_signs(local, client, receiver):
    transfer = client.v1.transfers.create(params=transfer_params())
    body, headers = receiver.wait_for(1)[0]
    event = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_right")
    assert event.type == "transfer.created" and event.id.startswith("evt_")
    assert event.data.object.id == transfer.id and event.livemode is False
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_wrong")
    tampered = body.replace(b"2500", b"9999")
    assert tampered != body
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, headers["Stripe-Signature"], "whsec_right")
    assert local.control.wait_for_deliveries()
    assert [(d["event_id"], d["status"]) for d in local.control.deliveries()] == [(event.id, 200)]


def test_resend_twice_and_stale_signature(local, client, receiver):
    local.control.register_webhook(receiver.url, "whsec_right", mode="hold")
    client.v1.transfers.create(params=transfer_params())
    time.sleep(0.2)
    assert receiver.received == []  # held
    (event,) = local.control.events("transfer.created")
    attempts = local.control.send_event(event["id"], times=2)
    assert [a["status"] for a in attempts] == [200, 200]
    first, second = receiver.wait_for(2)
    assert json.loads(first[0])["id"] == json.loads(second[0])["id"] == event["id"]
    local.control.send_event(event["id"], timestamp=int(time.time()) - 3600)
    stale = receiver.wait_for(3)[2]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(stale[0], stale[1]["Stripe-Signature"], "whsec_right")


def test_reversal_emits_transfer_reversed(local, client, receiver):
    transfer = client.v1.transfers.create(params=transfer_params())
    partial = client.v1.transfers.reversals.create(transfer.id, params={"amount": 500})
    assert partial.object == "transfer_reversal" and partial.id.startswith("trr_")
    assert client.v1.transfers.retrieve(transfer.id).reversed is False
    client.v1.transfers.reversals.create(transfer.id)  # the rest
    after = client.v1.transfers.retrieve(transfer.id)
    assert after.reversed is True and after.amount_reversed == 2500
    assert local.control.balance("eur") == 100_000
    types = [json.loads(body)["type"] for body, _ in receiver.wait_for(3)]
    assert sorted(types) == ["transfer.created", "transfer.reversed", "transfer.reversed"]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.transfers.reversals.create(transfer.id, params={"amount": 1})


def test_list_pagination_and_created_filter(local, client):
    day = 1_767_225_600  # 2026-01-01T00:00:00Z
    ids = []
    for i in range(5):
        local.control.set_time(day - 10 + i * 5)  # two before the day, three in it
        ids.append(client.v1.transfers.create(params=transfer_params(amount=100 + i)).id)
    local.control.set_time(None)
    newest_first = ids[::-1]

    page = client.v1.transfers.list(params={"limit": 2})
    assert [t.id for t in page.data] == newest_first[:2] and page.has_more is True
    page2 = client.v1.transfers.list(params={"limit": 2, "starting_after": page.data[-1].id})
    assert [t.id for t in page2.data] == newest_first[2:4] and page2.has_more is True
    assert [t.id for t in page.auto_paging_iter()] == newest_first

    in_day = client.v1.transfers.list(
        params={"created": {"gte": day, "lt": day + 86_400}, "limit": 2})
    assert [t.id for t in in_day.auto_paging_iter()] == newest_first[:3]


def test_control_over_http(local):
    control = f"{local.url}/_control"
    assert httpx.post(f"{control}/accounts", json={"id": "acct_http"}).json()["id"] == "acct_http"
    httpx.post(f"{control}/balance", json={"amount": 700, "currency": "gbp"})
    httpx.post(f"{control}/faults", json={"kind": "error", "status": 429})
    client = stripe.StripeClient(local.api_key, base_addresses={"api": local.url},
                                 max_network_retries=0)
    with pytest.raises(stripe.RateLimitError):
        client.v1.transfers.create(params=transfer_params(destination="acct_http",
                                                          currency="gbp", amount=700))
    client.v1.transfers.create(params=transfer_params(destination="acct_http", currency="gbp",
                                                      amount=700))
    listed = httpx.get(f"{control}/transfers").json()
    assert listed["count"] == 1 and listed["data"][0]["destination"] == "acct_http"
    httpx.post(f"{control}/reset")
    assert httpx.get(f"{control}/transfers").json()["count"] == 0


@pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # stripe's HTTPXClient
async def test_async_form_and_async_client():
    async with LocalStripe() as running:
        running.control.create_account(PAYEE)
        running.control.top_up(5000, "eur")
        client = running.client(max_network_retries=0, timeout=5)
        transfer = await client.v1.transfers.create_async(
            params=transfer_params(), options={"idempotency_key": "async-1"})
        again = await client.v1.transfers.create_async(
            params=transfer_params(), options={"idempotency_key": "async-1"})
        assert again.id == transfer.id and running.control.transfer_count() == 1
