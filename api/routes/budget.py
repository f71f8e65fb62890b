"""Finance sets each category's budget for a period and reads what is left of it. Reservations
draw on these allocations; an approved request that does not fit waits for funds, and is told to
try again at once when finance changes its category's allocation."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from haven import fund_summary as fund_summary_of
from haven import ledger
from haven.db import utcnow
from haven.audit import record_change
from haven.db.models import BudgetAllocation, GrantRequestRecord
from haven.grant_request import Actor, CalendarDate, Category, Strict
from haven.lifecycle import Status
from haven.money import Money
from api.permissions import Operation, require
from api.problems import PROBLEM_RESPONSES as PROBLEMS
from api.problems import Problem
from api.routes.exports import period_of
from api.services import Services, Svc
from workflows.grant_request import GrantRequestWorkflow

router = APIRouter(prefix="/v1/budget", tags=["finance"])


class AllocationInput(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ends_on": "2026-12-31", "amount": {"minor_units": 25000000, "currency": "EUR"}}]}
    )

    ends_on: CalendarDate = Field(description="The period's last day (inclusive); it starts on the day in the path.")
    amount: Money = Field(description="The whole allocation for the period, in the fund's base currency.")


class AllocationView(BaseModel):
    id: str
    category: str
    starts_on: date
    ends_on: date
    allocated: Money
    reserved: Money
    paid: Money
    available: Money
    set_by: str
    updated_at: datetime


def _view(balance: ledger.Balance, currency: str, set_by: str, updated_at: datetime) -> AllocationView:
    def money(minor: int) -> Money:
        return Money(minor_units=minor, currency=currency)

    return AllocationView(
        id=balance.allocation_id, category=balance.category, starts_on=balance.starts_on, ends_on=balance.ends_on,
        allocated=money(balance.allocated), reserved=money(balance.reserved), paid=money(balance.paid),
        available=money(balance.available), set_by=set_by, updated_at=updated_at,
    )  # fmt: skip


@router.get("/allocations", response_model=list[AllocationView], responses=PROBLEMS)
async def list_allocations(svc: Svc, actor: Annotated[Actor, Depends(require(Operation.READ_BUDGET))]) -> list[AllocationView]:
    """Every allocation with what is reserved, paid and still available."""
    currency = svc.intake.policy.policy.base_currency
    async with svc.db.sessions() as session:
        rows = {a.id: a for a in await session.scalars(select(BudgetAllocation))}
        return [_view(b, currency, rows[b.allocation_id].set_by, rows[b.allocation_id].updated_at) for b in await ledger.balances(session)]


@router.put("/allocations/{category}/{starts_on}", response_model=AllocationView, responses=PROBLEMS)
async def set_allocation(
    category: Category,
    starts_on: Annotated[date, Path(description="The period's first day, YYYY-MM-DD")],
    body: AllocationInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.MANAGE_BUDGET))],
) -> AllocationView:
    """Creates or changes the category's allocation for the period starting on `starts_on`.
    Refused (409) when it overlaps another period of the category, or is less than is already
    reserved or paid from it."""
    base = svc.intake.policy.policy.base_currency
    if body.amount.currency != base:
        detail = f"allocations are in the fund's base currency, {base}"
        raise Problem(422, "validation-error", detail, errors=[{"field": "amount.currency", "message": detail}])
    try:
        async with svc.db.transaction() as session:
            allocation, before = await ledger.set_allocation(
                session, category, starts_on, body.ends_on, body.amount, actor.subject
            )
            await record_change(
                session, actor, "budget_allocation_set", None, allocation=allocation.id,
                ends_on=body.ends_on.isoformat(), before_minor=before, after_minor=body.amount.minor_units, currency=base,
            )  # fmt: skip
            balance = ledger.Balance(
                allocation.id, allocation.category, allocation.starts_on, allocation.ends_on,
                allocation.amount_base_minor, allocation.reserved_base_minor, allocation.paid_base_minor,
            )  # fmt: skip
            view = _view(balance, base, allocation.set_by, allocation.updated_at)
    except ledger.AllocationRefused as refusal:
        raise Problem(409, "allocation-refused", str(refusal)) from None
    await _wake_requests_awaiting_funds(svc, category)
    return view


async def _wake_requests_awaiting_funds(svc: Services, category: str) -> None:
    """Best effort: each waiting request also tries again on its own (policy `funds_recheck_minutes`)."""
    async with svc.db.sessions() as session:
        waiting = await session.scalars(
            select(GrantRequestRecord.id).where(
                GrantRequestRecord.status == Status.AWAITING_FUNDS, GrantRequestRecord.category == category
            )
        )
        ids = list(waiting)
    for request_id in ids:
        try:
            await svc.client.get_workflow_handle(request_id).signal(GrantRequestWorkflow.funds_changed)
        except Exception:  # noqa: BLE001 - a request that ended meanwhile needs no nudge
            continue


class PaidView(BaseModel):
    paid: Money
    given_back: Money = Field(description="reversed by Stripe or refunded to the fund")
    net_paid: Money
    requests: int = Field(description="requests with a payment, reversal or refund in the period")


class OpenView(BaseModel):
    requests: int
    amount: Money


class CommitmentsView(BaseModel):
    reserved: dict[str, Money] = Field(description="per category: approved grants held from an allocation, not yet paid")
    awaiting_funds: dict[str, OpenView] = Field(description="per category: approved grants the allocation has no room for")
    awaiting_decision: dict[str, OpenView] = Field(description="per category: requested, not decided yet")


class SummaryView(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(alias="from", description="the first day included (UTC)")
    to: date = Field(description="the first day NOT included (UTC)")
    base_currency: str
    by_category: dict[str, PaidView]
    by_country: dict[str, PaidView]
    by_month: dict[str, PaidView] = Field(description='keyed "YYYY-MM" (UTC)')
    open_commitments: CommitmentsView = Field(description="now, whatever the period")


@router.get("/summary", response_model=SummaryView, response_model_by_alias=True, responses=PROBLEMS)
async def fund_summary(
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.READ_SUMMARY))],
    first_day: Annotated[CalendarDate | None, Query(alias="from", description="first day included; default 1 January this year")] = None,
    end_day: Annotated[CalendarDate | None, Query(alias="to", description="first day NOT included; default 1 January next year")] = None,
) -> SummaryView:
    """Money paid in [from, to), net of reversals and refunds, by category, by country and by
    month, and the open commitments: reserved, approved but waiting for funds, awaiting a decision.
    In the base currency; at most 366 days."""
    today = utcnow().date()
    period = period_of(first_day or date(today.year, 1, 1), end_day or date(today.year + 1, 1, 1))
    currency = svc.intake.policy.policy.base_currency

    def money(minor: int) -> Money:
        return Money(minor_units=minor, currency=currency)

    def paid(p: fund_summary_of.Paid) -> PaidView:
        return PaidView(paid=money(p.paid), given_back=money(p.given_back), net_paid=money(p.net), requests=p.requests)

    def opened(entries: dict[str, tuple[int, int]]) -> dict[str, OpenView]:
        return {k: OpenView(requests=n, amount=money(total)) for k, (n, total) in entries.items()}

    async with svc.db.sessions() as session:
        summary = await fund_summary_of.summarise(session, period)
    c = summary.commitments
    return SummaryView(
        from_=period.first_day, to=period.end_day, base_currency=currency,
        by_category={k: paid(v) for k, v in summary.by_category.items()},
        by_country={k: paid(v) for k, v in summary.by_country.items()},
        by_month={k: paid(v) for k, v in summary.by_month.items()},
        open_commitments=CommitmentsView(
            reserved={k: money(v) for k, v in c.reserved.items()},
            awaiting_funds=opened(c.awaiting_funds), awaiting_decision=opened(c.awaiting_decision),
        ),
    )  # fmt: skip
