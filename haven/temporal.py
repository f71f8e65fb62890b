"""How every process reaches Temporal: one data converter (pydantic JSON, then sealed by the
payload codec), one client factory, for the dev server, a self-hosted cluster or Temporal Cloud."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime
from temporalio.service import GrpcCompression, TLSConfig

from haven.keys import payload_keys
from haven.payload_codec import data_converter as sealed_converter
from haven.settings import Settings
from haven.tracing import tracing_interceptors


def data_converter(settings: Settings) -> DataConverter:
    return sealed_converter(payload_keys(settings))


def connection_options(settings: Settings) -> dict[str, Any]:
    """What `Client.connect` is given besides the address and the converter."""
    return {
        "namespace": settings.temporal_namespace,
        "api_key": settings.temporal_api_key or None,
        "tls": _tls(settings),
        "grpc_compression": GrpcCompression.GZIP if settings.temporal_grpc_compression else GrpcCompression.NONE,
    }


def _tls(settings: Settings) -> bool | TLSConfig:
    files = (settings.temporal_tls_server_ca_file, settings.temporal_tls_client_cert_file, settings.temporal_tls_client_key_file)
    if any(files) or settings.temporal_tls_server_name:
        ca, cert, key = (path.read_bytes() if path else None for path in files)
        return TLSConfig(
            server_root_ca_cert=ca,
            domain=settings.temporal_tls_server_name or None,
            client_cert=cert,
            client_private_key=key,
        )
    # An API key alone (Temporal Cloud) is TLS with the system's roots.
    return bool(settings.temporal_tls or settings.temporal_api_key)


async def connect(settings: Settings, runtime: Runtime | None = None, *, service_name: str = "haven") -> Client:
    """`runtime`: the process's Temporal runtime, when it exports metrics (haven.worker_metrics);
    `service_name` names the process in traces (haven.tracing)."""
    return await Client.connect(
        settings.temporal_address, data_converter=data_converter(settings), runtime=runtime,
        interceptors=tracing_interceptors(settings, service_name), **connection_options(settings),
    )  # fmt: skip
