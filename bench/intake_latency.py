"""Time from POST /v1/grant-requests to the request showing "awaiting_decision", on the embedded
default (`haven run`: Temporal dev server, SQLite, worker and API), one request at a time.

    .venv/bin/python -m bench.intake_latency [--requests 100] [--encrypted-only]

With encryption (as haven always runs) and without it (bench/unencrypted_haven.py), in one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.report import report, summarise
from haven.localstack import LocalHaven

REQUEST = {
    "category": "legal_fees",
    "urgency": "critical",
    "country": "KE",
    "amount": {"minor_units": 150_000, "currency": "EUR"},
    "threat_level": "high",
    "threat_summary": "Charged after covering a protest.",
    "purpose": "Defence lawyer for the first hearing.",
    "defender": {"pseudonym": "bench-defender"},
    "payee": {"name": "Example Advocates", "country": "KE", "account": "KE00 0000"},
}
POLL_EVERY = 0.002


class Stack:
    """One `haven run` and what a request to it needs: tokens and two HTTP clients."""

    def __init__(self, haven: LocalHaven):
        self.haven = haven
        self.intermediary = haven.token("--role", "intermediary", "--sub", "bench", "--org", "ngo-1")
        self.caseworker = haven.token("--role", "caseworker", "--sub", "cw-1")
        self.submitter = httpx.Client(base_url=haven.base_url, timeout=10)
        self.reader = httpx.Client(base_url=haven.base_url, timeout=10)
        self.acknowledged: list[float] = []
        self.awaiting: list[float] = []

    def one(self, n: int, measured: bool) -> None:
        body = {**REQUEST, "defender": {"pseudonym": f"bench-{n}"}}
        started = time.perf_counter()
        headers = {**self.intermediary, "Idempotency-Key": f"bench-{n}-{started}"}
        response = self.submitter.post("/v1/grant-requests", json=body, headers=headers)
        acked = time.perf_counter()
        response.raise_for_status()
        url = f"/v1/grant-requests/{response.json()['id']}"
        while self.reader.get(url, headers=self.caseworker).json()["status"] != "awaiting_decision":
            if time.perf_counter() - started > 30:
                raise RuntimeError(f"{url} did not reach awaiting_decision in 30 s")
            time.sleep(POLL_EVERY)
        done = time.perf_counter()
        if measured:
            self.acknowledged.append((acked - started) * 1000)
            self.awaiting.append((done - started) * 1000)

    def close(self) -> None:
        self.submitter.close()
        self.reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--encrypted-only", action="store_true", help="leave out the run without encryption")
    args = parser.parse_args()
    variants = {"encrypted": None}
    if not args.encrypted_only:
        variants["unencrypted"] = [sys.executable, "-m", "bench.unencrypted_haven"]
    with tempfile.TemporaryDirectory(prefix="haven-bench-") as tmp:
        # Latency is measured one request after another, well above an organisation's intake rate.
        havens = {
            name: LocalHaven(Path(tmp) / name, command, HAVEN_INTAKE_RATE_PER_MINUTE="100000")
            for name, command in variants.items()
        }
        stacks: dict[str, Stack] = {}
        try:
            for name, haven in havens.items():
                haven.start()
                stacks[name] = Stack(haven)
            # Both stacks run at once and take turns, request by request: a slower minute of the
            # machine falls on both alike.
            for n in range(args.warmup + args.requests):
                for stack in stacks.values():
                    stack.one(n, measured=n >= args.warmup)
        finally:
            for stack in stacks.values():
                stack.close()
            for haven in havens.values():
                haven.stop()
        # What was compared: the narrative is sealed in one database and in the clear in the other.
        for name, haven in havens.items():
            stored = b"".join(p.read_bytes() for p in haven.var_dir.glob("haven.db*"))
            if (REQUEST["threat_summary"].encode() in stored) != (name == "unencrypted"):
                raise RuntimeError(f"the {name} run did not store what it should: the comparison is void")
    rows = {}
    for name, stack in stacks.items():
        rows[f"{name}: POST acknowledged (202)"] = summarise(stack.acknowledged)
        rows[f"{name}: POST -> awaiting_decision"] = summarise(stack.awaiting)
    report(
        "intake_latency",
        rows,
        {"setup": "haven run (Temporal dev server + SQLite), sequential requests, status polled every 2 ms; "
                  "unencrypted = bench/unencrypted_haven.py (no payload codec, no field sealing), "
                  "run at the same time, requests alternating",
         "requests": args.requests, "warmup": args.warmup},
    )  # fmt: skip


if __name__ == "__main__":
    main()
