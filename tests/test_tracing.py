"""Tracing through Temporal's OpenTelemetry interceptor: off by default; when on, one trace runs
from the workflow's start through its activities and updates, and no payload reaches a span."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client

from haven.intake import Intake
from haven.lifecycle import Status
from haven.tracing import interceptor, tracing_interceptors
from haven.worker import build_worker
from tests.conftest import DATA_CONVERTER, TEST_CASE_KEYS, make_settings
from tests.harness import Harness, caseworker


def test_tracing_is_off_unless_an_endpoint_is_set(tmp_path):
    assert tracing_interceptors(make_settings(tmp_path, "sqlite+aiosqlite://"), "haven-api") == []


async def test_a_request_is_one_trace_from_its_start_through_its_activities(time_skipping_env, sqlite_db, tmp_path, default_policy):
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    client = await Client.connect(time_skipping_env.client.service_client.config.target_host, data_converter=DATA_CONVERTER,
                                  interceptors=[interceptor(provider.get_tracer("test"))])  # fmt: skip
    settings = make_settings(tmp_path, sqlite_db.url)
    intake = Intake(sqlite_db, client, settings.task_queue, default_policy, b"index-key", case_keys=TEST_CASE_KEYS)
    harness = Harness(time_skipping_env, intake, sqlite_db)
    async with build_worker(client, sqlite_db, settings):
        handle = client.get_workflow_handle((await harness.submit(amount={"minor_units": 100_000, "currency": "EUR"})).id)
        await harness.until_recorded(handle.id, Status.AWAITING_DECISION)
        await harness.approve(handle, caseworker(), 100_000)
        await harness.until_recorded(handle.id, Status.PAYMENT_PENDING)

    finished = spans.get_finished_spans()
    names = {span.name for span in finished}
    assert "StartWorkflow:GrantRequestWorkflow" in names and "RunWorkflow:GrantRequestWorkflow" in names
    assert {"RunActivity:screen_payee", "RunActivity:assess_risk", "RunActivity:record_event", "RunActivity:start_disbursement"} <= names
    assert {"StartWorkflowUpdate:decide", "HandleUpdate:decide"} <= names
    start = next(s for s in finished if s.name == "StartWorkflow:GrantRequestWorkflow")
    run = next(s for s in finished if s.name == "RunWorkflow:GrantRequestWorkflow")
    assert run.context.trace_id == start.context.trace_id  # the worker's spans join the API's trace
    attributes = " ".join(str(v) for s in finished for v in (s.attributes or {}).values())
    assert "Wanjiru" not in attributes and "KE00" not in attributes  # no payee, no payload
