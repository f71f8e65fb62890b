"""The daily retention run's one side effect: destroying the data keys whose time has come."""

from __future__ import annotations

from temporalio import activity

from haven.case_keys import CaseKeys
from haven.db import Database, utcnow
from haven.grant_request import SYSTEM
from haven.retention import due_for_destruction, erase


class CaseDataRetention:
    def __init__(self, db: Database, case_keys: CaseKeys):
        self.db = db
        self.case_keys = case_keys

    @activity.defn
    async def destroy_expired_case_data(self) -> int:
        """Idempotent: a key already destroyed is skipped, so a retried run destroys nothing twice."""
        destroyed = 0
        for request_id in await due_for_destruction(self.db, utcnow()):
            destroyed += await erase(self.db, self.case_keys, request_id, SYSTEM, "retention period over")
            activity.heartbeat(destroyed)
        return destroyed
