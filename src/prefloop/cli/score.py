"""`prefloop score`: score (prompt, response) rows with a reward model.

Rows come from a file (JSONL, JSON, CSV, TSV, Parquet, a saved `datasets` folder) or from stdin
(JSON lines). Each row has `prompt` (or `messages`, a conversation) and `response` (or TRL's
`completion`). Scores are printed one per line, or written with their rows as JSONL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefloop.cli._common import add_command, quiet_transformers, workspace_and_config
from prefloop.config import option
from prefloop.errors import PrefloopError

STDIN = "<stdin>"


@dataclass
class ScoreConfig:
    model: str = option("latest:reward", "reward model: version, production, latest:reward, folder")
    input: str = option(
        "-", "rows to score: a file, a datasets folder, or '-' for JSON lines on stdin"
    )
    output: str = option("", "write the rows with a 'score' field to this JSONL file ('' = print)")
    batch_size: int = option(32, "rows scored together")
    raw: bool = option(False, "print raw head outputs instead of normalized scores")
    ensemble: bool = option(False, "score with every ensemble member: adds 'spread' (std)")


def _stdin_rows() -> Iterator[tuple[int, dict[str, Any]]]:
    for line_no, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrefloopError(f"invalid JSON: {e.msg}", file=STDIN, row=line_no) from None
        if not isinstance(row, dict):
            raise PrefloopError("expected a JSON object", file=STDIN, row=line_no)
        yield line_no, row


def _pair(row: dict[str, Any], where: str, row_no: int) -> tuple[Any, str]:
    """(prompt text or messages, response) of one row, or an error naming the field."""
    prompt: Any = row.get("prompt")
    if prompt is None and "messages" in row:
        prompt = row["messages"]
    if isinstance(prompt, list):
        ok = all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in prompt)
        if not ok:
            raise PrefloopError("expected a list of {role, content}", file=where, row=row_no,
                                field="messages" if "messages" in row else "prompt")  # fmt: skip
    elif not isinstance(prompt, str):
        raise PrefloopError("missing or not text", file=where, row=row_no, field="prompt")
    field = "response" if "response" in row else "completion"
    response = row.get(field)
    if not isinstance(response, str):
        raise PrefloopError("missing or not text", file=where, row=row_no, field="response")
    return prompt, response


def read_pairs(source: str) -> list[tuple[dict[str, Any], Any, str]]:
    """(row, prompt, response) of every row; the first bad row stops the read."""
    from prefloop.data.rows import read_rows

    rows = _stdin_rows() if source == "-" else read_rows(source)
    where = STDIN if source == "-" else source
    out = []
    for row_no, row in rows:
        prompt, response = _pair(row, where, row_no)
        out.append((row, prompt, response))
    if not out:
        raise PrefloopError("no rows to score", file=where)
    return out


def _write_jsonl(path: str, rows: list[dict[str, Any]]) -> None:
    """All rows or nothing: written to a temporary file, then renamed into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, target)


def _score(args: argparse.Namespace) -> int:
    quiet_transformers()
    from prefloop.models.reward import load_reward_ensemble, load_reward_model, score

    ws, cfg = workspace_and_config(args, ScoreConfig)
    if cfg.batch_size < 1:
        raise PrefloopError("must be >= 1", field="batch_size")
    pairs = read_pairs(cfg.input)
    prompts, responses = [p for _, p, _ in pairs], [r for _, _, r in pairs]
    spread = None
    if cfg.ensemble:
        result = load_reward_ensemble(cfg.model, ws).score(prompts, responses, cfg.batch_size)
        scores, spread = result.mean.tolist(), result.spread.tolist()
    else:
        model, tokenizer = load_reward_model(cfg.model, ws)
        scores = score(model, tokenizer, prompts, responses, cfg.batch_size, raw=cfg.raw).tolist()
    if not cfg.output:
        for i, s in enumerate(scores):
            print(f"{s:.6f}" if spread is None else f"{s:.6f}\t{spread[i]:.6f}")
        return 0
    out = []
    for i, (row, _, _) in enumerate(pairs):
        extra = (
            {"score": scores[i]} if spread is None else {"score": scores[i], "spread": spread[i]}
        )
        out.append({**row, **extra})
    _write_jsonl(cfg.output, out)
    print(f"scored {len(out)} rows with {cfg.model} -> {cfg.output}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    add_command(
        sub,
        "score",
        "score (prompt, response) rows from a file or stdin with a reward model",
        _score,
        ScoreConfig,
    )
