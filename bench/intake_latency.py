"""Time from POST /v1/grant-requests to the request showing "awaiting_decision", on the embedded
default (`haven run`: Temporal dev server, SQLite, worker and API), one request at a time.

    .venv/bin/python -m bench.intake_latency [--requests 100]
"""

from __future__ import annotations

import argparse
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


def measure(haven: LocalHaven, count: int, warmup: int) -> tuple[list[float], list[float]]:
    intermediary = haven.token("--role", "intermediary", "--sub", "bench", "--org", "ngo-1")
    caseworker = haven.token("--role", "caseworker", "--sub", "bench-cw")
    acknowledged, awaiting = [], []
    with httpx.Client(base_url=haven.base_url, timeout=10) as submitter, httpx.Client(base_url=haven.base_url, timeout=10) as reader:
        for n in range(warmup + count):
            body = {**REQUEST, "defender": {"pseudonym": f"bench-{n}"}}
            started = time.perf_counter()
            response = submitter.post("/v1/grant-requests", json=body, headers={**intermediary, "Idempotency-Key": f"bench-{n}-{started}"})
            acked = time.perf_counter()
            response.raise_for_status()
            url = f"/v1/grant-requests/{response.json()['id']}"
            while reader.get(url, headers=caseworker).json()["status"] != "awaiting_decision":
                if time.perf_counter() - started > 30:
                    raise RuntimeError(f"{url} did not reach awaiting_decision in 30 s")
                time.sleep(POLL_EVERY)
            done = time.perf_counter()
            if n >= warmup:
                acknowledged.append((acked - started) * 1000)
                awaiting.append((done - started) * 1000)
    return acknowledged, awaiting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="haven-bench-") as tmp:
        # Latency is measured one request after another, well above an organisation's intake rate.
        haven = LocalHaven(Path(tmp) / "var", HAVEN_INTAKE_RATE_PER_MINUTE="100000")
        haven.start()
        try:
            acknowledged, awaiting = measure(haven, args.requests, args.warmup)
        finally:
            haven.stop()
    report(
        "intake_latency",
        {"POST acknowledged (202)": summarise(acknowledged), "POST -> awaiting_decision": summarise(awaiting)},
        {"setup": "haven run (Temporal dev server + SQLite), sequential requests, status polled every 2 ms",
         "requests": args.requests, "warmup": args.warmup},
    )  # fmt: skip


if __name__ == "__main__":
    main()
