"""Grant request endpoints. Each action is a Workflow Update: the workflow validates it (409 with
the reason when refused) and the response says what it did."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from haven.db.queries import QueueFilter, case_file, find_request, list_requests
from haven.grant_request import (
    ActionResult,
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
    PaymentRetry,
    ReportAcceptance,
    ReportAcceptanceInput,
    ReportInput,
    ScreeningClearance,
    ScreeningClearanceInput,
    Strict,
    Urgency,
    Withdrawal,
    WithdrawalInput,
)
from haven.intake import IntakeRefused
from haven.lifecycle import Status
from api.permissions import Operation, require, scoped_to_organisation
from api.problems import Problem, ProblemBody
from api.services import Services, services
from api.views import GrantRequestSummary, GrantRequestView, full_view, summary
from workflows import GrantRequestWorkflow

router = APIRouter(prefix="/v1/grant-requests", tags=["grant requests"])

PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": ProblemBody, "content": {"application/problem+json": {}}}
    for code in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}
Svc = Annotated[Services, Depends(services)]


class EmptyBody(Strict):
    pass


@router.post("", status_code=202, response_model=GrantRequestSummary, responses=PROBLEMS)
async def submit_grant_request(
    body: GrantRequestSubmission,
    response: Response,
    svc: Svc,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)],
    actor: Annotated[Actor, Depends(require(Operation.SUBMIT))],
) -> GrantRequestSummary:
    """An intermediary submits an urgent request. The same Idempotency-Key with the same body
    returns the same request; with another body it is refused."""
    try:
        accepted = await svc.intake.submit(body, actor, idempotency_key)
    except IntakeRefused as refused:
        status = 403 if refused.kind == "forbidden" else 422
        errors = [{"field": refused.field, "message": str(refused)}] if refused.field else None
        raise Problem(status, f"intake-{refused.kind}", str(refused), errors=errors) from None
    response.headers["Location"] = f"/v1/grant-requests/{accepted.record.id}"
    if not accepted.created:
        response.headers["Idempotent-Replayed"] = "true"
    return summary(accepted.record)


@router.get("", response_model=list[GrantRequestSummary], responses=PROBLEMS)
async def list_grant_requests(
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.LIST))],
    status: Annotated[list[Status] | None, Query()] = None,
    urgency: Urgency | None = None,
    category: Category | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[GrantRequestSummary]:
    """The queue, soonest decision deadline first. Intermediaries see their organisation's only."""
    where = QueueFilter(
        statuses=[str(s) for s in status] if status else None,
        urgency=urgency,
        category=category,
        organisation_id=scoped_to_organisation(actor),
        limit=limit,
        offset=offset,
    )
    return [summary(r) for r in await list_requests(svc.db, where)]


@router.get("/{request_id}", response_model=GrantRequestView, responses=PROBLEMS)
async def get_grant_request(
    request_id: str, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.READ))]
) -> GrantRequestView:
    record = await _visible(svc, request_id, actor)
    return full_view(await case_file(svc.db, record), actor)


@router.post("/{request_id}/decisions", response_model=ActionResult, responses=PROBLEMS)
async def decide(
    request_id: str, body: DecisionInput, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.DECIDE))]
) -> ActionResult:
    """Approve (with an amount, possibly lower than requested), reject, or request information."""
    command = DecisionCommand(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.decide, command)


@router.post("/{request_id}/screening-clearance", response_model=ActionResult, responses=PROBLEMS)
async def clear_screening(
    request_id: str,
    body: ScreeningClearanceInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.CLEAR_SCREENING))],
) -> ActionResult:
    """A caseworker clears a denied-party hit after checking it is a different party."""
    command = ScreeningClearance(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.clear_screening, command)


@router.post("/{request_id}/information", response_model=ActionResult, responses=PROBLEMS)
async def provide_information(
    request_id: str,
    body: InformationInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.PROVIDE_INFORMATION))],
) -> ActionResult:
    command = InformationResponse(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.provide_information, command)


@router.post("/{request_id}/payments", response_model=ActionResult, responses=PROBLEMS)
async def record_payment(
    request_id: str,
    body: ManualPaymentInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.RECORD_PAYMENT))],
) -> ActionResult:
    """Finance records the bank transfer that paid the current tranche."""
    command = ManualPaymentRecord(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.record_payment, command)


@router.post("/{request_id}/payment-failures", response_model=ActionResult, responses=PROBLEMS)
async def record_payment_failure(
    request_id: str,
    body: PaymentFailureInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.RECORD_PAYMENT_FAILURE))],
) -> ActionResult:
    """Finance records that the transfer failed; the budget reservation is released."""
    command = PaymentFailureRecord(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.record_payment_failure, command)


@router.post("/{request_id}/payment-retries", response_model=ActionResult, responses=PROBLEMS)
async def retry_payment(
    request_id: str, body: EmptyBody, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.RETRY_PAYMENT))]
) -> ActionResult:
    return await _act(svc, request_id, actor, GrantRequestWorkflow.retry_payment, PaymentRetry(actor=actor))


@router.post("/{request_id}/check-ins", response_model=ActionResult, responses=PROBLEMS)
async def check_in(
    request_id: str, body: CheckInInput, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.CHECK_IN))]
) -> ActionResult:
    """Safe housing: the intermediary confirms the defender still needs the next tranche."""
    command = CheckInRecord(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.check_in, command)


@router.post("/{request_id}/reports", response_model=ActionResult, responses=PROBLEMS)
async def submit_report(
    request_id: str, body: ReportInput, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.SUBMIT_REPORT))]
) -> ActionResult:
    command = FollowUpReport(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.submit_report, command)


@router.post("/{request_id}/report-acceptance", response_model=ActionResult, responses=PROBLEMS)
async def accept_report(
    request_id: str,
    body: ReportAcceptanceInput,
    svc: Svc,
    actor: Annotated[Actor, Depends(require(Operation.ACCEPT_REPORT))],
) -> ActionResult:
    """A caseworker accepts the receipts and report; the request closes."""
    command = ReportAcceptance(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.accept_report, command)


@router.post("/{request_id}/withdraw", response_model=ActionResult, responses=PROBLEMS)
async def withdraw(
    request_id: str, body: WithdrawalInput, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.WITHDRAW))]
) -> ActionResult:
    command = Withdrawal(actor=actor, **body.model_dump())
    return await _act(svc, request_id, actor, GrantRequestWorkflow.withdraw, command)


async def _visible(svc: Services, request_id: str, actor: Actor):
    record = await find_request(svc.db, request_id, scoped_to_organisation(actor))
    if record is None:
        raise Problem(404, "not-found", f"no grant request {request_id}")
    return record


async def _act(svc: Services, request_id: str, actor: Actor, update, command) -> ActionResult:
    record = await _visible(svc, request_id, actor)
    handle = svc.client.get_workflow_handle(request_id)
    try:
        return await handle.execute_update(update, command, result_type=ActionResult)
    except WorkflowUpdateFailedError as failure:
        reason = getattr(failure.cause, "message", None) or "the action was refused"
        raise Problem(409, "action-refused", reason) from None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            # The workflow has finished (or not yet started): nothing can be done to it now.
            raise Problem(409, "action-refused", f"the request is {record.status}; it takes no further action") from None
        raise Problem(503, "workflow-unavailable", "the workflow service is unavailable; try again shortly") from None
