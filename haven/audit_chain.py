"""The audit log's hash chain. Every audit event is appended through `append`, which gives it the
next place in one chain across the whole log (`chain_seq`) and the hash of the event before it;
`verify_chain` recomputes the chain and names the first event that was altered, inserted or
removed.

The chain proves the log was not changed behind the application's back, short of someone who
rewrites every later event and the head as well: an auditor who notes the head (`seq`, `hash`)
of a verification can later check that the chain still passes through it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from haven.db import Database, utcnow
from haven.db.models import AuditChainHead, AuditEvent

GENESIS = "0" * 64  # the `prev_hash` of the first event
HEAD_ID = 1  # the one row of AuditChainHead


class ChainHeadMissing(RuntimeError):
    """The database has no chain head: it was not migrated (`haven migrate`), or the row was deleted."""


def event_hash(event: Any) -> str:
    """sha256 of the event's canonical JSON, its `prev_hash` included. `event` is an AuditEvent or a
    row with the same names. Canonical: a fixed field list, keys sorted, no spaces, times in UTC
    with microseconds, so the hash is the same after a round trip through SQLite or PostgreSQL.
    Changing this function breaks every chain already written."""
    canonical = {
        "chain_seq": event.chain_seq,
        "request_id": event.request_id,
        "seq": event.seq,
        "action": event.action,
        "actor": event.actor,
        "roles": event.roles,
        "status_from": event.status_from,
        "status_to": event.status_to,
        "facts": event.facts,
        "occurred_at": _instant(event.occurred_at),
        "recorded_at": _instant(event.recorded_at),
        "prev_hash": event.prev_hash,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _instant(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _as_stored(value: Any) -> Any:
    # What a JSON column hands back (tuples as lists, keys as strings): hashed as it will be read.
    return json.loads(json.dumps(value))


async def append(session: AsyncSession, *events: AuditEvent) -> None:
    """Appends `events` to the chain in the caller's transaction, so they commit (or roll back)
    with the change they record.

    Call it last, just before the transaction commits: it takes the chain's lock, which every
    append in every process waits for until this transaction ends. Taking it last keeps it short
    and never holds it while waiting for another lock (no deadlock). The lock is the UPDATE of the
    head row: a row lock on PostgreSQL, the database's write lock on SQLite (the sqlite3 driver
    begins a transaction at its first write, so the head is always read under that lock)."""
    if not events:
        return
    await session.flush()  # the caller's own writes, and the row locks they take, come first
    head = (
        await session.execute(
            update(AuditChainHead)
            .where(AuditChainHead.id == HEAD_ID)
            .values(seq=AuditChainHead.seq + len(events))
            .returning(AuditChainHead.seq, AuditChainHead.hash)
            .execution_options(synchronize_session=False)
        )
    ).one_or_none()
    if head is None:
        raise ChainHeadMissing("the audit chain has no head row: run `haven migrate`")
    prev_hash, first = head.hash, head.seq - len(events) + 1
    for offset, event in enumerate(events):
        event.chain_seq, event.prev_hash = first + offset, prev_hash
        event.recorded_at = event.recorded_at or utcnow()
        event.roles, event.facts = _as_stored(event.roles), _as_stored(event.facts)
        prev_hash = event.hash = event_hash(event)
    session.add_all(events)
    await session.execute(
        update(AuditChainHead)
        .where(AuditChainHead.id == HEAD_ID)
        .values(hash=prev_hash)
        .execution_options(synchronize_session=False)
    )
    await session.flush()  # written now: a change to the objects after hashing would not match


# --- verification ---------------------------------------------------------------------------

ProblemKind = Literal["altered", "removed", "inserted"]


@dataclass(frozen=True)
class ChainProblem:
    kind: ProblemKind
    chain_seq: int | None  # the event's place in the chain; for `removed`, the first place missing
    event_id: int | None  # its row id; None for a removed event
    detail: str

    def describe(self) -> str:
        where = f"#{self.chain_seq}" if self.chain_seq is not None else "an event"
        if self.event_id is not None:
            where += f" (id {self.event_id})"
        return f"{where} {self.kind}: {self.detail}"


@dataclass(frozen=True)
class ChainReport:
    intact: bool
    events: int  # the events verified from the first one on: all of them when intact
    head_seq: int | None  # the head as recorded (None when the head row is missing)
    head_hash: str | None
    problem: ChainProblem | None

    def describe(self) -> str:
        head = f"head #{self.head_seq} {self.head_hash}" if self.head_seq is not None else "no head"
        if self.intact:
            return f"audit chain intact: {self.events} events, {head}"
        return (
            f"audit chain NOT intact: {self.problem.describe()}\n"
            f"  {self.events} events verified before it; {head}"
        )


_COLUMNS = [
    AuditEvent.id, AuditEvent.chain_seq, AuditEvent.request_id, AuditEvent.seq, AuditEvent.action,
    AuditEvent.actor, AuditEvent.roles, AuditEvent.status_from, AuditEvent.status_to, AuditEvent.facts,
    AuditEvent.occurred_at, AuditEvent.recorded_at, AuditEvent.prev_hash, AuditEvent.hash,
]  # fmt: skip


async def verify_chain(db: Database, *, batch: int = 2000) -> ChainReport:
    """Recomputes the chain in `chain_seq` order, streaming (constant memory), in one snapshot so
    that appends made meanwhile neither show as inserted nor the head as ahead."""
    async with db.engine.connect() as conn:
        conn = await _snapshot(conn, db)
        head = (
            await conn.execute(select(AuditChainHead.seq, AuditChainHead.hash).where(AuditChainHead.id == HEAD_ID))
        ).one_or_none()
        walk = _Walk(head.seq if head else None, head.hash if head else None)
        rows = await conn.stream(
            select(*_COLUMNS)
            .where(AuditEvent.chain_seq.is_not(None))
            .order_by(AuditEvent.chain_seq)
            .execution_options(yield_per=batch)
        )
        async for partition in rows.partitions():  # a batch per await, not a row: twice as fast
            if not all(walk.step(row) for row in partition):
                break
        await rows.close()
        problem = walk.problem or walk.end() or await _unchained(conn)
    return ChainReport(problem is None, walk.verified, walk.head_seq, walk.head_hash, problem)


async def _snapshot(conn: AsyncConnection, db: Database) -> AsyncConnection:
    if db.is_sqlite:
        # The sqlite3 driver runs each read in its own snapshot unless a transaction is open.
        await conn.exec_driver_sql("BEGIN")
        return conn
    return await conn.execution_options(isolation_level="REPEATABLE READ")


async def _unchained(conn: AsyncConnection) -> ChainProblem | None:
    event_id = await conn.scalar(
        select(AuditEvent.id).where(AuditEvent.chain_seq.is_(None)).order_by(AuditEvent.id).limit(1)
    )
    if event_id is None:
        return None
    return ChainProblem("inserted", None, event_id, "it has no place in the chain (written around the chain)")


class _Walk:
    """The chain checked one event at a time; `problem` is the first thing wrong."""

    def __init__(self, head_seq: int | None, head_hash: str | None):
        self.head_seq, self.head_hash = head_seq, head_hash
        self.verified = 0
        self.last: Any = None  # the last event verified
        self.problem: ChainProblem | None = None

    @property
    def expected(self) -> int:
        return self.last.chain_seq + 1 if self.last is not None else 1

    def step(self, row: Any) -> bool:
        """False (and `problem` set) at the first event that is not what the chain says."""
        self.problem = self._check(row)
        if self.problem is None:
            self.last, self.verified = row, self.verified + 1
        return self.problem is None

    def _check(self, row: Any) -> ChainProblem | None:
        seq, expected = row.chain_seq, self.expected
        if seq < expected:
            taken = "not a place in the chain" if seq < 1 else "taken by another event"
            return ChainProblem("inserted", seq, row.id, f"its place #{seq} is {taken}")
        if self.head_seq is not None and seq > self.head_seq:
            if expected <= self.head_seq:
                return self._missing(expected, self.head_seq, f"the head records #{self.head_seq}")
            return ChainProblem("inserted", seq, row.id, f"it lies beyond the chain's head #{self.head_seq}")
        if seq > expected:
            return self._missing(expected, seq - 1, f"#{seq} (id {row.id}) follows")
        if event_hash(row) != row.hash:
            return ChainProblem("altered", seq, row.id, "its content does not match its hash")
        if self.last is None and row.prev_hash != GENESIS:
            return ChainProblem("inserted", seq, row.id, "the first event does not start from the genesis hash")
        if self.last is not None and row.prev_hash != self.last.hash:
            return self._stand_in(self.last, row, f"#{seq} (id {row.id}) was chained to an event with another hash")
        return None

    def end(self) -> ChainProblem | None:
        """After the last event: the head must name it (else the newest events were removed)."""
        if self.head_seq is None:
            return ChainProblem("removed", None, None, "the chain's head record (audit_chain_head, id 1) is missing")
        last_seq = self.last.chain_seq if self.last is not None else 0
        if last_seq < self.head_seq:
            return self._missing(last_seq + 1, self.head_seq, f"the head records #{self.head_seq}")
        if self.last is not None and self.last.hash != self.head_hash:
            return self._stand_in(self.last, None, "the head records another hash for it")
        return None

    def _missing(self, first: int, last: int, then: str) -> ChainProblem:
        places = f"#{first}" if first == last else f"#{first} to #{last}"
        before = f"after #{self.last.chain_seq} (id {self.last.id})" if self.last is not None else "from the start"
        return ChainProblem("removed", first, None, f"{places} missing {before}; {then}")

    @staticmethod
    def _stand_in(event: Any, successor: Any, why: str) -> ChainProblem:
        """An event whose hash matches its content but not what the chain recorded for its place:
        rewritten whole. Ids are given in chain order (under the chain's lock), so one with a
        higher id than its successor was put in the place of a removed event; otherwise it was
        altered and its hash recomputed."""
        if successor is not None and event.id > successor.id:
            return ChainProblem("inserted", event.chain_seq, event.id, f"{why}: it was put in the place of the original")
        rewritten = "it was changed and its hash recomputed" if successor is not None else "it was changed or replaced"
        return ChainProblem("altered", event.chain_seq, event.id, f"{why}: {rewritten}")
