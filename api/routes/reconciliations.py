"""Reconciliation of Stripe transfers with the payments ledger: finance starts one for a past day
(the schedule runs one daily), and finance and directors read what each run found."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from temporalio.service import RPCError

from haven.db import utcnow
from haven.db.models import ReconciliationFinding, ReconciliationRun
from haven.grant_request import Actor, CalendarDate, PaymentRail, Strict
from haven.reconciliation import RECONCILABLE_DAYS, FindingKind, ReconciliationOrder, refusal_of_day
from haven.reconciliation_runs import RUN_CURSOR, UnknownCursor, fail_run, list_runs, open_run, run_report
from api.permissions import Operation, require
from api.problems import PROBLEM_RESPONSES as PROBLEMS
from api.problems import Problem
from api.services import Svc
from workflows.reconciliation import ReconciliationWorkflow

router = APIRouter(prefix="/v1/reconciliations", tags=["reconciliation"])
RunId = Annotated[str, Path(max_length=100, description="the run's id, e.g. rc_5b1e…")]

RUN_EXAMPLE = {
    "id": "rc_5b1e0c9d2f7a4e6b8c3d1a0f9e8d7c6b",
    "day": "2026-11-24",
    "trigger": "finance",
    "requested_by": "fin-1",
    "status": "done",
    "transfers_seen": 12,
    "payments_seen": 12,
    "mismatches": 1,
    "started_at": "2026-11-25T09:14:03.120000Z",
    "finished_at": "2026-11-25T09:14:04.870000Z",
}
FINDING_EXAMPLE = {
    "kind": "amount_differs",
    "subject": "tr_1a2b3c4d5e6f7a8b9c0d1e2f",
    "transfer_id": "tr_1a2b3c4d5e6f7a8b9c0d1e2f",
    "request_id": "gr_3f9a0c2e",
    "tranche": 1,
    "ledger_amount_minor": 150000,
    "stripe_amount_minor": 140000,
    "currency": "EUR",
    "detail": "request gr_3f9a0c2e tranche 1: amount 150000 in the ledger, 140000 at Stripe (minor units)",
    "found_at": "2026-11-25T09:14:04.870000Z",
}


class ReconciliationInput(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"day": "2026-11-24"}]})

    day: CalendarDate = Field(
        description=f"The UTC day whose Stripe transfers to reconcile: not in the future, at most {RECONCILABLE_DAYS} days back."
    )

    @field_validator("day")
    @classmethod
    def _reconcilable(cls, day: date) -> date:
        refusal = refusal_of_day(day, utcnow().date())
        if refusal:
            raise ValueError(refusal)
        return day


class ReconciliationRunView(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [RUN_EXAMPLE]})

    id: str
    day: date
    trigger: Literal["schedule", "finance", "stripe_event"] = Field(
        description="`stripe_event`: what applying one Stripe event to the ledger found (money back matched to a refund, or not applied)"
    )
    requested_by: str
    status: Literal["running", "done", "failed"]
    transfers_seen: int
    payments_seen: int
    mismatches: int
    started_at: datetime
    finished_at: datetime | None


class FindingView(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [FINDING_EXAMPLE]})

    kind: FindingKind
    subject: str = Field(description="the transfer id, or `<request id>:<tranche>` for a payment with no transfer")
    transfer_id: str | None
    request_id: str | None
    tranche: int | None
    ledger_amount_minor: int | None
    stripe_amount_minor: int | None
    currency: str | None
    detail: str
    found_at: datetime


class ReconciliationReport(ReconciliationRunView):
    model_config = ConfigDict(json_schema_extra={"examples": [{**RUN_EXAMPLE, "findings": [FINDING_EXAMPLE]}]})

    findings: list[FindingView]


class ReconciliationPage(BaseModel):
    items: list[ReconciliationRunView]
    next_cursor: str | None = None


def _view(run: ReconciliationRun) -> ReconciliationRunView:
    return ReconciliationRunView.model_validate(run)


def _report(run: ReconciliationRun, findings: list[ReconciliationFinding]) -> ReconciliationReport:
    return ReconciliationReport(**_view(run).model_dump(), findings=[FindingView.model_validate(f) for f in findings])


@router.post("", status_code=202, response_model=ReconciliationRunView, responses=PROBLEMS)
async def start_reconciliation(
    body: ReconciliationInput, response: Response, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.RECONCILE))]
) -> ReconciliationRunView:
    """Reconcile a past day's Stripe transfers with the ledger now (the schedule does it daily at
    03:00 UTC for the day before). Answers at once with the run, `running`; its report is at
    the `Location`. 409 when this deployment does not pay through Stripe."""
    if PaymentRail.STRIPE not in svc.settings.payment_rails:
        raise Problem(409, "stripe-not-configured", "this deployment does not pay through Stripe (HAVEN_STRIPE_API_KEY): there is nothing to reconcile")
    order = ReconciliationOrder(day=body.day, trigger="finance", requested_by=actor.subject, run_id=f"rc_{uuid.uuid4().hex}")
    run = order.for_run(order.run_id, utcnow())
    # Recorded before the workflow starts, so the report's address answers at once.
    row = await open_run(svc.db, run, actor)
    try:
        await svc.client.start_workflow(ReconciliationWorkflow.run, order, id=run.run_id, task_queue=svc.settings.task_queue)
    except RPCError:
        await fail_run(svc.db, run, svc.settings.public_base_url, notify=False)
        raise Problem(503, "workflow-unavailable", "the workflow service is unavailable; try again shortly") from None
    response.headers["Location"] = f"/v1/reconciliations/{run.run_id}"
    return _view(row)


@router.get("", response_model=ReconciliationPage, responses=PROBLEMS)
async def list_reconciliations(
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.READ_RECONCILIATION))],
    day: Annotated[CalendarDate | None, Query(description="only the runs of this day")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(pattern=RUN_CURSOR, description="`next_cursor` from the previous page")] = None,
) -> ReconciliationPage:
    """The runs, newest first: the daily and requested reconciliations, and the findings of Stripe
    events whose money back the ledger could not settle on its own (trigger `stripe_event`)."""
    try:
        runs, next_cursor = await list_runs(svc.db, day=day, limit=limit, after=cursor)
    except UnknownCursor as error:
        raise Problem(422, "validation-error", f"cursor: {error}", errors=[{"field": "cursor", "message": str(error)}]) from None
    return ReconciliationPage(items=[_view(r) for r in runs], next_cursor=next_cursor)


@router.get("/{run_id}", response_model=ReconciliationReport, responses=PROBLEMS)
async def get_reconciliation(
    run_id: RunId, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.READ_RECONCILIATION))]
) -> ReconciliationReport:
    """A run and every mismatch it found: a transfer missing from the ledger, a ledger payment
    missing at Stripe, or an amount (or currency, or reversal) that differs."""
    report = await run_report(svc.db, run_id)
    if report is None:
        raise Problem(404, "not-found", f"no reconciliation run {run_id}")
    return _report(report.run, report.findings)
