"""The rows an export holds, read in one consistent snapshot of the database, a batch at a time
(a server-side cursor), so memory stays the same however many rows there are.

Every value is written as the export shows it: times as ISO 8601 UTC with microseconds
('2026-11-24T10:15:30.120000+00:00', the very form the audit chain hashes, so an audit export can
be verified from its own rows), amounts as decimal strings beside their currency. Nothing here reads the request's sensitive column: a defender appears only
as `defender_ref`, the keyed hash haven already uses to find prior grants (enough to group one
defender's grants, nothing that names them), and the payee and the narrative never appear."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, String, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection

from haven.db import Database
from haven.db.models import AuditChainHead, AuditEvent, GrantRequestRecord, LedgerEntry, PolicyRecord
from haven.exports.spec import ExportKind, Period
from haven.money import format_decimal

BATCH_ROWS = 5_000  # rows fetched (and encoded) at a time: about a megabyte


class ExportFailed(RuntimeError):
    """The database holds something an export cannot show faithfully (a currency no policy knows)."""


@asynccontextmanager
async def snapshot(db: Database) -> AsyncIterator[AsyncConnection]:
    """A read-only view of one moment: the chain head, the currencies and every row agree."""
    async with db.engine.connect() as connection:
        if db.is_sqlite:
            # The sqlite3 driver begins a transaction only before a write, so two SELECTs would
            # each see the database as it is then. An explicit BEGIN pins one WAL read snapshot
            # (writers carry on meanwhile); the pool's rollback on release ends it.
            await connection.exec_driver_sql("BEGIN")
        else:
            connection = await connection.execution_options(isolation_level="REPEATABLE READ")
            await connection.begin()
        yield connection


async def chain_head(connection: AsyncConnection) -> dict[str, Any] | None:
    """The newest link of the audit chain, or None before the first chained event."""
    row = (await connection.execute(select(AuditChainHead.seq, AuditChainHead.hash).where(AuditChainHead.id == 1))).first()
    return None if row is None else {"seq": row.seq, "hash": row.hash}


@dataclass(frozen=True)
class CurrencyBook:
    """Minor-unit exponents of every currency any stored policy version accepted, and the base
    currency of the newest: a ledger row keeps the currency its request was pinned to."""

    base_currency: str
    exponents: dict[str, int]

    def exponent(self, currency: str) -> int:
        try:
            return self.exponents[currency]
        except KeyError:
            raise ExportFailed(f"no stored policy knows the currency {currency!r}: its amounts cannot be written") from None

    def amount(self, minor_units: int, currency: str) -> str:
        return format_decimal(minor_units, self.exponent(currency))


async def currency_book(connection: AsyncConnection) -> CurrencyBook:
    contents = (await connection.execute(select(PolicyRecord.content).order_by(PolicyRecord.created_at))).scalars().all()
    if not contents:
        raise ExportFailed("no policy is stored: the currencies' minor units are unknown")
    exponents: dict[str, int] = {}
    for content in contents:
        exponents.update({code: int(rule["exponent"]) for code, rule in content["currencies"].items()})
    return CurrencyBook(base_currency=contents[-1]["base_currency"], exponents=exponents)


@dataclass
class Totals:
    """Control totals an auditor recomputes from the file: per currency and kind of movement (in
    the original currency), per category and kind (in the base currency), or rows per audit
    action. Groups are [rows, sum of minor units]."""

    book: CurrencyBook | None = None
    by_currency: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    by_category: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    by_action: dict[str, int] = field(default_factory=dict)

    def as_manifest(self) -> dict[str, Any]:
        if self.book is None:
            return {"by_action": [{"action": a, "rows": n} for a, n in sorted(self.by_action.items())]}
        book = self.book
        return {
            "by_currency": [
                {"currency": currency, "kind": kind, "rows": rows, "amount": book.amount(total, currency)}
                for (currency, kind), (rows, total) in sorted(self.by_currency.items())
            ],
            "by_category": [
                {"category": category, "kind": kind, "rows": rows, "amount_base": book.amount(total, book.base_currency),
                 "base_currency": book.base_currency}
                for (category, kind), (rows, total) in sorted(self.by_category.items())
            ],  # fmt: skip
        }


Cells = Callable[[Any], list[Any]]


@dataclass(frozen=True)
class Source:
    """One kind of export: its columns, its query for a period, and how a database row becomes
    the cells of a file row (counted into the totals on the way)."""

    columns: Sequence[str]
    query: Callable[[Period, bool], Select]
    cells: Callable[[CurrencyBook, Totals], Cells]  # made once per export: a million calls follow
    with_money: bool
    structured: frozenset[int] = frozenset()  # cells holding lists or objects

    async def batches(self, connection: AsyncConnection, period: Period, book: CurrencyBook, totals: Totals):
        sqlite = connection.dialect.name == "sqlite"
        result = await connection.stream(self.query(period, sqlite).execution_options(yield_per=BATCH_ROWS))
        partitions = result.partitions()
        cells = self.cells(book, totals)
        upcoming = asyncio.ensure_future(anext(partitions, None))
        try:
            while (partition := await upcoming) is not None:
                # The next batch is asked for before this one is encoded: the database
                # (PostgreSQL's own process, SQLite's driver thread) reads it meanwhile.
                upcoming = asyncio.ensure_future(anext(partitions, None))
                await asyncio.sleep(0)  # lets that request go out
                yield [cells(row) for row in partition]
        finally:
            if not upcoming.done():  # the reader stopped early: the snapshot is about to close
                upcoming.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await upcoming


def _iso_text(column, sqlite: bool):
    """The time as the export writes it, formatted by the database rather than parsed into a
    datetime and formatted again for each of a million rows."""
    if sqlite:
        # UTCDateTime stores UTC as 'YYYY-MM-DD HH:MM:SS.ffffff' in SQLite.
        return type_coerce(func.replace(type_coerce(column, String), " ", "T").concat("+00:00"), String)
    return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')


L, G, A = LedgerEntry, GrantRequestRecord, AuditEvent

LEDGER_COLUMNS = (
    "entry_id", "occurred_at", "recorded_at", "kind", "category", "allocation_id", "request_id", "tranche",
    "country", "defender_ref", "amount", "currency", "amount_base", "base_currency", "rate_to_base", "actor", "entry_key",
)  # fmt: skip


def _ledger_query(period: Period, sqlite: bool) -> Select:
    return (
        select(
            L.id, _iso_text(L.occurred_at, sqlite), _iso_text(L.recorded_at, sqlite), L.kind, L.category, L.allocation_id, L.request_id, L.tranche,
            G.country, G.defender_ref, L.amount_minor, L.currency, L.amount_base_minor, L.rate_to_base, L.actor, L.entry_key,
        )  # fmt: skip
        .select_from(L)
        .outerjoin(G, G.id == L.request_id)
        .where(L.occurred_at >= period.starts_at, L.occurred_at < period.ends_before)
        .order_by(L.occurred_at, L.id)  # the index ix_ledger_entries_occurred: no sort
    )


def _ledger_cells(book: CurrencyBook, totals: Totals) -> Cells:
    by_currency, by_category, exponents = totals.by_currency, totals.by_category, book.exponents
    base = book.base_currency
    base_exponent = book.exponent(base)

    def cells(row) -> list[Any]:
        (id_, occurred, recorded, kind, category, allocation, request, tranche,
         country, defender_ref, amount, currency, amount_base, rate, actor, key) = row  # fmt: skip
        group = by_currency.get((currency, kind))
        if group is None:
            group = by_currency[(currency, kind)] = [0, 0]
        group[0] += 1
        group[1] += amount
        group = by_category.get((category, kind))
        if group is None:
            group = by_category[(category, kind)] = [0, 0]
        group[0] += 1
        group[1] += amount_base
        exponent = exponents.get(currency)
        if exponent is None:
            exponent = book.exponent(currency)  # raises ExportFailed, naming the currency
        return [
            id_, occurred, recorded, kind, category, allocation, request, tranche, country, defender_ref,
            format_decimal(amount, exponent), currency, format_decimal(amount_base, base_exponent), base, rate, actor, key,
        ]  # fmt: skip

    return cells


AUDIT_COLUMNS = (
    "chain_seq", "event_id", "occurred_at", "recorded_at", "request_id", "seq", "action", "actor", "roles",
    "status_from", "status_to", "facts", "prev_hash", "hash",
)  # fmt: skip


def _audit_query(period: Period, sqlite: bool) -> Select:
    return (
        select(
            A.chain_seq, A.id, _iso_text(A.occurred_at, sqlite), _iso_text(A.recorded_at, sqlite), A.request_id, A.seq, A.action, A.actor, A.roles,
            A.status_from, A.status_to, A.facts, A.prev_hash, A.hash,
        )  # fmt: skip
        .where(A.occurred_at >= period.starts_at, A.occurred_at < period.ends_before)
        # Chain order, so each row's prev_hash is the hash of the row before it (where the period
        # holds both); events from before the chain existed come last, in the order stored.
        .order_by(A.chain_seq.asc().nulls_last(), A.id)
    )


def _audit_cells(book: CurrencyBook, totals: Totals) -> Cells:
    by_action = totals.by_action

    def cells(row) -> list[Any]:
        by_action[row.action] = by_action.get(row.action, 0) + 1
        return list(row)

    return cells


SOURCES = {
    ExportKind.LEDGER: Source(LEDGER_COLUMNS, _ledger_query, _ledger_cells, with_money=True),
    ExportKind.AUDIT: Source(AUDIT_COLUMNS, _audit_query, _audit_cells, with_money=False,
                             structured=frozenset({AUDIT_COLUMNS.index("roles"), AUDIT_COLUMNS.index("facts")})),
}


def structured(value: Any) -> str:
    """Lists and objects inside a CSV cell: compact JSON with sorted keys, the same every time."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
