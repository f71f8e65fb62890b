"""Grant request endpoints. Each action is a Workflow Update: the workflow validates it (409 with
the reason when refused) and the response says what it did."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import BaseModel, ValidationError
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from haven.assignment import AssignmentInput, AssignmentRefused, assign
from haven.audit import record_case_read
from haven.db import utcnow
from haven.db.queries import NOBODY, QUEUE_CURSOR, QueueFilter, QueuePosition, case_file, find_request, list_requests
from haven.grant_request import (
    ActionResult,
    Acting,
    Actor,
    Category,
    CheckInInput,
    CheckInRecord,
    DecisionCommand,
    DecisionInput,
    FollowUpReport,
    GrantRequestSubmission,
    InformationInput,
    InformationResponse,
    ManualPaymentInput,
    ManualPaymentRecord,
    PaymentFailureInput,
    PaymentFailureRecord,
    Payee,
    PaymentRail,
    PaymentRetry,
    PaymentRetryInput,
    ReportAcceptance,
    ReportAcceptanceInput,
    ReportInput,
    ScreeningClearance,
    ScreeningClearanceInput,
    Urgency,
    Withdrawal,
    WithdrawalInput,
)
from haven.intake import IntakeRefused
from haven.lifecycle import Status
from api.limits import RateLimit
from api.permissions import Operation, may_read_case, require, scoped_to_organisation
from api.problems import PROBLEM_RESPONSES, Problem
from api.services import Services, Svc
from api.views import GrantRequestSummary, GrantRequestView, SubmissionAccepted, full_view, summary
from workflows.grant_request import FIELD_REFUSED, GrantRequestWorkflow

router = APIRouter(prefix="/v1/grant-requests", tags=["grant requests"])

PROBLEMS = PROBLEM_RESPONSES
RequestId = Annotated[str, Path(max_length=40, description="the grant request's id, e.g. gr_3f9a…")]


@router.post("", status_code=202, response_model=SubmissionAccepted, responses=PROBLEMS)
async def submit_grant_request(
    body: GrantRequestSubmission,
    response: Response,
    svc: Svc,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)],
    actor: Annotated[Actor, Depends(require(Operation.SUBMIT))],
) -> SubmissionAccepted:
    """An intermediary submits an urgent request. The same Idempotency-Key with the same body
    returns the same request; with another body it is refused. Each organisation may submit
    a limited number of requests a minute (429 with Retry-After beyond it)."""

    def admit() -> None:
        wait = svc.intake_rate.take(actor.organisation or "")
        if wait:
            raise Problem(
                429,
                "rate-limited",
                "your organisation has submitted too many requests in the last minute; retry after the given delay",
                headers={"Retry-After": RateLimit.retry_after(wait)},
            )

    try:
        accepted = await svc.intake.submit(body, actor, idempotency_key, admit)
    except IntakeRefused as refused:
        status = 403 if refused.kind == "forbidden" else 422
        errors = [{"field": refused.field, "message": str(refused)}] if refused.field else None
        raise Problem(status, f"intake-{refused.kind}", str(refused), errors=errors) from None
    response.headers["Location"] = f"/v1/grant-requests/{accepted.record.id}"
    if not accepted.created:
        response.headers["Idempotent-Replayed"] = "true"
    earlier = await svc.intake.earlier_for_defender(accepted.record)
    return SubmissionAccepted(**summary(accepted.record).model_dump(), earlier_requests_for_defender=earlier)


class GrantRequestPage(BaseModel):
    items: list[GrantRequestSummary]
    next_cursor: str | None = None


@router.get("", response_model=GrantRequestPage, responses=PROBLEMS)
async def list_grant_requests(
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.LIST))],
    status: Annotated[list[Status] | None, Query()] = None,
    urgency: Urgency | None = None,
    category: Category | None = None,
    country: Annotated[str | None, Query(pattern="^[A-Z]{2}$", description="ISO 3166-1 alpha-2")] = None,
    assigned_to: Annotated[
        str | None, Query(min_length=1, max_length=200, description="`me`, `nobody`, or a staff member's subject")
    ] = None,
    overdue: Annotated[
        Literal["true"] | None, Query(description="only requests past their decision deadline or follow-up date")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(pattern=QUEUE_CURSOR, description="`next_cursor` from the previous page")] = None,
) -> GrantRequestPage:
    """The queue, soonest decision deadline first. Intermediaries see their organisation's only."""
    try:
        after = QueuePosition.decode(cursor) if cursor else None
    except ValueError:
        raise Problem(
            422, "validation-error", "cursor: not a cursor from this queue", errors=[{"field": "cursor", "message": "not a cursor from this queue"}]
        ) from None
    where = QueueFilter(
        statuses=[str(s) for s in status] if status else None,
        urgency=urgency,
        category=category,
        country=country,
        organisation_id=scoped_to_organisation(actor),
        assigned_to={"me": actor.subject, "nobody": NOBODY}.get(assigned_to, assigned_to) if assigned_to else None,
        overdue_at=utcnow() if overdue else None,
        after=after,
        limit=limit,
    )
    records, position = await list_requests(svc.db, where)
    return GrantRequestPage(items=[summary(r) for r in records], next_cursor=position.encode() if position else None)


@router.get("/{request_id}", response_model=GrantRequestView, responses=PROBLEMS)
async def get_grant_request(
    request_id: RequestId, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.READ))]
) -> GrantRequestView:
    """The case file. Every read is audited (who, when, which request) before it is returned."""
    record = await _visible(svc, request_id, actor)
    await record_case_read(svc.db, actor, request_id, view="case" if may_read_case(actor) else "payment")
    return full_view(await case_file(svc.db, record, svc.case_keys), actor)


@router.put("/{request_id}/assignment", response_model=GrantRequestSummary, responses=PROBLEMS)
async def assign_grant_request(
    request_id: RequestId,
    body: AssignmentInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.ASSIGN))],
) -> GrantRequestSummary:
    """Assign the request to a caseworker or director on the roster, hand it over, or (null)
    put it back in the unassigned queue."""
    await _visible(svc, request_id, actor)
    try:
        assignee = actor.subject if body.assignee == "me" else body.assignee
        record = await assign(svc.db, actor, request_id, assignee)
    except AssignmentRefused as refused:
        if refused.field:
            raise Problem(422, "assignment-refused", str(refused), errors=[{"field": refused.field, "message": str(refused)}]) from None
        raise Problem(409, "assignment-refused", str(refused)) from None
    return summary(record)


@router.post("/{request_id}/decisions", response_model=ActionResult, responses=PROBLEMS)
async def decide(
    request_id: RequestId, body: DecisionInput, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.DECIDE))]
) -> ActionResult:
    """Approve (with an amount, possibly lower than requested), reject, or request information."""
    command = DecisionCommand(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.decide, command)


@router.post("/{request_id}/screening-clearance", response_model=ActionResult, responses=PROBLEMS)
async def clear_screening(
    request_id: RequestId,
    body: ScreeningClearanceInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.CLEAR_SCREENING))],
) -> ActionResult:
    """A caseworker clears a denied-party hit after checking it is a different party."""
    command = ScreeningClearance(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.clear_screening, command)


@router.post("/{request_id}/information", response_model=ActionResult, responses=PROBLEMS)
async def provide_information(
    request_id: RequestId,
    body: InformationInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.PROVIDE_INFORMATION))],
) -> ActionResult:
    command = InformationResponse(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.provide_information, command)


@router.post("/{request_id}/payments", response_model=ActionResult, responses=PROBLEMS)
async def record_payment(
    request_id: RequestId,
    body: ManualPaymentInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.RECORD_PAYMENT))],
) -> ActionResult:
    """Finance records the bank transfer that paid the current tranche. 422 (a field error on
    `paid_on`) when it is dated before the request was approved or after today (UTC days)."""
    command = ManualPaymentRecord(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.record_payment, command)


@router.post("/{request_id}/payment-failures", response_model=ActionResult, responses=PROBLEMS)
async def record_payment_failure(
    request_id: RequestId,
    body: PaymentFailureInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.RECORD_PAYMENT_FAILURE))],
) -> ActionResult:
    """Finance records that the transfer failed; the budget reservation is released."""
    command = PaymentFailureRecord(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.record_payment_failure, command)


@router.post("/{request_id}/payment-retries", response_model=ActionResult, responses=PROBLEMS)
async def retry_payment(
    request_id: RequestId,
    body: PaymentRetryInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.RETRY_PAYMENT))],
) -> ActionResult:
    """Finance retries a failed payment; with `rail` it is paid through another rail from now on
    (e.g. `manual` after Stripe refused the transfer)."""
    if body.rail is not None:
        await _check_rail(svc, await _visible(svc, request_id, actor), body.rail)
    return await _act(svc, request_id, actor, GrantRequestWorkflow.retry_payment, PaymentRetry(actor=actor, **body.model_dump()))


async def _check_rail(svc: Services, record, rail: PaymentRail) -> None:
    """A switch is refused before it reaches the workflow when this fund or the payee's record
    cannot pay through the rail (the payee is checked by the same model as at intake)."""
    if rail not in svc.settings.payment_rails:
        detail = f"this fund does not pay through {rail}"
    else:
        try:
            async with svc.db.sessions() as session:
                payee = (await svc.case_keys.details(session, record))["payee"]
            Payee.model_validate({**payee, "rail": rail})
            return
        except ValidationError:
            detail = f"the payee has no account for the {rail} rail (a Stripe connected account)"
    raise Problem(422, "rail-unavailable", detail, errors=[{"field": "rail", "message": detail}])


@router.post("/{request_id}/check-ins", response_model=ActionResult, responses=PROBLEMS)
async def check_in(
    request_id: RequestId, body: CheckInInput, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.CHECK_IN))]
) -> ActionResult:
    """Safe housing: the intermediary confirms the defender still needs the next tranche."""
    command = CheckInRecord(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.check_in, command)


@router.post("/{request_id}/reports", response_model=ActionResult, responses=PROBLEMS)
async def submit_report(
    request_id: RequestId, body: ReportInput, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.SUBMIT_REPORT))]
) -> ActionResult:
    command = FollowUpReport(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.submit_report, command)


@router.post("/{request_id}/report-acceptance", response_model=ActionResult, responses=PROBLEMS)
async def accept_report(
    request_id: RequestId,
    body: ReportAcceptanceInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.ACCEPT_REPORT))],
) -> ActionResult:
    """A caseworker accepts the receipts and report; the request closes."""
    command = ReportAcceptance(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.accept_report, command)


@router.post("/{request_id}/withdraw", response_model=ActionResult, responses=PROBLEMS)
async def withdraw(
    request_id: RequestId, body: WithdrawalInput, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.WITHDRAW))]
) -> ActionResult:
    command = Withdrawal(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.withdraw, command)


async def _visible(svc: Services, request_id: str, actor: Actor):
    record = await find_request(svc.db, request_id, scoped_to_organisation(actor))
    if record is None:
        raise Problem(404, "not-found", f"no grant request {request_id}")
    return record


async def _act(svc: Services, request_id: str, actor: Actor, update, command: Acting) -> ActionResult:
    record = await _visible(svc, request_id, actor)
    if command.case_text:
        async with svc.db.sessions() as session:
            sealer = await svc.case_keys.sealer(session, request_id)
        if sealer.destroyed:
            raise Problem(409, "action-refused", "the request's details were erased; it takes no further action")
        command = command.sealed(sealer.seal_text)
    handle = svc.client.get_workflow_handle(request_id)
    try:
        return await handle.execute_update(update, command, result_type=ActionResult)
    except WorkflowUpdateFailedError as failure:
        reason = getattr(failure.cause, "message", None) or "the action was refused"
        if isinstance(failure.cause, ApplicationError) and failure.cause.type == FIELD_REFUSED and failure.cause.details:
            field = str(failure.cause.details[0])
            raise Problem(422, "validation-error", f"{field}: {reason}", errors=[{"field": field, "message": reason}]) from None
        raise Problem(409, "action-refused", reason) from None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            # The workflow has finished (or not yet started): nothing can be done to it now.
            raise Problem(409, "action-refused", f"the request is {record.status}; it takes no further action") from None
        raise Problem(503, "workflow-unavailable", "the workflow service is unavailable; try again shortly") from None
