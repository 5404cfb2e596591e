"""Write result rows as they stream in: a text table, CSV, JSON or JSON Lines.

Each writer takes the rows one at a time and writes them straight to the
file, so a million faces never sit in memory together.
"""

import csv
import json
from collections.abc import Iterable
from typing import Any, TextIO

from worker.results import RESULT_COLUMNS

FORMATS = ("table", "csv", "json", "jsonl")
# Text-table widths; a longer value widens its own line only (a table cannot be streamed
# and sized to its longest value at once).
_WIDTHS = {
    "job_id": 6,
    "path": 48,
    "status": 7,
    "face_index": 10,
    "gender": 6,
    "model_version": 30,
    "error": 0,
}
_NUMBER_WIDTH = 8


def write_rows(
    rows: Iterable[dict[str, Any]], fmt: str, out: TextIO, jobs: list[dict[str, Any]]
) -> int:
    """Write `rows` to `out` in `fmt`; returns how many were written.

    `jobs` (what produced the rows: model version, backend, detector settings,
    runtime, package version of each job) goes into the JSON document, which is
    {"jobs": [...], "rows": [...]}; JSON Lines has one row per line, no more.
    """
    if fmt == "csv":
        return _csv(rows, out)
    if fmt == "json":
        return _json(rows, out, jobs)
    if fmt == "jsonl":
        count = 0
        for row in rows:
            out.write(json.dumps(row) + "\n")
            count += 1
        return count
    return _table(rows, out)


def _csv(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    return count


def _json(rows: Iterable[dict[str, Any]], out: TextIO, jobs: list[dict[str, Any]]) -> int:
    out.write('{"jobs": ' + json.dumps(jobs) + ',\n "rows": [')
    count = 0
    for row in rows:
        out.write(("\n  " if count == 0 else ",\n  ") + json.dumps(row))
        count += 1
    out.write("\n ]}\n" if count else "]}\n")
    return count


def _table(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    out.write(_line({c: c for c in RESULT_COLUMNS}))
    count = 0
    for row in rows:
        out.write(_line({c: _cell(row[c]) for c in RESULT_COLUMNS}))
        count += 1
    return count


def _line(cells: dict[str, str]) -> str:
    parts = [cells[c].ljust(_WIDTHS.get(c, _NUMBER_WIDTH)) for c in RESULT_COLUMNS]
    return "  ".join(parts).rstrip() + "\n"


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    # One row a line: a newline or another control character in a file name is shown
    # escaped, as undecodable bytes are (`caf\\xe9.jpg`).
    return text if text.isprintable() else "".join(map(_printable, text))


def _printable(char: str) -> str:
    return char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
