"""Encryption of everything haven sends to Temporal: workflow inputs, Update arguments and results,
activity inputs and results, queries, signals. Temporal's history (and its database, and its
backups) holds only ciphertext; whoever runs the Temporal server cannot read a case.

Each payload is sealed whole with AES-256-GCM under the current key; its metadata names the key
(`encryption-key-id`), which is also bound into the seal as associated data, so a payload cannot
be passed off as one sealed under another key. Several keys may be configured: the first seals,
all of them open, so a key is rotated by putting a new one first and keeping the old ones for as
long as histories written under them exist (the namespace's retention, or for ever)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class PayloadKeyError(ValueError):
    """The configured payload keys are unusable, or a payload names a key that is not configured."""


@dataclass(frozen=True)
class PayloadKeys:
    """The keys, current first. Written as `id:base64key,id:base64key` (HAVEN_PAYLOAD_KEYS)."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise PayloadKeyError("no payload key is configured")
        ids = [key_id for key_id, _ in self.keys]
        if len(set(ids)) != len(ids):
            raise PayloadKeyError("payload key ids must be unique")
        for key_id, key in self.keys:
            if not key_id or not key_id.isascii() or not key_id.replace("-", "").replace("_", "").isalnum():
                raise PayloadKeyError(f"payload key id {key_id!r}: letters, digits, '-' and '_' only")
            if len(key) != 32:
                raise PayloadKeyError(f"payload key {key_id}: {len(key)} bytes; AES-256 needs 32")

    @classmethod
    def parse(cls, text: str) -> "PayloadKeys":
        keys = []
        for part in (p.strip() for p in text.split(",")):
            key_id, sep, encoded = part.partition(":")
            if not sep:
                raise PayloadKeyError("write payload keys as id:base64key, the current one first, separated by commas")
            try:
                keys.append((key_id.strip(), base64.b64decode(encoded.strip(), validate=True)))
            except binascii.Error:
                raise PayloadKeyError(f"payload key {key_id.strip()}: not base64") from None
        return cls(tuple(keys))

    @staticmethod
    def generate(key_id: str) -> str:
        """A new key in the settings' form: `haven keys new-payload-key` prints one."""
        return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"

    @property
    def current(self) -> tuple[str, bytes]:
        return self.keys[0]

    def key(self, key_id: str) -> bytes:
        for known, key in self.keys:
            if known == key_id:
                return key
        raise PayloadKeyError(f"payload sealed under key {key_id!r}, which is not configured (HAVEN_PAYLOAD_KEYS)")


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: PayloadKeys):
        self.keys = keys
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.keys}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        key_id, _ = self.keys.current
        cipher = self._ciphers[key_id]
        sealed = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            data = nonce + cipher.encrypt(nonce, payload.SerializeToString(), key_id.encode())
            sealed.append(Payload(metadata={"encoding": ENCODING, KEY_ID: key_id.encode()}, data=data))
        return sealed

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        opened = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                opened.append(payload)  # written before encryption was switched on
                continue
            key_id = payload.metadata.get(KEY_ID, b"").decode()
            self.keys.key(key_id)  # names the missing key
            nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
            try:
                plain = self._ciphers[key_id].decrypt(nonce, sealed, key_id.encode())
            except InvalidTag:
                raise PayloadKeyError(f"a payload sealed under {key_id!r} does not open: altered, or another key") from None
            opened.append(Payload.FromString(plain))
        return opened


def data_converter(keys: PayloadKeys) -> DataConverter:
    """Pydantic models as JSON (temporalio's contrib converter), then sealed."""
    from temporalio.contrib.pydantic import pydantic_data_converter

    return dataclasses.replace(pydantic_data_converter, payload_codec=EncryptionCodec(keys))
