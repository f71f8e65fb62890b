"""`haven export ledger|audit --from YYYY-MM-DD --to YYYY-MM-DD --format csv|jsonl --out DIR`:
writes the file and `<file>.manifest.json` beside it, both or neither."""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from datetime import date
from pathlib import Path

from typing import TYPE_CHECKING

from haven.exports.spec import ExportFormat, ExportKind, ExportSpec, InvalidExport, Period

if TYPE_CHECKING:  # the database layer is loaded only when an export runs
    from haven.db import Database
    from haven.exports.manifest import Manifest
    from haven.grant_request import Actor
    from haven.settings import Settings


def _day(text: str) -> date:
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("a day written YYYY-MM-DD")


def add_parser(commands) -> None:
    export = commands.add_parser(
        "export",
        help="export the ledger or the audit log for a period: a file and its manifest",
        description="Rows that occurred in [--from, --to): --from is the first day included, --to the first day "
        "not included (UTC). The manifest (<file>.manifest.json) gives the rows, the totals, the file's SHA-256 "
        "and the audit chain's head; the export is recorded in the audit log.",
    )
    export.add_argument("kind", choices=[k.value for k in ExportKind])
    export.add_argument("--from", dest="first_day", metavar="YYYY-MM-DD", type=_day, required=True, help="first day included, YYYY-MM-DD")
    export.add_argument("--to", dest="end_day", metavar="YYYY-MM-DD", type=_day, required=True, help="first day NOT included, YYYY-MM-DD")
    export.add_argument("--format", choices=[f.value for f in ExportFormat], default=ExportFormat.CSV.value)
    export.add_argument("--out", type=Path, default=Path("."), help="the directory to write to (created if missing)")


async def run(settings: Settings, args) -> int:
    from haven.db import Database
    from haven.grant_request import Actor, Role

    try:
        spec = ExportSpec(ExportKind(args.kind), ExportFormat(args.format), Period(args.first_day, args.end_day))
    except InvalidExport as refusal:
        print(f"haven export: --{refusal.field} {refusal.message}", file=sys.stderr)
        return 2
    db = Database(settings.async_database_url)
    try:
        manifest = await write_export(db, spec, args.out, Actor(subject=f"cli:{getpass.getuser()}", roles=[Role.FINANCE]))
    finally:
        await db.dispose()
    print(f"{manifest.rows} rows -> {args.out / manifest.file_name}  (sha256 {manifest.sha256})")
    print(f"manifest -> {args.out / (manifest.file_name + '.manifest.json')}")
    return 0


async def write_export(db: Database, spec: ExportSpec, directory: Path, actor: Actor) -> Manifest:
    """Streams the export to a hidden partial file and renames it (and its manifest) into place
    only once both are complete and the export is recorded: a failure leaves nothing behind."""
    from haven.exports.stream import Export, record_export

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / spec.file_name
    manifest_path = directory / f"{spec.file_name}.manifest.json"
    partial, partial_manifest = directory / f".{spec.file_name}.partial", directory / f".{spec.file_name}.manifest.partial"
    export = Export(spec, actor)
    try:
        with open(partial, "wb") as file:
            async for chunk in export.chunks(db):
                file.write(chunk)
        assert export.manifest is not None
        partial_manifest.write_text(export.manifest.as_json(), encoding="utf-8")
        await record_export(db, actor, export.manifest)
        os.replace(partial, target)
        os.replace(partial_manifest, manifest_path)
    finally:
        partial.unlink(missing_ok=True)
        partial_manifest.unlink(missing_ok=True)
    return export.manifest
