"""The manifest: what an auditor checks a file against. It is computed from the very bytes
written (SHA-256, size, rows, control totals), records the audit chain's head in the same
snapshot the rows were read in, and is itself recorded in the audit log."""

from __future__ import annotations

from datetime import datetime
from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from haven.exports.spec import ExportFormat, ExportKind


def haven_version() -> str:
    try:
        return metadata.version("haven")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


class ChainHead(BaseModel):
    seq: int
    hash: str


MANIFEST_EXAMPLE = {
    "export_id": "ex_0f4c6a3e9b2d4c1a8e7f6b5a4d3c2b1a",
    "kind": "ledger",
    "format": "csv",
    "file_name": "haven-ledger_2026-01-01_2026-02-01.csv",
    "media_type": "text/csv; charset=utf-8",
    "period": {"from": "2026-01-01", "to": "2026-02-01", "bounds": "[from, to)", "on": "occurred_at"},
    "columns": ["entry_id", "occurred_at", "…"],
    "rows": 3,
    "bytes": 912,
    "sha256": "5f2b…",
    "totals": {
        "by_currency": [{"currency": "EUR", "kind": "payment", "rows": 1, "amount": "1500.00"}],
        "by_category": [{"category": "legal_fees", "kind": "payment", "rows": 1, "amount_base": "1500.00", "base_currency": "EUR"}],
    },
    "audit_chain_head": {"seq": 42, "hash": "9c1d…"},
    "generated_at": "2026-02-01T09:00:00.000000Z",
    "generated_by": "fin-1",
    "haven_version": "0.1.0",
}


class ExportPeriod(BaseModel):
    from_: str = Field(alias="from", description="the first day included (UTC)")
    to: str = Field(description="the first day NOT included (UTC)")
    bounds: Literal["[from, to)"] = "[from, to)"
    on: Literal["occurred_at"] = "occurred_at"

    model_config = ConfigDict(populate_by_name=True)


class Manifest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [MANIFEST_EXAMPLE]})

    export_id: str
    kind: ExportKind
    format: ExportFormat
    file_name: str
    media_type: str
    period: ExportPeriod
    columns: list[str]
    rows: int = Field(description="data rows, the CSV header not counted")
    bytes: int
    sha256: str = Field(description="hex SHA-256 of the file's bytes, exactly as written")
    totals: dict[str, list[dict[str, Any]]] = Field(
        description="ledger: sums of `amount` per currency and kind, and of `amount_base` per category and kind; "
        "audit: rows per action"
    )
    audit_chain_head: ChainHead | None = Field(
        description="the newest link of the audit chain when the rows were read (null before the first event)"
    )
    generated_at: datetime
    generated_by: str
    haven_version: str

    def as_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"
