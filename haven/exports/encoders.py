"""File formats, built by the database: each row of an export comes out of its query as the line
the file holds, so a million rows cost the application a string each rather than a dozen values
to convert and encode (the difference between a minute and a quarter of it).

UTF-8 without a byte-order mark. CSV: RFC 4180 (comma, double quotes, CRLF), one header row, an
empty cell for nothing, lists and objects as their JSON text. JSON Lines: one object per row,
keys in column order, `null` for nothing, numbers for ids and sequence numbers, strings for
amounts (never a float) and times.

The two dialects differ only in their spelling: SQLite's `printf` and `json_object`, PostgreSQL's
`format` and `to_json`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Numeric, String, Text, case, cast, func, literal, or_, type_coerce
from sqlalchemy.sql.elements import ColumnElement

from haven.exports.spec import ExportFormat


class Cell(StrEnum):
    """What a column holds, which decides how it is written."""

    NUMBER = "number"  # an integer: digits in both formats
    CODE = "code"  # text that never needs CSV quoting: codes, ids haven makes, times, amounts, hashes
    TEXT = "text"  # text that may hold a comma or a quote: ids, subjects, references
    JSON = "json"  # a list or an object stored as JSON


@dataclass(frozen=True)
class Sql:
    """The few expressions whose spelling differs between SQLite and PostgreSQL."""

    sqlite: bool

    def format(self, template: str, *values: Any) -> ColumnElement:
        """printf-style `%s` formatting; NULL becomes an empty string in both."""
        formatter = func.printf if self.sqlite else func.format
        return type_coerce(formatter(literal(template, String), *values), String)

    def text(self, value: Any) -> ColumnElement:
        return cast(value, Text)

    def json_text(self, value: Any) -> ColumnElement:
        """A stored list or object as its JSON text (SQLite's compacted)."""
        return type_coerce(func.json(value), String) if self.sqlite else self.text(value)

    def json_value(self, value: Any, kind: Cell) -> ColumnElement:
        """The value as JSON text (PostgreSQL): a quoted string, digits, the stored JSON, or null.
        A code needs no escaping (nothing in it is a quote, a backslash or a control character),
        so it is quoted by concatenation: cheaper than to_json, which a million rows notice."""
        if kind is Cell.JSON:
            stored = self.json_text(value)
        elif kind is Cell.NUMBER:
            stored = self.text(value)
        elif kind is Cell.CODE:
            stored = literal('"', String).concat(value).concat('"')  # NULL stays NULL
        else:
            stored = self.text(func.to_json(value))
        return func.coalesce(stored, literal("null", String))

    def iso_time(self, column) -> ColumnElement:
        """'2026-11-24T10:15:30.120000+00:00': the very form the audit chain hashes."""
        if self.sqlite:  # UTCDateTime stores UTC as 'YYYY-MM-DD HH:MM:SS.ffffff' in SQLite
            return type_coerce(func.replace(type_coerce(column, String), " ", "T").concat("+00:00"), String)
        return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')

    def decimal(self, minor_units: Any, exponent: int) -> ColumnElement:
        """'1234.50' for 123450 with exponent 2 (`haven.money.format_decimal`, in SQL)."""
        if exponent == 0:
            return self.text(minor_units)
        if not self.sqlite:  # numeric keeps the sign and pads the scale itself
            return self.text(cast(cast(minor_units, Numeric(38, 0)) / 10**exponent, Numeric(38, exponent)))
        scale = 10**exponent
        sign = case((minor_units < 0, literal("-", String)), else_=literal("", String))
        whole = func.abs(minor_units)
        # op("/"): SQLite's own integer division (SQLAlchemy's `/` would divide as reals); printf
        # pads in C, a third faster than padding by string functions.
        return self.format(f"%s%d.%0{exponent}d", sign, whole.op("/")(scale), whole % scale)

    def decimal_by_currency(self, minor_units: Any, currency: Any, exponents: dict[str, int]) -> ColumnElement:
        """The amount in its own currency's minor units. `exponents` must hold every currency the
        rows have (the caller checked), else the cell would be empty; the most common first, since
        the database tries them in order."""
        if not exponents:  # no rows
            return literal(None, String)
        return case(*((currency == code, self.decimal(minor_units, e)) for code, e in exponents.items()))

    def holds_any(self, text: Any, characters: str) -> ColumnElement:
        position = func.instr if self.sqlite else func.strpos
        return or_(*(position(text, c) > 0 for c in characters))


def _csv_cell(sql: Sql, value: Any, kind: Cell) -> Any:
    if kind in (Cell.NUMBER, Cell.CODE):
        return value
    text = sql.json_text(value) if kind is Cell.JSON else value
    needs_quotes = sql.holds_any(text, ',"\r\n')
    quoted = literal('"', String).concat(func.replace(text, '"', '""')).concat('"')
    return case((needs_quotes, quoted), else_=text)


@dataclass(frozen=True)
class LineFormat:
    """How one row becomes one line of the file, in SQL, and what stands between lines."""

    format: ExportFormat
    sql: Sql

    @property
    def line_end(self) -> bytes:
        return b"\r\n" if self.format is ExportFormat.CSV else b"\n"

    def header(self, columns: Sequence[str]) -> bytes:
        # Column names are plain identifiers: no cell of the header needs quoting.
        return (",".join(columns)).encode() + self.line_end if self.format is ExportFormat.CSV else b""

    def line(self, cells: Sequence[tuple[str, Cell, Any]]) -> ColumnElement:
        if self.format is ExportFormat.CSV:
            template = ",".join(["%s"] * len(cells))
            values = [_csv_cell(self.sql, value, kind) for _, kind, value in cells]
        elif self.sql.sqlite:  # json_object writes compact JSON, keys in the order given, in C
            pairs = [(literal(name, String), self.sql.json_text(value) if kind is Cell.JSON else value) for name, kind, value in cells]
            return type_coerce(func.json_object(*(part for pair in pairs for part in pair)), String)
        else:
            template = "{" + ",".join(f'"{name}":%s' for name, _, _ in cells) + "}"
            values = [self.sql.json_value(value, kind) for _, kind, value in cells]
        return self.sql.format(template, *values)
