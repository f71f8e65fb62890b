"""The daily reconciliation's side effects: list the day's transfers at Stripe, read the ledger,
compare (`haven.reconciliation`), and record the outcome. Each activity is idempotent on the run
id: a run recorded done is never compared or written again."""

from __future__ import annotations

from datetime import date

import stripe
import structlog
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from haven.audit import audit_entry
from haven.audit_chain import append
from haven.db import Database, utcnow
from haven.db.models import Payment, ReconciliationFinding, ReconciliationRun
from haven.grant_request import SYSTEM, PaymentRail
from haven.notifications.outbox import outbox_entry
from haven.reconciliation import (
    PAID,
    DayReconciliation,
    Finding,
    LedgerPayment,
    ReconciliationSummary,
    compare,
    day_bounds,
    references_to_look_up,
)
from haven.stripe_transfers import Transfer
from haven.reconciliation_runs import DONE, FINANCE, fail_run, new_run_row, open_run, report_link

log = structlog.get_logger("haven.reconciliation")

STRIPE_NOT_CONFIGURED = "StripeNotConfigured"
PAGE = 100  # Stripe's largest page


class StripeReconciliation:
    def __init__(self, db: Database, client: stripe.StripeClient | None, public_base_url: str):
        """`client` is None on a worker without the Stripe rail: its runs fail, and say why."""
        self.db = db
        self.client = client
        self.public_base_url = public_base_url

    @activity.defn
    async def open_reconciliation_run(self, run: DayReconciliation) -> None:
        await open_run(self.db, run)

    @activity.defn
    async def reconcile_stripe_day(self, run: DayReconciliation) -> ReconciliationSummary:
        if self.client is None:
            raise ApplicationError(
                "the Stripe rail is not configured on this worker (HAVEN_STRIPE_API_KEY): nothing to reconcile with",
                type=STRIPE_NOT_CONFIGURED,
                non_retryable=True,
            )
        done = await self._summary_if_done(run.run_id)
        if done is not None:
            return done
        transfers = await self._day_transfers(run.day)
        ledger = await self._ledger(run.day, transfers)
        elsewhere = await self._transfers_by_id(references_to_look_up(run.day, transfers, ledger))
        findings = compare(run.day, transfers, ledger, elsewhere)
        return await self._record(run, len(transfers), len(ledger), findings)

    @activity.defn
    async def fail_reconciliation_run(self, run: DayReconciliation) -> None:
        await fail_run(self.db, run, self.public_base_url)

    # --- Stripe -------------------------------------------------------------------------------

    async def _day_transfers(self, day: date) -> list[Transfer]:
        start, end = day_bounds(day)
        params = {"created": {"gte": int(start.timestamp()), "lt": int(end.timestamp())}, "limit": PAGE}
        transfers: list[Transfer] = []
        while True:
            page = await self.client.v1.transfers.list_async(params)
            transfers += [Transfer.from_stripe(t.to_dict()) for t in page.data]
            if not page.has_more or not page.data:
                return transfers
            params = {**params, "starting_after": page.data[-1].id}

    async def _transfers_by_id(self, ids: list[str]) -> list[Transfer]:
        found = []
        for transfer_id in ids:
            try:
                transfer = await self.client.v1.transfers.retrieve_async(transfer_id)
            except stripe.InvalidRequestError as error:
                if error.http_status == 404:
                    continue  # Stripe has no such transfer: the comparison calls it missing
                raise
            found.append(Transfer.from_stripe(transfer.to_dict()))
        return found

    # --- the ledger ---------------------------------------------------------------------------

    async def _ledger(self, day: date, transfers: list[Transfer]) -> list[LedgerPayment]:
        """The payments paid by Stripe on `day`, and those the day's transfers name or belong to."""
        ids = {t.id for t in transfers}
        tranches = {(t.request_id, t.tranche) for t in transfers if t.request_id}
        paid_that_day = and_(Payment.rail == PaymentRail.STRIPE, Payment.status == PAID, Payment.paid_on == day)
        conditions = [paid_that_day]
        if ids:
            conditions.append(Payment.reference.in_(ids))
        if tranches:
            conditions.append(Payment.request_id.in_({request_id for request_id, _ in tranches}))
        async with self.db.sessions() as session:
            rows = await session.scalars(select(Payment).where(or_(*conditions)))
            payments = [
                LedgerPayment(
                    request_id=p.request_id, tranche=p.tranche, rail=p.rail, status=p.status,
                    amount_minor=p.amount_minor, currency=p.currency, reference=p.reference,
                    paid_on=p.paid_on, reversed_minor=p.reversed_minor or 0,
                )  # fmt: skip
                for p in rows
            ]
        # Other tranches of the same requests came along with the query; they are not compared.
        return [p for p in payments if p.paid_by_stripe_on(day) or p.reference in ids or (p.request_id, p.tranche) in tranches]

    # --- the record ---------------------------------------------------------------------------

    async def _summary_if_done(self, run_id: str) -> ReconciliationSummary | None:
        async with self.db.sessions() as session:
            row = await session.get(ReconciliationRun, run_id)
            return _summary(row) if row is not None and row.status == DONE else None

    async def _record(self, run: DayReconciliation, transfers_seen: int, payments_seen: int, findings: list[Finding]) -> ReconciliationSummary:
        """The run, its findings, an audit event per finding and finance's notification: all in
        one transaction, or nothing."""
        try:
            async with self.db.transaction() as session:
                row = await session.get(ReconciliationRun, run.run_id, with_for_update=True)
                if row is None:
                    row = new_run_row(run)
                    session.add(row)
                if row.status == DONE:
                    return _summary(row)
                now = utcnow()
                audit = []
                for finding in findings:
                    session.add(
                        ReconciliationFinding(
                            run_id=run.run_id, kind=str(finding.kind), subject=finding.subject,
                            transfer_id=finding.transfer_id, request_id=finding.request_id, tranche=finding.tranche,
                            ledger_amount_minor=finding.ledger_amount_minor,
                            stripe_amount_minor=finding.stripe_amount_minor, currency=finding.currency,
                            detail=finding.detail, found_at=now,
                        )
                    )  # fmt: skip
                    audit.append(
                        audit_entry(
                            SYSTEM, "reconciliation_mismatch", finding.request_id,
                            run_id=run.run_id, day=run.day.isoformat(), **finding.facts(),
                        )
                    )  # fmt: skip
                if findings:
                    session.add(
                        outbox_entry(
                            f"reconciliation:{run.run_id}:reconciliation_mismatches:{FINANCE}",
                            kind="reconciliation_mismatches",
                            audience=FINANCE,
                            request_id=None,
                            status=DONE,
                            link=report_link(self.public_base_url, run.run_id),
                        )
                    )
                row.status, row.finished_at = DONE, now
                row.transfers_seen, row.payments_seen, row.mismatches = transfers_seen, payments_seen, len(findings)
                summary = _summary(row)
                await append(session, *audit)  # last: it takes the audit chain's lock
        except IntegrityError:
            # Another attempt of this same run recorded it first (its findings are unique per run).
            done = await self._summary_if_done(run.run_id)
            if done is None:
                raise
            return done
        log.info("reconciliation_done", run_id=run.run_id, day=run.day.isoformat(), mismatches=len(findings))
        return summary


def _summary(row: ReconciliationRun) -> ReconciliationSummary:
    return ReconciliationSummary(
        run_id=row.id, day=row.day, status=row.status, transfers_seen=row.transfers_seen,
        payments_seen=row.payments_seen, mismatches=row.mismatches,
    )  # fmt: skip
