"""An operator's own labelled data: (text, intent) pairs from a CSV, JSON Lines or Parquet file.

A path or any fsspec URL (``s3://bucket/key.parquet``); ``.csv.gz`` and ``.jsonl.gz`` are
read through gzip. Every problem an operator can fix raises :class:`LabelledFileError`
with one line saying what is wrong: a missing file, an unknown extension, an empty file,
text that is not UTF-8, a missing column, a malformed row, or fewer than two intents.
Rows whose text or intent is empty (or null) are skipped and counted, not rejected: a
spreadsheet export often has a few, and the caller reports the count.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from streams.datasets import Example

__all__ = ["FORMATS", "LabelledData", "LabelledFileError", "file_format", "is_url", "read_labelled"]

# Suffix -> format. ".gz" may follow a text format's suffix.
FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
EXPECTED = (
    "expected .csv, .jsonl (JSON Lines; .ndjson) or .parquet (.csv and .jsonl may "
    "be .gz-compressed)"
)
_UTF8_BOM = b"\xef\xbb\xbf"
_SHOWN_COLUMNS = 12


class LabelledFileError(ValueError):
    """A labelled file that cannot be used; ``str(err)`` is the operator message."""


@dataclass(frozen=True)
class LabelledData:
    """The usable rows of one file, in file order; ``skipped`` rows had an empty text or intent."""

    source: str
    texts: list[str]
    intents: list[str]
    skipped: int

    def __len__(self) -> int:
        return len(self.texts)

    def intent_counts(self) -> Counter[str]:
        return Counter(self.intents)

    def examples(self) -> list[Example]:
        return [
            Example(text, intent, None)
            for text, intent in zip(self.texts, self.intents, strict=True)
        ]


def is_url(source: str) -> bool:
    return "://" in source


def file_format(source: str) -> str:
    """ "csv", "jsonl" or "parquet" from the name's suffix; LabelledFileError for any other."""
    name = source.rstrip("/").rsplit("/", 1)[-1].lower()
    compressed = name.endswith(".gz")
    stem = name[: -len(".gz")] if compressed else name
    suffix = os.path.splitext(stem)[1]
    fmt = FORMATS.get(suffix)
    if fmt is None or (compressed and fmt == "parquet"):
        shown = suffix + (".gz" if compressed else "") or "no extension"
        raise LabelledFileError(f"{source}: unknown file type ({shown}); {EXPECTED}")
    return fmt


def read_labelled(
    source: str,
    text_column: str = "text",
    intent_column: str = "intent",
    *,
    storage_options: dict[str, Any] | None = None,
) -> LabelledData:
    """The (text, intent) rows of ``source``; raises
    LabelledFileError for anything an operator must fix."""
    fmt = file_format(source)
    raw = _read_bytes(source, storage_options)
    if not raw or raw.isspace():  # no copy of a large file, unlike strip()
        raise LabelledFileError(f"{source} is empty")
    if fmt == "parquet":
        texts, intents = _parquet_columns(source, raw, text_column, intent_column)
    else:
        raw = raw.removeprefix(_UTF8_BOM)  # spreadsheet exports often start with one
        _check_utf8(source, raw)
        if fmt == "csv":
            texts, intents = _csv_columns(source, raw, text_column, intent_column)
        else:
            texts, intents = _jsonl_columns(source, raw, text_column, intent_column)
    return _usable(source, texts, intents, text_column, intent_column)


# --- reading
# ---------------------------------------------------------------------------------------


def _read_bytes(source: str, storage_options: dict[str, Any] | None) -> bytes:
    if not is_url(source):
        if not os.path.exists(source):
            raise LabelledFileError(f"{source} does not exist")
        if os.path.isdir(source):
            raise LabelledFileError(f"{source} is a directory, not a file")
    try:
        with fsspec.open(source, "rb", compression="infer", **(storage_options or {})) as fh:
            content: bytes = fh.read()  # fsspec is untyped; a binary file reads bytes
            return content
    except FileNotFoundError:
        raise LabelledFileError(f"{source} does not exist") from None
    # unreadable, truncated gzip, bad URL, storage refused
    except (OSError, EOFError, ValueError) as exc:
        raise LabelledFileError(f"cannot read {source}: {exc}") from None


def _check_utf8(source: str, raw: bytes) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise LabelledFileError(
            f"{source} is not UTF-8 text: byte 0x{raw[exc.start]:02x} on line "
            f"{line} cannot be decoded; "
            "save the file as UTF-8"
        ) from None


def _missing_column(source: str, role: str, column: str, names: list[str]) -> LabelledFileError:
    shown = ", ".join(repr(n) for n in names[:_SHOWN_COLUMNS]) + (
        ", ..." if len(names) > _SHOWN_COLUMNS else ""
    )
    return LabelledFileError(
        f"{source} has no {role} column {column!r}; its columns: {shown or 'none'}"
    )


def _csv_columns(
    source: str, raw: bytes, text_column: str, intent_column: str
) -> tuple[list[Any], list[Any]]:
    # Both read as strings, never inferred: an intent "007" or a text "12" stays as written.
    types = {text_column: pa.string(), intent_column: pa.string()}
    convert = pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True)
    parse = pa_csv.ParseOptions(newlines_in_values=True)
    try:
        table = pa_csv.read_csv(io.BytesIO(raw), parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        raise LabelledFileError(f"{source} is not a valid CSV file: {_first_line(exc)}") from None
    for role, column in (("text", text_column), ("intent", intent_column)):
        if column not in table.column_names:
            raise _missing_column(source, role, column, table.column_names)
    return table.column(text_column).to_pylist(), table.column(intent_column).to_pylist()


def _jsonl_columns(
    source: str, raw: bytes, text_column: str, intent_column: str
) -> tuple[list[Any], list[Any]]:
    # Python's json rather than pyarrow's reader: that one refuses a number among string intents
    # ("changed from string to number") and names no line;
    # here a bad line is named and a numeric label is text.
    texts: list[Any] = []
    intents: list[Any] = []
    keys: set[str] = set()
    for number, line in _lines(raw):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            where = f"line {number}, column {exc.colno}"
            raise LabelledFileError(
                f"{source} is not valid JSON Lines: {where}: {exc.msg}"
            ) from None
        except ValueError as exc:  # e.g. a number too long to convert
            raise LabelledFileError(
                f"{source} is not valid JSON Lines: line {number}: {exc}"
            ) from None
        if not isinstance(row, dict):
            kind = type(row).__name__
            raise LabelledFileError(
                f"{source} is not valid JSON Lines: line {number} is a JSON {kind}, not an object"
            )
        keys.update(row)
        for role, column, out in (("text", text_column, texts), ("intent", intent_column, intents)):
            value = row.get(column)
            if isinstance(value, (dict, list)):
                kind = type(value).__name__
                problem = f"the {role} field {column!r} is a JSON {kind}, expected text"
                raise LabelledFileError(f"{source}: line {number}: {problem}")
            out.append(value)
    for role, column in (("text", text_column), ("intent", intent_column)):
        if column not in keys:
            raise _missing_column(source, role, column, sorted(keys))
    return texts, intents


def _lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if line.strip():
            yield number, line


def _parquet_columns(
    source: str, raw: bytes, text_column: str, intent_column: str
) -> tuple[list[Any], list[Any]]:
    try:
        parquet = pq.ParquetFile(pa.BufferReader(raw))
        names = parquet.schema_arrow.names
        for role, column in (("text", text_column), ("intent", intent_column)):
            if column not in names:
                raise _missing_column(source, role, column, names)
        table = parquet.read(columns=[text_column, intent_column])
    except (pa.ArrowInvalid, OSError) as exc:
        raise LabelledFileError(
            f"{source} is not a valid Parquet file: {_first_line(exc)}"
        ) from None
    return _as_text(source, table, "text", text_column), _as_text(
        source, table, "intent", intent_column
    )


def _as_text(source: str, table: pa.Table, role: str, column: str) -> list[str | None]:
    values = table.column(column)
    kind = values.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    types = pa.types
    textual = (
        types.is_string,
        types.is_large_string,
        types.is_binary,
        types.is_large_binary,
        types.is_integer,
    )
    if not any(is_textual(kind) for is_textual in textual):
        raise LabelledFileError(
            f"{source}: the {role} column {column!r} holds {values.type} values, expected text"
        )
    try:
        texts: list[str | None] = pc.cast(values, pa.string()).to_pylist()  # pyarrow is untyped
        return texts
    except pa.ArrowInvalid:  # binary that is not UTF-8
        raise LabelledFileError(
            f"{source}: the {role} column {column!r} is not UTF-8 text"
        ) from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# --- checking
# --------------------------------------------------------------------------------------


def _usable(
    source: str, texts: list[Any], intents: list[Any], text_column: str, intent_column: str
) -> LabelledData:
    if not texts:
        raise LabelledFileError(f"{source} has no rows")
    kept_texts: list[str] = []
    kept_intents: list[str] = []
    for text, intent in zip(texts, intents, strict=True):
        text = "" if text is None else str(text).strip()
        intent = "" if intent is None else str(intent).strip()
        if text and intent:
            kept_texts.append(text)
            kept_intents.append(intent)
    skipped = len(texts) - len(kept_texts)
    if not kept_texts:
        raise LabelledFileError(
            f"{source}: none of its {len(texts)} rows has both a "
            f"{text_column!r} and an {intent_column!r}"
        )
    distinct = set(kept_intents)
    if len(distinct) < 2:
        only = next(iter(distinct))
        raise LabelledFileError(
            f"{source} has a single intent ({only!r}); a classifier needs at least 2"
        )
    return LabelledData(source, kept_texts, kept_intents, skipped)
