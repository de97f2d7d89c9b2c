"""TRL's preference format, in and out: `prompt` / `chosen` / `rejected`.

Two styles (one per file; TRL does not mix them either):

    plain           {"prompt": "The food was", "chosen": " great.", "rejected": " cold."}
    conversational  {"prompt": [{"role": "user", "content": "Hi"}],
                     "chosen": [{"role": "assistant", "content": "Hello!"}],
                     "rejected": [{"role": "assistant", "content": "Go away."}]}

Written as JSONL, Parquet, or a `datasets` folder (`save_to_disk`); TRL's RewardTrainer and
DPOTrainer take these unchanged. Imports also accept TRL's *implicit prompt* rows (no `prompt`;
chosen and rejected share the conversation up to the answer), as in Anthropic's HH-RLHF.
An optional boolean `tie` column carries tie / both-bad labels (TRL has no such notion: leave
ties out of files meant for TRL).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefloop.data.rows import Row, read_rows, require_str
from prefloop.errors import PrefloopError
from prefloop.feedback.models import (
    ComparisonIn,
    LabelIn,
    PreferenceRecord,
    PromptIn,
    ResponseIn,
)
from prefloop.feedback.store import PreferenceStore

FORMATS = ("jsonl", "parquet", "datasets")
STYLES = ("auto", "plain", "conversational")
ROLES = ("system", "user", "assistant", "tool")
HH_ASSISTANT = "\n\nAssistant:"  # Anthropic HH-RLHF's plain-text turn marker
Message = dict[str, str]


# ---- out ----------------------------------------------------------------------------------
def to_trl_rows(
    records: Sequence[PreferenceRecord], style: str = "auto", with_tie: bool = False
) -> list[Row]:
    """Preference records -> TRL rows. style auto: conversational if any prompt is a
    conversation (plain prompts then become one user message), else plain."""
    if style not in STYLES:
        raise PrefloopError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if style == "auto":
        style = "conversational" if any(r.messages for r in records) else "plain"
    if style == "plain" and any(r.messages for r in records):
        n = sum(1 for r in records if r.messages)
        raise PrefloopError(
            f"{n} prompts are conversations and cannot be written as plain text "
            "(use the conversational style)"
        )
    rows: list[Row] = []
    for r in records:
        if style == "plain":
            row: Row = {"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}
        else:
            prompt = r.messages or [{"role": "user", "content": r.prompt}]
            row = {
                "prompt": [dict(m) for m in prompt],
                "chosen": [{"role": "assistant", "content": r.chosen}],
                "rejected": [{"role": "assistant", "content": r.rejected}],
            }
        if with_tie:
            row["tie"] = r.choice in ("tie", "both_bad")
        rows.append(row)
    return rows


def write_rows(
    rows: Sequence[Row], out: str | os.PathLike[str], fmt: str, *, overwrite: bool = False
) -> Path:
    """Write rows as jsonl | parquet | datasets; atomic (a temp file/folder renamed into place)."""
    if fmt not in FORMATS:
        raise PrefloopError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not rows:
        raise PrefloopError("nothing to export: no labelled preferences match the filters")
    path = Path(out)
    if path.exists() and not overwrite:
        raise PrefloopError("already exists (pass --overwrite to replace it)", file=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        if fmt == "jsonl":
            with tmp.open("w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(list(rows)), tmp)
        else:
            import datasets

            datasets.disable_progress_bars()  # one summary line from the CLI is enough
            datasets.Dataset.from_list(list(rows)).save_to_disk(str(tmp))
        _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)
    return path


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def format_of(out: str | os.PathLike[str], fmt: str | None) -> str:
    """The export format: given, or from OUT's suffix (.jsonl, .parquet; else a datasets folder)."""
    if fmt:
        return fmt
    suffix = Path(out).suffix.lower()
    return {".jsonl": "jsonl", ".parquet": "parquet"}.get(suffix, "datasets")


# ---- in -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreferenceRow:
    """One validated imported row: prompt text or conversation, the two answers, tie flag."""

    prompt: str
    messages: list[Message] | None
    chosen: str
    rejected: str
    tie: bool
    row: int


def read_preferences(source: str | os.PathLike[str]) -> list[PreferenceRow]:
    """Read and validate a TRL preference file (JSONL/JSON/CSV/Parquet/datasets folder/hub id).

    Every row is checked before anything is returned; the first problem raises a PrefloopError
    naming the file, row and field.
    """
    name = str(source)
    out: list[PreferenceRow] = []
    style: tuple[str, int] | None = None  # (style, row where it was first seen)
    for row_no, row in read_rows(source):
        rec, row_style = _parse_row(row, name, row_no)
        if style is None:
            style = (row_style, row_no)
        elif row_style != style[0]:
            raise PrefloopError(
                f"{row_style} row in a file of {style[0]} rows (row {style[1]} is {style[0]}); "
                "one file holds one style",
                file=name,
                row=row_no,
            )
        out.append(rec)
    if not out:
        raise PrefloopError("no rows", file=name)
    return out


def _parse_row(row: Row, file: str, row_no: int) -> tuple[PreferenceRow, str]:
    for f in ("chosen", "rejected"):
        if f not in row or row[f] is None:
            raise PrefloopError("missing field", file=file, row=row_no, field=f)
    tie = _tie(row, file, row_no)
    if isinstance(row["chosen"], list) or isinstance(row.get("prompt"), list):
        return _conversational(row, file, row_no, tie), "conversational"
    chosen = require_str(row, "chosen", file=file, row_no=row_no)
    rejected = require_str(row, "rejected", file=file, row_no=row_no)
    if row.get("prompt") is None:
        prompt, chosen, rejected = _split_hh(chosen, rejected, file, row_no)
    else:
        prompt = require_str(row, "prompt", file=file, row_no=row_no, allow_empty=True)
    _check_answers(chosen, rejected, file, row_no)
    return PreferenceRow(prompt, None, chosen, rejected, tie, row_no), "plain"


def _tie(row: Row, file: str, row_no: int) -> bool:
    value = row.get("tie")
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", ""):
        return value.strip().lower() in ("true", "1")
    raise PrefloopError(
        f"expected true or false, got {value!r}", file=file, row=row_no, field="tie"
    )


def _check_answers(chosen: str, rejected: str, file: str, row_no: int) -> None:
    for f, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise PrefloopError("empty response", file=file, row=row_no, field=f)
    if chosen == rejected:
        raise PrefloopError(
            "chosen and rejected are the same response", file=file, row=row_no, field="rejected"
        )


def _split_hh(chosen: str, rejected: str, file: str, row_no: int) -> tuple[str, str, str]:
    """Implicit plain prompt (HH-RLHF): the shared text up to the last 'Assistant:' turn."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(HH_ASSISTANT, 0, n)
    if cut < 0 or cut + len(HH_ASSISTANT) > n:
        raise PrefloopError(
            "missing field (plain rows without a prompt must share it up to a "
            f"{HH_ASSISTANT.strip()!r} turn, as in HH-RLHF)",
            file=file,
            row=row_no,
            field="prompt",
        )
    cut += len(HH_ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def parse_messages(value: Any, file: str, row_no: int, field: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else type(value).__name__
        raise PrefloopError(
            f"expected a list of messages, got {got}", file=file, row=row_no, field=field
        )
    out = []
    for i, m in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise PrefloopError(
                "expected an object with 'role' and 'content'", file=file, row=row_no, field=where
            )
        if m.get("role") not in ROLES:
            raise PrefloopError(
                f"role must be one of {', '.join(ROLES)}, got {m.get('role')!r}",
                file=file,
                row=row_no,
                field=f"{where}.role",
            )
        if not isinstance(m.get("content"), str):
            raise PrefloopError(
                "expected a string", file=file, row=row_no, field=f"{where}.content"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _conversational(row: Row, file: str, row_no: int, tie: bool) -> PreferenceRow:
    chosen = parse_messages(row["chosen"], file, row_no, "chosen")
    rejected = parse_messages(row["rejected"], file, row_no, "rejected")
    if row.get("prompt") is None:  # implicit prompt: the shared turns before the answers
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        if not prompt:
            raise PrefloopError("missing field", file=file, row=row_no, field="prompt")
    else:
        prompt = parse_messages(row["prompt"], file, row_no, "prompt")
    answers = []
    for f, msgs in (("chosen", chosen), ("rejected", rejected)):
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise PrefloopError(
                "expected exactly one assistant message after the prompt",
                file=file,
                row=row_no,
                field=f,
            )
        answers.append(msgs[0]["content"])
    _check_answers(answers[0], answers[1], file, row_no)
    return PreferenceRow(render(prompt), prompt, answers[0], answers[1], tie, row_no)


def render(messages: Iterable[Message]) -> str:
    """A readable plain-text rendering of a conversation (stored as the prompt's `text`)."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


# ---- store <-> files ----------------------------------------------------------------------
@dataclass(frozen=True)
class ImportSummary:
    file: str
    rows: int
    prompts: int
    ties: int
    annotator: str
    source: str


def import_file(
    store: PreferenceStore,
    source: str | os.PathLike[str],
    *,
    annotator: str | None = None,
    source_name: str | None = None,
) -> ImportSummary:
    """Validate every row of a TRL preference file, then store it in ONE transaction: prompts
    (identical ones shared), both responses, a comparison (A = chosen) and one label per row
    by an annotator of kind `imported` ("a", or "tie" where the row's tie flag is set)."""
    rows = read_preferences(source)
    name = Path(str(source)).name or str(source)
    annotator = annotator or f"import:{name}"
    source_name = source_name or f"import:{name}"
    keys: dict[tuple[str, str], int] = {}
    prompts: list[PromptIn] = []
    for r in rows:
        key = (r.prompt, json.dumps(r.messages))
        if key not in keys:
            keys[key] = len(prompts)
            prompts.append(PromptIn(r.prompt, r.messages, source_name))
    with store.transaction() as tx:
        ann = tx.ensure_annotator(annotator, "imported")
        pids = tx.add_prompts(prompts)
        row_pids = [pids[keys[(r.prompt, json.dumps(r.messages))]] for r in rows]
        responses = [
            ResponseIn(pid, text, model_version=source_name)
            for r, pid in zip(rows, row_pids, strict=True)
            for text in (r.chosen, r.rejected)
        ]
        rids = tx.add_responses(responses)
        cids = tx.add_comparisons(
            [
                ComparisonIn(pid, rids[2 * i], rids[2 * i + 1], source_name)
                for i, pid in enumerate(row_pids)
            ]
        )
        tx.add_labels(
            ann, [LabelIn(cid, "tie" if r.tie else "a") for cid, r in zip(cids, rows, strict=True)]
        )
    ties = sum(r.tie for r in rows)
    return ImportSummary(str(source), len(rows), len(prompts), ties, annotator, source_name)


def export_file(
    store: PreferenceStore,
    out: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    style: str = "auto",
    kinds: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    annotators: Sequence[str] | None = None,
    include_disabled: bool = False,
    include_ties: bool = False,
    overwrite: bool = False,
) -> tuple[Path, int]:
    """Labels -> a TRL preference file; returns (path, rows written). Ties and both-bad
    labels are left out unless include_ties (then a boolean `tie` column marks them)."""
    records = store.preferences(
        kinds=kinds,
        sources=sources,
        annotators=annotators,
        include_disabled=include_disabled,
        include_ties=include_ties,
    )
    rows = to_trl_rows(records, style, with_tie=include_ties)
    return write_rows(rows, out, format_of(out, fmt), overwrite=overwrite), len(rows)
