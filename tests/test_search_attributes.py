"""haven's search attributes: registered by `haven temporal setup` (safe to repeat), required by
the worker before it starts, and kept by each request's workflow so an operator can find
requests by status, category and urgency in Temporal without opening a payload."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.converter import decode_typed_search_attributes
from temporalio.testing import WorkflowEnvironment

from haven import search_attributes
from haven.lifecycle import Status
from haven.localstack import HAVEN, free_port
from tests.conftest import DATA_CONVERTER, TEST_MASTER_KEYS, TEST_PAYLOAD_KEYS, venv_binary
from tests.harness import Harness, caseworker


async def _attributes(handle) -> dict[str, str]:
    """The request's search attributes now: those it started with, then each upsert in its history
    (the time-skipping server's describe shows a running workflow's first ones only)."""
    history = [event async for event in handle.fetch_history_events()]
    started = history[0].workflow_execution_started_event_attributes.search_attributes
    values = {pair.key.name: pair.value for pair in decode_typed_search_attributes(started)}
    for event in history:
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            upserted = event.upsert_workflow_search_attributes_event_attributes.search_attributes
            values.update({pair.key.name: pair.value for pair in decode_typed_search_attributes(upserted)})
    return {key.name: values.get(key.name) for key in search_attributes.ALL}


async def _until_status(handle, status: Status, timeout: float = 15.0) -> dict[str, str]:
    """The upsert reaches history when the workflow task completes, which can be after the local
    activity that recorded the same status in the database: poll for it."""
    deadline = time.monotonic() + timeout
    while (attributes := await _attributes(handle))["HavenStatus"] != status:
        assert time.monotonic() < deadline, f"HavenStatus stayed {attributes['HavenStatus']}, expected {status}"
        await asyncio.sleep(0.05)
    return attributes


async def test_a_request_carries_its_status_category_and_urgency(harness: Harness):
    handle = await harness.submit(amount={"minor_units": 100_000, "currency": "EUR"}, category="legal_fees", urgency="critical")
    await harness.until_recorded(handle.id, Status.AWAITING_DECISION)
    intake = {"HavenStatus": "awaiting_decision", "HavenCategory": "legal_fees", "HavenUrgency": "critical"}
    assert await _until_status(handle, Status.AWAITING_DECISION) == intake
    await harness.approve(handle, caseworker(), 100_000)
    await harness.until_recorded(handle.id, Status.PAYMENT_PENDING)
    assert await _until_status(handle, Status.PAYMENT_PENDING) == {**intake, "HavenStatus": "payment_pending"}


@pytest.fixture
async def bare_dev_server():
    """A Temporal dev server whose namespace has none of haven's search attributes, as a new
    cluster's has none."""
    port = free_port()
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=venv_binary("temporal"), port=port, ui=False, data_converter=DATA_CONVERTER
    ) as env:
        yield f"127.0.0.1:{port}", env


def _haven(address: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HAVEN_")}, "HAVEN_TEMPORAL_ADDRESS": address,
           "HAVEN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'haven.db'}", "HAVEN_PAYLOAD_KEYS": TEST_PAYLOAD_KEYS,
           "HAVEN_MASTER_KEYS": TEST_MASTER_KEYS, "HAVEN_PSEUDONYM_INDEX_KEY": "test", "HAVEN_VAR_DIR": str(tmp_path)}  # fmt: skip
    return subprocess.run([HAVEN, *args], env=env, capture_output=True, text=True, timeout=60)


async def test_setup_registers_them_once_and_the_worker_waits_for_it(bare_dev_server, tmp_path):
    address, env = bare_dev_server
    refused = _haven(address, tmp_path, "worker")
    assert refused.returncode == 2 and "run `haven temporal setup` first" in refused.stderr
    assert "HavenStatus" in refused.stderr

    first = _haven(address, tmp_path, "temporal", "setup")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "registered in default: HavenStatus, HavenCategory, HavenUrgency"
    again = _haven(address, tmp_path, "temporal", "setup")
    assert again.returncode == 0 and again.stdout.strip() == "default already has haven's search attributes"
    assert await search_attributes.missing(env.client, "default") == []
