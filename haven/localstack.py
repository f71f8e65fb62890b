"""Runs `haven run` as a child process on free ports with its own ./var: what the end-to-end
tests and the benchmarks drive, exactly as a new user's `make run` would run."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HAVEN = str(Path(sys.executable).parent / "haven")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalHaven:
    def __init__(self, var_dir: Path, command: list[str] | None = None, **env: str):
        """`command` runs in place of `haven` (a benchmark's variant of it)."""
        self.command = command or [HAVEN]
        self.var_dir = Path(var_dir)
        self.api_port = free_port()
        self.stripe_port = free_port()  # used when env has HAVEN_LOCAL_STRIPE=true
        self.env = {
            **os.environ,
            "HAVEN_DEV_MODE": "true",
            "HAVEN_VAR_DIR": str(self.var_dir),
            "HAVEN_API_PORT": str(self.api_port),
            "HAVEN_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
            "HAVEN_TEMPORAL_UI_PORT": str(free_port()),
            "HAVEN_LOCAL_STRIPE_PORT": str(self.stripe_port),
            **env,
        }
        if "HAVEN_DATABASE_URL" not in env:
            self.env.pop("HAVEN_DATABASE_URL", None)  # the embedded default: SQLite under var_dir
        if self.env.get("HAVEN_LOCAL_STRIPE", "").lower() in ("1", "true", "yes", "on"):
            for name in ("HAVEN_STRIPE_API_KEY", "HAVEN_STRIPE_API_BASE"):  # the shell's, not asked for here
                if name not in env:
                    self.env.pop(name, None)
        self.log = self.var_dir / "haven-run.log"
        self.process: subprocess.Popen | None = None
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        # The local Stripe server's address (its `/_control/...` API), with HAVEN_LOCAL_STRIPE=true.
        self.stripe_url = f"http://127.0.0.1:{self.env['HAVEN_LOCAL_STRIPE_PORT']}"

    def start(self, timeout: float = 90) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [*self.command, "run"], env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                # Never leave a half-started stack behind: Ctrl-C stops its Temporal server too.
                with contextlib.suppress(RuntimeError):
                    self.stop()
                raise RuntimeError(f"haven run did not come up:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Ctrl-C, as a person would."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise RuntimeError("haven run did not stop on Ctrl-C") from None

    def token(self, *args: str) -> dict[str, str]:
        out = subprocess.run([HAVEN, "token", *args], env=self.env, capture_output=True, text=True, check=True)
        return {"Authorization": f"Bearer {out.stdout.strip()}"}
