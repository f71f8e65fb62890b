"""Every setting of the system, in one place, read from `HAVEN_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, FilePath, model_validator

from haven.grant_request import PaymentRail
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
    # A cluster beyond the dev server (haven.temporal): Temporal Cloud takes an API key, or a
    # client certificate (mTLS) with its key. TLS is on when any of these is set, or when asked;
    # the server's certificate is checked against the system's roots unless a CA file is given.
    temporal_api_key: str = ""
    temporal_tls: bool | None = None
    temporal_tls_server_ca_file: FilePath | None = None
    temporal_tls_server_name: str = ""  # when the certificate does not name the address's host
    temporal_tls_client_cert_file: FilePath | None = None
    temporal_tls_client_key_file: FilePath | None = None
    # Payloads are sealed (haven.payload_codec) and do not compress: gzip would spend CPU on both
    # sides for nothing. On for a slow link, where the rest of each message may be worth it.
    temporal_grpc_compression: bool = False
    # The worker keeps this many workflows in memory between their steps; one that left the cache
    # is replayed from its history when it next has work (slower, never wrong).
    worker_max_cached_workflows: int = Field(default=1000, ge=0)
    # How much a worker process takes on at once. Its workflow steps and database activities share
    # one CPU (one Python process): taking more than it can run makes every one of them late, until
    # heartbeats and timeouts are missed and work is retried. What it does not take waits in
    # Temporal's task queue, for this worker or another one (scale with more workers).
    worker_max_concurrent_workflow_tasks: int = Field(default=10, ge=2)
    worker_max_concurrent_local_activities: int = Field(default=20, ge=1)
    # Regular activities mostly wait on the network (a payment rail's call).
    worker_max_concurrent_activities: int = Field(default=50, ge=1)
    # host:port where a worker serves its Prometheus metrics (Temporal's and the fund's timings,
    # haven.worker_metrics); empty: none. In `haven run` the one process serves them there.
    worker_metrics_address: str = ""
    # OpenTelemetry traces of Temporal work (haven.tracing), sent over OTLP/HTTP to this URL
    # (e.g. http://collector:4318/v1/traces); empty: no tracing.
    tracing_otlp_endpoint: str = ""

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_base_url: str = "http://127.0.0.1:8000"
    # The interactive docs (/docs, /redoc) and the OpenAPI document (/openapi.json), served without a
    # token. Unset: on in dev mode, off otherwise (they map every operation for whoever asks).
    api_docs: bool | None = None
    # A client has this long to send a request's headers (from connecting, or from the previous
    # answer) and then its body; past either it is answered 408 and disconnected (api.server).
    api_header_timeout_seconds: float = Field(default=10.0, gt=0)
    api_body_timeout_seconds: float = Field(default=30.0, gt=0)

    policy_file: Path = REPO_ROOT / "policies" / "default.yaml"
    denied_parties_file: Path = REPO_ROOT / "policies" / "denied_parties.yaml"

    # Authentication. Production tokens come from an OIDC provider and are checked against its
    # JWKS (a file or an https URL). Dev mode must be switched on explicitly: it also accepts
    # HS256 tokens signed with a local shared secret (`haven token`).
    dev_mode: bool = False
    jwt_secret: str = ""
    jwt_audience: str = "haven-api"
    jwt_issuer: str = "haven-dev"
    jwks_url: str = ""
    jwks_file: Path | None = None
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    jwt_leeway_seconds: int = 30
    # Where the provider puts roles and the organisation; dotted paths (Keycloak: realm_access.roles).
    jwt_roles_claim: str = "roles"
    jwt_organisation_claim: str = "org"
    # Keys are cached; an unknown `kid` triggers a refresh, at most this often.
    jwks_cache_seconds: int = 3600
    jwks_min_refresh_seconds: int = 30

    # Stripe (payment rail "stripe"). The API base is empty for Stripe itself; development and the
    # tests point it at the local Stripe-compatible server.
    stripe_api_key: str = ""
    stripe_api_base: str = ""
    stripe_webhook_secret: str = ""
    stripe_timeout_seconds: float = 20.0
    # Dev mode and `haven run` only: start the local Stripe-compatible server (haven.stripe_local)
    # on this loopback port and point the three settings above at it. Never with a real key.
    local_stripe: bool = False
    local_stripe_port: int = 12111

    # Intake: each organisation may submit this many requests per minute (bursts up to the same).
    intake_rate_per_minute: int = 30

    # Notifications. E-mail goes to rostered staff and organisation inboxes over SMTP; webhooks
    # are signed with the organisation's secret (HMAC-SHA256). No SMTP host: e-mail is not sent.
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_sender: str = "haven@localhost"
    notification_poll_seconds: float = 2.0
    notification_max_attempts: int = 8
    notification_retry_base_seconds: float = 30.0
    webhook_timeout_seconds: float = 10.0

    # Keyed hash that lets us find prior grants to the same defender pseudonym
    # without storing the pseudonym itself.
    pseudonym_index_key: str = ""
    # Keys that seal every payload sent to Temporal (haven.payload_codec): `id:base64key,...`,
    # the current one first; older ones stay for the histories written under them.
    payload_keys: str = ""
    # Master keys that wrap each request's data key (haven.case_keys); the same `id:base64key,...`.
    master_keys: str = ""
    # Browser origins (Temporal's web UI) allowed to call the codec endpoint, /v1/codec.
    codec_cors_origins: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8233", "http://localhost:8233"])
    # Dev mode only: Temporal's dev UI (no sign-in) calls /v1/codec/ui/<this>/decode without a token.
    # `haven run` makes a new one each run; set it for a UI of your own (the compose file's).
    codec_ui_secret: str = Field(default="", repr=False)

    # The largest body any fixed-shape operation admits (intake: two 4,000-character texts, each
    # character up to 12 bytes escaped) fits under it: tests/test_openapi_conformance.py.
    max_body_bytes: int = 128 * 1024

    @model_validator(mode="after")
    def _defaults_under_var_dir(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.var_dir / 'haven.db'}"
        return self

    @model_validator(mode="after")
    def _codec_ui_secret_unguessable(self) -> "Settings":
        secret = self.codec_ui_secret
        if secret and not (len(secret) >= 32 and secret.isascii() and secret.replace("-", "").replace("_", "").isalnum()):
            raise ValueError("HAVEN_CODEC_UI_SECRET must be at least 32 letters, digits, '-' or '_' (openssl rand -hex 32)")
        return self

    @model_validator(mode="after")
    def _temporal_tls_complete(self) -> "Settings":
        if bool(self.temporal_tls_client_cert_file) != bool(self.temporal_tls_client_key_file):
            raise ValueError("HAVEN_TEMPORAL_TLS_CLIENT_CERT_FILE and HAVEN_TEMPORAL_TLS_CLIENT_KEY_FILE go together: set both or neither")
        if self.temporal_tls is False and self.temporal_tls_options_set:
            raise ValueError("HAVEN_TEMPORAL_TLS=false, but an API key or a TLS file is set: they need TLS (unset it)")
        return self

    @property
    def temporal_tls_options_set(self) -> bool:
        return bool(self.temporal_api_key or self.temporal_tls_server_ca_file or self.temporal_tls_server_name
                    or self.temporal_tls_client_cert_file)  # fmt: skip

    @property
    def serves_api_docs(self) -> bool:
        return self.dev_mode if self.api_docs is None else self.api_docs

    @property
    def payment_rails(self) -> frozenset[PaymentRail]:
        """The rails this deployment can pay through: manual always, Stripe once it has a key."""
        return frozenset({PaymentRail.MANUAL, PaymentRail.STRIPE} if self.stripe_api_key else {PaymentRail.MANUAL})

    def local_stripe_problem(self, command: str = "run") -> str | None:
        """Why HAVEN_LOCAL_STRIPE cannot be honoured here (None: it can, or it is off)."""
        if not self.local_stripe:
            return None
        if command != "run":
            return (f"HAVEN_LOCAL_STRIPE=true only works with `haven run` in dev mode; `haven {command}` "
                    "pays through the Stripe that HAVEN_STRIPE_API_KEY and HAVEN_STRIPE_API_BASE point at")
        if not self.dev_mode:
            return "HAVEN_LOCAL_STRIPE=true is for development only: it needs HAVEN_DEV_MODE=true"
        if self.stripe_api_key or self.stripe_api_base:
            return ("HAVEN_LOCAL_STRIPE=true starts a local Stripe server and points haven at it, so it cannot be "
                    "combined with HAVEN_STRIPE_API_KEY or HAVEN_STRIPE_API_BASE (a Stripe key is never sent to "
                    "the local server): unset them, or set HAVEN_LOCAL_STRIPE=false (make run HAVEN_LOCAL_STRIPE=false)")
        return None

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
