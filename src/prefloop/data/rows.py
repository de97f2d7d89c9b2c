"""One row reader for every data format prefloop accepts, and typed field accessors.

`read_rows(source)` yields `(row_number, row_dict)` from:

- `.jsonl` / `.json` — JSON lines, or (for `.json`) one JSON array of objects;
- `.csv` / `.tsv` — a header line, then one row per record (all values are strings);
- `.txt` — one row `{"text": line}` per non-empty line;
- `.parquet`;
- a folder written by `datasets.Dataset.save_to_disk` (a `DatasetDict` picks `split`);
- anything else: `datasets.load_dataset(source, split=split)` (a hub id or a data folder).

Row numbers are 1-based. For line-based files (JSONL, CSV, TSV, TXT) the row number is the
line number in the file, so an editor's "go to line" finds it; for JSON arrays, Parquet and
`datasets` it is the record's position. Every problem is a `PrefloopError` naming the file
and row (and field, where there is one).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefloop.errors import PrefloopError

Row = dict[str, Any]
_FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet"}


def read_rows(source: str | os.PathLike[str], *, split: str = "train") -> Iterator[tuple[int, Row]]:
    """Iterate (1-based row number, row) over a file, a saved `datasets` folder or a dataset id.

    A missing file or an unsupported suffix raises at once; row-level problems raise while
    iterating, at the row concerned.
    """
    path = Path(source).expanduser()
    name = str(source)
    if path.is_file():
        return _read_file(path, name)
    if path.is_dir() and _is_saved_dataset(path):
        return _read_saved_dataset(path, name, split)
    if not path.exists() and (path.suffix.lower() in _FILE_SUFFIXES or _looks_like_path(name)):
        raise PrefloopError("no such file", file=name)
    return _read_hub_dataset(name, split)


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else with slashes is meant as a path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def _read_file(path: Path, name: str) -> Iterator[tuple[int, Row]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_json_lines(path, name)
    if suffix == ".json":
        return _read_json(path, name)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, name, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix == ".txt":
        return _read_txt(path, name)
    if suffix == ".parquet":
        return _read_parquet(path, name)
    supported = ", ".join(sorted(_FILE_SUFFIXES))
    raise PrefloopError(f"unsupported file type '{suffix}' (supported: {supported})", file=name)


# ---------------------------------------------------------------- text formats


def _text_lines(path: Path, name: str) -> Iterator[tuple[int, str]]:
    """(line number, decoded line); invalid UTF-8 names its line. Streams: files may be large."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PrefloopError(
                    f"invalid UTF-8 at byte {e.start + 1} of line {line_no}", file=name, row=line_no
                ) from None
            if line_no == 1:
                line = line.removeprefix("\ufeff")  # a BOM some editors write
            yield line_no, line


def _read_txt(path: Path, name: str) -> Iterator[tuple[int, Row]]:
    for line_no, line in _text_lines(path, name):
        if line.strip():
            yield line_no, {"text": line.rstrip("\r\n")}


def _as_object(value: Any, name: str, row_no: int) -> Row:
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        raise PrefloopError(f"expected a JSON object, got {kind}", file=name, row=row_no)
    return value


def _parse_json(text: str, name: str, row_no: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PrefloopError(
            f"invalid JSON: {e.msg} (column {e.colno})", file=name, row=row_no
        ) from None


def _read_json_lines(path: Path, name: str) -> Iterator[tuple[int, Row]]:
    for line_no, line in _text_lines(path, name):
        if line.strip():
            value = _parse_json(line.rstrip("\r\n"), name, line_no)
            yield line_no, _as_object(value, name, line_no)


def _read_json(path: Path, name: str) -> Iterator[tuple[int, Row]]:
    """A `.json` file is one array of objects, or JSON lines under another name."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line_no = data.count(b"\n", 0, e.start) + 1
        raise PrefloopError(f"invalid UTF-8 on line {line_no}", file=name, row=line_no) from None
    if not text.lstrip().startswith("["):
        yield from _read_json_lines(path, name)
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}"
        raise PrefloopError(f"invalid JSON: {e.msg} ({where})", file=name) from None
    for i, value in enumerate(rows, start=1):
        yield i, _as_object(value, name, i)


def _read_csv(path: Path, name: str, delimiter: str) -> Iterator[tuple[int, Row]]:
    # Decode line by line first so bad bytes are reported by line; csv handles quoting.
    lines = (line for _, line in _text_lines(path, name))
    reader = csv.DictReader(lines, delimiter=delimiter)
    try:
        for row in reader:
            if None in row:  # DictReader files surplus cells under the key None
                raise PrefloopError(
                    "more values than header columns", file=name, row=reader.line_num
                )
            yield reader.line_num, {k: v for k, v in row.items() if v is not None}
    except csv.Error as e:
        raise PrefloopError(f"invalid CSV: {e}", file=name, row=reader.line_num) from None


# ---------------------------------------------------------------- columnar formats


def _read_parquet(path: Path, name: str) -> Iterator[tuple[int, Row]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        row_no = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                row_no += 1
                yield row_no, row
    except (pa.ArrowException, OSError) as e:
        raise PrefloopError(f"cannot read Parquet: {e}", file=name) from None


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def _read_saved_dataset(path: Path, name: str, split: str) -> Iterator[tuple[int, Row]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many types; all mean "not a usable dataset"
        raise PrefloopError(f"cannot load saved dataset: {e}", file=name) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            have = ", ".join(loaded)
            raise PrefloopError(f"no split '{split}' (it has: {have})", file=name)
        loaded = loaded[split]
    yield from _iter_dataset(loaded)


def _read_hub_dataset(name: str, split: str) -> Iterator[tuple[int, Row]]:
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, missing repo, bad split...: all user-facing
        message = " ".join(str(e).split())[:300]
        raise PrefloopError(
            f"not a local file, and datasets.load_dataset failed: {message}", file=name
        ) from None
    yield from _iter_dataset(loaded)


def _iter_dataset(dataset: Any) -> Iterator[tuple[int, Row]]:
    for i, row in enumerate(dataset, start=1):
        yield i, dict(row)


# ---------------------------------------------------------------- field accessors


def _field(row: Row, field: str, file: str, row_no: int) -> Any:
    if field not in row or row[field] is None:
        raise PrefloopError("missing field", file=file, row=row_no, field=field)
    return row[field]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def require_str(row: Row, field: str, *, file: str, row_no: int, allow_empty: bool = False) -> str:
    """`row[field]` as a string; missing, non-string or (unless allowed) blank -> PrefloopError."""
    value = _field(row, field, file, row_no)
    if not isinstance(value, str):
        raise PrefloopError(
            f"expected a string, got {_type_name(value)}", file=file, row=row_no, field=field
        )
    if not allow_empty and not value.strip():
        raise PrefloopError("empty text", file=file, row=row_no, field=field)
    return value


def optional_str(row: Row, field: str, *, file: str, row_no: int) -> str | None:
    """`row[field]` if present and not null (may be empty), else None; non-strings are errors."""
    if row.get(field) is None:
        return None
    return require_str(row, field, file=file, row_no=row_no, allow_empty=True)


def require_float(row: Row, field: str, *, file: str, row_no: int) -> float:
    """A finite number. CSV cells are text, so numeric strings are accepted too."""
    value = _field(row, field, file, row_no)
    number = _to_number(value)
    if number is None or not math.isfinite(number):
        raise PrefloopError(
            f"expected a finite number, got {value!r}", file=file, row=row_no, field=field
        )
    return number


def require_int(row: Row, field: str, *, file: str, row_no: int) -> int:
    """An integer (an integral float such as 3.0 and numeric strings from CSV are accepted)."""
    value = _field(row, field, file, row_no)
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # exact, even beyond float precision
    number = _to_number(value)
    if number is None or not number.is_integer():
        raise PrefloopError(
            f"expected an integer, got {value!r}", file=file, row=row_no, field=field
        )
    return int(number)


def require_bool(row: Row, field: str, *, file: str, row_no: int) -> bool:
    """true/false (CSV: true/false/1/0, any case)."""
    value = _field(row, field, file, row_no)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise PrefloopError(
        f"expected true or false, got {value!r}", file=file, row=row_no, field=field
    )


def require_list(row: Row, field: str, *, file: str, row_no: int) -> list[Any]:
    """A JSON array (a non-empty one)."""
    value = _field(row, field, file, row_no)
    if not isinstance(value, list):
        raise PrefloopError(
            f"expected a list, got {_type_name(value)}", file=file, row=row_no, field=field
        )
    if not value:
        raise PrefloopError("empty list", file=file, row=row_no, field=field)
    return value


def _to_number(value: Any) -> float | None:
    if isinstance(value, bool):  # bool is an int subclass, but `true` is not a number
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None
