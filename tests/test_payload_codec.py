"""Temporal payload encryption: what haven sends to Temporal is sealed (AES-256-GCM, the key named
in each payload), a history read without the keys holds none of a case's text, keys rotate
without losing old histories, a tampered or unknown-key payload is refused, and the codec
endpoint opens payloads for caseworkers and directors only (audited), with CORS for the UI."""

from __future__ import annotations

import base64
import json

import pytest
import structlog
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from haven.case_keys import CASE_TEXT
from haven.keyring import KeyRing, KeyRingError
from haven.payload_codec import ENCODING, KEY_ID, EncryptionCodec
from tests.api_harness import Api, assert_problem
from tests.conftest import TEST_CASE_KEYS, TEST_PAYLOAD_KEYS

OLD = KeyRing.parse(TEST_PAYLOAD_KEYS.split(",")[1])  # test-1 alone, before the rotation
ROTATED = KeyRing.parse(TEST_PAYLOAD_KEYS)  # test-2 seals, test-1 still opens


def _payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps({"answer": text}).encode())


async def test_a_payload_is_sealed_under_the_current_key_and_opens_again():
    codec = EncryptionCodec(ROTATED)
    [sealed] = await codec.encode([_payload("the quote is attached")])
    assert sealed.metadata["encoding"] == ENCODING and sealed.metadata[KEY_ID] == b"test-2"
    assert b"quote" not in sealed.data
    assert await codec.decode([sealed]) == [_payload("the quote is attached")]
    [again] = await codec.encode([_payload("the quote is attached")])
    assert again.data != sealed.data  # a fresh nonce each time


async def test_after_rotation_payloads_sealed_under_the_old_key_still_open():
    [old] = await EncryptionCodec(OLD).encode([_payload("written last year")])
    assert old.metadata[KEY_ID] == b"test-1"
    assert await EncryptionCodec(ROTATED).decode([old]) == [_payload("written last year")]
    with pytest.raises(KeyRingError, match="test-2.*not configured"):
        await EncryptionCodec(OLD).decode(await EncryptionCodec(ROTATED).encode([_payload("new")]))


async def test_a_tampered_payload_or_a_swapped_key_id_is_refused():
    codec = EncryptionCodec(ROTATED)
    [sealed] = await codec.encode([_payload("x")])
    flipped = Payload(metadata=dict(sealed.metadata), data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1]))
    with pytest.raises(KeyRingError, match="does not open"):
        await codec.decode([flipped])
    relabelled = Payload(metadata={**sealed.metadata, KEY_ID: b"test-1"}, data=sealed.data)
    with pytest.raises(KeyRingError, match="does not open"):
        await codec.decode([relabelled])


async def test_payloads_written_before_encryption_pass_through():
    plain = _payload("from before")
    assert await EncryptionCodec(ROTATED).decode([plain]) == [plain]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "id:base64key"),
        ("k1", "id:base64key"),
        ("k1:not-base64!", "not base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "5 bytes; AES-256 needs 32"),
        (f"{KeyRing.generate('k1')},{KeyRing.generate('k1')}", "unique"),
        (KeyRing.generate("bad id"), "letters, digits"),
    ],
    ids=["empty", "no key", "not base64", "short", "duplicate id", "bad id"],  # the same on every collection (xdist)
)
def test_unusable_keys_are_refused_at_start(text, says):
    with pytest.raises(KeyRingError, match=says):
        KeyRing.parse(text)


async def test_temporal_s_history_holds_no_text_of_the_case(api: Api, time_skipping_env):
    """A case whose question and answer carry canaries: its history, read with a client that has
    no keys, holds none of them; with the payload keys, the commands open, but what people wrote
    is still sealed with the request's own data key (so it dies with that key)."""
    created = await api.submit()
    request_id = created.json()["id"]
    cw, intermediary = api.token("caseworker", "cw-1"), api.intermediary()
    url = f"/v1/grant-requests/{request_id}"
    await api.until_status(request_id, "awaiting_decision")
    asked = await api.http.post(f"{url}/decisions", json={"kind": "request_information", "note": "canary-question-41"}, headers=cw)
    assert asked.status_code == 200, asked.text
    answered = await api.http.post(f"{url}/information", json={"answer": "canary-answer-42"}, headers=intermediary)
    assert answered.status_code == 200, answered.text

    config = time_skipping_env.client.config()
    keyless = Client(config["service_client"], namespace=config["namespace"])  # the default converter: no codec
    history = await keyless.get_workflow_handle(request_id).fetch_history()
    raw = history.to_json().encode()
    assert b"canary-question-41" not in raw and b"canary-answer-42" not in raw
    assert base64.b64encode(ENCODING).decode() in history.to_json()
    opened = await time_skipping_env.client.get_workflow_handle(request_id).fetch_history()
    decoded = [json.loads(p) async for p in _decoded_strings(time_skipping_env.client, opened)]
    answer = next(command["answer"] for command in decoded if "answer" in command)
    assert answer.startswith("sealed:v1:") and "canary" not in json.dumps(decoded)
    async with api.db.sessions() as session:
        sealer = await TEST_CASE_KEYS.sealer(session, request_id)
    assert sealer.open(CASE_TEXT, answer) == "canary-answer-42"


async def _decoded_strings(client: Client, history):
    codec = client.data_converter.payload_codec
    for event in history.events:
        update = event.workflow_execution_update_accepted_event_attributes
        for payload in update.accepted_request.input.args.payloads:
            for opened in await codec.decode([payload]):
                yield opened.data.decode()


# --- the codec endpoint -------------------------------------------------------------------------


def _body(payloads: list[Payload]) -> dict:
    return {"payloads": [{"metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                          "data": base64.b64encode(p.data).decode()} for p in payloads]}  # fmt: skip


async def test_caseworkers_open_payloads_through_the_codec_endpoint_and_it_is_audited(api: Api):
    [sealed] = await EncryptionCodec(ROTATED).encode([_payload("canary-codec-7")])
    response = await api.http.post("/v1/codec/decode", json=_body([sealed]), headers={**api.token("caseworker", "cw-1"), "X-Namespace": "default"})
    assert response.status_code == 200, response.text
    [opened] = response.json()["payloads"]
    assert json.loads(base64.b64decode(opened["data"])) == {"answer": "canary-codec-7"}
    from sqlalchemy import select

    from haven.db.models import AuditEvent

    async with api.db.sessions() as session:
        audited = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "payloads_decoded"))).all()
    assert [(e.actor, e.facts) for e in audited] == [("cw-1", {"payloads": 1, "namespace": "default"})]

    encoded = await api.http.post("/v1/codec/encode", json=_body([_payload("typed in the UI")]), headers=api.token("director", "dir-1"))
    [again] = encoded.json()["payloads"]
    assert base64.b64decode(again["metadata"][KEY_ID]) == b"test-2"


async def test_the_codec_endpoint_refuses_other_roles_no_token_and_bad_bodies(api: Api):
    body = _body([])
    for role in ("finance", "admin"):
        assert_problem(await api.http.post("/v1/codec/decode", json=body, headers=api.token(role, f"{role}-1")), 403, "forbidden")
    assert_problem(await api.http.post("/v1/codec/decode", json=body), 401, "unauthorized")
    assert_problem(await api.http.post("/v1/codec/decode", json=body, headers={"Origin": "https://evil.example"}), 401, "unauthorized")
    for bad in ({"payloads": [{"data": 5}]}, {"payloads": [{"data": "not base64!"}]}, {"payloads": "x"}):
        response = await api.http.post("/v1/codec/decode", json=bad, headers=api.token("caseworker", "cw-1"))
        assert_problem(response, 422, "validation-error")
    [foreign] = await EncryptionCodec(KeyRing.parse(KeyRing.generate("elsewhere"))).encode([_payload("x")])
    refused = await api.http.post("/v1/codec/decode", json=_body([foreign]), headers=api.token("caseworker", "cw-1"))
    assert "elsewhere" in assert_problem(refused, 422, "payload-refused")["detail"]


async def test_the_ui_s_origin_gets_cors_but_no_way_in_without_a_token(api: Api):
    ui = "http://127.0.0.1:8233"
    preflight = await api.http.options("/v1/codec/decode", headers={"Origin": ui, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ui
    assert "x-namespace" in preflight.headers["access-control-allow-headers"]
    [sealed] = await EncryptionCodec(ROTATED).encode([_payload("dev ui")])
    # Any script can claim the UI's origin: in dev mode too, the origin alone opens nothing.
    for origin in (ui, "http://localhost:8233", "null", ""):
        refused = await api.http.post("/v1/codec/decode", json=_body([sealed]), headers={"Origin": origin, "X-Namespace": "default"})
        assert_problem(refused, 401, "unauthorized")
    other = await api.http.options("/v1/codec/decode", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    elsewhere = await api.http.get("/v1/grant-requests", headers={"Origin": ui, **api.token("caseworker", "cw-1")})
    assert "access-control-allow-origin" not in elsewhere.headers  # CORS for the codec only


UI_SECRET = "k" * 20 + "-unguessable-per-run-" + "q" * 20


async def test_in_dev_mode_the_ui_opens_payloads_through_its_unguessable_address(time_skipping_env, sqlite_db, tmp_path):
    from sqlalchemy import select

    from haven.db.models import AuditEvent
    from tests.api_harness import serving

    ui = "http://127.0.0.1:8233"
    [sealed] = await EncryptionCodec(ROTATED).encode([_payload("through the ui")])
    async with serving(time_skipping_env, sqlite_db, tmp_path, codec_ui_secret=UI_SECRET) as api:
        preflight = await api.http.options(f"/v1/codec/ui/{UI_SECRET}/decode", headers={"Origin": ui, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == ui
        opened = await api.http.post(f"/v1/codec/ui/{UI_SECRET}/decode", json=_body([sealed]), headers={"Origin": ui, "X-Namespace": "default"})
        assert opened.status_code == 200 and opened.headers["access-control-allow-origin"] == ui, opened.text
        assert json.loads(base64.b64decode(opened.json()["payloads"][0]["data"])) == {"answer": "through the ui"}
        sealed_again = await api.http.post(f"/v1/codec/ui/{UI_SECRET}/encode", json=_body([_payload("typed")]), headers={"Origin": ui})
        assert sealed_again.status_code == 200
        async with api.db.sessions() as session:
            audited = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "payloads_decoded"))).all()
        assert [e.actor for e in audited] == ["temporal-ui (dev mode, no token)"]

        # Anything but the exact address is refused, whatever origin or token comes with it.
        guesses = ["", "x", UI_SECRET[:-1], UI_SECRET + "x", UI_SECRET.upper(), UI_SECRET.replace("-", "_"), "..", "%2e%2e",
                   UI_SECRET + "%00", " " + UI_SECRET]  # fmt: skip
        for guess in guesses:
            for direction in ("decode", "encode"):
                response = await api.http.post(f"/v1/codec/ui/{guess}/{direction}", json=_body([sealed]), headers={"Origin": ui})
                assert response.status_code in (401, 404, 405) and response.headers["content-type"] == "application/problem+json", (guess, response.text)
        token = await api.http.post("/v1/codec/ui/wrong/decode", json=_body([sealed]), headers=api.token("caseworker", "cw-1"))
        assert_problem(token, 404, "not-found")
        assert "ui/{secret}" not in json.dumps(api.app.openapi()), "not part of the published API"

    # Without an address for the UI (the API alone, `haven api`), none answers.
    async with serving(time_skipping_env, sqlite_db, tmp_path) as api:
        assert_problem(await api.http.post("/v1/codec/ui//decode", json=_body([sealed])), 404, "not-found")
        assert_problem(await api.http.post(f"/v1/codec/ui/{UI_SECRET}/decode", json=_body([sealed])), 404, "not-found")


async def test_outside_dev_mode_the_ui_origin_needs_a_token_too(time_skipping_env, sqlite_db, tmp_path):
    import httpx

    from api.app import create_app
    from tests.conftest import make_settings

    from cryptography.hazmat.primitives.asymmetric import ec
    from jose import jwk

    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    key = {**jwk.construct(public, "ES256").to_dict(), "kid": "ec-1", "use": "sig", "alg": "ES256"}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key]}, default=lambda b: b.decode()))
    settings = make_settings(tmp_path, sqlite_db.url, dev_mode=False, jwks_file=jwks, codec_ui_secret=UI_SECRET)
    app = create_app(settings, db=sqlite_db, client=time_skipping_env.client)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://haven.test") as http:
            response = await http.post("/v1/codec/decode", json=_body([]), headers={"Origin": "http://127.0.0.1:8233"})
            dev_address = await http.post(f"/v1/codec/ui/{UI_SECRET}/decode", json=_body([]), headers={"Origin": "http://127.0.0.1:8233"})
    assert_problem(response, 401, "unauthorized")
    assert_problem(dev_address, 404, "not-found")  # the UI's own address is for dev mode only


def test_haven_run_hands_the_dev_ui_a_codec_address_of_its_own_each_run(tmp_path):
    """`haven run` as a user starts it: the dev server's UI is told a codec address with a secret
    made for this run (read back here from the UI's settings, as the browser reads it); a script
    that only claims the UI's origin is refused, and the last run's address no longer answers."""
    import httpx

    from haven.localstack import LocalHaven

    haven = LocalHaven(tmp_path / "var")
    ui = f"http://127.0.0.1:{haven.env['HAVEN_TEMPORAL_UI_PORT']}"
    addresses: list[str] = []
    for run in range(2):
        haven.start()
        try:
            endpoint = httpx.get(f"{ui}/api/v1/settings", timeout=10).json()["Codec"]["Endpoint"]
            assert endpoint.startswith(f"{haven.base_url}/v1/codec/ui/"), endpoint
            assert len(endpoint.rsplit("/", 1)[1]) >= 43  # secrets.token_urlsafe(32)
            assert httpx.post(f"{endpoint}/decode", json=_body([]), headers={"Origin": ui}, timeout=10).status_code == 200
            forged = httpx.post(f"{haven.base_url}/v1/codec/decode", json=_body([]), headers={"Origin": ui}, timeout=10)
            assert_problem(forged, 401, "unauthorized")
            for earlier in addresses:
                assert_problem(httpx.post(f"{earlier}/decode", json=_body([]), headers={"Origin": ui}, timeout=10), 404, "not-found")
            addresses.append(endpoint)
        finally:
            haven.stop()
    assert addresses[0] != addresses[1]


def test_logs_never_carry_a_case_s_fields(capsys):
    from haven.logging import configure_logging, redact_sensitive

    event = {"event": "something", "request_id": "gr_1", "payee": {"name": "Advocates"}, "facts": {"note": "x", "tranche": 1},
             "items": [{"answer": "y"}], "Threat_Summary": "z"}  # fmt: skip
    assert redact_sensitive(None, "info", event) == {
        "event": "something", "request_id": "gr_1", "payee": "[redacted]", "facts": {"note": "[redacted]", "tranche": 1},
        "items": [{"answer": "[redacted]"}], "Threat_Summary": "[redacted]",
    }  # fmt: skip
    before = structlog.get_config()
    try:
        configure_logging(dev_mode=False)
        structlog.get_logger("test").info("payment_failed", request_id="gr_2", reason="canary-reason-9", payee={"account": "KE00"})
    finally:
        structlog.configure(**before)
    written = json.loads(capsys.readouterr().out)
    assert written["request_id"] == "gr_2" and written["reason"] == written["payee"] == "[redacted]"


async def test_a_case_begun_under_the_old_key_goes_on_after_the_rotation(sqlite_db, default_policy, tmp_path):
    """Histories written under the old key still open once a new key is current: a worker that
    seals with the new key replays the old history and takes the case on to follow-up."""
    from types import SimpleNamespace

    from haven.intake import Intake
    from haven.lifecycle import Status
    from haven.payload_codec import data_converter
    from haven.worker import build_worker
    from tests.conftest import TEST_CASE_KEYS, make_settings, start_time_skipping
    from tests.harness import Harness, caseworker

    before = data_converter(OLD)
    env = await start_time_skipping(before)
    try:
        settings = make_settings(tmp_path, sqlite_db.url)

        def harness_on(client) -> Harness:
            intake = Intake(sqlite_db, client, settings.task_queue, default_policy, b"index-key", case_keys=TEST_CASE_KEYS)
            return Harness(SimpleNamespace(client=client), intake, sqlite_db)

        old = harness_on(env.client)
        async with build_worker(env.client, sqlite_db, settings, max_cached_workflows=0):
            handle = await old.submit()
            await old.until(handle, Status.AWAITING_DECISION)
            await old.ask(handle, caseworker())  # an Update sealed under test-1

        config = env.client.config()
        rotated_client = Client(config["service_client"], namespace=config["namespace"], data_converter=data_converter(ROTATED))
        new = harness_on(rotated_client)
        async with build_worker(rotated_client, sqlite_db, settings, max_cached_workflows=0):
            handle = rotated_client.get_workflow_handle(handle.id)
            await new.answer(handle)
            await new.approve(handle, caseworker(2), 150_000)
            await new.until(handle, Status.PAYMENT_PENDING)
            await new.pay(handle, 150_000)
            await new.until(handle, Status.FOLLOW_UP)

        history = await handle.fetch_history()
        key_ids = {
            p.metadata.get(KEY_ID)
            for event in history.events
            for p in event.workflow_execution_update_accepted_event_attributes.accepted_request.input.args.payloads
        }
        assert {b"test-1", b"test-2"} <= key_ids  # the history holds both, and the new worker read it all
        old_payload = next(
            p
            for event in history.events
            for p in event.workflow_execution_update_accepted_event_attributes.accepted_request.input.args.payloads
            if p.metadata.get(KEY_ID) == b"test-1"
        )
        only_new = EncryptionCodec(KeyRing.parse(TEST_PAYLOAD_KEYS.split(",")[0]))
        with pytest.raises(KeyRingError, match="test-1"):  # dropping the old key too early loses the old histories
            await only_new.decode([old_payload])
    finally:
        await env.shutdown()
