"""The production shape on one machine, for the fault matrix: the Temporal dev server keeping its
history in a file, PostgreSQL reached through a TCP proxy the harness can cut, the local Stripe
server (faults injected through its control API), and `haven api` and a worker as processes of
their own, each of which can be killed and started again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg

from haven import devserver
from haven.localstack import HAVEN, free_port
from haven.settings import Settings
from haven.stripe_local import LocalStripe

WEBHOOK_SECRET = "whsec_fault_matrix"
PAYEE_ACCOUNT = "acct_faultpayee"


class CuttableProxy:
    """A TCP proxy in a thread of its own; `cut()` drops every connection and refuses new ones
    until `restore()` (the database's network gone, as in a failover)."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._started.wait(5)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self._started.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open.is_set():
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()
            self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self._open.clear()

        def drop_all() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(drop_all)

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class FaultStack:
    def __init__(self, var_dir: Path, postgres_url: str):
        self.var_dir = Path(var_dir)
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.postgres_url = postgres_url  # postgresql://user@host:port/db of the server
        self.database = f"haven_faults_{uuid.uuid4().hex[:10]}"
        self.stripe = LocalStripe()
        self.proxy: CuttableProxy | None = None
        self.api_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.temporal_address = f"127.0.0.1:{free_port()}"
        self.temporal_ui_port = free_port()
        self.server: subprocess.Popen | None = None
        self.api: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.worker_armed = False
        self.env: dict[str, str] = {}

    # --- the parts ----------------------------------------------------------------------------

    def start(self) -> None:
        host_port = self.postgres_url.split("@", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        with psycopg.connect(self.postgres_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self.proxy = CuttableProxy(host, int(port))
        user = self.postgres_url.split("://", 1)[1].split("@", 1)[0]
        self.stripe.start()
        self.stripe.control.create_account(PAYEE_ACCOUNT)
        self.stripe.control.top_up(10**12, "eur")
        self.stripe.control.register_webhook(f"{self.base_url}/v1/webhooks/stripe", WEBHOOK_SECRET, mode="async")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HAVEN_")},
            "HAVEN_DEV_MODE": "true",
            "HAVEN_VAR_DIR": str(self.var_dir),
            "HAVEN_DATABASE_URL": f"postgresql+psycopg://{user}@127.0.0.1:{self.proxy.port}/{self.database}",
            "HAVEN_TEMPORAL_ADDRESS": self.temporal_address,
            "HAVEN_TEMPORAL_UI_PORT": str(self.temporal_ui_port),
            "HAVEN_API_PORT": str(self.api_port),
            "HAVEN_STRIPE_API_KEY": self.stripe.api_key,
            "HAVEN_STRIPE_API_BASE": self.stripe.url,
            "HAVEN_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "HAVEN_STRIPE_TIMEOUT_SECONDS": "2",
            "HAVEN_INTAKE_RATE_PER_MINUTE": "100000",
        }
        self._haven("migrate")
        self._haven("org", "ngo-1", "--name", "Partner NGO", "--trust", "standard")
        for subject, role in (("cw-1", "caseworker"), ("cw-2", "caseworker"), ("dir-1", "director"), ("fin-1", "finance")):
            self._haven("staff", subject, "--name", subject, "--email", f"{subject}@fund.example.org", "--role", role)
        self.start_server()
        self.start_api()
        self.start_worker()

    def _haven(self, *args: str) -> str:
        done = subprocess.run([HAVEN, *args], env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"haven {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def settings(self) -> Settings:
        return Settings(var_dir=self.var_dir, temporal_address=self.temporal_address,
                        temporal_ui_port=self.temporal_ui_port, dev_mode=True)  # fmt: skip

    def start_server(self) -> None:
        self.server = devserver.start_dev_server(self.settings())
        host, port = self.temporal_address.rsplit(":", 1)
        _wait_for(lambda: socket.create_connection((host, int(port)), timeout=0.5).close() is None, self.server, "Temporal")

    def kill_server(self) -> None:
        """SIGKILL: no clean shutdown; what it had written to its database file is all there is."""
        _kill(self.server)

    def start_api(self) -> None:
        self.api = self._spawn([HAVEN, "api"], "api.log")
        _wait_for(lambda: httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200, self.api, "the API")

    def start_worker(self, kill_at: str | None = None) -> None:
        """A worker; with `kill_at` (see tests/fault_worker.py) it kills itself at that boundary."""
        env = {"HAVEN_FAULT_KILL_AT": kill_at} if kill_at else {}
        self.worker = self._spawn([sys.executable, "-m", "tests.fault_worker"], "worker.log", **env)
        self.worker_armed = bool(kill_at)

    def worker_alive(self) -> bool:
        return self.worker is not None and self.worker.poll() is None

    def kill_worker(self) -> None:
        _kill(self.worker)

    def _spawn(self, command: list[str], log: str, **env: str) -> subprocess.Popen:
        out = open(self.var_dir / log, "ab")
        return subprocess.Popen(command, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=Path(__file__).resolve().parent.parent)  # fmt: skip

    def token(self, role: str, sub: str, org: str | None = None) -> dict[str, str]:
        from datetime import timedelta

        from api.auth import TokenVerifier
        from haven.grant_request import Role

        if not hasattr(self, "_verifier"):
            self._verifier = TokenVerifier(Settings(var_dir=self.var_dir, dev_mode=True))
        return {"Authorization": f"Bearer {self._verifier.issue(sub, [Role(role)], org, timedelta(hours=2))}"}

    def stop(self) -> None:
        for process in (self.worker, self.api):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(20)
                _kill(process)
        if self.server is not None:
            devserver.stop(self.server)
        self.stripe.stop()
        if self.proxy is not None:
            self.proxy.close()
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def __enter__(self) -> FaultStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _wait_for(ready, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError, OSError):
            if ready():
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up (exit {process.poll()})")
        time.sleep(0.1)
