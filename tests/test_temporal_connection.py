"""How haven reaches a Temporal cluster beyond the dev server: the settings for an API key (Temporal
Cloud), TLS and a client certificate (mTLS), checked when the settings are read; and a real mTLS
connection, through a TLS front (as a self-hosted cluster's load balancer is) to a dev server."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.service import GrpcCompression, TLSConfig
from temporalio.testing import WorkflowEnvironment

from haven.localstack import free_port
from haven.temporal import connect, connection_options
from haven.worker import build_worker
from tests.conftest import DATA_CONVERTER, make_settings, venv_binary
from tests.tls_certs import CertificateAuthority


def settings(tmp_path: Path, **overrides):
    return make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'haven.db'}", **overrides)


def test_the_dev_server_needs_no_tls_and_sealed_payloads_are_not_compressed(tmp_path):
    options = connection_options(settings(tmp_path))
    assert options == {"namespace": "default", "api_key": None, "tls": False, "grpc_compression": GrpcCompression.NONE}
    assert connection_options(settings(tmp_path, temporal_grpc_compression=True))["grpc_compression"] is GrpcCompression.GZIP


def test_an_api_key_connects_over_tls_with_the_system_roots(tmp_path):
    options = connection_options(settings(tmp_path, temporal_api_key="cloud-key", temporal_namespace="fund.a1b2c"))
    assert options["api_key"] == "cloud-key" and options["namespace"] == "fund.a1b2c"
    assert options["tls"] is True


def test_a_client_certificate_is_read_with_its_key_and_the_servers_ca(tmp_path):
    ca = CertificateAuthority(tmp_path)
    client = ca.issue("worker", server=False)
    tls = connection_options(settings(
        tmp_path, temporal_tls_server_ca_file=ca.issued.cert, temporal_tls_client_cert_file=client.cert,
        temporal_tls_client_key_file=client.key, temporal_tls_server_name="temporal.test",
    ))["tls"]  # fmt: skip
    assert isinstance(tls, TLSConfig)
    assert tls.client_cert == client.cert.read_bytes() and tls.client_private_key == client.key.read_bytes()
    assert tls.server_root_ca_cert == ca.issued.cert.read_bytes() and tls.domain == "temporal.test"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"temporal_tls_client_cert_file": "CERT"}, "HAVEN_TEMPORAL_TLS_CLIENT_KEY_FILE go together"),
        ({"temporal_tls_client_key_file": "KEY"}, "HAVEN_TEMPORAL_TLS_CLIENT_KEY_FILE go together"),
        ({"temporal_tls": False, "temporal_api_key": "cloud-key"}, "they need TLS"),
        ({"temporal_tls_server_ca_file": "missing.pem"}, "temporal_tls_server_ca_file"),
    ],
)
def test_settings_that_cannot_connect_are_refused_when_read(tmp_path, overrides, message):
    ca = CertificateAuthority(tmp_path)
    client = ca.issue("worker", server=False)
    files = {"CERT": client.cert, "KEY": client.key, "missing.pem": tmp_path / "missing.pem"}
    with pytest.raises(ValidationError, match=message):
        settings(tmp_path, **{k: files.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()})


async def test_the_worker_takes_its_cache_and_concurrency_from_the_settings(tmp_path, time_skipping_env, sqlite_db):
    worker = build_worker(time_skipping_env.client, sqlite_db, settings(tmp_path, worker_max_cached_workflows=7, worker_max_concurrent_activities=3))
    assert worker.config()["max_cached_workflows"] == 7
    assert worker.config()["max_concurrent_activities"] == 3


class TLSFront:
    """Terminates TLS, requiring a client certificate signed by the CA, and passes the bytes on to
    `target` (HTTP/2, so gRPC's ALPN is answered)."""

    def __init__(self, target_port: int, server_cert, ca_cert: Path):
        self.target_port, self.port = target_port, free_port()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_cert))
        self.context.load_cert_chain(server_cert.cert, server_cert.key)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols(["h2"])

    async def __aenter__(self) -> TLSFront:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port, ssl=self.context)
        return self

    async def __aexit__(self, *_) -> None:
        self.server.close()

    async def _pipe(self, client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def copy(reader, writer) -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(copy(client_reader, server_writer), copy(server_reader, client_writer))


@pytest.fixture
async def dev_server():
    port = free_port()
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=venv_binary("temporal"), port=port, data_converter=DATA_CONVERTER, ui=False
    ) as env:
        yield port, env


async def test_haven_connects_through_mtls_and_is_refused_without_its_certificate(tmp_path, dev_server):
    port, _ = dev_server
    ca = CertificateAuthority(tmp_path)
    server_cert, client_cert = ca.issue("temporal-frontend", server=True), ca.issue("haven-worker", server=False)
    async with TLSFront(port, server_cert, ca.issued.cert) as front:
        mtls = settings(
            tmp_path, temporal_address=f"127.0.0.1:{front.port}", temporal_tls_server_ca_file=ca.issued.cert,
            temporal_tls_server_name="temporal.test", temporal_tls_client_cert_file=client_cert.cert,
            temporal_tls_client_key_file=client_cert.key,
        )  # fmt: skip
        client = await connect(mtls)
        assert (await client.service_client.check_health()) is True

        # The same front, without a client certificate: the handshake is refused.
        without_cert = settings(tmp_path, temporal_address=f"127.0.0.1:{front.port}", temporal_tls_server_ca_file=ca.issued.cert,
                                temporal_tls_server_name="temporal.test")  # fmt: skip
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(connect(without_cert), 20)
