"""Recorded workflow histories, replayed in CI against the current workflow code (tests/test_replay.py)
so that a change which would break requests already running fails the build.

`make histories` runs the lifecycle tests with HAVEN_RECORD_HISTORIES=1: every workflow a test
starts through the harnesses (and those it names with `keep`) has its history written to
tests/histories/, its payloads opened by the tests' codec, so the files hold no ciphertext and
need no key to replay. A file that exists is never overwritten: histories are evidence of what
running workflows look like, and re-recording one to make the replay pass would hide the break it
caught. To retire one on purpose, delete it in its own commit and say why."""

from __future__ import annotations

import json
import os
import re
import weakref
from pathlib import Path

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory
from temporalio.converter import PayloadCodec

HISTORIES = Path(__file__).parent / "histories"
RECORDING = os.environ.get("HAVEN_RECORD_HISTORIES") == "1"

_kept: weakref.WeakKeyDictionary[Client, list[str]] = weakref.WeakKeyDictionary()


def keep(client: Client, workflow_id: str) -> None:
    """Marks a workflow for recording when the test ends (a no-op unless recording)."""
    if RECORDING:
        ids = _kept.setdefault(client, [])
        if workflow_id not in ids:
            ids.append(workflow_id)


async def save_kept(client: Client, test_name: str, passed: bool) -> list[Path]:
    """Writes the history of every workflow kept on `client` by a test that passed; one database
    engine is enough, the history does not depend on it."""
    ids = _kept.pop(client, [])
    if not RECORDING or not passed or "postgresql" in test_name:
        return []
    HISTORIES.mkdir(exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", test_name.removeprefix("test_")).strip("-")
    written = []
    counts: dict[str, int] = {}
    for workflow_id in ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        kind = history.events[0].workflow_execution_started_event_attributes.workflow_type.name
        counts[kind] = counts.get(kind, 0) + 1
        path = HISTORIES / f"{stem}--{kind}-{counts[kind]}.json"
        if path.exists():
            continue
        await open_payloads(history, client.data_converter.payload_codec)
        recording = {"workflow_id": workflow_id, "history": history.to_json_dict()}
        path.write_text(json.dumps(recording, indent=1, sort_keys=True) + "\n")
        written.append(path)
    return written


async def open_payloads(history: WorkflowHistory, codec: PayloadCodec | None) -> None:
    """Decodes, in place, every payload anywhere in the history's events (inputs, results, Update
    arguments, failures' encoded attributes, memo, headers)."""
    if codec is not None:
        for event in history.events:
            await _open(event, codec)


async def _open(message: Message, codec: PayloadCodec) -> None:
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            values = value.values() if field.message_type.fields_by_name["value"].message_type else []
        else:
            values = [value] if isinstance(value, Message) else list(value)
        for item in values:
            if isinstance(item, Payload):
                [opened] = await codec.decode([item])
                item.CopyFrom(opened)
            else:
                await _open(item, codec)


def recorded() -> dict[str, WorkflowHistory]:
    """Every recorded history by file name."""
    histories = {}
    for path in sorted(HISTORIES.glob("*.json")):
        recording = json.loads(path.read_text())
        histories[path.name] = WorkflowHistory.from_json(recording["workflow_id"], recording["history"])
    return histories
