"""Delivering the outbox over a real SMTP server (aiosmtpd) and to a real HTTP webhook receiver,
on SQLite and PostgreSQL: who gets what, signatures, retries with back-off, giving up, and that
no personal data ever leaves."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select

from haven.db import Database, utcnow
from haven.db.models import Notification, NotificationDelivery, Organisation, StaffMember
from haven.localstack import free_port
from haven.notifications import NotificationDispatcher, verify_signature
from haven.notifications.fanout import fan_out
from haven.notifications.webhooks import sign
from haven.intake import Intake
from haven.lifecycle import Status
from haven.worker import build_worker
from tests.conftest import make_settings
from tests.harness import Harness, caseworker

SECRET = "whsec_test_secret"


class Inbox:
    """The SMTP server's handler: keeps every message it is given."""

    def __init__(self):
        self.messages: list = []
        self.refuse = False

    async def handle_DATA(self, server, session, envelope):
        if self.refuse:
            return "451 try again later"
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"


class Receiver(ThreadingHTTPServer):
    """An organisation's webhook endpoint; answers 500 to the first `failures` calls."""

    def __init__(self):
        self.calls: list[tuple[dict, bytes]] = []
        self.failures = 0

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                failing = receiver.failures > 0
                receiver.failures -= 1 if failing else 0
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/haven"

    def delivered(self) -> list[tuple[dict, bytes]]:
        return self.calls


@pytest.fixture
def inbox():
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield handler, controller.port
    controller.stop()


@pytest.fixture
def receiver():
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


class Clock:
    def __init__(self):
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def outbox(db: Database, inbox, receiver, tmp_path):
    """Staff, an organisation with an inbox and a webhook, and a dispatcher on a clock we move."""
    _, smtp_port = inbox
    now = utcnow()
    async with db.transaction() as session:
        for subject, email, roles, active in (
            ("cw-1", "cw1@fund.example.org", ["caseworker"], True),
            ("cw-2", "cw2@fund.example.org", ["caseworker", "director"], True),
            ("cw-old", "old@fund.example.org", ["caseworker"], False),
            ("fin-1", "fin1@fund.example.org", ["finance"], True),
        ):
            session.add(StaffMember(subject=subject, name=subject, email=email, roles=roles, active=active,
                                    created_at=now, updated_at=now))  # fmt: skip
        ngo = await session.get(Organisation, "ngo-1")
        ngo.notification_email, ngo.webhook_url, ngo.webhook_secret = "alerts@ngo1.example.org", receiver.url, SECRET
    settings = make_settings(
        tmp_path, db.url, smtp_host="127.0.0.1", smtp_port=smtp_port, smtp_sender="haven@fund.example.org",
        notification_max_attempts=3, notification_retry_base_seconds=60, webhook_timeout_seconds=5,
    )  # fmt: skip
    clock = Clock()
    return NotificationDispatcher(db, settings, clock=clock), clock


_keys = iter(range(10**6))


async def _notify(db: Database, kind: str, audience: str, request_id: str = "gr_0001") -> None:
    async with db.transaction() as session:
        session.add(
            Notification(
                dedupe_key=f"{request_id}:{next(_keys)}:{kind}:{audience}", request_id=request_id, kind=kind,
                audience=audience, created_at=utcnow(),
                payload={"request_id": request_id, "kind": kind, "status": "awaiting_decision",
                         "link": f"https://haven.example.org/v1/grant-requests/{request_id}",
                         "defender": "should never leave"},
            )
        )  # fmt: skip


async def _deliveries(db: Database) -> list[NotificationDelivery]:
    async with db.sessions() as session:
        return list(await session.scalars(select(NotificationDelivery).order_by(NotificationDelivery.id)))


async def test_each_audience_reaches_the_right_people(db, outbox, inbox, receiver):
    dispatcher, _ = outbox
    handler, _ = inbox
    await _notify(db, "decision_needed", "caseworker")
    await _notify(db, "payment_due", "finance")
    await _notify(db, "information_requested", "org:ngo-1")
    await _notify(db, "escalated", "org:ngo-2")  # no inbox or webhook: nobody to tell
    result = await dispatcher.run_once()
    assert (result.dispatched, result.delivered, result.failed) == (4, 5, 0)

    recipients = sorted(rcpt for rcpts, _ in handler.messages for rcpt in rcpts)
    assert recipients == ["alerts@ngo1.example.org", "cw1@fund.example.org", "cw2@fund.example.org", "fin1@fund.example.org"]
    (headers, body), = receiver.delivered()
    assert json.loads(body)["kind"] == "information_requested"
    assert verify_signature(SECRET, headers["Haven-Signature"], body)
    assert headers["Haven-Delivery"] == json.loads(body)["id"]

    # Nothing is sent twice, however often the dispatcher runs.
    again = await dispatcher.run_once()
    assert (again.dispatched, again.delivered) == (0, 0)
    assert len(handler.messages) == 4 and len(receiver.delivered()) == 1


async def test_only_the_allow_listed_fields_leave(db, outbox, inbox, receiver):
    dispatcher, _ = outbox
    handler, _ = inbox
    await _notify(db, "information_requested", "org:ngo-1")
    await dispatcher.run_once()
    (_, body), = receiver.delivered()
    assert set(json.loads(body)) == {"id", "kind", "request_id", "status", "link", "created_at"}
    (_, mail), = handler.messages
    assert "should never leave" not in mail.as_string() and b"should never leave" not in body
    assert "gr_0001" in mail["Subject"] and "https://haven.example.org/v1/grant-requests/gr_0001" in mail.get_content()


def test_signatures_verify_only_for_the_right_secret_body_and_time():
    body = b'{"id":"ntf_1"}'
    now = 1_800_000_000
    header = sign(SECRET, body, now)
    assert verify_signature(SECRET, header, body, now=now + 10)
    assert not verify_signature("another-secret", header, body, now=now)
    assert not verify_signature(SECRET, header, body.replace(b"1", b"2"), now=now)
    assert not verify_signature(SECRET, header, body, now=now + 301)
    assert not verify_signature(SECRET, "v1=abc", body, now=now)
    assert not verify_signature(SECRET, header.replace("t=", "t=1"), body, now=now)


async def test_a_failing_webhook_is_retried_with_back_off_then_delivered(db, outbox, receiver):
    dispatcher, clock = outbox
    receiver.failures = 2
    await _notify(db, "escalated", "org:ngo-1")
    first = await dispatcher.run_once()
    assert first.retrying == 1  # the webhook; the org's e-mail went out
    (webhook,) = [d for d in await _deliveries(db) if d.channel == "webhook"]
    assert webhook.attempts == 1 and "500" in webhook.last_error
    assert webhook.next_attempt_at - clock.now == timedelta(seconds=60)

    assert (await dispatcher.run_once()).retrying == 0, "not due yet: nothing is tried"
    clock.now += timedelta(seconds=61)
    assert (await dispatcher.run_once()).retrying == 1
    (webhook,) = [d for d in await _deliveries(db) if d.channel == "webhook"]
    assert webhook.next_attempt_at - clock.now == timedelta(seconds=120)  # doubled
    clock.now += timedelta(seconds=121)
    assert (await dispatcher.run_once()).delivered == 1
    (webhook,) = [d for d in await _deliveries(db) if d.channel == "webhook"]
    assert (webhook.status, webhook.attempts, webhook.last_error) == ("delivered", 3, None)
    ids = {headers["Haven-Delivery"] for headers, _ in receiver.delivered()}
    assert len(receiver.delivered()) == 3 and len(ids) == 1, "every retry carries the same id"


async def test_gives_up_after_the_last_attempt(db, outbox, inbox):
    dispatcher, clock = outbox
    handler, _ = inbox
    handler.refuse = True  # the SMTP server is down for good
    await _notify(db, "payment_due", "finance")
    for _ in range(3):
        await dispatcher.run_once()
        clock.now += timedelta(hours=1)
    (delivery,) = await _deliveries(db)
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert "451" in delivery.last_error
    assert (await dispatcher.run_once()).failed == 0, "a failed delivery is not tried again"


async def test_a_send_interrupted_mid_way_is_retried_after_its_lease(db, outbox, inbox):
    dispatcher, clock = outbox
    handler, _ = inbox
    await _notify(db, "payment_due", "finance")
    await fan_out(db, clock.now, email=True)
    claimed = await dispatcher._claim_due()  # the process dies after claiming, before sending
    assert len(claimed) == 1
    assert (await dispatcher.run_once()).delivered == 0, "leased to the dead process"
    clock.now += timedelta(minutes=6)
    assert (await dispatcher.run_once()).delivered == 1
    assert len(handler.messages) == 1


async def test_dev_mode_without_smtp_writes_mail_files(db, tmp_path):
    async with db.transaction() as session:
        now = utcnow()
        session.add(StaffMember(subject="cw-1", name="cw", email="cw1@example.org", roles=["caseworker"], active=True,
                                created_at=now, updated_at=now))  # fmt: skip
    settings = make_settings(tmp_path, db.url)  # dev mode, no SMTP host
    await _notify(db, "decision_needed", "caseworker")
    assert (await NotificationDispatcher(db, settings).run_once()).delivered == 1
    (eml,) = (tmp_path / "mail").glob("*.eml")
    assert "decision needed" in eml.read_text()


async def test_outside_dev_mode_without_smtp_no_email_is_queued(db, tmp_path, receiver):
    settings = make_settings(tmp_path, db.url, dev_mode=False)
    await _notify(db, "decision_needed", "caseworker")
    assert (await NotificationDispatcher(db, settings).run_once()).dispatched == 1
    assert await _deliveries(db) == []


async def test_two_dispatchers_deliver_each_message_once(db, outbox, inbox, receiver, tmp_path):
    if db.is_sqlite:
        pytest.skip("SQLite serves one worker process; concurrent dispatchers are a PostgreSQL deployment")
    dispatcher, clock = outbox
    handler, _ = inbox
    twin = NotificationDispatcher(db, dispatcher.settings, clock=clock)
    for n in range(15):
        await _notify(db, "decision_needed", "caseworker", request_id=f"gr_{n:04d}")
        await _notify(db, "information_requested", "org:ngo-1", request_id=f"gr_{n:04d}")
    for _ in range(4):
        await asyncio.gather(dispatcher.run_once(), twin.run_once())
    # 15 x (cw-1, cw-2) e-mails + 15 x (org inbox e-mail + webhook)
    assert len(handler.messages) == 45 and len(receiver.delivered()) == 15
    async with db.sessions() as session:
        states = dict(
            (await session.execute(select(NotificationDelivery.status, func.count()).group_by(NotificationDelivery.status))).all()
        )
    assert states == {"delivered": 60}


async def test_a_real_case_notifies_without_personal_data(db, tmp_path, inbox, receiver, time_skipping_env, default_policy):
    """The outbox rows come from the real workflow and activities here, not from the test."""
    handler, smtp_port = inbox
    now = utcnow()
    async with db.transaction() as session:
        session.add(StaffMember(subject="cw-9", name="cw", email="cw9@fund.example.org", roles=["caseworker"],
                                active=True, created_at=now, updated_at=now))  # fmt: skip
        ngo = await session.get(Organisation, "ngo-1")
        ngo.notification_email, ngo.webhook_url, ngo.webhook_secret = "alerts@ngo1.example.org", receiver.url, SECRET
    settings = make_settings(tmp_path, db.url, smtp_host="127.0.0.1", smtp_port=smtp_port)
    case_secrets = ["ZQXJ-7731", "Rue Obscure", "kestrel-UNIQUE-42", "Sekret Holdings", "SECRET 0001"]
    intake = Intake(db, time_skipping_env.client, settings.task_queue, default_policy, b"index-key")
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
        await harness.until(handle, Status.INFORMATION_REQUESTED)

    result = await NotificationDispatcher(db, settings).run_once()
    assert result.failed == 0 and result.retrying == 0
    kinds = {json.loads(body)["kind"] for _, body in receiver.delivered()}
    assert "information_requested" in kinds, kinds
    assert any(rcpts == ["cw9@fund.example.org"] for rcpts, _ in handler.messages), "caseworkers were not told"
    sent = [mail.as_string() for _, mail in handler.messages] + [body.decode() for _, body in receiver.delivered()]
    for text in sent:
        for value in case_secrets:
            assert value not in text, f"{value!r} left the system"
