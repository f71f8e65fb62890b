"""The canary test: cases of every shape, each sensitive field holding its own canary, taken through
approval, payment and follow-up to closed (or refused, or withdrawn); then everything haven wrote
is searched for the canaries: Temporal's history read without keys, the app database (SQLite's
files; every row of every PostgreSQL table), every log line and every export. None may hold one.
After the retention run, nothing holds one even for someone with every key there is (the payload
keys, the master keys, the data keys of requests still open), while the ledger balances and the
audit chain verifies.

The first test runs on the time-skipping server, once per database engine (the housing case
checks in a month after its first rent); the second on `haven run`, whose Temporal dev server
keeps its database in a file, scanned too."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from haven.audit_chain import verify_chain
from haven.case_keys import CASE_TEXT, DECISION_NOTE, MESSAGE_BODY, REPORT_RECEIPTS, REPORT_TEXT, SENSITIVE, Sealer
from haven.db import Database, utcnow
from haven.db.models import Base, CaseKey, GrantRequestRecord
from haven.exports.cli import write_export
from haven.exports.spec import ExportFormat, ExportKind, ExportSpec, Period
from haven.grant_request import SYSTEM
from haven.keyring import KeyRingError
from haven.logging import configure_logging
from tests.api_harness import Api, serving
from tests.canaries import Life, canaries_of
from tests.conftest import TEST_CASE_KEYS
from tests.ledger_checks import assert_ledger_balances
from workflows.retention import RetentionWorkflow
from tests.workflow_histories import keep

SEALED_VALUE = re.compile(r"sealed:v1:[A-Za-z0-9+/=]+")


@pytest.fixture
async def served(time_skipping_env, db, tmp_path):
    async with serving(time_skipping_env, db, tmp_path) as api:
        yield api


async def test_no_canary_anywhere_and_none_recoverable_after_retention(served: Api, time_skipping_env, capfd, tmp_path):
    api, env = served, time_skipping_env
    configure_logging(dev_mode=False)  # as in production: JSON lines through the redacting processor
    life = Life(api.http, api.token, api.until_status, sleep=env.sleep)
    ended = [
        await life.lawyer_paid_after_a_failed_transfer(),
        await life.housing_in_two_tranches(),
        await life.held_by_screening_then_rejected(),
        await life.withdrawn(),
    ]
    still_open, _ = await life.submit("open")
    await api.until_status(still_open, "awaiting_decision")
    assert len(life.planted) >= 40

    # Those entitled to read a case read every canary it was given: what is scanned below is the
    # sealed form of text that is really there.
    readable = "".join([(await api.http.get(f"/v1/grant-requests/{rid}", headers=api.token("caseworker", "cw-1"))).text
                        for rid in [*ended, still_open]])  # fmt: skip
    assert sorted(c for c in life.planted if c not in readable) == []

    scanned = {
        "temporal history (no keys)": await _histories(_keyless(env.client), [*ended, still_open]),
        "app database": await _database_bytes(api.db),
        "exports": await _exports(api, tmp_path),
        "logs": _logs(capfd),
    }
    hits = {source: sorted(c for c in life.planted if c.encode() in data) for source, data in scanned.items()}
    print(f"\ncanary scan ({api.db.url.split(':')[0]}): {len(life.planted)} canaries, "
          + ", ".join(f"{s}: {len(d):,} bytes, {len(hits[s])} hits" for s, d in scanned.items()))  # fmt: skip
    assert scanned["logs"].count(b"\n") > 0 and all(len(data) > 10_000 for s, data in scanned.items() if s != "logs")
    assert hits == {source: [] for source in scanned}

    # Retention: every ended request closed longer ago than the policy keeps it.
    retention_days = api.app.state.services.intake.policy.policy.retention_days
    async with api.db.transaction() as session:
        long_ago = utcnow() - timedelta(days=retention_days + 1)
        await session.execute(update(GrantRequestRecord).where(GrantRequestRecord.id.in_(ended)).values(updated_at=long_ago))
    destroyed = await env.client.execute_workflow(RetentionWorkflow.run, id="retention-canaries", task_queue=api.settings.task_queue)
    keep(env.client, "retention-canaries")
    assert destroyed == len(ended)

    # With every key there is: the payload keys open Temporal's history, and what people wrote is
    # still sealed there with a data key that no longer exists.
    opened_history = await _histories(env.client, [*ended, still_open])
    database = await _database_bytes(api.db)
    assert [c for c in life.planted if c.encode() in opened_history] == []
    sealed = set(SEALED_VALUE.findall(opened_history.decode()) + SEALED_VALUE.findall(database.decode("latin-1")))
    recovered = await _open_with_every_key(api.db, sealed, [*ended, still_open])
    # Only the request still open can be read: the check can find text, and finds only its own.
    assert len(sealed) >= len(life.submitted) + len(life.written)  # each request's details, each text written
    still_readable = {c for c in life.planted if any(c in r for r in recovered)}
    assert still_readable == life.planted & set(canaries_of("open").values()) != set()
    views = []
    for request_id in ended:
        case = (await api.http.get(f"/v1/grant-requests/{request_id}", headers=api.token("caseworker", "cw-1"))).json()
        assert case["details"] == {"erased": True}, request_id
        views.append(json.dumps(case, ensure_ascii=False))
    assert [c for c in life.planted if any(c in view for view in views)] == []

    await assert_ledger_balances(api.db)
    assert (await verify_chain(api.db)).intact


def _keyless(client: Client) -> Client:
    config = client.config()
    return Client(config["service_client"], namespace=config["namespace"])  # the default converter: no codec


async def _histories(client: Client, workflow_ids: list[str]) -> bytes:
    """Every workflow's history; with the client's codec (if it has one), each payload opened."""
    codec = client.data_converter.payload_codec
    out: list[bytes] = []
    ids = set(workflow_ids)
    try:
        async for execution in client.list_workflows():
            ids.add(execution.id)
    except RPCError as error:  # the time-skipping server keeps no visibility: the cases' own ids
        assert error.status == RPCStatusCode.UNIMPLEMENTED, error
    for workflow_id in sorted(ids):
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        if codec is not None:
            for event in history.events:
                await _decode_all(codec, event)
        out.append(history.to_json().encode())
    return b"\n".join(out)


async def _decode_all(codec, message) -> None:
    """Opens, in place, every Payloads message anywhere inside a history."""
    for _field, value in message.ListFields():
        if isinstance(value, (str, bytes, int, float, bool)):
            continue
        for item in [value] if hasattr(value, "ListFields") else value:  # a message, or a repeated field
            if isinstance(item, Payloads):
                decoded = await codec.decode(list(item.payloads))
                del item.payloads[:]
                item.payloads.extend(decoded)
            elif hasattr(item, "ListFields"):
                await _decode_all(codec, item)


async def _database_bytes(db: Database) -> bytes:
    """What a copy of the database holds: SQLite's files (with the write-ahead log); on
    PostgreSQL every row of every table, as a dump would write it."""
    if db.url.startswith("sqlite"):
        path = Path(db.url.split(":///", 1)[1])
        return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))
    rows: list[str] = []
    async with db.engine.connect() as conn:
        for table in [*Base.metadata.sorted_tables]:
            rows += [r[0] for r in await conn.execute(text(f'SELECT CAST(t AS text) FROM "{table.name}" AS t'))]
    return "\n".join(rows).encode()


async def _exports(api: Api, tmp_path: Path) -> bytes:
    today, headers = date.today(), api.token("finance", "fin-1")
    period = {"from": (today - timedelta(days=40)).isoformat(), "to": (today + timedelta(days=40)).isoformat()}
    out: list[bytes] = []
    for kind in ("ledger", "audit"):
        for fmt in ("csv", "jsonl"):
            response = await api.http.get(f"/v1/exports/{kind}", params={**period, "format": fmt}, headers=headers)
            assert response.status_code == 200, response.text
            manifest = await api.http.get(f"/v1/exports/{response.headers['haven-export-id']}/manifest", headers=headers)
            out += [response.content, manifest.content]
    cli = tmp_path / "cli-exports"
    for kind in ExportKind:
        for fmt in ExportFormat:
            spec = ExportSpec(kind, fmt, Period(today - timedelta(days=40), today + timedelta(days=40)))
            await write_export(api.db, spec, cli, SYSTEM)
    out += [p.read_bytes() for p in sorted(cli.iterdir())]
    assert len(out) == 16
    return b"\n".join(out)


def _logs(capfd) -> bytes:
    captured = capfd.readouterr()
    return (captured.out + captured.err).encode()


async def _open_with_every_key(db: Database, sealed: set[str], request_ids: list[str]) -> list[str]:
    """Every sealed value opened with every data key that still unwraps under the master keys,
    as any request and any field: what could still be read."""
    async with db.sessions() as session:
        rows = list(await session.scalars(select(CaseKey)))
        sealers = [await TEST_CASE_KEYS.sealer(session, row.request_id) for row in rows]
    keys = [s.data_key for s in sealers if s.data_key is not None]
    assert len(keys) == len(rows) - sum(1 for row in rows if row.wrapped_key is None)
    fields = (SENSITIVE, CASE_TEXT, DECISION_NOTE, MESSAGE_BODY, REPORT_TEXT, REPORT_RECEIPTS)
    recovered = []
    for value in sealed:
        for key in keys:
            for request_id in request_ids:
                for field in fields:
                    try:
                        recovered.append(json.dumps(Sealer(request_id, key).open(field, value)))
                    except (KeyRingError, ValueError):
                        continue
    return recovered


# --- on `haven run`: Temporal's own database file ----------------------------------------------


async def test_no_canary_in_the_files_of_haven_run(tmp_path):
    """The same cases (all but housing, whose check-in is a month away in real time) and a Stripe
    payee paid through the local Stripe server, on the Temporal dev server persisting to disk:
    its database file, haven's SQLite files, the whole log of `haven run` (API, worker,
    dispatcher, Temporal and Stripe servers) and the exports hold no canary."""
    import asyncio
    import functools

    import httpx

    from haven.localstack import LocalHaven

    haven = LocalHaven(tmp_path / "var", HAVEN_LOCAL_STRIPE="true")

    @functools.cache
    def token(role: str, sub: str, org: str | None = None) -> dict[str, str]:
        return haven.token("--role", role, "--sub", sub, *(("--org", org) if org else ()))

    haven.start()
    try:
        async with httpx.AsyncClient(base_url=haven.base_url, timeout=10) as http:

            async def until_status(request_id: str, status: str, timeout: float = 30) -> None:
                deadline = asyncio.get_running_loop().time() + timeout
                while (now := (await http.get(f"/v1/grant-requests/{request_id}", headers=token("caseworker", "cw-1"))).json())["status"] != status:
                    assert asyncio.get_running_loop().time() < deadline, f"waited for {status}: {now}"
                    await asyncio.sleep(0.1)

            life = Life(http, token, until_status)
            # The payee's connected account, as Stripe would hold it after onboarding.
            account = {"id": canaries_of("stripe")["stripe_account"], "country": "KE"}
            assert (await http.post(f"{haven.stripe_url}/_control/accounts", json=account)).status_code == 200
            cases = [
                await life.lawyer_paid_after_a_failed_transfer(),
                await life.held_by_screening_then_rejected(),
                await life.withdrawn(),
                await life.paid_through_stripe(),
            ]
            readable = "".join([(await http.get(f"/v1/grant-requests/{rid}", headers=token("caseworker", "cw-1"))).text for rid in cases])
            assert sorted(c for c in life.planted if c not in readable) == []
            exports = []
            today = date.today()
            for kind in ("ledger", "audit"):
                for fmt in ("csv", "jsonl"):
                    period = {"from": today.isoformat(), "to": (today + timedelta(days=1)).isoformat(), "format": fmt}
                    response = await http.get(f"/v1/exports/{kind}", params=period, headers=token("finance", "fin-1"))
                    assert response.status_code == 200, response.text
                    exports.append(response.content)
            await asyncio.sleep(1)  # the dispatcher's last deliveries, into the log
    finally:
        haven.stop()
    files = {
        "temporal dev server database": sorted(haven.var_dir.glob("temporal.db*")),
        "app database": sorted(haven.var_dir.glob("haven.db*")),
        "log of haven run": [haven.log],
        "notifications (mail files)": sorted((haven.var_dir / "mail").glob("*.eml")),
    }
    scanned = {source: b"".join(p.read_bytes() for p in paths) for source, paths in files.items()}
    scanned["exports"] = b"\n".join(exports)
    hits = {source: sorted(c for c in life.planted if c.encode() in data) for source, data in scanned.items()}
    print(f"\ncanary scan (haven run): {len(life.planted)} canaries, "
          + ", ".join(f"{s}: {len(files.get(s, exports))} files, {len(d):,} bytes, {len(hits[s])} hits" for s, d in scanned.items()))  # fmt: skip
    assert all(len(data) > 1_000 for data in scanned.values()), {s: len(d) for s, d in scanned.items()}
    assert b"binary/encrypted" in scanned["temporal dev server database"]
    assert hits == {source: [] for source in scanned}
