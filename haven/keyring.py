"""A ring of 256-bit keys, the current one first: how haven holds every key it encrypts with (the
Temporal payload keys, the master keys that wrap each request's data key). The newest seals,
every listed key opens, so a key is rotated by putting a new one first and keeping the old ones
for as long as anything sealed under them is kept.

Written in the settings as `id:base64key,id:base64key`."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class KeyRingError(ValueError):
    """The keys are unusable, or something names a key that is not on the ring."""


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[tuple[str, bytes], ...]
    setting: str = "the key ring"  # the setting it came from, for the messages

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyRingError(f"{self.setting}: no key is configured")
        ids = [key_id for key_id, _ in self.keys]
        if len(set(ids)) != len(ids):
            raise KeyRingError(f"{self.setting}: key ids must be unique")
        for key_id, key in self.keys:
            if not key_id or not key_id.isascii() or not key_id.replace("-", "").replace("_", "").isalnum():
                raise KeyRingError(f"{self.setting}: key id {key_id!r}: letters, digits, '-' and '_' only")
            if len(key) != 32:
                raise KeyRingError(f"{self.setting}: key {key_id}: {len(key)} bytes; AES-256 needs 32")

    @classmethod
    def parse(cls, text: str, setting: str = "the key ring") -> "KeyRing":
        keys = []
        for part in (p.strip() for p in text.split(",")):
            key_id, sep, encoded = part.partition(":")
            if not sep:
                raise KeyRingError(f"{setting}: write keys as id:base64key, the current one first, separated by commas")
            try:
                keys.append((key_id.strip(), base64.b64decode(encoded.strip(), validate=True)))
            except binascii.Error:
                raise KeyRingError(f"{setting}: key {key_id.strip()}: not base64") from None
        return cls(tuple(keys), setting)

    @staticmethod
    def generate(key_id: str) -> str:
        """A new key in the settings' form (`haven keys new --id …` prints one)."""
        return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"

    @property
    def current(self) -> tuple[str, bytes]:
        return self.keys[0]

    def key(self, key_id: str) -> bytes:
        for known, key in self.keys:
            if known == key_id:
                return key
        raise KeyRingError(f"sealed under key {key_id!r}, which is not configured ({self.setting})")
