"""The worker's Prometheus endpoint: Temporal's SDK metrics and the fund's timings (time to decision,
time to the first payment), in workflow time, with buckets in hours."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from temporalio.client import Client

from haven.intake import Intake
from haven.lifecycle import Status
from haven.localstack import free_port
from haven.worker import build_worker
from haven.worker_metrics import telemetry_runtime
from tests.conftest import DATA_CONVERTER, TEST_CASE_KEYS, make_settings
from tests.harness import Harness, caseworker


def _value(exposition: str, name: str, le: str | None = None) -> float | None:
    """The sample of `name` (whatever labels the SDK adds: task queue, activity type), or of its
    bucket `le`."""
    for line in exposition.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")) and (le is None or f'le="{le}"' in line):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_a_paid_request_is_timed_to_its_decision_and_payment(time_skipping_env, sqlite_db, tmp_path, default_policy):
    address = f"127.0.0.1:{free_port()}"
    runtime = telemetry_runtime(address)
    client = await Client.connect(time_skipping_env.client.service_client.config.target_host, runtime=runtime, data_converter=DATA_CONVERTER)
    settings = make_settings(tmp_path, sqlite_db.url)
    intake = Intake(sqlite_db, client, settings.task_queue, default_policy, b"index-key", case_keys=TEST_CASE_KEYS)
    harness = Harness(time_skipping_env, intake, sqlite_db)
    async with build_worker(client, sqlite_db, settings):
        handle = client.get_workflow_handle(
            (await harness.submit(amount={"minor_units": 100_000, "currency": "EUR"})).id
        )
        await harness.until_recorded(handle.id, Status.AWAITING_DECISION)
        await time_skipping_env.sleep(timedelta(hours=3))  # the caseworker decides three hours later
        await harness.approve(handle, caseworker(), 100_000)
        await harness.until_recorded(handle.id, Status.PAYMENT_PENDING)
        await harness.pay(handle, 100_000)
        await harness.until_recorded(handle.id, Status.FOLLOW_UP)

        async with httpx.AsyncClient() as http:
            for _ in range(50):  # the SDK's exporter publishes what was recorded shortly after
                text = (await http.get(f"http://{address}/metrics")).text
                if _value(text, "haven_time_to_first_payment_count") == 1:
                    break
                await asyncio.sleep(0.1)

    assert _value(text, "haven_time_to_decision_count") == 1
    assert 3 * 3600 <= _value(text, "haven_time_to_decision_sum") < 4 * 3600
    assert _value(text, "haven_time_to_decision_bucket", le="3600") == 0  # hours, not seconds: its own buckets
    assert _value(text, "haven_time_to_decision_bucket", le="14400") == 1
    assert _value(text, "haven_time_to_first_payment_count") == 1
    # Temporal's own metrics, on the same endpoint.
    assert "temporal_workflow_task_execution_latency" in text
    assert "temporal_activity_execution_latency" in text or "temporal_local_activity_execution_latency" in text
