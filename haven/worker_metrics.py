"""The worker's Prometheus endpoint: Temporal's own SDK metrics (workflow and activity task
latencies, free slots, failures) through the SDK runtime's telemetry, and the fund's timings,
recorded by the activities on the same meter, so one scrape of each worker gets both. The API's
metrics, and the counts of requests by status, are on the API's /metrics (api/metrics.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import activity
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

TIME_TO_DECISION = "haven_time_to_decision"
TIME_TO_FIRST_PAYMENT = "haven_time_to_first_payment"
# Seconds, from minutes to a week: the fund's promise is hours.
DURATION_BUCKETS = [60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600, 3 * 86400, 7 * 86400]
DESCRIPTIONS = {
    TIME_TO_DECISION: "From submission to a caseworker's approval or rejection",
    TIME_TO_FIRST_PAYMENT: "From submission to the first tranche paid",
}


def telemetry_runtime(bind_address: str) -> Runtime:
    """A runtime serving Prometheus metrics on `bind_address` (host:port); one per process, made
    before its Temporal client."""
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(
        bind_address=bind_address,
        durations_as_seconds=True,
        counters_total_suffix=True,
        histogram_bucket_overrides={name: DURATION_BUCKETS for name in DESCRIPTIONS},
    )))  # fmt: skip


def observe_time_to(name: str, submitted_at: datetime, at: datetime) -> None:
    """Records a timing from inside an activity (a no-op where no metrics are configured, or
    outside an activity: the records are also written directly, by tests and tools)."""
    if not activity.in_activity():
        return
    histogram = activity.metric_meter().create_histogram_timedelta(name, DESCRIPTIONS[name], unit="s")
    histogram.record(max(at - submitted_at, timedelta(0)))
