"""The audit log's hash chain, verified on demand: the same check as `haven audit verify`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from haven.audit_chain import ChainReport, ProblemKind, verify_chain
from haven.grant_request import Actor
from api.permissions import Operation, require
from api.problems import PROBLEM_RESPONSES as PROBLEMS
from api.services import Svc

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class ChainHeadView(BaseModel):
    seq: int = Field(description="the place of the newest event in the chain")
    hash: str


class ChainProblemView(BaseModel):
    kind: ProblemKind
    chain_seq: int | None = Field(description="the event's place in the chain; for `removed`, the first place missing")
    event_id: int | None = Field(description="the event's row id; null for a removed event")
    detail: str


class ChainVerification(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"intact": True, "events": 1234, "head": {"seq": 1234, "hash": "9f2c…"}, "problem": None},
                {
                    "intact": False,
                    "events": 56,
                    "head": {"seq": 1234, "hash": "9f2c…"},
                    "problem": {"kind": "altered", "chain_seq": 57, "event_id": 60, "detail": "its content does not match its hash"},
                },
            ]
        }
    )

    intact: bool
    events: int = Field(description="the events verified from the first one on: all of them when intact")
    head: ChainHeadView | None = Field(description="the chain's head as recorded; null when its record is missing")
    problem: ChainProblemView | None = Field(description="the first event altered, inserted or removed")


def _view(report: ChainReport) -> ChainVerification:
    head = ChainHeadView(seq=report.head_seq, hash=report.head_hash) if report.head_seq is not None else None
    problem = ChainProblemView(**vars(report.problem)) if report.problem is not None else None
    return ChainVerification(intact=report.intact, events=report.events, head=head, problem=problem)


@router.get("/verification", response_model=ChainVerification, responses=PROBLEMS)
async def verify_audit_chain(svc: Svc, actor: Annotated[Actor, Depends(require(Operation.VERIFY_AUDIT))]) -> ChainVerification:
    """Recomputes the audit log's hash chain from the first event to the head. 200 whether or not
    it is intact: `intact` says, and `problem` names the first event that was altered, inserted
    or removed."""
    return _view(await verify_chain(svc.db))
