"""The stored reconciliation runs and their findings: opened by the API (finance asked) or by the
workflow's first step (the schedule asked), completed or failed by the workflow's activities,
and read by the API as the finance report. A Stripe event whose money back the ledger could not
settle on its own records a run of its own (`record_event_findings`)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from haven.audit import audit_entry, record_change
from haven.db import Database, upsert_once_more_on_conflict, utcnow
from haven.db.models import AuditEvent, ReconciliationFinding, ReconciliationRun
from haven.grant_request import Actor
from haven.notifications.outbox import outbox_entry
from haven.reconciliation import DayReconciliation, Finding

RUNNING, DONE, FAILED = "running", "done", "failed"
STRIPE_EVENT = "stripe_event"  # the trigger of a run that holds what applying a Stripe event found
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


def finding_row(run_id: str, finding: Finding, found_at: datetime) -> ReconciliationFinding:
    return ReconciliationFinding(
        run_id=run_id, kind=str(finding.kind), subject=finding.subject, transfer_id=finding.transfer_id,
        request_id=finding.request_id, tranche=finding.tranche, ledger_amount_minor=finding.ledger_amount_minor,
        stripe_amount_minor=finding.stripe_amount_minor, currency=finding.currency, detail=finding.detail, found_at=found_at,
    )  # fmt: skip


def event_run_id(event_id: str) -> str:
    """The run that holds what applying one Stripe event found (ids of up to 100 characters)."""
    run_id = f"se_{event_id}"
    return run_id if len(run_id) <= 100 else f"se_{hashlib.sha256(event_id.encode()).hexdigest()}"


async def record_event_findings(
    session: AsyncSession, event_id: str, day: date, findings: list[Finding], actor: Actor, public_base_url: str
) -> list[AuditEvent]:
    """What applying a Stripe event to the ledger could not settle on its own (money back matched
    to a refund, or not applied), stored as a run of its own (trigger `stripe_event`, done at
    once), so finance reads it with the daily reports and is told; in the caller's transaction.
    Returns the audit events for the caller to append last. The event is applied once, so its
    run is written once."""
    if not findings:
        return []
    now = utcnow()
    run_id = event_run_id(event_id)
    session.add(
        ReconciliationRun(
            id=run_id, day=day, trigger=STRIPE_EVENT, requested_by=actor.subject, status=DONE, transfers_seen=1,
            payments_seen=len({(f.request_id, f.tranche) for f in findings if f.tranche is not None}),
            mismatches=len(findings), started_at=now, finished_at=now,
        )
    )  # fmt: skip
    await session.flush()  # the run before its findings (no relationship tells the session so)
    for finding in findings:
        session.add(finding_row(run_id, finding, now))
    session.add(
        outbox_entry(
            f"reconciliation:{run_id}:reconciliation_mismatches:{FINANCE}",
            kind="reconciliation_mismatches",
            audience=FINANCE,
            request_id=None,
            status=DONE,
            link=report_link(public_base_url, run_id),
        )
    )
    return [
        audit_entry(actor, "reconciliation_mismatch", f.request_id, run_id=run_id, day=day.isoformat(), stripe_event=event_id, **f.facts())
        for f in findings
    ]


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


# Where a page ended: the last run's start, in microseconds since 1970 (UTC), and its id. Any
# string of this form is a place in the list's order (the API's schema states it).
RUN_CURSOR = r"^[0-9]{1,16}\.[!-~]{1,100}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _cursor(run: ReconciliationRun) -> str:
    started = run.started_at.replace(tzinfo=run.started_at.tzinfo or timezone.utc)
    return f"{(started - _EPOCH) // timedelta(microseconds=1)}.{run.id}"


async def list_runs(db: Database, *, day: date | None, limit: int, after: str | None) -> tuple[list[ReconciliationRun], str | None]:
    """Newest first. `after` is the cursor the previous page ended with; returns the page and
    the next page's cursor."""
    async with db.sessions() as session:
        query = select(ReconciliationRun)
        if day is not None:
            query = query.where(ReconciliationRun.day == day)
        if after is not None:
            if not re.fullmatch(RUN_CURSOR, after):
                raise UnknownCursor("not a cursor from this list")
            microseconds, run_id = after.split(".", 1)
            started = _EPOCH + timedelta(microseconds=int(microseconds))
            query = query.where(
                or_(
                    ReconciliationRun.started_at < started,
                    and_(ReconciliationRun.started_at == started, ReconciliationRun.id < run_id),
                )
            )
        rows = list(
            await session.scalars(
                query.order_by(ReconciliationRun.started_at.desc(), ReconciliationRun.id.desc()).limit(limit + 1)
            )
        )
    page = rows[:limit]
    return page, _cursor(page[-1]) if len(rows) > limit else None
