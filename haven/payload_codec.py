"""Encryption of everything haven sends to Temporal: workflow inputs, Update arguments and results,
activity inputs and results, queries, signals. Temporal's history (and its database, and its
backups) holds only ciphertext; whoever runs the Temporal server cannot read a case.

Each payload is sealed whole with AES-256-GCM under the current key; its metadata names the key
(`encryption-key-id`), which is also bound into the seal as associated data, so a payload cannot
be passed off as one sealed under another key. Several keys may be configured: the first seals,
all of them open, so a key is rotated by putting a new one first and keeping the old ones for as
long as histories written under them exist (the namespace's retention, or for ever)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, PayloadCodec

from haven.keyring import KeyRing, KeyRingError

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: KeyRing):
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
            self.keys.key(key_id)  # raises KeyRingError naming the missing key
            nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
            try:
                plain = self._ciphers[key_id].decrypt(nonce, sealed, key_id.encode())
            except InvalidTag:
                raise KeyRingError(f"a payload sealed under {key_id!r} does not open: altered, or another key") from None
            opened.append(Payload.FromString(plain))
        return opened


def data_converter(keys: KeyRing) -> DataConverter:
    """Pydantic models as JSON (temporalio's contrib converter), then sealed."""
    from temporalio.contrib.pydantic import pydantic_data_converter

    return dataclasses.replace(pydantic_data_converter, payload_codec=EncryptionCodec(keys))
