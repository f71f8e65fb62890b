"""Exports for finance and auditors: a manifest that matches its file byte for byte and total for
total, a period that holds exactly the rows inside it (on SQLite and PostgreSQL), no defender's or
payee's detail in any export (canary values planted in every sensitive field of a case taken to
closed), the refusals, and the fund summary."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import sys
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from haven import ledger
from haven.audit import audit_entry
from haven.audit_chain import append
from haven.exports.cli import write_export
from haven.exports.spec import ExportFormat, ExportKind, ExportSpec, Period
from haven.grant_request import SYSTEM, Actor, Role
from haven.money import Money
from haven.settings import REPO_ROOT
from tests.api_harness import Api, assert_problem, stored_counts
from tests.canaries import CANARIES, case_through_to_closed
from tests.ledger_checks import assert_ledger_balances

FINANCE = Actor(subject="fin-1", roles=[Role.FINANCE])
DAY = date(2031, 3, 10)  # a day no other row of the test database falls on
MIDNIGHT = datetime(2031, 3, 10, tzinfo=timezone.utc)
TICK = timedelta(microseconds=1)


def _rows(kind: ExportKind, fmt: ExportFormat, data: bytes) -> list[dict]:
    text = data.decode("utf-8")
    if fmt is ExportFormat.CSV:
        assert text == "" or text.endswith("\r\n")
        return list(csv.DictReader(io.StringIO(text, newline="")))
    return [json.loads(line) for line in text.splitlines()]


def _assert_manifest_describes(manifest: dict, data: bytes) -> list[dict]:
    """The manifest's size, hash, rows and control totals, recomputed from the file alone."""
    kind, fmt = ExportKind(manifest["kind"]), ExportFormat(manifest["format"])
    assert manifest["bytes"] == len(data)
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    rows = _rows(kind, fmt, data)
    assert manifest["rows"] == len(rows)
    if fmt is ExportFormat.CSV:
        assert data.decode().split("\r\n", 1)[0] == ",".join(manifest["columns"])
    elif rows:
        assert list(rows[0]) == manifest["columns"]
    if kind is ExportKind.LEDGER:
        by_currency: dict[tuple, list] = defaultdict(lambda: [0, Decimal(0)])
        by_category: dict[tuple, list] = defaultdict(lambda: [0, Decimal(0)])
        for row in rows:
            by_currency[(row["currency"], row["kind"])][0] += 1
            by_currency[(row["currency"], row["kind"])][1] += Decimal(row["amount"])
            by_category[(row["category"], row["kind"])][0] += 1
            by_category[(row["category"], row["kind"])][1] += Decimal(row["amount_base"])
        assert {(t["currency"], t["kind"]): [t["rows"], Decimal(t["amount"])] for t in manifest["totals"]["by_currency"]} == by_currency
        assert {(t["category"], t["kind"]): [t["rows"], Decimal(t["amount_base"])] for t in manifest["totals"]["by_category"]} == by_category
    else:
        actions: dict[str, int] = defaultdict(int)
        for row in rows:
            actions[row["action"]] += 1
        assert {t["action"]: t["rows"] for t in manifest["totals"]["by_action"]} == actions
    return rows


async def _export(api: Api, kind: str, first: str, end: str, fmt: str = "csv") -> tuple[bytes, dict]:
    headers = api.token("finance", "fin-1")
    response = await api.http.get(f"/v1/exports/{kind}", params={"from": first, "to": end, "format": fmt}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ExportFormat(fmt).media_type
    export_id = response.headers["haven-export-id"]
    assert f"/v1/exports/{export_id}/manifest" in response.headers["link"]
    assert f'filename="haven-{kind}_{first}_{end}.{fmt}"' in response.headers["content-disposition"]
    manifest = await api.http.get(f"/v1/exports/{export_id}/manifest", headers=headers)
    assert manifest.status_code == 200, manifest.text
    return response.content, manifest.json()


# --- a period holds exactly its rows -----------------------------------------------------------


async def _plant_rows_around_the_day(db) -> None:
    """A ledger entry and an audit event a microsecond either side of each edge of DAY."""
    moments = {
        "before": MIDNIGHT - TICK, "first": MIDNIGHT, "last": MIDNIGHT + timedelta(days=1) - TICK,
        "after": MIDNIGHT + timedelta(days=1),
    }  # fmt: skip
    for name, at in moments.items():
        async with db.transaction() as session:
            movement = ledger.Movement(
                key=f"edge:{name}", request_id=None, tranche=None, amount_base_minor=100,
                amount=Money(minor_units=100, currency="EUR"), rate_to_base=Decimal(1), actor="test", at=at,
            )  # fmt: skip
            await ledger.reserve(session, "legal_fees", at.date(), movement)
            event = audit_entry(SYSTEM, "edge_case", None, edge=name)
            event.occurred_at = at
            await append(session, event)


@pytest.mark.parametrize("fmt", list(ExportFormat))
async def test_a_day_s_export_holds_exactly_the_rows_of_that_day(db, tmp_path, fmt):
    await _plant_rows_around_the_day(db)
    for kind, key in ((ExportKind.LEDGER, "entry_key"), (ExportKind.AUDIT, "facts")):
        spec = ExportSpec(kind, fmt, Period(DAY, DAY + timedelta(days=1)))
        manifest = await write_export(db, spec, tmp_path, FINANCE)
        data = (tmp_path / spec.file_name).read_bytes()
        on_disk = json.loads((tmp_path / f"{spec.file_name}.manifest.json").read_text())
        assert on_disk == manifest.model_dump(mode="json", by_alias=True)
        rows = _assert_manifest_describes(on_disk, data)
        found = sorted(
            row[key].removeprefix("edge:") if kind is ExportKind.LEDGER
            else (json.loads(row[key]) if isinstance(row[key], str) else row[key])["edge"]
            for row in rows
        )  # fmt: skip
        assert found == ["first", "last"], (kind, found)
        assert {row["occurred_at"] for row in rows} == {
            "2031-03-10T00:00:00.000000+00:00", "2031-03-10T23:59:59.999999+00:00"
        }  # fmt: skip


async def test_consecutive_periods_neither_share_nor_miss_a_row(db, tmp_path):
    await _plant_rows_around_the_day(db)
    keys = []
    for first, end in ((DAY - timedelta(days=1), DAY), (DAY, DAY + timedelta(days=1)), (DAY + timedelta(days=1), DAY + timedelta(days=2))):
        spec = ExportSpec(ExportKind.LEDGER, ExportFormat.JSONL, Period(first, end))
        await write_export(db, spec, tmp_path, FINANCE)
        keys += [row["entry_key"] for row in _rows(spec.kind, spec.format, (tmp_path / spec.file_name).read_bytes())]
    assert sorted(keys) == ["edge:after", "edge:before", "edge:first", "edge:last"]


async def test_an_audit_export_verifies_from_its_own_rows(db, tmp_path):
    """An auditor can recompute each row's hash and its link to the row before, from the file."""
    from types import SimpleNamespace

    from haven.audit_chain import event_hash

    await _plant_rows_around_the_day(db)
    spec = ExportSpec(ExportKind.AUDIT, ExportFormat.JSONL, Period(DAY, DAY + timedelta(days=1)))
    await write_export(db, spec, tmp_path, FINANCE)
    rows = _rows(spec.kind, spec.format, (tmp_path / spec.file_name).read_bytes())
    for row in rows:
        event = SimpleNamespace(**{**row, "occurred_at": datetime.fromisoformat(row["occurred_at"]),
                                   "recorded_at": datetime.fromisoformat(row["recorded_at"])})  # fmt: skip
        assert event_hash(event) == row["hash"]
    assert rows[1]["prev_hash"] == rows[0]["hash"]


async def test_the_cli_writes_the_file_and_its_manifest_and_refuses_a_bad_period(db, tmp_path):
    await _plant_rows_around_the_day(db)
    env = {**os.environ, "HAVEN_DATABASE_URL": db.url}

    async def haven(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "haven.cli", "export", *args, env=env, cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        return process.returncode, output.decode()

    out = tmp_path / "exports"
    code, output = await haven("ledger", "--from", "2031-03-10", "--to", "2031-03-11", "--out", str(out))
    assert code == 0, output
    name = "haven-ledger_2031-03-10_2031-03-11.csv"
    assert sorted(p.name for p in out.iterdir()) == [name, f"{name}.manifest.json"]
    _assert_manifest_describes(json.loads((out / f"{name}.manifest.json").read_text()), (out / name).read_bytes())

    for args, says in (
        (("--from", "2031-03-11", "--to", "2031-03-10"), "--to must be after `from`"),
        (("--from", "2030-01-01", "--to", "2031-03-10"), "at most 366 days"),
        (("--from", "10/03/2031", "--to", "2031-03-11"), "a day written YYYY-MM-DD"),
    ):
        code, output = await haven("audit", *args, "--out", str(tmp_path / "refused"))
        assert code == 2 and says in output, output
        assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())


async def test_a_failed_export_leaves_no_file_behind(db, tmp_path, monkeypatch):
    from haven.exports import stream

    async def refuse(*args, **kwargs):
        raise RuntimeError("the audit log cannot be written")

    monkeypatch.setattr(stream, "record_export", refuse)
    spec = ExportSpec(ExportKind.LEDGER, ExportFormat.CSV, Period(DAY, DAY + timedelta(days=1)))
    out = tmp_path / "exports"
    with pytest.raises(RuntimeError):
        await write_export(db, spec, out, FINANCE)
    assert list(out.iterdir()) == []


# --- no defender's detail in any export -------------------------------------------------------

async def test_no_export_holds_a_defender_s_or_payee_s_detail(api: Api, tmp_path):
    request_id = await case_through_to_closed(api)
    # The canaries are where they belong: in the case, for those entitled to read it.
    case = (await api.http.get(f"/v1/grant-requests/{request_id}", headers=api.token("caseworker", "cw-1"))).text
    assert CANARIES["payee_name"] in case and CANARIES["threat_summary"] in case

    today = date.today()
    first, end = (today - timedelta(days=1)).isoformat(), (today + timedelta(days=1)).isoformat()
    exported: list[bytes] = []
    for kind in ("ledger", "audit"):
        for fmt in ("csv", "jsonl"):
            data, manifest = await _export(api, kind, first, end, fmt)
            rows = _assert_manifest_describes(manifest, data)
            assert any(row["request_id"] == request_id for row in rows), (kind, fmt)
            exported += [data, json.dumps(manifest).encode()]
    for kind in ExportKind:  # and by the command line's own path
        spec = ExportSpec(kind, ExportFormat.CSV, Period(today - timedelta(days=1), today + timedelta(days=1)))
        await write_export(api.db, spec, tmp_path / "cli", FINANCE)
    exported += [p.read_bytes() for p in (tmp_path / "cli").iterdir()]
    assert len(exported) == 12

    ledger_rows = _rows(ExportKind.LEDGER, ExportFormat.CSV, exported[0])
    mine = [row for row in ledger_rows if row["request_id"] == request_id]
    assert [row["kind"] for row in mine] == ["reservation", "payment"]
    assert all(row["defender_ref"] and row["country"] == "KE" for row in mine)  # the pseudonym's keyed hash stands in
    found = {name: value for name, value in CANARIES.items() for data in exported if value.encode() in data}
    assert found == {}, f"exports hold {found}"
    await assert_ledger_balances(api.db)


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2026-02-01", "to": "2026-01-01"}, "to"),
        ({"from": "2026-01-01", "to": "2026-01-01"}, "to"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "to"),
        ({"from": "2026-1-1", "to": "2026-02-01"}, "from"),
        ({"from": "1767225600", "to": "2026-02-01"}, "from"),
        ({"to": "2026-02-01"}, "from"),
        ({"from": "2026-01-01", "to": "2026-02-01", "format": "xlsx"}, "format"),
    ],
)
async def test_a_bad_period_or_format_is_a_problem_naming_the_parameter(api: Api, params, field):
    before = await stored_counts(api.db)
    response = await api.http.get("/v1/exports/ledger", params=params, headers=api.token("finance", "fin-1"))
    body = assert_problem(response, 422, "validation-error")
    assert field in {e["field"].split(".")[-1] for e in body["errors"]}, body
    assert await stored_counts(api.db) == before


async def test_only_finance_exports_and_an_unknown_export_has_no_manifest(api: Api):
    params = {"from": "2026-01-01", "to": "2026-02-01"}
    for role in ("caseworker", "director", "admin"):
        response = await api.http.get("/v1/exports/audit", params=params, headers=api.token(role, f"{role}-1"))
        assert_problem(response, 403, "forbidden")
    unknown = await api.http.get(f"/v1/exports/ex_{'0' * 32}/manifest", headers=api.token("finance", "fin-1"))
    assert_problem(unknown, 404, "not-found")
    malformed = await api.http.get("/v1/exports/not-an-id/manifest", headers=api.token("finance", "fin-1"))
    assert_problem(malformed, 422, "validation-error")
    unknown_kind = await api.http.get("/v1/exports/payees", params=params, headers=api.token("finance", "fin-1"))
    assert_problem(unknown_kind, 422, "validation-error")


async def test_an_export_is_recorded_in_the_audit_log_with_its_manifest(api: Api):
    data, manifest = await _export(api, "ledger", "2026-01-01", "2026-02-01", "jsonl")
    verification = (await api.http.get("/v1/audit/verification", headers=api.token("finance", "fin-1"))).json()
    assert verification["intact"]
    # The export's own record is newer than the chain head it reports.
    assert manifest["audit_chain_head"]["seq"] < verification["head"]["seq"]
    audit, _ = await _export(api, "audit", date.today().isoformat(), (date.today() + timedelta(days=1)).isoformat(), "jsonl")
    recorded = [row for row in _rows(ExportKind.AUDIT, ExportFormat.JSONL, audit) if row["action"] == "exported"]
    assert recorded[0]["facts"]["manifest"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert recorded[0]["actor"] == "fin-1"


# --- the fund summary ----------------------------------------------------------------------------


async def test_the_summary_gives_money_paid_by_category_country_and_month_and_open_commitments(api: Api):
    await case_through_to_closed(api)
    waiting = await api.submit()  # another, left awaiting a decision
    await api.until_status(waiting.json()["id"], "awaiting_decision")
    today = date.today()
    response = await api.http.get("/v1/budget/summary", headers=api.token("director", "dir-1"))
    assert response.status_code == 200, response.text
    summary = response.json()
    assert (summary["from"], summary["to"]) == (f"{today.year}-01-01", f"{today.year + 1}-01-01")
    eur = {"minor_units": 150_000, "currency": "EUR"}
    paid = {"paid": eur, "given_back": {"minor_units": 0, "currency": "EUR"}, "net_paid": eur, "requests": 1}
    assert summary["by_category"] == {"legal_fees": paid}
    assert summary["by_country"] == {"KE": paid}
    assert summary["by_month"] == {today.strftime("%Y-%m"): paid}
    assert summary["open_commitments"]["awaiting_decision"] == {"legal_fees": {"requests": 1, "amount": eur}}
    assert summary["open_commitments"]["reserved"] == {}

    empty = await api.http.get("/v1/budget/summary", params={"from": "2001-01-01", "to": "2001-02-01"}, headers=api.token("finance", "fin-1"))
    assert empty.json()["by_category"] == {}
    refused = await api.http.get("/v1/budget/summary", params={"from": "2026-02-01", "to": "2026-01-01"}, headers=api.token("finance", "fin-1"))
    assert_problem(refused, 422, "validation-error")
    assert_problem(await api.http.get("/v1/budget/summary", headers=api.token("caseworker", "cw-1")), 403, "forbidden")


# --- amounts as the database writes them ------------------------------------------------------


async def test_the_database_writes_amounts_as_format_decimal_does(db):
    """Exports format amounts in SQL; the manifest's totals in Python: both must read the same."""
    from sqlalchemy import BigInteger, literal, select

    from haven.exports.encoders import Sql
    from haven.money import format_decimal

    sql = Sql(sqlite=db.is_sqlite)
    values = [0, 1, 9, 10, 99, 100, 101, 150_000, 123_456_789, 10**15 + 7, -1, -99, -100, -150_050]
    async with db.engine.connect() as connection:
        for exponent in (0, 2, 3):
            cells = [sql.decimal(literal(v, BigInteger), exponent) for v in values]
            written = (await connection.execute(select(*cells))).one()
            assert list(written) == [format_decimal(v, exponent) for v in values], exponent
