"""File formats, UTF-8 without a byte-order mark. CSV: RFC 4180 (comma, double quotes, CRLF), one
header row, empty cells for nothing, lists and objects as compact JSON. JSON Lines: one object per
row, keys in column order, `null` for nothing, numbers for ids and sequence numbers, strings for
amounts (never a float)."""

from __future__ import annotations

import csv
import io
import json
from json.encoder import encode_basestring
from collections.abc import Sequence
from typing import Any

from haven.exports.sources import structured
from haven.exports.spec import ExportFormat

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class CsvEncoder:
    def __init__(self, columns: Sequence[str], structured_columns: frozenset[int] = frozenset()):
        self.columns = columns
        self.structured_columns = structured_columns
        self._separators = len(columns) - 1
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer)  # lineterminator \r\n, as RFC 4180 says

    def header(self) -> bytes:
        return self._quoted(list(self.columns)).encode("utf-8")

    def rows(self, rows: list[list[Any]]) -> bytes:
        lines = []
        for cells in rows:
            for i in self.structured_columns:
                cells[i] = structured(cells[i])
            line = ",".join(["" if c is None else c if c.__class__ is str else str(c) for c in cells])
            # Most rows need no quoting (ids, times, amounts, codes): joined directly, which is
            # several times faster than the csv module; any cell with a comma, a quote or a line
            # break sends its row through the csv module.
            if line.count(",") != self._separators or '"' in line or "\n" in line or "\r" in line:
                line = self._quoted(cells)[:-2]
            lines.append(line)
        lines.append("")
        return "\r\n".join(lines).encode("utf-8")

    def _quoted(self, cells: list[Any]) -> str:
        self._writer.writerow(cells)  # None is written as an empty cell
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text


class JsonLinesEncoder:
    def __init__(self, columns: Sequence[str], structured_columns: frozenset[int] = frozenset()):
        self.columns = columns
        # '{"entry_id":', ',"occurred_at":', …: each row is these with its values between.
        self._keys = ["{" + _dumps(columns[0]) + ":"] + ["," + _dumps(c) + ":" for c in columns[1:]]

    def header(self) -> bytes:
        return b""

    def rows(self, rows: list[list[Any]]) -> bytes:
        # What json.dumps of a dict would write, at twice its speed: strings through the json
        # module's own escaping, ints as digits, anything else (lists, objects) through dumps.
        keys, string = self._keys, encode_basestring
        lines = [
            "".join([key + (string(v) if v.__class__ is str else "null" if v is None else str(v) if v.__class__ is int
                            else _dumps(v)) for key, v in zip(keys, cells, strict=True)])
            for cells in rows
        ]  # fmt: skip
        lines.append("")
        return "}\n".join(lines).encode("utf-8")


ENCODERS = {ExportFormat.CSV: CsvEncoder, ExportFormat.JSONL: JsonLinesEncoder}
