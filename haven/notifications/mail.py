"""Mail transports: SMTP for real inboxes, and in dev mode .eml files under ./var/mail so that
someone trying the system can see what would have been sent."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from haven.settings import Settings


class MailTransport(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpTransport:
    def __init__(self, settings: Settings):
        self.settings = settings

    async def send(self, message: EmailMessage) -> None:
        await asyncio.to_thread(self._send, message)

    def _send(self, message: EmailMessage) -> None:
        s = self.settings
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.webhook_timeout_seconds) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password)
            smtp.send_message(message)


class MailFolderTransport:
    def __init__(self, folder: Path):
        self.folder = folder

    async def send(self, message: EmailMessage) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = message["Message-ID"].strip("<>").replace("@", "_at_").replace("/", "_")
        (self.folder / f"{name}.eml").write_bytes(bytes(message))


def mail_transport(settings: Settings) -> MailTransport | None:
    """SMTP when configured; files in dev mode; otherwise no e-mail channel at all."""
    if settings.smtp_host:
        return SmtpTransport(settings)
    if settings.dev_mode:
        return MailFolderTransport(Path(settings.var_dir) / "mail")
    return None
