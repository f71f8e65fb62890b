"""Intake: a submission is validated, deduplicated by Idempotency-Key, stored, and its workflow
started. The row is written first, so an acknowledged request can never be lost: if Temporal cannot
be reached the worker's sweep starts the workflow later (starting is idempotent by request id)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from haven import search_attributes
from haven.case_keys import SENSITIVE, CaseKeys
from haven.db import Database, utcnow
from haven.db.models import GrantRequestRecord, Organisation
from haven.grant_request import Actor, GrantRequestStart, GrantRequestSubmission, PaymentRail
from haven.identifiers import canonical
from haven.lifecycle import Status
from haven.policy_versions import ActivePolicy
from policies import PolicyVersion
from policies.rules import PolicyViolation, check_intake, to_base

log = structlog.get_logger(__name__)


class IntakeRefused(Exception):
    """A submission that cannot be accepted; `kind` says which problem it is."""

    def __init__(self, kind: str, message: str, field: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.field = field


@dataclass(frozen=True)
class Accepted:
    record: GrantRequestRecord
    created: bool


def new_request_id() -> str:
    return "gr_" + secrets.token_hex(10)


def body_hash(submission: GrantRequestSubmission) -> str:
    canonical = json.dumps(submission.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def defender_ref(pseudonym: str, key: bytes) -> str:
    """A keyed hash (blind index): equal for the same pseudonym however it is written
    (haven.identifiers), useless to anyone without the key."""
    return hmac.new(key, canonical(pseudonym).encode(), hashlib.sha256).hexdigest()


class Intake:
    def __init__(
        self,
        db: Database,
        client: Client,
        task_queue: str,
        policy: PolicyVersion,
        index_key: bytes,
        rails: frozenset[PaymentRail] = frozenset({PaymentRail.MANUAL}),
        *,
        case_keys: CaseKeys,
        policies: ActivePolicy | None = None,
    ):
        """`policy` is the version new requests are pinned to; with `policies`, the active version
        as administrators change it (haven.policy_versions), `policy` being the one active now."""
        self.policies = policies
        self.case_keys = case_keys  # the request's details are sealed with a key of its own
        self.rails = rails  # the payment rails this deployment is configured for
        self.db = db
        self.client = client
        self.task_queue = task_queue
        self.policy = policy
        self.index_key = index_key

    async def submit(
        self,
        submission: GrantRequestSubmission,
        actor: Actor,
        idempotency_key: str,
        admit: Callable[[], None] | None = None,
    ) -> Accepted:
        """`admit` is asked (and may raise) only when a new request would be created: a replay
        of an earlier submission always gets its answer back."""
        organisation_id = actor.organisation
        if not organisation_id:
            raise IntakeRefused("forbidden", "an intermediary's token must name its organisation (the claim set by HAVEN_JWT_ORGANISATION_CLAIM)")
        digest = body_hash(submission)
        existing = await self._find(organisation_id, idempotency_key)
        if existing is not None:
            return await self._replay(existing, digest)
        if submission.payee.rail not in self.rails:
            raise IntakeRefused("policy", f"this fund does not pay through {submission.payee.rail}", "payee.rail")
        if admit is not None:
            admit()
        if self.policies is not None:
            self.policy = await self.policies.current()
        try:
            check_intake(self.policy.policy, submission.category, submission.amount, submission.tranches)
        except PolicyViolation as violation:
            raise IntakeRefused("policy", str(violation), violation.field) from None

        now = utcnow()
        record = GrantRequestRecord(
            id=new_request_id(),
            organisation_id=organisation_id,
            submitted_by=actor.subject,
            submitted_by_person=actor.person,
            idempotency_key=idempotency_key,
            body_hash=digest,
            category=submission.category,
            urgency=submission.urgency,
            country=submission.country,
            threat_level=submission.threat_level,
            amount_minor=submission.amount.minor_units,
            currency=submission.amount.currency,
            amount_base_minor=to_base(self.policy.policy, submission.amount),
            tranche_count=submission.tranches,
            rail=submission.payee.rail,
            policy_hash=self.policy.hash,
            defender_ref=defender_ref(submission.defender.pseudonym, self.index_key),
            status=Status.RECEIVED,
            status_seq=0,
            escalated=False,
            follow_up_overdue=False,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self.db.transaction() as session:
                organisation = await session.get(Organisation, organisation_id)
                if organisation is None:
                    raise IntakeRefused("forbidden", f"organisation {organisation_id} is not registered with the fund")
                if not organisation.active:
                    raise IntakeRefused("forbidden", f"organisation {organisation_id} is suspended and cannot submit")
                sealer, key = self.case_keys.new(record.id, now)
                record.sensitive = sealer.seal(SENSITIVE, submission.sensitive_details())
                session.add(record)
                await session.flush()
                session.add(key)
        except IntegrityError:
            # The same key arrived twice at once: the other one was stored first.
            existing = await self._find(organisation_id, idempotency_key)
            if existing is None:
                raise
            return await self._replay(existing, digest)
        log.info("grant_request_received", request_id=record.id, organisation=organisation_id, policy=record.policy_hash)
        await self.start_workflow(record)
        return Accepted(record, created=True)

    async def earlier_for_defender(self, record: GrantRequestRecord) -> int:
        """Earlier requests of the same organisation, in the 12 months before this one, whose
        defender pseudonym is the same name however it was written (the fund counts them together
        against the defender's cap). Only the organisation's own: whether another partner supports
        the same defender is not theirs to learn."""
        async with self.db.sessions() as session:
            return int(
                await session.scalar(
                    select(func.count()).where(
                        GrantRequestRecord.defender_ref == record.defender_ref,
                        GrantRequestRecord.organisation_id == record.organisation_id,
                        GrantRequestRecord.id != record.id,
                        GrantRequestRecord.created_at >= record.created_at - timedelta(days=365),
                    )
                )
                or 0
            )

    async def _find(self, organisation_id: str, idempotency_key: str) -> GrantRequestRecord | None:
        async with self.db.sessions() as session:
            return await session.scalar(
                select(GrantRequestRecord).where(
                    GrantRequestRecord.organisation_id == organisation_id,
                    GrantRequestRecord.idempotency_key == idempotency_key,
                )
            )

    async def _replay(self, existing: GrantRequestRecord, digest: str) -> Accepted:
        if existing.body_hash != digest:
            raise IntakeRefused(
                "idempotency",
                "this Idempotency-Key was already used for a different request; use a new key for a new request",
                "Idempotency-Key",
            )
        if existing.status == Status.RECEIVED:
            await self.start_workflow(existing)
        return Accepted(existing, created=False)

    async def start_workflow(self, record: GrantRequestRecord) -> bool:
        """Starts the request's workflow if it is not running yet. Never raises: a request that
        could not be started now is started by the sweep."""
        start = GrantRequestStart(
            request_id=record.id,
            organisation_id=record.organisation_id,
            submitted_by=record.submitted_by,
            submitted_by_person=record.submitted_by_person,
            category=record.category,
            urgency=record.urgency,
            country=record.country,
            threat_level=record.threat_level,
            amount={"minor_units": record.amount_minor, "currency": record.currency},
            tranches=record.tranche_count,
            rail=record.rail,
            policy_hash=record.policy_hash,
            received_at=record.created_at,
        )
        try:
            await self.client.start_workflow(
                "GrantRequestWorkflow",
                start,
                id=record.id,
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                search_attributes=search_attributes.at_intake(record.category, record.urgency, Status.RECEIVED),
            )
            return True
        except Exception as error:  # noqa: BLE001 - any failure here is retried by the sweep
            log.warning("workflow_start_deferred", request_id=record.id, error=type(error).__name__)
            return False


async def start_unstarted(intake: Intake, older_than: timedelta = timedelta(seconds=5)) -> int:
    """The sweep: starts the workflow of every request stored but never started. Returns how many."""
    cutoff = utcnow() - older_than
    async with intake.db.sessions() as session:
        waiting = (
            await session.scalars(
                select(GrantRequestRecord).where(
                    GrantRequestRecord.status == Status.RECEIVED,
                    GrantRequestRecord.status_seq == 0,
                    GrantRequestRecord.created_at < cutoff,
                )
            )
        ).all()
    started = 0
    for record in waiting:
        started += await intake.start_workflow(record)
    return started
