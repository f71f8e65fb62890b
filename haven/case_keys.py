"""Envelope encryption of a request's sensitive details: each request has its own data key, stored
only wrapped by a master key, and every sensitive field is sealed with it (AES-256-GCM, bound to
the request and the field, so a sealed value cannot be moved to another row or column).
Destroying the wrapped data key destroys the details for good (crypto-shredding): the rows stay,
the ledger and the audit chain stay, and nothing, not even the master key, opens them again.

The master keys sit behind `KeyProvider`: `MasterKeys` holds them from the settings
(HAVEN_MASTER_KEYS, a key ring); a cloud KMS implements the same two calls."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from haven.db.models import CaseKey, FollowUpReportRecord, GrantRequestRecord
from haven.keyring import KeyRing, KeyRingError

# The sealed fields, by the name each seal is bound to.
SENSITIVE = "grant_requests.sensitive"  # the defender, the payee and the narrative, sealed at intake
# What a person writes into a case (notes, answers, reasons, the report and its receipts) is sealed
# by the API before its command enters a Workflow Update, so that every copy (Temporal's history
# included, whatever its payload key) dies with the request's data key. The same sealed text is
# stored in several tables (a question is a decision's note and a message), so it is bound to the
# request, not to one column.
CASE_TEXT = "case_text"
# Where the build before CASE_TEXT sealed the text, at rest only; such rows still open.
DECISION_NOTE = "decisions.note"
MESSAGE_BODY = "case_messages.body"
REPORT_TEXT, REPORT_RECEIPTS, ACCEPTANCE_NOTE = "reports.text", "reports.receipts", "reports.acceptance_note"

SEALED = "sealed:v1:"  # the prefix of every sealed value; anything else was written before sealing
ERASED = "[erased]"  # what a sealed value reads as once its request's key is destroyed
ERASED_DETAILS = {"erased": True}  # the same, where an object was sealed
NONCE = 12


class KeyProvider(Protocol):
    def wrap(self, request_id: str, data_key: bytes) -> tuple[str, bytes]:
        """The data key wrapped by the current master key, and that key's id."""

    def unwrap(self, request_id: str, key_id: str, wrapped: bytes) -> bytes: ...


class MasterKeys:
    """Master keys from the settings. Rotation: a new key first; older wrapped keys still open."""

    def __init__(self, ring: KeyRing):
        self.ring = ring

    def wrap(self, request_id: str, data_key: bytes) -> tuple[str, bytes]:
        key_id, key = self.ring.current
        nonce = os.urandom(NONCE)
        return key_id, nonce + AESGCM(key).encrypt(nonce, data_key, f"case-key:{request_id}".encode())

    def unwrap(self, request_id: str, key_id: str, wrapped: bytes) -> bytes:
        try:
            return AESGCM(self.ring.key(key_id)).decrypt(wrapped[:NONCE], wrapped[NONCE:], f"case-key:{request_id}".encode())
        except InvalidTag:
            raise KeyRingError(f"the data key of {request_id} does not unwrap: altered, or another master key") from None


@dataclass(frozen=True)
class Sealer:
    """Seals and opens one request's fields with its data key. No key and not destroyed: a
    request stored before sealing existed, whose fields stay as they were written."""

    request_id: str
    data_key: bytes | None
    destroyed: bool = False

    def seal(self, field: str, value: Any) -> Any:
        if self.destroyed:
            raise KeyRingError(f"the data key of {self.request_id} was destroyed: nothing more is written to it")
        if self.data_key is None:
            return value
        nonce = os.urandom(NONCE)
        plain = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        sealed = AESGCM(self.data_key).encrypt(nonce, plain, f"{self.request_id}:{field}".encode())
        return SEALED + base64.b64encode(nonce + sealed).decode()

    def open(self, field: str, value: Any) -> Any:
        if not (isinstance(value, str) and value.startswith(SEALED)):
            return value  # written before sealing (or nothing)
        if self.data_key is None:
            return ERASED
        raw = base64.b64decode(value[len(SEALED):])
        try:
            plain = AESGCM(self.data_key).decrypt(raw[:NONCE], raw[NONCE:], f"{self.request_id}:{field}".encode())
        except InvalidTag:
            raise KeyRingError(f"{self.request_id}: the sealed {field} does not open: altered, or moved from elsewhere") from None
        return json.loads(plain)

    def seal_text(self, text: str) -> str:
        return self.seal(CASE_TEXT, text)

    def open_text(self, value: Any, column: str) -> Any:
        """Text sealed by the API, or (rows of an earlier build) at rest under its column's name."""
        try:
            return self.open(CASE_TEXT, value)
        except KeyRingError:
            return self.open(column, value)


def open_message(sealer: Sealer, body: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(body, str):  # an earlier build sealed the whole body at rest
        body = sealer.open(MESSAGE_BODY, body)
    return {name: sealer.open(CASE_TEXT, value) for name, value in body.items()}


def open_report(sealer: Sealer, report: FollowUpReportRecord) -> None:
    """The report's text, receipts and acceptance note opened in place (on a detached row)."""
    receipts = report.receipts if isinstance(report.receipts, list) else sealer.open(REPORT_RECEIPTS, report.receipts)
    report.text = sealer.open_text(report.text, REPORT_TEXT)
    report.receipts = [sealer.open_text(receipt, REPORT_RECEIPTS) for receipt in receipts]
    report.acceptance_note = sealer.open_text(report.acceptance_note, ACCEPTANCE_NOTE)


class CaseKeys:
    def __init__(self, provider: KeyProvider):
        self.provider = provider

    def new(self, request_id: str, at: datetime) -> tuple[Sealer, CaseKey]:
        """A new request's data key: the sealer for its fields, and the wrapped key to store
        (after the request's row, in the same transaction)."""
        data_key = AESGCM.generate_key(bit_length=256)
        key_id, wrapped = self.provider.wrap(request_id, data_key)
        return Sealer(request_id, data_key), CaseKey(request_id=request_id, master_key_id=key_id, wrapped_key=wrapped, created_at=at)

    async def sealer(self, session: AsyncSession, request_id: str) -> Sealer:
        row = await session.scalar(select(CaseKey).where(CaseKey.request_id == request_id))
        if row is None or row.wrapped_key is None:
            return Sealer(request_id, None, destroyed=row is not None)
        return Sealer(request_id, self.provider.unwrap(request_id, row.master_key_id, row.wrapped_key))

    async def details(self, session: AsyncSession, record: GrantRequestRecord) -> dict[str, Any] | str:
        """The request's defender, payee and narrative, opened (ERASED once its key is gone)."""
        return (await self.sealer(session, record.id)).open(SENSITIVE, record.sensitive)

    async def destroy(self, session: AsyncSession, request_id: str, at: datetime, why: str) -> bool:
        """Crypto-shredding: the wrapped data key is overwritten; True when there was one."""
        row = await session.scalar(select(CaseKey).where(CaseKey.request_id == request_id).with_for_update())
        if row is None or row.wrapped_key is None:
            return False
        row.wrapped_key, row.destroyed_at, row.destroyed_why = None, at, why
        return True
