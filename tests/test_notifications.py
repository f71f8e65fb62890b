"""Delivering the outbox over a real SMTP server (aiosmtpd) and to a real HTTP webhook receiver,
on SQLite and PostgreSQL: who gets what, signatures, retries with back-off, giving up, two
dispatchers at once, and that no personal data ever leaves. Time is moved with an injected clock,
never slept through."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import threading
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import delete, func, select, update

from haven.db import Database, utcnow
from haven.db.models import (
    Notification,
    NotificationDelivery,
    Organisation,
    StaffMember,
)
from haven.identifiers import canonical
from haven.intake import Intake
from haven.lifecycle import Status
from haven.localstack import free_port
from haven.notifications import NotificationDispatcher, verify_signature
from haven.notifications.dispatcher import MAX_BACKOFF, backoff
from haven.notifications.fanout import fan_out
from haven.notifications.webhooks import sign
from haven.worker import build_worker
from tests.conftest import TEST_CASE_KEYS, TEST_ISSUER, make_settings
from tests.harness import Harness, caseworker

SECRET = "whsec_test_secret"
BODY_FIELDS = {"id", "kind", "request_id", "status", "link", "created_at"}


class Inbox:
    """The SMTP server's handler: keeps every message it accepts; can refuse them all."""

    def __init__(self):
        self.messages: list = []
        self.refuse = False

    async def handle_DATA(self, server, session, envelope):
        if self.refuse:
            return "451 4.3.0 try again later"
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"

    def recipients(self) -> list[str]:
        return sorted(rcpt for rcpts, _ in self.messages for rcpt in rcpts)


class Receiver(ThreadingHTTPServer):
    """An organisation's webhook endpoint on a free loopback port; answers 500 to the first
    `failures` calls, then 204 (or always a redirect to `redirect_to`, when set)."""

    def __init__(self, address: tuple[str, int] = ("127.0.0.1", 0)):
        self.calls: list[tuple[dict, bytes]] = []
        self.failures = 0
        self.redirect_to: str | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                failing = receiver.failures > 0
                receiver.failures -= 1 if failing else 0
                if receiver.redirect_to and self.path != "/elsewhere":
                    self.send_response(307)
                    self.send_header("Location", receiver.redirect_to)
                else:
                    self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(address, Handler)
        self.url = f"http://{address[0]}:{self.server_address[1]}/haven"


@pytest.fixture
def inbox():
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    handler.port = controller.port
    yield handler
    controller.stop()


@pytest.fixture
def receiver():
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class Clock:
    def __init__(self):
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


async def _roster(db: Database, *members: tuple[str, str, list[str], bool]) -> None:
    """The roster of these tests alone (in place of the shared test roster), so that who is sent
    what is exactly what they list."""
    now = utcnow()
    async with db.transaction() as session:
        await session.execute(delete(StaffMember))
        for subject, email, roles, active in members:
            session.add(StaffMember(issuer=TEST_ISSUER, subject=subject, subject_key=canonical(subject), name=subject,
                                    email=email, roles=roles, active=active, created_at=now, updated_at=now))  # fmt: skip


async def _org_channels(db: Database, org_id: str, email: str | None, url: str | None, secret: str | None) -> None:
    async with db.transaction() as session:
        org = await session.get(Organisation, org_id)
        org.notification_email, org.webhook_url, org.webhook_secret = email, url, secret


@pytest.fixture
async def outbox(db: Database, inbox, receiver, tmp_path):
    """A roster, an organisation with an inbox and a webhook, and a dispatcher on a clock we move."""
    await _roster(
        db,
        ("cw-1", "cw1@fund.example.org", ["caseworker"], True),
        ("cw-2", "cw2@fund.example.org", ["caseworker", "director"], True),
        ("cw-old", "old@fund.example.org", ["caseworker"], False),  # left the fund
        ("fin-1", "fin1@fund.example.org", ["finance"], True),
    )
    await _org_channels(db, "ngo-1", "alerts@ngo1.example.org", receiver.url, SECRET)
    settings = make_settings(
        tmp_path, db.url, smtp_host="127.0.0.1", smtp_port=inbox.port, smtp_sender="haven@fund.example.org",
        notification_max_attempts=3, notification_retry_base_seconds=60, webhook_timeout_seconds=5,
    )  # fmt: skip
    clock = Clock()
    return NotificationDispatcher(db, settings, clock=clock), clock


_keys = itertools.count()


async def _notify(db: Database, kind: str, audience: str, request_id: str = "gr_0001") -> None:
    """An outbox row as the activities write it, plus a field that must never be sent."""
    async with db.transaction() as session:
        session.add(
            Notification(
                dedupe_key=f"{request_id}:{next(_keys)}:{kind}:{audience}", request_id=request_id, kind=kind,
                audience=audience, created_at=utcnow(),
                payload={"request_id": request_id, "kind": kind, "status": "awaiting_decision",
                         "link": f"https://haven.example.org/v1/grant-requests/{request_id}",
                         "defender": "kestrel-should-never-leave"},
            )
        )  # fmt: skip


async def _deliveries(db: Database, channel: str | None = None) -> list[NotificationDelivery]:
    query = select(NotificationDelivery).order_by(NotificationDelivery.id)
    if channel:
        query = query.where(NotificationDelivery.channel == channel)
    async with db.sessions() as session:
        return list(await session.scalars(query))


async def test_each_audience_reaches_the_right_people_once_with_allow_listed_fields(db, outbox, inbox, receiver):
    dispatcher, _ = outbox
    await _notify(db, "decision_needed", "caseworker")
    await _notify(db, "payment_due", "finance")
    await _notify(db, "information_requested", "org:ngo-1")
    await _notify(db, "request_expired", "org:ngo-2")  # no inbox or webhook: nobody to tell
    result = await dispatcher.run_once()
    assert (result.dispatched, result.delivered, result.retrying, result.failed) == (4, 5, 0, 0)

    # Active caseworkers (not the one who left, not finance), finance, and the organisation's inbox.
    assert inbox.recipients() == [
        "alerts@ngo1.example.org", "cw1@fund.example.org", "cw2@fund.example.org", "fin1@fund.example.org",
    ]  # fmt: skip
    ((headers, body),) = receiver.calls
    sent = json.loads(body)
    assert set(sent) == BODY_FIELDS
    assert (sent["kind"], sent["request_id"], sent["status"]) == ("information_requested", "gr_0001", "awaiting_decision")
    assert headers["Content-Type"] == "application/json"
    assert headers["Haven-Delivery"] == sent["id"]
    assert verify_signature(SECRET, headers["Haven-Signature"], body)

    mails = {rcpts[0]: mail for rcpts, mail in inbox.messages}
    mail = mails["cw1@fund.example.org"]
    assert mail["Subject"] == "[haven] decision needed – request gr_0001"
    assert mail["From"] == "haven@fund.example.org"
    assert mail["Message-ID"].startswith("<dlv_") and mail["Message-ID"] != mails["cw2@fund.example.org"]["Message-ID"]
    assert "https://haven.example.org/v1/grant-requests/gr_0001" in mail.get_content()
    for text in [m.as_string() for m in mails.values()] + [body.decode()]:
        assert "kestrel-should-never-leave" not in text, "a field outside the allow-list left the system"

    # Fan-out repeated (a crash after sending, a second process): no new deliveries, nothing resent.
    async with db.transaction() as session:
        await session.execute(update(Notification).values(dispatched_at=None))
    again = await dispatcher.run_once()
    assert (again.dispatched, again.attempted) == (4, 0)
    assert len(await _deliveries(db)) == 5
    assert len(inbox.messages) == 4 and len(receiver.calls) == 1


def test_signatures_verify_only_for_the_right_secret_body_and_time():
    body = b'{"id":"dlv_1","kind":"payment_made"}'
    t = 1_800_000_000
    header = sign(SECRET, body, t)
    assert verify_signature(SECRET, header, body, tolerance=300, now=t + 10)
    assert not verify_signature("another-secret", header, body, now=t)
    assert not verify_signature(SECRET, header, body.replace(b"payment_made", b"payment_fail"), now=t)
    assert not verify_signature(SECRET, header, body, tolerance=300, now=t + 301), "stale"
    assert not verify_signature(SECRET, header, body, tolerance=300, now=t - 301), "from the future"
    assert not verify_signature(SECRET, header.replace(f"t={t}", f"t={t + 5}"), body, now=t), "timestamp is signed too"
    assert not verify_signature(SECRET, "v1=abc", body, now=t)
    assert not verify_signature(SECRET, "t=x,v1=é", body, now=t)


def test_back_off_doubles_and_is_capped():
    assert [backoff(30, n).total_seconds() for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert backoff(30, 12) == MAX_BACKOFF == timedelta(hours=6)
    assert backoff(30, 10_000) == MAX_BACKOFF


async def test_a_failing_webhook_is_retried_with_back_off_then_delivered(db, outbox, receiver):
    dispatcher, clock = outbox
    receiver.failures = 2
    await _notify(db, "request_approved", "org:ngo-1")
    first = await dispatcher.run_once()
    assert (first.delivered, first.retrying) == (1, 1)  # the inbox e-mail went; the webhook answered 500
    (webhook,) = await _deliveries(db, "webhook")
    assert (webhook.status, webhook.attempts) == ("pending", 1)
    assert webhook.last_error == "WebhookFailed: the endpoint answered 500"
    assert webhook.next_attempt_at - clock.now == timedelta(seconds=60)

    clock.now += timedelta(seconds=59)
    assert (await dispatcher.run_once()).attempted == 0, "not due yet: nothing is tried"
    clock.now += timedelta(seconds=1)
    assert (await dispatcher.run_once()).retrying == 1
    (webhook,) = await _deliveries(db, "webhook")
    assert webhook.next_attempt_at - clock.now == timedelta(seconds=120), "the wait doubles"
    clock.now += timedelta(seconds=120)
    assert (await dispatcher.run_once()).delivered == 1
    (webhook,) = await _deliveries(db, "webhook")
    assert (webhook.status, webhook.attempts, webhook.last_error) == ("delivered", 3, None)
    assert webhook.delivered_at == clock.now
    assert len(receiver.calls) == 3
    assert len({headers["Haven-Delivery"] for headers, _ in receiver.calls}) == 1, "every retry carries the same id"
    assert len({body for _, body in receiver.calls}) == 1, "and the same body"
    assert all(verify_signature(SECRET, headers["Haven-Signature"], body) for headers, body in receiver.calls)


async def test_smtp_down_is_retried_then_delivered(db, outbox, inbox):
    dispatcher, clock = outbox
    inbox.refuse = True
    await _notify(db, "payment_due", "finance")
    assert (await dispatcher.run_once()).retrying == 1
    (delivery,) = await _deliveries(db)
    assert delivery.status == "pending" and "451" in delivery.last_error
    inbox.refuse = False
    clock.now += timedelta(seconds=60)
    assert (await dispatcher.run_once()).delivered == 1
    assert inbox.recipients() == ["fin1@fund.example.org"]


async def test_gives_up_after_the_last_attempt(db, outbox, receiver, inbox):
    dispatcher, clock = outbox
    await _org_channels(db, "ngo-1", None, receiver.url, SECRET)
    receiver.failures = 1_000  # the endpoint is broken for good
    await _notify(db, "payment_made", "org:ngo-1")
    with structlog.testing.capture_logs() as logs:
        outcomes = []
        for _ in range(4):
            outcomes.append(await dispatcher.run_once())
            clock.now += timedelta(hours=1)
    assert [(r.retrying, r.failed) for r in outcomes] == [(1, 0), (1, 0), (0, 1), (0, 0)]
    (delivery,) = await _deliveries(db)
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert "500" in delivery.last_error and SECRET not in delivery.last_error
    assert len(receiver.calls) == 3, "a failed delivery is not tried again"
    assert [e["log_level"] for e in logs if e["event"] == "notification_given_up"] == ["error"]


async def test_a_send_interrupted_mid_way_is_retried_after_its_lease(db, outbox, inbox):
    dispatcher, clock = outbox
    await _notify(db, "payment_due", "finance")
    await fan_out(db, clock.now, email=True)
    assert len(await dispatcher._claim_due()) == 1  # the process dies after claiming, before sending
    assert (await dispatcher.run_once()).attempted == 0, "leased to the dead process"
    clock.now += dispatcher.lease
    assert (await dispatcher.run_once()).delivered == 1
    assert len(inbox.messages) == 1


async def test_who_is_no_longer_a_recipient_is_not_sent_to(db, outbox, inbox, receiver):
    dispatcher, clock = outbox
    await _notify(db, "decision_needed", "caseworker")
    await _notify(db, "payment_made", "org:ngo-1")
    await fan_out(db, clock.now, email=True)
    async with db.transaction() as session:  # before anything was sent: cw-2 leaves, ngo-1 moves its webhook
        (await session.get(StaffMember, (TEST_ISSUER, "cw-2"))).active = False
    await _org_channels(db, "ngo-1", "alerts@ngo1.example.org", "https://new.ngo1.example.org/hook", SECRET)
    result = await dispatcher.run_once()
    assert (result.delivered, result.dropped) == (2, 2)
    assert inbox.recipients() == ["alerts@ngo1.example.org", "cw1@fund.example.org"]
    assert receiver.calls == []
    dropped = [d for d in await _deliveries(db) if d.status == "failed"]
    assert sorted(d.target for d in dropped) == ["cw2@fund.example.org", receiver.url]


async def test_two_dispatchers_at_once_deliver_each_delivery_exactly_once(db, outbox, inbox, receiver):
    if db.is_sqlite:
        pytest.skip("SQLite serves a single worker process; concurrent dispatchers are a PostgreSQL deployment")
    dispatcher, clock = outbox
    twin = NotificationDispatcher(db, dispatcher.settings, clock=clock)
    for n in range(10):
        await _notify(db, "decision_needed", "caseworker", request_id=f"gr_{n:04d}")
        await _notify(db, "information_requested", "org:ngo-1", request_id=f"gr_{n:04d}")
    rounds = []
    for _ in range(3):
        rounds += await asyncio.gather(dispatcher.run_once(), twin.run_once())
    # 10 x (cw-1, cw-2) + 10 x the organisation's inbox = 30 e-mails, and 10 webhooks.
    assert sum(r.delivered for r in rounds) == 40
    assert len(inbox.messages) == 30 and len(receiver.calls) == 10
    assert len({mail["Message-ID"] for _, mail in inbox.messages}) == 30
    assert any(r.attempted for r in rounds[0::2]) and any(r.attempted for r in rounds[1::2]), "both took part"
    async with db.sessions() as session:
        rows = await session.execute(
            select(NotificationDelivery.status, NotificationDelivery.attempts, func.count())
            .group_by(NotificationDelivery.status, NotificationDelivery.attempts)
        )  # fmt: skip
        assert rows.all() == [("delivered", 1, 40)]


async def test_dev_mode_without_smtp_writes_mail_files(sqlite_db, tmp_path, receiver):
    db = sqlite_db
    await _roster(db, ("cw-1", "cw-1@example.org", ["caseworker"], True))
    settings = make_settings(tmp_path, db.url)  # dev mode, no SMTP host
    await _notify(db, "decision_needed", "caseworker")
    assert (await NotificationDispatcher(db, settings).run_once()).delivered == 1
    (eml,) = (tmp_path / "mail").glob("*.eml")
    mail = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert mail["To"] == "cw-1@example.org"
    assert mail["Subject"] == "[haven] decision needed – request gr_0001"
    assert "/v1/grant-requests/gr_0001" in mail.get_content()


async def test_outside_dev_mode_without_smtp_only_webhooks_go(sqlite_db, tmp_path, receiver):
    db = sqlite_db
    await _roster(db, ("cw-1", "cw-1@example.org", ["caseworker"], True))
    await _org_channels(db, "ngo-1", "alerts@ngo1.example.org", receiver.url, SECRET)
    settings = make_settings(tmp_path, db.url, dev_mode=False)
    with structlog.testing.capture_logs() as logs:
        dispatcher = NotificationDispatcher(db, settings)
    assert [e["event"] for e in logs] == ["email_notifications_off"], "said once, at start"
    dispatcher.webhooks.allow_loopback = True  # the test's receiver runs on this machine
    await _notify(db, "decision_needed", "caseworker")
    await _notify(db, "payment_made", "org:ngo-1")
    result = await dispatcher.run_once()
    assert (result.dispatched, result.delivered) == (2, 1)
    assert [(d.channel, d.status) for d in await _deliveries(db)] == [("webhook", "delivered")]
    assert not (tmp_path / "mail").exists()


async def test_a_redirect_is_not_followed(sqlite_db, tmp_path, receiver):
    db = sqlite_db
    await _org_channels(db, "ngo-1", None, receiver.url, SECRET)
    receiver.redirect_to = receiver.url.replace("/haven", "/elsewhere")
    settings = make_settings(tmp_path, db.url)
    await _notify(db, "payment_made", "org:ngo-1")
    assert (await NotificationDispatcher(db, settings).run_once()).retrying == 1
    assert len(receiver.calls) == 1, "the signed delivery went only where the organisation said"
    (delivery,) = await _deliveries(db)
    assert delivery.last_error == "WebhookFailed: the endpoint answered 307"


def _self_signed_certificate(tmp_path, dns_name: str | None = None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "haven test SMTP")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                                                   + ([x509.DNSName(dns_name)] if dns_name else [])), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def test_starttls_checks_the_certificate_before_logging_in(sqlite_db, tmp_path, monkeypatch):
    import ssl

    db = sqlite_db
    cert_file, key_file = _self_signed_certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    logins = []

    def authenticate(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"mail-password")

    handler = Inbox()
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_port(), tls_context=server_tls, require_starttls=True,
        authenticator=authenticate, auth_require_tls=True,
    )  # fmt: skip
    controller.start()
    try:
        await _roster(db, ("fin-1", "fin1@fund.example.org", ["finance"], True))
        settings = make_settings(
            tmp_path, db.url, smtp_host="127.0.0.1", smtp_port=controller.port, smtp_starttls=True,
            smtp_username="haven", smtp_password="mail-password", smtp_sender="haven@fund.example.org",
        )  # fmt: skip
        clock = Clock()
        dispatcher = NotificationDispatcher(db, settings, clock=clock)
        await _notify(db, "payment_due", "finance")

        # A certificate nobody vouches for: nothing is sent, and the password is not given away.
        assert (await dispatcher.run_once()).retrying == 1
        (delivery,) = await _deliveries(db)
        assert "CERTIFICATE_VERIFY_FAILED" in delivery.last_error and "mail-password" not in delivery.last_error
        assert logins == [] and handler.messages == []

        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # now the server's certificate is trusted
        clock.now += timedelta(minutes=1)
        assert (await dispatcher.run_once()).delivered == 1
        assert logins == [(b"haven", b"mail-password")]
        assert handler.recipients() == ["fin1@fund.example.org"]
    finally:
        controller.stop()


async def test_a_real_case_notifies_without_personal_data(db, tmp_path, inbox, receiver, time_skipping_env, default_policy):
    """The outbox rows come from the real workflow and activities here, not from the test."""
    await _roster(db, ("cw-9", "cw9@fund.example.org", ["caseworker"], True))
    await _org_channels(db, "ngo-1", "alerts@ngo1.example.org", receiver.url, SECRET)
    settings = make_settings(tmp_path, db.url, smtp_host="127.0.0.1", smtp_port=inbox.port)
    case_secrets = ["ZQXJ-7731", "Rue Obscure", "kestrel-UNIQUE-42", "Sekret Holdings", "KE99 SECRET 0001", "Which flat"]
    intake = Intake(db, time_skipping_env.client, settings.task_queue, default_policy, b"index-key", case_keys=TEST_CASE_KEYS)
    async with build_worker(time_skipping_env.client, db, settings):
        harness = Harness(time_skipping_env, intake, db)
        handle = await harness.submit(
            threat_summary="Followed home by men in an unmarked car ZQXJ-7731.",
            purpose="Move the family to the safe flat on Rue Obscure 12.",
            defender={"pseudonym": "kestrel-UNIQUE-42"},
            payee={"name": "Landlord Sekret Holdings", "country": "KE", "account": "KE99 SECRET 0001"},
        )
        await harness.until(handle, Status.AWAITING_DECISION)
        await harness.ask(handle, caseworker(1), note="Which flat? ZQXJ-7731")  # the org is told, without the note
        await harness.until_recorded(handle.id, Status.INFORMATION_REQUESTED)

    result = await NotificationDispatcher(db, settings).run_once()
    assert result.dispatched >= 2 and (result.retrying, result.failed) == (0, 0)
    assert {d.status for d in await _deliveries(db)} == {"delivered"}
    webhooks = [json.loads(body) for _, body in receiver.calls]
    assert [(w["kind"], w["request_id"]) for w in webhooks] == [("information_requested", handle.id)]
    assert set(webhooks[0]) == BODY_FIELDS
    subjects = {(rcpts[0], mail["Subject"]) for rcpts, mail in inbox.messages}
    assert ("cw9@fund.example.org", f"[haven] decision needed – request {handle.id}") in subjects
    assert ("alerts@ngo1.example.org", f"[haven] information requested – request {handle.id}") in subjects

    sent = [mail.as_string() for _, mail in inbox.messages]
    sent += [json.dumps(headers) + body.decode() for headers, body in receiver.calls]
    for text in sent:
        for value in case_secrets:
            assert value not in text, f"{value!r} left the system"


@pytest.mark.parametrize(
    ("url", "allow_loopback", "reason"),
    [
        ("https://10.1.2.3/hook", True, "private"),  # even if configured before the rule existed
        ("https://169.254.169.254/latest/meta-data", True, "private"),  # cloud metadata
        ("http://127.0.0.1:9/hook", False, "loopback"),  # this machine, outside dev mode
        ("https://localhost/hook", False, "loopback"),  # a name that resolves to this machine
        ("https://no-such-host.invalid/hook", True, "does not resolve"),
    ],
)
async def test_webhooks_never_go_to_internal_addresses(url, allow_loopback, reason):
    from haven.notifications.webhooks import WebhookFailed, WebhookSender

    with pytest.raises(WebhookFailed) as refused:
        await WebhookSender(1.0, allow_loopback=allow_loopback).send(url, SECRET, "dlv_1", b"{}")
    assert reason in str(refused.value)  # refused before any connection was tried


# --- webhooks go to public addresses only, and to the address that was checked ------------------


@pytest.mark.parametrize(
    "host",
    [
        "100.64.0.1",  # shared address space
        "[2002:a00:1::1]", "[2002:a9fe:a9fe::1]", "[2002:6440:1::1]",  # 6to4 of 10.0.0.1, 169.254.169.254, 100.64.0.1
        "[2001:0:a00:1::1]",  # Teredo
        "[64:ff9b::a00:1]", "[64:ff9b::a9fe:a9fe]", "[64:ff9b:1::a00:1]",  # NAT64
        "[::ffff:10.0.0.1]", "[::ffff:100.64.0.1]", "[::10.0.0.1]", "[::ffff:0:a00:1]",  # mapped, compatible, translated
        "[fec0::1]", "192.88.99.1", "[fd00::1]", "[fe80::1%25lo]", "192.0.0.130", "[64:ff9b::c000:82]", "[3fff::1]",
        "167772161", "0xa.0.0.1", "012.0.0.1", "10.1",  # 10.0.0.1 as getaddrinfo reads numbers
    ],
)  # fmt: skip
async def test_webhooks_refuse_every_form_of_a_non_public_address(host):
    from haven.notifications.webhooks import WebhookFailed, WebhookSender

    with pytest.raises(WebhookFailed) as refused:
        await WebhookSender(1.0, allow_loopback=True).send(f"https://{host}/hook", SECRET, "dlv_1", b"{}")
    assert "reaching the endpoint" not in str(refused.value), "refused before any connection was tried"


@pytest.fixture
def resolver(monkeypatch):
    """Host names under .partner.test resolve to what the test says (a list per lookup, the last
    one repeated); the lookups are counted."""
    import socket

    answers: dict[str, list[list[str]]] = {}
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host)  # anyio passes bytes
        if not name.endswith(".partner.test"):
            return real(host, port, *args, **kwargs)
        lookups.append(name)
        queue = answers[name]
        found = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in found]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, lookups


async def test_a_name_with_any_non_public_address_is_refused(resolver, receiver):
    from haven.notifications.webhooks import WebhookFailed, WebhookSender

    answers, _ = resolver
    port = receiver.server_address[1]
    for name, found in {"mixed.partner.test": ["127.0.0.1", "100.64.0.7"], "sixtofour.partner.test": ["127.0.0.1", "2002:a00:7::"],
                        "mapped.partner.test": ["::ffff:10.0.0.7", "127.0.0.1"], "nat64.partner.test": ["127.0.0.1", "64:ff9b::a00:7"]}.items():  # fmt: skip
        answers[name] = [found]
        with pytest.raises(WebhookFailed, match="private"):
            await WebhookSender(1.0, allow_loopback=True).send(f"http://{name}:{port}/haven", SECRET, "dlv_1", b"{}")
    assert receiver.calls == []


async def test_the_delivery_goes_to_the_address_that_was_checked(resolver, receiver):
    """DNS rebinding: the name answers with an allowed address when checked and with another one a
    moment later (here another loopback address standing for an internal service). The delivery
    goes to the address checked; the name is looked up once."""
    from haven.notifications.webhooks import WebhookSender

    port = receiver.server_address[1]
    internal = Receiver(("127.0.0.2", port))
    thread = threading.Thread(target=internal.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        answers, lookups = resolver
        answers["rebind.partner.test"] = [["127.0.0.1"], ["127.0.0.2"]]
        await WebhookSender(2.0, allow_loopback=True).send(f"http://rebind.partner.test:{port}/haven", SECRET, "dlv_1", b"{}")
        assert len(receiver.calls) == 1 and internal.calls == []
        assert receiver.calls[0][0]["Host"] == f"rebind.partner.test:{port}"
        assert lookups == ["rebind.partner.test"]
    finally:
        internal.shutdown()
        internal.server_close()


async def test_https_to_a_checked_address_still_verifies_the_name_s_certificate(resolver, tmp_path, monkeypatch):
    """Connecting to the address checked, not to the name, keeps TLS as it was: SNI and the
    certificate check use the name."""
    import ssl

    from haven.notifications.webhooks import WebhookFailed, WebhookSender

    cert_file, key_file = _self_signed_certificate(tmp_path, dns_name="hooks.partner.test")
    server = Receiver()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        answers, _ = resolver
        answers["hooks.partner.test"] = answers["other.partner.test"] = [["127.0.0.1"]]
        port = server.server_address[1]
        await WebhookSender(2.0, allow_loopback=True).send(f"https://hooks.partner.test:{port}/haven", SECRET, "dlv_1", b"{}")
        assert len(server.calls) == 1 and server.calls[0][0]["Host"] == f"hooks.partner.test:{port}"
        with pytest.raises(WebhookFailed, match="ConnectError"):  # the certificate does not name this host
            await WebhookSender(2.0, allow_loopback=True).send(f"https://other.partner.test:{port}/haven", SECRET, "dlv_2", b"{}")
        assert len(server.calls) == 1
    finally:
        server.shutdown()
        server.server_close()
