"""Exports for finance and auditors: the ledger or the audit log for a period, streamed as CSV or
JSON Lines with constant memory. The manifest (rows, totals, SHA-256, the audit chain's head) is
known only once the last byte is out; it is recorded in the audit log then and read back from
`/v1/exports/{export_id}/manifest`, whose address the response names in its headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import StreamingResponse

from haven.exports.manifest import Manifest
from haven.exports.sources import ExportFailed
from haven.exports.spec import ExportFormat, ExportKind, ExportSpec, InvalidExport, Period
from haven.exports.stream import Export, find_manifest, new_export_id, record_export
from haven.grant_request import Actor, CalendarDate
from api.permissions import Operation, require
from api.problems import PROBLEM_RESPONSES as PROBLEMS
from api.problems import Problem
from api.services import Svc

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/v1/exports", tags=["finance"])

ExportId = Annotated[str, Path(pattern=r"^ex_[0-9a-f]{32}$", description="the export's id (`Haven-Export-Id`)")]

_STREAMED = {
    200: {
        "description": "The file, streamed. `Haven-Export-Id` names the export; its manifest is at the `Link` "
        "(rel=describedby) once the last byte has been sent.",
        "content": {ExportFormat.CSV.media_type: {"schema": {"type": "string"}},
                    ExportFormat.JSONL.media_type: {"schema": {"type": "string"}}},  # fmt: skip
    }
}


def period_of(first_day: date, end_day: date) -> Period:
    """The period [from, to), or a 422 naming the parameter at fault."""
    try:
        return Period(first_day, end_day)
    except InvalidExport as refusal:
        raise Problem(422, "validation-error", str(refusal), errors=[{"field": refusal.field, "message": refusal.message}]) from None


@router.get("/{kind}", response_class=StreamingResponse, responses={**_STREAMED, **PROBLEMS})
async def export(
    kind: ExportKind,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.EXPORT))],
    first_day: Annotated[CalendarDate, Query(alias="from", description="the first day included, YYYY-MM-DD (UTC)")],
    end_day: Annotated[CalendarDate, Query(alias="to", description="the first day NOT included, YYYY-MM-DD (UTC)")],
    format: Annotated[ExportFormat, Query(description="csv (RFC 4180, UTF-8, one header row) or jsonl")] = ExportFormat.CSV,
) -> StreamingResponse:
    """The ledger's entries, or the audit log's events, that occurred in [from, to), in time (or
    chain) order. Amounts are decimal strings beside their currency; defenders appear only as
    `defender_ref` (a keyed pseudonym), never by name or contact. At most 366 days per export."""
    spec = ExportSpec(kind, format, period_of(first_day, end_day))
    export_id = new_export_id()
    job = Export(spec, actor, export_id)
    chunks = job.chunks(svc.db)
    try:
        # The first chunk before the answer starts: a database that cannot be read, or holds
        # what an export cannot write, is still a problem body rather than a broken download.
        first = await anext(chunks, b"")
    except ExportFailed as failure:
        raise Problem(409, "export-failed", str(failure)) from None

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk
        assert job.manifest is not None
        await record_export(svc.db, actor, job.manifest)
        log.info("export_made", export_id=export_id, kind=str(kind), rows=job.manifest.rows, actor=actor.subject)

    return StreamingResponse(
        body(),
        media_type=format.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{spec.file_name}"',
            "Haven-Export-Id": export_id,
            "Link": f'</v1/exports/{export_id}/manifest>; rel="describedby"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/{export_id}/manifest", response_model=Manifest, response_model_by_alias=True, responses=PROBLEMS)
async def export_manifest(
    export_id: ExportId, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.EXPORT))]
) -> Manifest:
    """The manifest of a finished export, as recorded in the audit log: the rows, the control
    totals, the file's SHA-256 and size, and the audit chain's head when its rows were read. 404
    until the export's last byte has been sent (or for an export that was broken off)."""
    manifest = await find_manifest(svc.db, export_id)
    if manifest is None:
        raise Problem(404, "not-found", f"no finished export {export_id}")
    return manifest
