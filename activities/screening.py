"""Screens the payee against the denied-party list in force now (not the pinned policy: a
sanctions list must always be the newest)."""

from __future__ import annotations

from pathlib import Path

from temporalio import activity

from haven.case_keys import CaseKeys
from haven.db import Database
from haven.db.models import GrantRequestRecord
from haven.grant_request import ScreeningResult
from policies.screening import DeniedPartyList, load_denied_parties, screen


class PayeeScreening:
    def __init__(self, db: Database, denied_parties_file: Path, case_keys: CaseKeys):
        self.db = db
        self.case_keys = case_keys
        self.path = Path(denied_parties_file)
        self._cached: tuple[float, DeniedPartyList] | None = None

    def _denied_parties(self) -> DeniedPartyList:
        mtime = self.path.stat().st_mtime
        if self._cached is None or self._cached[0] != mtime:
            self._cached = (mtime, load_denied_parties(self.path))
        return self._cached[1]

    @activity.defn
    async def screen_payee(self, request_id: str) -> ScreeningResult:
        async with self.db.sessions() as session:
            record = await session.get(GrantRequestRecord, request_id)
            if record is None:
                raise LookupError(f"no grant request {request_id}")
            details = await self.case_keys.details(session, record)
        return screen(details["payee"]["name"], self._denied_parties())
