"""The stored reconciliation runs and their findings: opened by the API (finance asked) or by the
workflow's first step (the schedule asked), completed or failed by the workflow's activities,
and read by the API as the finance report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import and_, or_, select

from haven.audit import record_change
from haven.db import Database, upsert_once_more_on_conflict, utcnow
from haven.db.models import ReconciliationFinding, ReconciliationRun
from haven.grant_request import Actor
from haven.notifications.outbox import outbox_entry
from haven.reconciliation import DayReconciliation

RUNNING, DONE, FAILED = "running", "done", "failed"
FINANCE = "finance"


def report_link(public_base_url: str, run_id: str) -> str:
    return f"{public_base_url.rstrip('/')}/v1/reconciliations/{run_id}"


def new_run_row(run: DayReconciliation) -> ReconciliationRun:
    return ReconciliationRun(
        id=run.run_id,
        day=run.day,
        trigger=run.trigger,
        requested_by=run.requested_by,
        status=RUNNING,
        transfers_seen=0,
        payments_seen=0,
        mismatches=0,
        started_at=utcnow(),
        finished_at=None,
    )


async def open_run(db: Database, run: DayReconciliation, actor: Actor | None = None) -> ReconciliationRun:
    """Records the run as running, once (a retry finds it). With `actor`, the request for it is
    audited in the same transaction: finance asked for it."""

    async def write() -> ReconciliationRun:
        async with db.transaction() as session:
            row = await session.get(ReconciliationRun, run.run_id)
            if row is None:
                row = new_run_row(run)
                session.add(row)
                if actor is not None:
                    await record_change(session, actor, "reconciliation_requested", run_id=run.run_id, day=run.day.isoformat())
            return row

    return await upsert_once_more_on_conflict(write)


async def fail_run(db: Database, run: DayReconciliation, public_base_url: str, *, notify: bool = True) -> None:
    """A run that could not finish: marked failed and finance told (unless the one who asked
    already knows), so a day is never silently left unreconciled. A run already done or failed
    is left as it is."""
    async with db.transaction() as session:
        row = await session.get(ReconciliationRun, run.run_id, with_for_update=True)
        if row is None:
            row = new_run_row(run)
            session.add(row)
        if row.status != RUNNING:
            return
        row.status, row.finished_at = FAILED, utcnow()
        if not notify:
            return
        session.add(
            outbox_entry(
                f"reconciliation:{run.run_id}:reconciliation_failed:{FINANCE}",
                kind="reconciliation_failed",
                audience=FINANCE,
                request_id=None,
                status=FAILED,
                link=report_link(public_base_url, run.run_id),
            )
        )


@dataclass(frozen=True)
class RunReport:
    run: ReconciliationRun
    findings: list[ReconciliationFinding]


async def run_report(db: Database, run_id: str) -> RunReport | None:
    async with db.sessions() as session:
        run = await session.get(ReconciliationRun, run_id)
        if run is None:
            return None
        findings = await session.scalars(
            select(ReconciliationFinding).where(ReconciliationFinding.run_id == run_id).order_by(ReconciliationFinding.id)
        )
        return RunReport(run, list(findings))


class UnknownCursor(ValueError):
    pass


async def list_runs(db: Database, *, day: date | None, limit: int, after: str | None) -> tuple[list[ReconciliationRun], str | None]:
    """Newest first. `after` is the id of the last run of the previous page (runs are never
    deleted, so it always finds its place); returns the page and the next page's `after`."""
    async with db.sessions() as session:
        query = select(ReconciliationRun)
        if day is not None:
            query = query.where(ReconciliationRun.day == day)
        if after is not None:
            last = await session.get(ReconciliationRun, after)
            if last is None:
                raise UnknownCursor("not a cursor from this list")
            query = query.where(
                or_(
                    ReconciliationRun.started_at < last.started_at,
                    and_(ReconciliationRun.started_at == last.started_at, ReconciliationRun.id < last.id),
                )
            )
        rows = list(
            await session.scalars(
                query.order_by(ReconciliationRun.started_at.desc(), ReconciliationRun.id.desc()).limit(limit + 1)
            )
        )
    page = rows[:limit]
    return page, page[-1].id if len(rows) > limit else None
