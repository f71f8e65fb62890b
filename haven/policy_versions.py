"""The policy versions the fund has had, and which one is active: new requests are pinned to the
active version, running requests keep theirs. An administrator proposes a version (validated and
stored, shown as its changes against the active one and a dry run against the last 90 days of
requests) and activates it; both are audited. On its first start the API activates its policy
file (HAVEN_POLICY_FILE); after that, only an activation changes the policy."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from haven.audit import record_change
from haven.db import Database, utcnow
from haven.db.models import GrantRequestRecord, PolicyActivation, PolicyRecord
from haven.grant_request import SYSTEM, Actor, Category, RiskTier
from haven.money import Money
from policies import Policy, PolicyVersion
from policies.comparison import Change, DryRun, PastRequest, differences, dry_run

DRY_RUN_DAYS = 90


class UnknownPolicy(LookupError):
    pass


class AlreadyActive(ValueError):
    pass


def _version(record: PolicyRecord) -> PolicyVersion:
    return PolicyVersion(hash=record.hash, policy=Policy.model_validate(record.content))


async def record_policy_version(db: Database, version: PolicyVersion, actor: Actor = SYSTEM) -> bool:
    """Stores a version so requests pinned to it can always find it again (audited); True if it
    was new."""
    try:
        async with db.transaction() as session:
            if await session.get(PolicyRecord, version.hash) is not None:
                return False
            session.add(PolicyRecord(hash=version.hash, name=version.policy.name, content=version.policy.model_dump(mode="json"),
                                     created_at=utcnow()))  # fmt: skip
            await record_change(session, actor, "policy_version_recorded", hash=version.hash, name=version.policy.name)
    except IntegrityError:
        return False  # another process recorded it at the same moment
    return True


async def active_activation(session: AsyncSession) -> PolicyActivation | None:
    return await session.scalar(select(PolicyActivation).order_by(PolicyActivation.id.desc()).limit(1))


async def active_version(db: Database) -> PolicyVersion | None:
    async with db.sessions() as session:
        activation = await active_activation(session)
        return _version(await session.get(PolicyRecord, activation.policy_hash)) if activation else None


async def activate(db: Database, actor: Actor, hash: str, note: str | None = None) -> PolicyActivation:
    async with db.transaction() as session:
        if await session.get(PolicyRecord, hash) is None:
            raise UnknownPolicy(hash)
        current = await active_activation(session)
        if current is not None and current.policy_hash == hash:
            raise AlreadyActive(hash)
        activation = PolicyActivation(policy_hash=hash, activated_by=actor.subject, activated_at=utcnow(), note=note)
        session.add(activation)
        await record_change(session, actor, "policy_activated", hash=hash,
                            replaced=current.policy_hash if current else None)  # fmt: skip
    return activation


async def activate_if_none(db: Database, version: PolicyVersion) -> PolicyVersion:
    """The API's start: records the policy file's version and activates it if nothing is active
    yet; returns the active version (which may differ from the file's)."""
    await record_policy_version(db, version)
    active = await active_version(db)
    if active is not None:
        return active
    try:
        await activate(db, SYSTEM, version.hash, note="the policy file, on the first start")
    except (AlreadyActive, IntegrityError):
        pass  # another API process did it at the same moment
    return await active_version(db) or version


@dataclass(frozen=True)
class Review:
    version: PolicyVersion
    active: PolicyVersion | None
    changes: list[Change]
    dry_run: DryRun
    dry_run_days: int = DRY_RUN_DAYS


async def review(db: Database, version: PolicyVersion) -> Review:
    """What activating `version` would change: its settings against the active version's, and a
    dry run over the requests received in the last DRY_RUN_DAYS days."""
    active = await active_version(db)
    since = utcnow() - timedelta(days=DRY_RUN_DAYS)
    async with db.sessions() as session:
        rows = (await session.execute(
            select(GrantRequestRecord.category, GrantRequestRecord.amount_minor, GrantRequestRecord.currency,
                   GrantRequestRecord.tranche_count, GrantRequestRecord.risk_tier, GrantRequestRecord.policy_hash)
            .where(GrantRequestRecord.created_at >= since)
        )).all()  # fmt: skip
        pinned = {h: _version(await session.get(PolicyRecord, h)).policy for h in {row.policy_hash for row in rows}}
    past = [
        PastRequest(Category(r.category), Money(minor_units=r.amount_minor, currency=r.currency), r.tranche_count,
                    RiskTier(r.risk_tier) if r.risk_tier else None, pinned[r.policy_hash])  # fmt: skip
        for r in rows
    ]
    changes = differences(active.policy, version.policy) if active else []
    return Review(version, active, changes, dry_run(version.policy, past))


async def stored_version(db: Database, hash: str) -> PolicyVersion:
    async with db.sessions() as session:
        record = await session.get(PolicyRecord, hash)
    if record is None:
        raise UnknownPolicy(f"no policy version {hash}")
    return _version(record)


async def list_versions(db: Database) -> tuple[list[PolicyRecord], PolicyActivation | None]:
    async with db.sessions() as session:
        records = list(await session.scalars(select(PolicyRecord).order_by(PolicyRecord.created_at.desc())))
        return records, await active_activation(session)


class ActivePolicy:
    """The active version for intake, re-read at most every `refresh` seconds, so an activation
    made through any API process reaches every other one within that time."""

    def __init__(self, db: Database, active: PolicyVersion, refresh: float = 5.0):
        self.db, self.refresh = db, refresh
        self._current = active
        self._read_at = time.monotonic()

    def invalidate(self) -> None:
        """Read again at the next submission (this process has just activated a version)."""
        self._read_at = float("-inf")

    async def current(self) -> PolicyVersion:
        if time.monotonic() - self._read_at >= self.refresh:
            self._current = await active_version(self.db) or self._current
            self._read_at = time.monotonic()
        return self._current
