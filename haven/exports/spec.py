"""What an export is of: the ledger or the audit log, a period of days, and a file format.

A period is half-open, `[from, to)`, on when things happened (`occurred_at`, UTC): `from` is the
first day included and `to` the first day *not* included, so January is `from 2026-01-01 to
2026-02-01` and consecutive periods never share or miss a row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from enum import StrEnum

# One (leap) year: what an audit covers. Longer periods are exported year by year, which keeps
# each export's time bounded on a server that is paying grants meanwhile.
MAX_PERIOD_DAYS = 366


class ExportKind(StrEnum):
    LEDGER = "ledger"
    AUDIT = "audit"


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"

    @property
    def media_type(self) -> str:
        return "text/csv; charset=utf-8" if self is ExportFormat.CSV else "application/x-ndjson; charset=utf-8"


class InvalidExport(ValueError):
    """A period or format an export cannot be made for; `field` names the parameter at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Period:
    first_day: date  # included
    end_day: date  # not included

    def __post_init__(self) -> None:
        if self.end_day <= self.first_day:
            raise InvalidExport("to", "must be after `from` (the period is [from, to): `to` is the first day not included)")
        if (self.end_day - self.first_day).days > MAX_PERIOD_DAYS:
            raise InvalidExport("to", f"a period is at most {MAX_PERIOD_DAYS} days; export longer ones year by year")

    @property
    def starts_at(self) -> datetime:
        return datetime.combine(self.first_day, time(), timezone.utc)

    @property
    def ends_before(self) -> datetime:
        return datetime.combine(self.end_day, time(), timezone.utc)


@dataclass(frozen=True)
class ExportSpec:
    kind: ExportKind
    format: ExportFormat
    period: Period

    @property
    def file_name(self) -> str:
        return f"haven-{self.kind}_{self.period.first_day.isoformat()}_{self.period.end_day.isoformat()}.{self.format}"
