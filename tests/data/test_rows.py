"""read_rows over every format, and the one-line errors users see for bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefloop.data.rows import (
    optional_str,
    read_rows,
    require_bool,
    require_float,
    require_int,
    require_list,
    require_str,
)
from prefloop.errors import PrefloopError

ROWS = [{"text": "first doc", "n": 1}, {"text": "second doc", "n": 2}]


def _error(fn, *args, **kw) -> PrefloopError:
    with pytest.raises(PrefloopError) as info:
        out = fn(*args, **kw)
        list(out) if out is not None and not isinstance(out, str | int | float) else out
    return info.value


def test_jsonl_json_array_and_json_lines(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    assert list(read_rows(jsonl)) == [(1, ROWS[0]), (3, ROWS[1])]  # line numbers, blanks skipped
    arr = tmp_path / "b.json"
    arr.write_text(json.dumps(ROWS, indent=2))
    assert list(read_rows(arr)) == [(1, ROWS[0]), (2, ROWS[1])]
    lines = tmp_path / "c.json"
    lines.write_text("\ufeff" + "\n".join(json.dumps(r) for r in ROWS))  # BOM tolerated
    assert list(read_rows(str(lines))) == [(1, ROWS[0]), (2, ROWS[1])]


def test_csv_tsv_txt(tmp_path: Path) -> None:
    csv_file = tmp_path / "a.csv"
    csv_file.write_text('text,n\nfirst doc,1\n"second, quoted",2\n')
    assert list(read_rows(csv_file)) == [
        (2, {"text": "first doc", "n": "1"}),
        (3, {"text": "second, quoted", "n": "2"}),
    ]
    tsv = tmp_path / "a.tsv"
    tsv.write_text("text\tn\nx\t3\n")
    assert list(read_rows(tsv)) == [(2, {"text": "x", "n": "3"})]
    txt = tmp_path / "a.txt"
    txt.write_text("one line\n\n  \ntwo line\r\n")
    assert list(read_rows(txt)) == [(1, {"text": "one line"}), (4, {"text": "two line"})]


def test_parquet_and_saved_datasets(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    assert list(read_rows(tmp_path / "a.parquet")) == [(1, ROWS[0]), (2, ROWS[1])]
    ds.save_to_disk(str(tmp_path / "saved"))
    assert list(read_rows(tmp_path / "saved")) == [(1, ROWS[0]), (2, ROWS[1])]
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dd"))
    assert list(read_rows(tmp_path / "dd", split="test")) == [(1, ROWS[1])]
    err = _error(read_rows, tmp_path / "dd", split="validation")
    assert "no split 'validation'" in str(err) and "train, test" in str(err)


def test_file_level_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.jsonl")
    assert str(_error(read_rows, missing)) == f"{missing}: no such file"
    assert "no such file" in str(_error(read_rows, "./no-such-folder/corpus"))
    odd = tmp_path / "a.xml"
    odd.write_text("<a/>")
    assert "unsupported file type '.xml'" in str(_error(read_rows, odd))
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"not parquet at all")
    err = _error(read_rows, bad_parquet)
    assert err.file == str(bad_parquet) and "cannot read Parquet" in err.message


@pytest.mark.parametrize(
    ("suffix", "content", "row", "message"),
    [
        (".jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', 2, "invalid UTF-8 at byte"),
        (".json", b'[{"text": "ok"},\n {"text": "\xff"}]', 2, "invalid UTF-8 on line 2"),
        (".txt", b"ok\nfine\n\xc3(\n", 3, "invalid UTF-8"),
        (".csv", b"text\nok\n\xe9t\xe9\n", 3, "invalid UTF-8"),
        (".jsonl", b'{"text": "ok"}\n{"text": "unterminated}\n', 2, "invalid JSON"),
        (".jsonl", b'{"text": "ok"}\n\n["a", "list"]\n', 3, "expected a JSON object, got list"),
        (".json", b'[{"text": "ok"}, 5]', 2, "expected a JSON object, got int"),
        (".jsonl", b"null\n", 1, "expected a JSON object, got null"),
        (".csv", b"text\nok\na,b\n", 3, "more values than header columns"),
    ],
)
def test_row_level_errors_name_file_and_row(
    tmp_path: Path, suffix: str, content: bytes, row: int, message: str
) -> None:
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    err = _error(read_rows, path)
    assert (err.file, err.row) == (str(path), row)
    assert message in err.message
    assert str(err).startswith(f"{path}, row {row}: ")  # the line the CLI prints
    assert "\n" not in str(err)


def test_invalid_json_array_names_line(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('[{"text": "ok"},\n {"text": }]')
    assert "invalid JSON" in str(_error(read_rows, path)) and "line 2" in str(
        _error(read_rows, path)
    )


def test_field_accessors() -> None:
    row = {"s": "hi", "blank": "  ", "n": 3, "f": 0.5, "fs": "2.5", "ns": "7", "b": True,
           "bs": "False", "l": [1], "empty": [], "none": None, "nan": float("nan"),
           "t": "x"}  # fmt: skip
    where = {"file": "f.jsonl", "row_no": 4}
    assert require_str(row, "s", **where) == "hi"
    assert require_str(row, "blank", allow_empty=True, **where) == "  "
    assert optional_str(row, "none", **where) is None and optional_str(row, "s", **where) == "hi"
    assert require_int(row, "n", **where) == 3 and require_int(row, "ns", **where) == 7
    assert require_int({"big": 2**62 + 1}, "big", **where) == 2**62 + 1
    assert require_float(row, "f", **where) == 0.5 and require_float(row, "fs", **where) == 2.5
    assert require_bool(row, "b", **where) is True and require_bool(row, "bs", **where) is False
    assert require_list(row, "l", **where) == [1]

    cases = [
        (require_str, "missing", "f.jsonl, row 4, field 'missing': missing field"),
        (require_str, "none", "f.jsonl, row 4, field 'none': missing field"),
        (require_str, "blank", "f.jsonl, row 4, field 'blank': empty text"),
        (require_str, "n", "f.jsonl, row 4, field 'n': expected a string, got int"),
        (require_int, "f", "f.jsonl, row 4, field 'f': expected an integer, got 0.5"),
        (require_int, "b", "f.jsonl, row 4, field 'b': expected an integer, got True"),
        (require_float, "t", "f.jsonl, row 4, field 't': expected a finite number, got 'x'"),
        (require_float, "nan", "f.jsonl, row 4, field 'nan': expected a finite number, got nan"),
        (require_bool, "n", "f.jsonl, row 4, field 'n': expected true or false, got 3"),
        (require_list, "s", "f.jsonl, row 4, field 's': expected a list, got str"),
        (require_list, "empty", "f.jsonl, row 4, field 'empty': empty list"),
    ]
    for fn, field, message in cases:
        with pytest.raises(PrefloopError) as info:
            fn(row, field, **where)
        assert str(info.value) == message


def test_dataset_ids_go_to_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # never touch the network
    err = _error(read_rows, "someone/no-such-dataset")
    assert err.file == "someone/no-such-dataset"
    assert "not a local file, and datasets.load_dataset failed" in err.message
