"""The rows an export holds, read in one consistent snapshot of the database, a batch at a time
(a server-side cursor), so memory stays the same however many rows there are; each row arrives
as the line the file holds (`encoders`), and the control totals come from the same snapshot.

Every value is written as the export shows it: times as ISO 8601 UTC with microseconds
('2026-11-24T10:15:30.120000+00:00', the very form the audit chain hashes, so an audit export can
be verified from its own rows), amounts as decimal strings beside their currency. Nothing here reads the request's sensitive column: a defender appears only
as `defender_ref`, the keyed hash haven already uses to find prior grants (enough to group one
defender's grants, nothing that names them), and the payee and the narrative never appear."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, String, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from haven.db import Database
from haven.db.models import AuditChainHead, AuditEvent, LedgerEntry, PolicyRecord
from haven.exports.encoders import Cell, LineFormat, Sql
from haven.exports.spec import ExportKind, Period
from haven.money import format_decimal

BATCH_ROWS = 5_000  # lines fetched at a time: about a megabyte


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
    """Control totals an auditor recomputes from the file, summed by the database in the
    export's snapshot: rows and minor units per currency and kind of movement (in the original
    currency), per category and kind (in the base currency), or rows per audit action."""

    rows: int = 0
    book: CurrencyBook | None = None
    by_currency: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    by_category: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    by_action: dict[str, int] = field(default_factory=dict)

    def currencies_by_rows(self) -> list[str]:
        """The currencies of the rows, the most common first."""
        rows: dict[str, int] = {}
        for (currency, _), (n, _) in self.by_currency.items():
            rows[currency] = rows.get(currency, 0) + n
        return sorted(rows, key=lambda currency: -rows[currency])

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


Cells = Sequence[tuple[str, Cell, Any]]  # (column, what it holds, its SQL expression), in file order


@dataclass(frozen=True)
class Source:
    """One kind of export: its cells, the rows of a period in file order, and their totals."""

    cells: Callable[[Sql, CurrencyBook, Totals], Cells]
    rows_of: Callable[[Select, Period], Select]  # adds FROM, WHERE and ORDER BY to the line
    totals: Callable[[AsyncConnection, Period, CurrencyBook], Any]  # -> Totals (a coroutine)
    columns: Sequence[str]

    async def lines(self, connection: AsyncConnection, period: Period, line_format: LineFormat, book: CurrencyBook,
                    totals: Totals) -> AsyncIterator[list[str]]:  # fmt: skip
        """The file's lines, a batch at a time."""
        line = line_format.line(self.cells(line_format.sql, book, totals))
        query = self.rows_of(select(line), period).execution_options(yield_per=BATCH_ROWS)
        result = await connection.stream(query)
        partitions = result.partitions()
        upcoming = asyncio.ensure_future(anext(partitions, None))
        try:
            while (partition := await upcoming) is not None:
                # The next batch is asked for before this one is written: the database
                # (PostgreSQL's own process, SQLite's driver thread) builds it meanwhile.
                upcoming = asyncio.ensure_future(anext(partitions, None))
                await asyncio.sleep(0)  # lets that request go out
                yield [row[0] for row in partition]
        finally:
            if not upcoming.done():  # the reader stopped early: the snapshot is about to close
                upcoming.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await upcoming


L, A = LedgerEntry, AuditEvent

LEDGER_COLUMNS = (
    "entry_id", "occurred_at", "recorded_at", "kind", "category", "allocation_id", "request_id", "tranche",
    "country", "defender_ref", "amount", "currency", "amount_base", "base_currency", "rate_to_base", "actor", "entry_key",
)  # fmt: skip


def _in_period(period: Period, column) -> list:
    return [column >= period.starts_at, column < period.ends_before]


def _ledger_cells(sql: Sql, book: CurrencyBook, totals: Totals) -> Cells:
    N, C, T = Cell.NUMBER, Cell.CODE, Cell.TEXT
    exponents = {currency: book.exponent(currency) for currency in totals.currencies_by_rows()}
    cells = [
        (N, L.id), (C, sql.iso_time(L.occurred_at)), (C, sql.iso_time(L.recorded_at)), (C, L.kind), (C, L.category),
        (C, L.allocation_id), (C, L.request_id), (N, L.tranche), (C, L.country), (C, L.defender_ref),
        (C, sql.decimal_by_currency(L.amount_minor, L.currency, exponents)), (C, L.currency),
        (C, sql.decimal(L.amount_base_minor, book.exponent(book.base_currency))), (C, literal(book.base_currency, String)),
        (C, L.rate_to_base), (T, L.actor), (T, L.entry_key),
    ]  # fmt: skip
    return [(name, kind, value) for name, (kind, value) in zip(LEDGER_COLUMNS, cells, strict=True)]


def _ledger_rows(line: Select, period: Period) -> Select:
    return (
        line.select_from(L)
        .where(*_in_period(period, L.occurred_at))
        .order_by(L.occurred_at, L.id)  # the index ix_ledger_entries_occurred: no sort
    )


async def _ledger_totals(connection: AsyncConnection, period: Period, book: CurrencyBook) -> Totals:
    totals = Totals(book=book)
    groups = await connection.execute(
        select(L.category, L.currency, L.kind, func.count(), func.sum(L.amount_minor), func.sum(L.amount_base_minor))
        .where(*_in_period(period, L.occurred_at))
        .group_by(L.category, L.currency, L.kind)
    )
    for category, currency, kind, rows, amount, amount_base in groups:
        book.exponent(currency)  # a currency no policy knows cannot be written: ExportFailed, before any byte
        totals.rows += rows
        for key, group, total in (((currency, kind), totals.by_currency, amount), ((category, kind), totals.by_category, amount_base)):
            sums = group.setdefault(key, [0, 0])
            sums[0] += rows
            sums[1] += int(total)
    return totals


AUDIT_COLUMNS = (
    "chain_seq", "event_id", "occurred_at", "recorded_at", "request_id", "seq", "action", "actor", "roles",
    "status_from", "status_to", "facts", "prev_hash", "hash",
)  # fmt: skip


def _audit_cells(sql: Sql, book: CurrencyBook, totals: Totals) -> Cells:
    N, C, T, J = Cell.NUMBER, Cell.CODE, Cell.TEXT, Cell.JSON
    cells = [
        (N, A.chain_seq), (N, A.id), (C, sql.iso_time(A.occurred_at)), (C, sql.iso_time(A.recorded_at)), (T, A.request_id),
        (N, A.seq), (C, A.action), (T, A.actor), (J, A.roles), (C, A.status_from), (C, A.status_to), (J, A.facts),
        (C, A.prev_hash), (C, A.hash),
    ]  # fmt: skip
    return [(name, kind, value) for name, (kind, value) in zip(AUDIT_COLUMNS, cells, strict=True)]


def _audit_rows(line: Select, period: Period) -> Select:
    return (
        line.select_from(A)
        .where(*_in_period(period, A.occurred_at))
        # Chain order, so each row's prev_hash is the hash of the row before it (where the period
        # holds both); events from before the chain existed come last, in the order stored.
        .order_by(A.chain_seq.asc().nulls_last(), A.id)
    )


async def _audit_totals(connection: AsyncConnection, period: Period, book: CurrencyBook) -> Totals:
    totals = Totals()
    groups = await connection.execute(select(A.action, func.count()).where(*_in_period(period, A.occurred_at)).group_by(A.action))
    for action, rows in groups:
        totals.by_action[action] = rows
        totals.rows += rows
    return totals


SOURCES = {
    ExportKind.LEDGER: Source(_ledger_cells, _ledger_rows, _ledger_totals, LEDGER_COLUMNS),
    ExportKind.AUDIT: Source(_audit_cells, _audit_rows, _audit_totals, AUDIT_COLUMNS),
}
