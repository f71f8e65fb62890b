"""Exporting a year of 1,000,000 ledger rows: the time and the peak memory of `haven export ledger`,
on SQLite (the embedded default) and on PostgreSQL.

The ledger is filled first, fast and outside the measurement (the sqlite3 driver's executemany,
PostgreSQL's COPY): 250,000 grant requests of a year, each with a reservation, two tranche
payments and a small refund, in five currencies, plus the year's allocations. Then the export runs
exactly as an operator runs it, `haven export ledger --from 2025-01-01 --to 2026-01-01 --out DIR`,
in a fresh process: its wall time includes starting Python, and its peak resident memory
(VmHWM of that process alone) counts nothing of the filling. An export of an
empty day gives the baseline of the same process without rows. The file is checked against its
manifest (rows, SHA-256) after the clock stops.

    .venv/bin/python -m bench.export_ledger --rows 1000000 --db sqlite|postgresql [--format csv jsonl]

PostgreSQL: a throw-away database on HAVEN_BENCH_POSTGRES_URL (default
postgresql://root@127.0.0.1:5432/test: the server, its database is not touched). Results are
merged into bench/results/export_ledger.json, one entry per database and format."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg

from haven import ledger
from haven.db import Database, utcnow
from haven.db.migrate import upgrade_async
from haven.db.models import GrantRequestRecord, Organisation
from haven.policy_versions import record_policy_version
from haven.money import Money
from haven.settings import REPO_ROOT
from policies import load_policy

RESULTS = Path(__file__).parent / "results" / "export_ledger.json"
POSTGRES_SERVER = os.environ.get("HAVEN_BENCH_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
YEAR = (date(2025, 1, 1), date(2026, 1, 1))
TARGET = {"seconds": 20.0, "peak_mb": 200.0}
CATEGORIES = ["legal_fees", "secure_communications", "safe_housing"]
# (currency, minor units asked, rate to EUR) — the default policy's rates, UGX without minor unit.
CURRENCIES = [("EUR", 150_000, "1"), ("USD", 200_000, "0.92"), ("GBP", 90_000, "1.17"), ("KES", 9_000_000, "0.0071"),
              ("UGX", 4_000_000, "0.00025")]  # fmt: skip
COUNTRIES = ["KE", "UG", "CO", "BY", "PH", "GT", "ZW", "MM"]
LEDGER_COLUMNS = ["entry_key", "allocation_id", "category", "kind", "request_id", "tranche", "country", "defender_ref", "amount_base_minor",
                  "amount_minor", "currency", "rate_to_base", "actor", "occurred_at", "recorded_at"]  # fmt: skip
REQUEST_DEFAULTS = {"submitted_by": "int-bench", "urgency": "high", "threat_level": "moderate", "tranche_count": 2,
                    "rail": "manual", "status": "closed", "status_seq": 12, "escalated": False, "follow_up_overdue": False}  # fmt: skip


def _base(minor: int, rate: str, currency: str) -> int:
    exponent = 0 if currency == "UGX" else 2
    return int(round(minor * float(rate) * 10 ** (2 - exponent)))  # figures for a benchmark, not money


def generate(rows: int, policy_hash: str, stamp):
    """The requests and the ledger rows (in time order), as plain tuples; `stamp` writes a time as
    the database driver wants it."""
    per_request = 4
    count = max(1, rows // per_request)
    start = datetime.combine(YEAR[0], datetime.min.time(), timezone.utc)
    step = timedelta(days=360) / count  # the last refund (50 h later) still inside the year
    requests, entries = [], []
    for i in range(count):
        request_id = f"gr_bench{i:08d}"
        category, country = CATEGORIES[i % 3], COUNTRIES[i % len(COUNTRIES)]
        currency, amount, rate = CURRENCIES[i % len(CURRENCIES)]
        base = _base(amount, rate, currency)
        at = start + step * i
        defender_ref = hashlib.sha256(request_id.encode()).hexdigest()
        requests.append({
            **REQUEST_DEFAULTS, "id": request_id, "organisation_id": "ngo-bench", "idempotency_key": request_id,
            "body_hash": "0" * 64, "category": category, "country": country, "amount_minor": amount, "currency": currency,
            "amount_base_minor": base, "policy_hash": policy_hash, "defender_ref": defender_ref,
            "sensitive": json.dumps({"defender": {"pseudonym": f"bench-{i}"}}), "granted_minor": amount,
            "granted_base_minor": base, "created_at": stamp(at), "updated_at": stamp(at),
        })  # fmt: skip
        allocation = f"{category}:{YEAR[0].isoformat()}"
        half, half_base = amount // 2, base // 2
        moves = [
            ("reservation", None, base, amount, at),
            ("payment", 1, half_base, half, at + timedelta(hours=2)),
            ("payment", 2, base - half_base, amount - half, at + timedelta(hours=30)),
            ("refund", 2, base // 100, amount // 100, at + timedelta(hours=50)),
        ]
        for kind, tranche, move_base, move, when in moves:
            key = f"{request_id}:{kind}:{tranche or 0}"
            entries.append((key, allocation, category, kind, request_id, tranche, country, defender_ref, move_base, move, currency, rate,
                            "fin-bench", stamp(when), stamp(when + timedelta(seconds=1))))  # fmt: skip
    return requests, entries[:rows]


async def prepare(url: str) -> tuple[str, Database]:
    """Schema, policy, an organisation and the year's allocations, through haven's own code."""
    await upgrade_async(url)
    db = Database(url)
    policy = load_policy(REPO_ROOT / "policies" / "default.yaml")
    await record_policy_version(db, policy)
    async with db.transaction() as session:
        session.add(Organisation(id="ngo-bench", name="bench", trust_level="standard", active=True, created_at=utcnow()))
        for category in CATEGORIES:
            await ledger.set_allocation(session, category, YEAR[0], YEAR[1] - timedelta(days=1),
                                        Money(minor_units=10**13, currency="EUR"), "fin-bench")  # fmt: skip
    return policy.hash, db


def _check_columns(requests: list[dict]) -> list[str]:
    columns = list(requests[0])
    missing = [c.name for c in GrantRequestRecord.__table__.columns if not c.nullable and c.name not in requests[0]]
    assert not missing, f"the benchmark's requests lack {missing}"
    return columns


def fill_sqlite(path: Path, requests: list[dict], entries: list[tuple]) -> None:
    columns = _check_columns(requests)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            f"INSERT INTO grant_requests ({', '.join(columns)}) VALUES ({', '.join(['?'] * len(columns))})",
            (tuple(r.values()) for r in requests),
        )
        conn.executemany(
            f"INSERT INTO ledger_entries ({', '.join(LEDGER_COLUMNS)}) VALUES ({', '.join(['?'] * len(LEDGER_COLUMNS))})",
            entries,
        )
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("ANALYZE")


def fill_postgres(url: str, requests: list[dict], entries: list[tuple]) -> None:
    columns = _check_columns(requests)
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(f"COPY grant_requests ({', '.join(columns)}) FROM STDIN") as copy:
            for r in requests:
                copy.write_row(tuple(r.values()))
        with conn.cursor().copy(f"COPY ledger_entries ({', '.join(LEDGER_COLUMNS)}) FROM STDIN") as copy:
            for e in entries:
                copy.write_row(e)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE grant_requests")
        conn.execute("VACUUM ANALYZE ledger_entries")


# `haven export …` (the console script's own entry point), then the process's peak resident
# memory: VmHWM counts this process only, while ru_maxrss would also count the benchmark's own
# memory at the fork (Linux carries it over into the child).
EXPORT_PROCESS = """
import sys
from haven.cli import main
code = main(sys.argv[1:])
try:
    with open("/proc/self/status") as status:
        peak_kb = int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
except OSError:
    import resource
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"peak_kb={peak_kb}", file=sys.stderr)
sys.exit(code)
"""


def run_export(database_url: str, out: Path, first: date, end: date, fmt: str) -> dict:
    """`haven export` in a fresh process: its wall time (Python's start included) and peak memory."""
    env = {**os.environ, "HAVEN_DATABASE_URL": database_url, "HAVEN_VAR_DIR": str(out.parent / "var")}
    command = [sys.executable, "-c", EXPORT_PROCESS, "export", "ledger", "--from", first.isoformat(), "--to", end.isoformat(),
               "--format", fmt, "--out", str(out)]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"haven export failed ({process.returncode}):\n{process.stdout}\n{process.stderr}")
    peak_kb = int(process.stderr.rsplit("peak_kb=", 1)[1].split()[0])
    name = f"haven-ledger_{first.isoformat()}_{end.isoformat()}.{fmt}"
    manifest = json.loads((out / f"{name}.manifest.json").read_text())
    digest = hashlib.sha256()
    with open(out / name, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    assert digest.hexdigest() == manifest["sha256"], "the file does not match its manifest"
    return {"seconds": round(seconds, 2), "peak_mb": round(peak_kb / 1024, 1), "rows": manifest["rows"],
            "file_mb": round(manifest["bytes"] / 2**20, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--format", nargs="+", choices=["csv", "jsonl"], default=["csv", "jsonl"])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="haven-bench-export-"))
    pg_name = f"haven_bench_export_{uuid.uuid4().hex[:8]}"
    server = POSTGRES_SERVER.rsplit("/", 1)[0]
    try:
        if args.db == "sqlite":
            path = work / "haven.db"
            database_url = f"sqlite:///{path}"
            policy_hash, db = asyncio.run(prepare(f"sqlite+aiosqlite:///{path}"))
            stamp = lambda at: at.strftime("%Y-%m-%d %H:%M:%S.%f")  # how SQLAlchemy stores times in SQLite  # noqa: E731
        else:
            with psycopg.connect(POSTGRES_SERVER, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{pg_name}"')
            database_url = f"{server}/{pg_name}"
            policy_hash, db = asyncio.run(prepare(f"postgresql+psycopg://{database_url.split('://', 1)[1]}"))
            stamp = lambda at: at  # noqa: E731
        asyncio.run(db.dispose())

        started = time.perf_counter()
        requests, entries = generate(args.rows, policy_hash, stamp)
        if args.db == "sqlite":
            fill_sqlite(path, requests, entries)
        else:
            fill_postgres(database_url, requests, entries)
        filled = time.perf_counter() - started
        del requests, entries
        print(f"{args.db}: {args.rows:,} ledger rows written in {filled:.1f} s (not measured)")

        results = {}
        for fmt in args.format:
            baseline = run_export(database_url, work / "out", date(2024, 1, 1), date(2024, 1, 2), fmt)
            measured = run_export(database_url, work / "out", *YEAR, fmt)
            # The allocations' own entries are dated when they were set (today), outside the year.
            assert measured["rows"] == args.rows, measured
            results[f"{args.db}/{fmt}"] = {
                **measured,
                "baseline_empty_export": {k: baseline[k] for k in ("seconds", "peak_mb")},
                "within_target": measured["seconds"] < TARGET["seconds"] and measured["peak_mb"] < TARGET["peak_mb"],
            }
            print(f"{args.db}/{fmt}: {measured['rows']:,} rows in {measured['seconds']} s, peak {measured['peak_mb']} MB "
                  f"({measured['file_mb']} MB file; an empty export: {baseline['seconds']} s, {baseline['peak_mb']} MB)")  # fmt: skip
        _merge(results, args.rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.db == "postgresql":
            with psycopg.connect(POSTGRES_SERVER, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    return 0


def _merge(results: dict, rows: int) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    payload = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    payload.update({
        "benchmark": "export_ledger",
        "command": "haven export ledger --from 2025-01-01 --to 2026-01-01 --format <csv|jsonl> --out DIR (a fresh process)",
        "target": TARGET,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    })  # fmt: skip
    for key, value in results.items():
        payload.setdefault("results", {})[key] = {**value, "ledger_rows": rows, "measured_at": datetime.now(timezone.utc).isoformat()}
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
