"""An admin erases one request that is over, at once (a defender's request, a security incident):
its data key is destroyed, as the daily retention run does when the policy's period ends."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from haven.grant_request import Actor, LongText, Strict
from haven.retention import ErasureRefused, erase
from api.permissions import Operation, require
from api.problems import PROBLEM_RESPONSES as PROBLEMS
from api.problems import Problem
from api.routes.grant_requests import RequestId
from api.services import Svc

router = APIRouter(prefix="/v1/grant-requests", tags=["administration"])


class ErasureInput(Strict):
    reason: LongText


class ErasureView(BaseModel):
    request_id: str
    erased: bool  # False: it already was (or the request predates sealing and has no key)


@router.post("/{request_id}/erasure", response_model=ErasureView, responses=PROBLEMS)
async def erase_request(
    request_id: RequestId, body: ErasureInput, svc: Svc, actor: Annotated[Actor, Depends(require(Operation.ERASE))]
) -> ErasureView:
    """Destroys the request's data key: its defender, payee, narrative, answers, notes and report
    can never be read again, by anyone. The ledger and the audit log keep their pseudonymous
    records. Only for a request that is over (closed, rejected, withdrawn, expired): 409 otherwise.
    Audited (`case_data_destroyed`, with the reason)."""
    try:
        erased = await erase(svc.db, svc.case_keys, request_id, actor, body.reason)
    except LookupError:
        raise Problem(404, "not-found", f"no grant request {request_id}") from None
    except ErasureRefused as refusal:
        raise Problem(409, "erasure-refused", str(refusal)) from None
    return ErasureView(request_id=request_id, erased=erased)
