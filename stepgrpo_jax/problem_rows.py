"""Rows of problem files, read one by one with their line: JSON Lines (`.jsonl`, `.json`), a JSON
array (`.json`), or Parquet. JSON numbers are read as `decimal.Decimal`, and numeric fields become
text with their exact value, so an answer keeps the digits the file wrote.
"""

from __future__ import annotations

import decimal
import json
import re
from collections.abc import Iterator
from typing import Any

_SPACE = re.compile(r"\s*")


class DataError(ValueError):
    """A malformed input row; the message names file and line."""


def read_rows(path: str) -> Iterator[tuple[int, Any]]:
    """(line or row number from 1, parsed row or the exception that spoiled it).

    JSON numbers are read as `decimal.Decimal`, so an answer keeps the digits the file wrote.
    """
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield i, row
        return
    with open(path, "rb") as f:
        raw = f.read()
    if raw.lstrip()[:1] == b"[":
        yield from _json_array(path, raw)
        return
    first = True
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line.decode("utf-8"), parse_float=decimal.Decimal)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if first:
                _check_not_one_document(path, raw)
            yield i, e
        first = False


def _json_array(path: str, raw: bytes) -> Iterator[tuple[int, Any]]:
    """The elements of a file holding one JSON array, each with the line it starts on."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: bad encoding ({e})") from None
    decoder = json.JSONDecoder(parse_float=decimal.Decimal)
    pos, line, counted = text.index("[") + 1, 1, 0
    while (pos := _SPACE.match(text, pos).end()) < len(text) and text[pos] != "]":
        line, counted = line + text.count("\n", counted, pos), pos
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON in the array ({e.msg})") from None
        yield line, row
        pos = _SPACE.match(text, pos).end()
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            break
    if not text.startswith("]", pos):
        line += text.count("\n", counted, pos)
        raise DataError(f"{path}:{line}: invalid JSON in the array (',' or ']' expected)")


def _check_not_one_document(path: str, raw: bytes) -> None:
    """A file whose first line is not JSON but which parses whole (a pretty-printed object) has
    the wrong shape, not a bad first row: say so."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return
    raise DataError(f"{path}: JSON Lines or a JSON array expected, found one "
                    f"{type(doc).__name__} spanning the file")


def field_text(name: str, value: Any) -> tuple[str, str | None]:
    """(the field as text, a warning or None). Numbers keep their exact value and are written
    without an exponent (1e-05 -> 0.00001): math-verify reads `1e-05` as e - 5."""
    if isinstance(value, str):
        return value.strip(), None
    if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal)):
        raise ValueError(f"field {name!r} is a {type(value).__name__}, expected text")
    if isinstance(value, int):
        return str(value), None
    number = decimal.Decimal(repr(value)) if isinstance(value, float) else value
    if not number.is_finite():
        raise ValueError(f"field {name!r} is {value}, expected a finite number")
    warning = None
    # A binary float (Parquet) is exact as the shortest decimal that reads back as it; past
    # 15 significant digits that decimal may not be what was meant (0.1 stored as float32).
    if isinstance(value, float) and len(number.as_tuple().digits) > 15:
        warning = (f"field {name!r} is the float {value!r}, which may not be the exact value "
                   "meant; store answers as text")
    return format(number, "f"), warning
