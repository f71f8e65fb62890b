"""Percentiles, a printed table and a JSON file: what every benchmark reports."""

from __future__ import annotations

import json
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    index = (len(ordered) - 1) * p / 100
    low, high = int(index), min(int(index) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def summarise(samples_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 50), 1),
        "p95_ms": round(percentile(samples_ms, 95), 1),
        "p99_ms": round(percentile(samples_ms, 99), 1),
        "mean_ms": round(statistics.fmean(samples_ms), 1),
        "max_ms": round(max(samples_ms), 1),
    }


def report(name: str, rows: dict[str, dict[str, float]], notes: dict[str, object]) -> Path:
    columns = ["n", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms"]
    width = max(len(label) for label in rows) + 2
    print(f"\n{name}")
    print("".ljust(width) + "".join(c.rjust(10) for c in columns))
    for label, row in rows.items():
        print(label.ljust(width) + "".join(str(row[c]).rjust(10) for c in columns))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "measured_at": datetime.now(timezone.utc).isoformat(),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "results": rows,
        **notes,
    }
    path.write_text(json.dumps(payload, indent=2))
    print(f"written to {path}")
    return path
