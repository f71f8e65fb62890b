"""Mail transports: SMTP for real inboxes, and in dev mode .eml files under <var_dir>/mail so that
someone trying the system can see what would have been sent."""

from __future__ import annotations

import asyncio
import os
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import structlog

from haven.settings import Settings

log = structlog.get_logger("haven.notifications")

SMTP_TIMEOUT_SECONDS = 30.0  # per network operation
IMPLICIT_TLS_PORT = 465


class MailTransport(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpTransport:
    """One connection per message, in a thread (smtplib blocks). Port 465 speaks TLS from the
    start; otherwise STARTTLS when configured. Certificates are always verified."""

    def __init__(self, settings: Settings):
        self.host, self.port = settings.smtp_host, settings.smtp_port
        self.starttls = settings.smtp_starttls
        self.username, self.password = settings.smtp_username, settings.smtp_password
        self.implicit_tls = self.port == IMPLICIT_TLS_PORT
        if self.username and not (self.starttls or self.implicit_tls):
            log.warning("smtp_login_without_tls", host=self.host, hint="set HAVEN_SMTP_STARTTLS=true")

    async def send(self, message: EmailMessage) -> None:
        await asyncio.to_thread(self._send, message)

    def _send(self, message: EmailMessage) -> None:
        context = ssl.create_default_context()
        if self.implicit_tls:
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=SMTP_TIMEOUT_SECONDS, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT_SECONDS)
        with smtp:
            if self.starttls and not self.implicit_tls:
                smtp.starttls(context=context)  # without a context smtplib would not check the certificate
            if self.username:
                smtp.login(self.username, self.password)
            smtp.send_message(message)


class MailFolderTransport:
    """Dev mode without SMTP: each message becomes <folder>/<delivery id>.eml (a retry overwrites)."""

    def __init__(self, folder: Path):
        self.folder = folder

    async def send(self, message: EmailMessage) -> None:
        await asyncio.to_thread(self._write, message)

    def _write(self, message: EmailMessage) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in message["Message-ID"].strip("<>"))
        path = self.folder / f"{name}.eml"
        partial = path.with_suffix(".eml.partial")
        partial.write_bytes(bytes(message))
        os.replace(partial, path)  # a reader never sees half a message


def mail_transport(settings: Settings) -> MailTransport | None:
    """SMTP when configured; files in dev mode; otherwise no e-mail channel at all."""
    if settings.smtp_host:
        return SmtpTransport(settings)
    if settings.dev_mode:
        return MailFolderTransport(Path(settings.var_dir) / "mail")
    return None
