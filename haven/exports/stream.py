"""Making an export: rows read in one snapshot, encoded a batch at a time, hashed and counted as
they go out, so the manifest describes exactly the bytes the reader received; then the export is
recorded in the audit log (who exported what, and the file's SHA-256)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

from sqlalchemy import select

from haven.audit import record_change
from haven.db import Database, utcnow
from haven.db.models import AuditEvent
from haven.exports.encoders import LineFormat, Sql
from haven.exports.manifest import ExportPeriod, Manifest, haven_version
from haven.exports.sources import SOURCES, chain_head, currency_book, snapshot
from haven.exports.spec import ExportSpec
from haven.grant_request import Actor

EXPORTED = "exported"  # the audit action; its facts hold the export id and the whole manifest


def new_export_id() -> str:
    return f"ex_{uuid.uuid4().hex}"


class Export:
    """One export being made. Iterate `chunks()` to the end; then `manifest` is set."""

    def __init__(self, spec: ExportSpec, actor: Actor, export_id: str | None = None):
        self.spec = spec
        self.actor = actor
        self.export_id = export_id or new_export_id()
        self.manifest: Manifest | None = None

    async def chunks(self, db: Database) -> AsyncIterator[bytes]:
        source = SOURCES[self.spec.kind]
        digest, size, rows = hashlib.sha256(), 0, 0
        generated_at = utcnow()
        async with snapshot(db) as connection:
            line_format = LineFormat(self.spec.format, Sql(sqlite=db.is_sqlite))
            head = await chain_head(connection)
            book = await currency_book(connection)
            totals = await source.totals(connection, self.spec.period, book)
            chunk, end = line_format.header(source.columns), line_format.line_end.decode()
            async for lines in source.lines(connection, self.spec.period, line_format, book, totals):
                rows += len(lines)
                lines.append("")
                chunk += end.join(lines).encode("utf-8")
                digest.update(chunk)
                size += len(chunk)
                yield chunk
                chunk = b""
            if chunk:  # the header of an export without rows
                digest.update(chunk)
                size += len(chunk)
                yield chunk
        if rows != totals.rows:  # one snapshot: they cannot differ unless the database misbehaves
            raise RuntimeError(f"the export wrote {rows} rows but its snapshot holds {totals.rows}")
        period = self.spec.period
        self.manifest = Manifest(
            export_id=self.export_id,
            kind=self.spec.kind,
            format=self.spec.format,
            file_name=self.spec.file_name,
            media_type=self.spec.format.media_type,
            period=ExportPeriod(from_=period.first_day.isoformat(), to=period.end_day.isoformat()),
            columns=list(source.columns),
            rows=rows,
            bytes=size,
            sha256=digest.hexdigest(),
            totals=totals.as_manifest(),
            audit_chain_head=head,
            generated_at=generated_at,
            generated_by=self.actor.subject,
            haven_version=haven_version(),
        )


async def record_export(db: Database, actor: Actor, manifest: Manifest) -> None:
    """The export becomes part of the tamper-evident record, manifest and all: an auditor can
    find the file's SHA-256 in the audit log, and `GET /v1/exports/{id}/manifest` reads it back."""
    async with db.transaction() as session:
        await record_change(session, actor, EXPORTED, None, export_id=manifest.export_id,
                      manifest=manifest.model_dump(mode="json", by_alias=True))  # fmt: skip


async def find_manifest(db: Database, export_id: str) -> Manifest | None:
    async with db.sessions() as session:
        facts = await session.scalar(
            select(AuditEvent.facts)
            .where(AuditEvent.action == EXPORTED, AuditEvent.facts["export_id"].as_string() == export_id)
            .limit(1)
        )
    return None if facts is None else Manifest.model_validate(facts["manifest"])
