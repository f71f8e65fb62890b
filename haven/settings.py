"""Every setting of the system, in one place, read from `HAVEN_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HAVEN_", env_file=".env", extra="ignore")

    # Embedded default: everything under ./var next to the code.
    var_dir: Path = REPO_ROOT / "var"
    database_url: str = ""

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = "grant-requests"
    temporal_ui_port: int = 8233

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_base_url: str = "http://127.0.0.1:8000"

    policy_file: Path = REPO_ROOT / "policies" / "default.yaml"
    denied_parties_file: Path = REPO_ROOT / "policies" / "denied_parties.yaml"

    # Authentication. Dev mode must be switched on explicitly: it allows HS256 with a shared secret.
    dev_mode: bool = False
    jwt_secret: str = ""
    jwt_audience: str = "haven-api"
    jwt_issuer: str = "haven-dev"
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["HS256"])

    # Keyed hash that lets us find prior grants to the same defender pseudonym
    # without storing the pseudonym itself.
    pseudonym_index_key: str = ""

    max_body_bytes: int = 64 * 1024

    @model_validator(mode="after")
    def _defaults_under_var_dir(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.var_dir / 'haven.db'}"
        return self

    @property
    def async_database_url(self) -> str:
        """The URL with an async driver, whatever the operator wrote."""
        url = self.database_url
        for plain, async_ in (
            ("postgresql://", "postgresql+psycopg://"),
            ("postgres://", "postgresql+psycopg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return async_ + url[len(plain):]
        return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
