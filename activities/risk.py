"""Gathers the facts the risk model needs from the database and applies the pinned policy."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from temporalio import activity

from haven.db import Database
from haven.db.models import GrantRequestRecord, Organisation
from haven.grant_request import RiskAssessment, ThreatLevel, TrustLevel, Urgency
from haven.lifecycle import Status
from policies import PolicyVersion
from policies.rules import assess_risk as score_risk

# Requests that never turned into money for the defender do not count as prior grants.
_NOT_GRANTED = [Status.REJECTED, Status.WITHDRAWN, Status.EXPIRED]


class RiskAssessor:
    def __init__(self, db: Database):
        self.db = db

    @activity.defn
    async def assess_risk(self, request_id: str, pinned: PolicyVersion) -> RiskAssessment:
        async with self.db.sessions() as session:
            request = await session.get(GrantRequestRecord, request_id)
            if request is None:
                raise LookupError(f"no grant request {request_id}")
            organisation = await session.get(Organisation, request.organisation_id)
            since = request.created_at - timedelta(days=365)
            count, total = (
                await session.execute(
                    select(func.count(), func.coalesce(func.sum(GrantRequestRecord.granted_base_minor), 0)).where(
                        GrantRequestRecord.defender_ref == request.defender_ref,
                        GrantRequestRecord.id != request.id,
                        GrantRequestRecord.created_at >= since,
                        GrantRequestRecord.granted_base_minor.is_not(None),
                        GrantRequestRecord.status.not_in([str(s) for s in _NOT_GRANTED]),
                    )
                )
            ).one()
        return score_risk(
            pinned.policy,
            urgency=Urgency(request.urgency),
            threat_level=ThreatLevel(request.threat_level),
            country=request.country,
            prior_grants_12_months=int(count),
            prior_granted_base_12_months=int(total),
            trust_level=TrustLevel(organisation.trust_level if organisation else TrustLevel.LOW),
        )
