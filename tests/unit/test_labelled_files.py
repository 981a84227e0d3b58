"""streams.labelled_files: an operator's own (text, intent) file in CSV, JSON Lines or
Parquet, and every problem with it reported in one line that says what is wrong."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streams.labelled_files import LabelledFileError, file_format, read_labelled

# A comma, a quote, a newline inside a text, non-ASCII,
# and values that must stay text ("007", "12").
ROWS = [
    ("freeze my card, please", "card_freeze"),
    ('what does "pending" mean', "pending"),
    ("two lines\nof text", "pending"),
    ("разбуди меня в девять", "alarm_set"),
    ("12", "007"),
]


def write_csv(
    path: Path, rows: list[tuple[str | None, str | None]], header: str = "text,intent"
) -> Path:
    def cell(value: str | None) -> str:
        return "" if value is None else '"' + value.replace('"', '""') + '"'

    path.write_text(
        header + "\n" + "".join(f"{cell(t)},{cell(i)}\n" for t, i in rows), encoding="utf-8"
    )
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def error(source: Path | str, **kwargs: object) -> str:
    with pytest.raises(LabelledFileError) as caught:
        read_labelled(str(source), **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message  # one line for the operator
    return message


# --- the three formats ---------------------------------------------------------------------------


def test_csv_jsonl_and_parquet_give_the_same_pairs_as_written(tmp_path: Path) -> None:
    texts, intents = [t for t, _ in ROWS], [i for _, i in ROWS]
    sources = [
        write_csv(tmp_path / "a.csv", ROWS),
        write_jsonl(tmp_path / "a.jsonl", [{"text": t, "intent": i, "extra": 1} for t, i in ROWS]),
        write_parquet(
            tmp_path / "a.parquet",
            {"text": texts, "intent": intents, "score": list(range(len(ROWS)))},
        ),
    ]
    for source in sources:
        data = read_labelled(str(source))
        assert (data.texts, data.intents, data.skipped) == (texts, intents, 0), source.name
        assert [(e.text, e.intent, e.domain) for e in data.examples()] == [
            (t, i, None) for t, i in ROWS
        ]
        assert data.intent_counts()["pending"] == 2


def test_named_columns_gzip_and_a_byte_order_mark(tmp_path: Path) -> None:
    body = "utterance,label\nhello,greet\nbye now,bye\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + body.encode())
    with gzip.open(tmp_path / "z.csv.gz", "wt", encoding="utf-8") as fh:
        fh.write(body)
    with gzip.open(tmp_path / "z.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(
            '{"utterance": "hello", "label": "greet"}\n\n{"utterance": "bye now", "label": "bye"}\n'
        )
    for name in ("bom.csv", "z.csv.gz", "z.jsonl.gz"):
        data = read_labelled(str(tmp_path / name), "utterance", "label")
        assert (data.texts, data.intents) == (["hello", "bye now"], ["greet", "bye"]), name


def test_numeric_and_categorical_intents_are_read_as_text(tmp_path: Path) -> None:
    jsonl = write_jsonl(
        tmp_path / "n.jsonl", [{"text": "a", "intent": 3}, {"text": "b", "intent": "other"}]
    )
    assert read_labelled(str(jsonl)).intents == ["3", "other"]
    table = pa.table(
        {"text": ["a", "b", "c"], "intent": pa.array(["x", "y", "x"]).dictionary_encode()}
    )
    pq.write_table(table, tmp_path / "d.parquet")
    assert read_labelled(str(tmp_path / "d.parquet")).intents == ["x", "y", "x"]
    write_parquet(tmp_path / "i.parquet", {"text": ["a", "b"], "intent": [1, 2]})
    assert read_labelled(str(tmp_path / "i.parquet")).intents == ["1", "2"]


def test_rows_with_an_empty_text_or_intent_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [
        ("hello", "greet"),
        (None, "greet"),
        ("   ", "greet"),
        ("bye", None),
        ("bye", " "),
        ("  see you  ", " bye "),
    ]
    csv = write_csv(tmp_path / "s.csv", rows)
    jsonl = write_jsonl(
        tmp_path / "s.jsonl", [{"text": t, "intent": i} for t, i in rows] + [{"intent": "greet"}]
    )
    parquet = write_parquet(
        tmp_path / "s.parquet", {"text": [t for t, _ in rows], "intent": [i for _, i in rows]}
    )
    for source, skipped in ((csv, 4), (jsonl, 5), (parquet, 4)):
        data = read_labelled(str(source))
        assert (data.texts, data.intents, data.skipped) == (
            ["hello", "see you"],
            ["greet", "bye"],
            skipped,
        ), source.name


# --- what an operator must fix ------------------------------------------------------------------


def test_a_missing_file_a_directory_and_an_unknown_extension(tmp_path: Path) -> None:
    assert error(tmp_path / "nope.csv") == f"{tmp_path / 'nope.csv'} does not exist"
    (tmp_path / "dir.csv").mkdir()
    assert "is a directory" in error(tmp_path / "dir.csv")
    (tmp_path / "notes.txt").write_text("text,intent\na,b\n")
    assert "unknown file type (.txt); expected .csv, .jsonl" in error(tmp_path / "notes.txt")
    assert "unknown file type (no extension)" in error(tmp_path / "data")
    assert "unknown file type (.parquet.gz)" in error(tmp_path / "x.parquet.gz")
    assert [file_format(n) for n in ("a.CSV", "s3://b/k/a.ndjson", "a.jsonl.gz", "a.pq")] == [
        "csv",
        "jsonl",
        "jsonl",
        "parquet",
    ]


def test_empty_files_and_files_without_rows(tmp_path: Path) -> None:
    for name in ("e.csv", "e.jsonl", "e.parquet"):
        (tmp_path / name).write_bytes(b"")
        assert error(tmp_path / name) == f"{tmp_path / name} is empty"
    (tmp_path / "blank.jsonl").write_text("\n\n  \n")
    assert error(tmp_path / "blank.jsonl").endswith("is empty")
    (tmp_path / "header.csv").write_text("text,intent\n")
    assert error(tmp_path / "header.csv").endswith("has no rows")
    pq.write_table(
        pa.table({"text": pa.array([], pa.string()), "intent": pa.array([], pa.string())}),
        tmp_path / "none.parquet",
    )
    assert error(tmp_path / "none.parquet").endswith("has no rows")
    only_blank = write_csv(tmp_path / "blank.csv", [(None, "x"), ("a", None)])
    assert (
        error(only_blank) == f"{only_blank}: none of its 2 rows has both a 'text' and an 'intent'"
    )


def test_text_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "latin1.csv").write_bytes(
        "text,intent\nhello,greet\ncafé au lait,order\n".encode("latin-1")
    )
    message = error(tmp_path / "latin1.csv")
    assert (
        "is not UTF-8 text: byte 0xe9 on line 3" in message and "save the file as UTF-8" in message
    )
    (tmp_path / "cp1251.jsonl").write_bytes(
        '{"text": "привет", "intent": "greet"}\n'.encode("cp1251")
    )
    assert "is not UTF-8 text" in error(tmp_path / "cp1251.jsonl")
    write_parquet(
        tmp_path / "bin.parquet",
        {"text": pa.array([b"caf\xe9", b"ok"], pa.binary()), "intent": ["a", "b"]},
    )
    assert error(tmp_path / "bin.parquet").endswith("the text column 'text' is not UTF-8 text")


def test_a_missing_column_names_the_columns_there_are(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "c.csv", [("a", "x")], header="utterance,label")
    assert error(csv) == f"{csv} has no text column 'text'; its columns: 'utterance', 'label'"
    assert (
        error(csv, text_column="utterance")
        == f"{csv} has no intent column 'intent'; its columns: 'utterance', 'label'"
    )
    jsonl = write_jsonl(
        tmp_path / "c.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]
    )
    assert error(jsonl) == f"{jsonl} has no intent column 'intent'; its columns: 'label', 'text'"
    parquet = write_parquet(tmp_path / "c.parquet", {"sentence": ["a"], "intent": ["x"]})
    assert (
        error(parquet) == f"{parquet} has no text column 'text'; its columns: 'sentence', 'intent'"
    )


def test_a_single_intent_is_refused(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "one.csv", [("hello", "greet"), ("hi", "greet"), ("bye", "")])
    assert error(csv) == f"{csv} has a single intent ('greet'); a classifier needs at least 2"


def test_malformed_rows_are_named(tmp_path: Path) -> None:
    (tmp_path / "ragged.csv").write_text("text,intent\na,x\nb,y,z\n")
    assert "is not a valid CSV file: CSV parse error: Expected 2 columns, got 3" in error(
        tmp_path / "ragged.csv"
    )
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "intent": "x"}\n{"text": "b", "intent": \n')
    assert "is not valid JSON Lines: line 2, column 25: Expecting value" in error(
        tmp_path / "bad.jsonl"
    )
    (tmp_path / "array.jsonl").write_text('{"text": "a", "intent": "x"}\n["b", "y"]\n')
    assert error(tmp_path / "array.jsonl").endswith("line 2 is a JSON list, not an object")
    write_jsonl(tmp_path / "nested.jsonl", [{"text": "a", "intent": {"name": "x"}}])
    assert error(tmp_path / "nested.jsonl").endswith(
        "line 1: the intent field 'intent' is a JSON dict, expected text"
    )
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet at all")
    assert "is not a valid Parquet file" in error(tmp_path / "junk.parquet")
    write_parquet(tmp_path / "list.parquet", {"text": [["a", "b"]], "intent": ["x"]})
    assert error(tmp_path / "list.parquet").endswith(
        "the text column 'text' holds list<element: string> values, expected text"
    )
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(b"text,intent\n" + b"a,x\n" * 1000)[:40])
    assert error(tmp_path / "cut.csv.gz").startswith(f"cannot read {tmp_path / 'cut.csv.gz'}")


def test_an_s3_url_is_read_through_fsspec(tmp_path: Path, s3: dict) -> None:
    import fsspec

    fs = fsspec.filesystem("s3", **s3)
    fs.mkdir("own-data")
    with fs.open("own-data/intents.parquet", "wb") as fh:
        pq.write_table(pa.table({"text": ["hello", "bye"], "intent": ["greet", "bye"]}), fh)
    data = read_labelled("s3://own-data/intents.parquet", storage_options=s3)
    assert (data.texts, data.intents) == (["hello", "bye"], ["greet", "bye"])
    assert (
        error("s3://own-data/missing.csv", storage_options=s3)
        == "s3://own-data/missing.csv does not exist"
    )
