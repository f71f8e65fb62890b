"""Secrets the system needs. In dev mode they are generated once under ./var; in production they
must be configured (a missing secret stops the process rather than weakening it)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from haven.settings import Settings


class MissingSecret(RuntimeError):
    pass


def _dev_secret(settings: Settings, name: str, generate: Callable[[], str] = lambda: secrets.token_hex(32)) -> str:
    path = Path(settings.var_dir) / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        path.write_text(generate())
        path.chmod(0o600)
    return path.read_text().strip()


def _secret(settings: Settings, value: str, name: str, env: str, generate: Callable[[], str] | None = None) -> str:
    if value:
        return value
    if settings.dev_mode:
        return _dev_secret(settings, name, *([generate] if generate else []))
    raise MissingSecret(f"{env} is not set (it is generated automatically only with HAVEN_DEV_MODE=true)")


def jwt_secret(settings: Settings) -> str:
    return _secret(settings, settings.jwt_secret, "jwt-hs256", "HAVEN_JWT_SECRET")


def pseudonym_index_key(settings: Settings) -> bytes:
    return _secret(settings, settings.pseudonym_index_key, "pseudonym-index", "HAVEN_PSEUDONYM_INDEX_KEY").encode()


def payload_keys(settings: Settings):
    """The keys that seal Temporal payloads (haven.payload_codec), current first."""
    from haven.keyring import KeyRing

    text = _secret(settings, settings.payload_keys, "payload-keys", "HAVEN_PAYLOAD_KEYS", lambda: KeyRing.generate("dev-1"))
    return KeyRing.parse(text, "HAVEN_PAYLOAD_KEYS")


def master_keys(settings: Settings):
    """The master keys that wrap each request's data key (haven.case_keys), current first."""
    from haven.keyring import KeyRing

    text = _secret(settings, settings.master_keys, "master-keys", "HAVEN_MASTER_KEYS", lambda: KeyRing.generate("dev-1"))
    return KeyRing.parse(text, "HAVEN_MASTER_KEYS")


def case_keys(settings: Settings):
    """Each request's data key, wrapped by the master keys held in the settings."""
    from haven.case_keys import CaseKeys, MasterKeys

    return CaseKeys(MasterKeys(master_keys(settings)))
