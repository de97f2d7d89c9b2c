"""SFT data: load prompt/response or `messages` rows, encode them with response-only labels.

Accepted rows (TRL's formats):

- `{"prompt": str, "response": str}` (`"completion"` is accepted for `"response"`);
- `{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}`.

One file uses one format; a row in the other format is an error naming that row.

Encoding puts the loss on response tokens only (label -100 elsewhere). Prompt and response are
tokenized separately, so the boundary between them is exact; EOS ends every response.
Conversations go through the tokenizer's own chat template; the assistant tokens are found by
rendering the conversation turn by turn (the same rendering `encode_prompt` uses with
`add_generation_prompt=True`), so sampling, pairs and PPO see prompts exactly as SFT did.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefloop.data.rows import Row, read_rows, require_list, require_str
from prefloop.errors import PrefloopError

IGNORE_INDEX = -100  # label of tokens without loss (PyTorch cross-entropy's ignore_index)
ROLES = ("system", "user", "assistant", "tool")
Message = dict[str, str]


@dataclass(frozen=True)
class SFTExample:
    """Either a prompt/response pair or a conversation (`messages`), with where it came from."""

    prompt: str | None = None
    response: str | None = None
    messages: list[Message] | None = None
    file: str = field(default="", compare=False)
    row: int = field(default=0, compare=False)


# ---------------------------------------------------------------- loading


def load_sft(source: str | os.PathLike[str]) -> list[SFTExample]:
    """Validated SFT examples from a file, saved dataset or dataset id (see `read_rows`)."""
    name = str(source)
    examples = _parse_rows(read_rows(source), name)
    if not examples:
        raise PrefloopError("no SFT examples (the file has no rows)", file=name)
    return examples


def load_sft_rows(rows: Iterable[Row], *, file: str = "<embedded>") -> list[SFTExample]:
    """Validated SFT examples from in-memory rows (e.g. `reviews.sft_examples`)."""
    return _parse_rows(enumerate(rows, start=1), file)


def _parse_rows(numbered: Iterable[tuple[int, Row]], file: str) -> list[SFTExample]:
    examples: list[SFTExample] = []
    first_format: tuple[str, int] | None = None
    for row_no, row in numbered:
        fmt = "messages" if "messages" in row else "prompt/response"
        if first_format is None:
            first_format = (fmt, row_no)
        elif fmt != first_format[0]:
            raise PrefloopError(
                f"mixed formats: this row is {fmt} but row {first_format[1]} is {first_format[0]}",
                file=file,
                row=row_no,
                field="messages" if fmt == "messages" else "prompt",
            )
        if fmt == "messages":
            examples.append(_conversation(row, file, row_no))
        else:
            examples.append(_pair(row, file, row_no))
    return examples


def _pair(row: Row, file: str, row_no: int) -> SFTExample:
    if "prompt" not in row and "response" not in row and "completion" not in row:
        raise PrefloopError(
            "expected 'prompt' and 'response' fields, or 'messages'",
            file=file,
            row=row_no,
            field="prompt",
        )
    prompt = require_str(row, "prompt", file=file, row_no=row_no)
    key = "completion" if "completion" in row and "response" not in row else "response"
    response = require_str(row, key, file=file, row_no=row_no)
    return SFTExample(prompt=prompt, response=response, file=file, row=row_no)


def _conversation(row: Row, file: str, row_no: int) -> SFTExample:
    raw = require_list(row, "messages", file=file, row_no=row_no)
    messages: list[Message] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise PrefloopError(
                f"expected an object with 'role' and 'content', got {type(m).__name__}",
                file=file,
                row=row_no,
                field=where,
            )
        role = m.get("role")
        if role not in ROLES:
            got = "nothing" if role is None else repr(role)
            raise PrefloopError(
                f"role must be one of {', '.join(ROLES)}, got {got}",
                file=file,
                row=row_no,
                field=f"{where}.role",
            )
        if not isinstance(m.get("content"), str):
            got = "nothing" if m.get("content") is None else type(m["content"]).__name__
            raise PrefloopError(
                f"expected a string, got {got}", file=file, row=row_no, field=f"{where}.content"
            )
        if role == "assistant" and not m["content"].strip():
            raise PrefloopError("empty text", file=file, row=row_no, field=f"{where}.content")
        messages.append({"role": role, "content": m["content"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise PrefloopError(
            "no assistant message to learn from", file=file, row=row_no, field="messages"
        )
    return SFTExample(messages=messages, file=file, row=row_no)


# ---------------------------------------------------------------- tokenization


def _batch_ids(tokenizer: Any, texts: list[str], *, special: bool) -> list[list[int]]:
    """Token ids of user texts. Special-token strings inside the text stay plain text, so a
    literal "<|endoftext|>" in data cannot end a sequence. `special` adds the tokenizer's own
    BOS/EOS framing (prompts: Llama adds BOS, GPT-2 nothing; responses: never)."""
    enc = tokenizer(texts, add_special_tokens=special, split_special_tokens=True)
    return [list(ids) for ids in enc["input_ids"]]


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    return _batch_ids(tokenizer, [prompt], special=True)[0]


def _require_template(tokenizer: Any, file: str | None = None, row: int | None = None) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise PrefloopError(
            "the tokenizer has no chat template, so 'messages' data cannot be formatted; "
            "use prompt/response rows or a tokenizer that defines chat_template",
            file=file,
            row=row,
            field="messages",
        )


def _chat_ids(tokenizer: Any, messages: Sequence[Message], generation_prompt: bool) -> list[int]:
    # Render to text, then tokenize without extra specials: templates write their own BOS.
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _encode_pairs(
    pairs: Sequence[SFTExample], tokenizer: Any
) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Prompt and response tokenized separately (exact boundary), in two batched calls."""
    if not pairs:
        return []
    prompts = _batch_ids(tokenizer, [ex.prompt or "" for ex in pairs], special=True)
    responses = _batch_ids(tokenizer, [ex.response or "" for ex in pairs], special=False)
    eos = int(tokenizer.eos_token_id)
    return [
        (p + r + [eos], [(len(p), len(p) + len(r) + 1)])
        for p, r in zip(prompts, responses, strict=True)
    ]


def _encode_chat(ex: SFTExample, tokenizer: Any) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of the whole conversation and the (start, end) span of every assistant turn."""
    assert ex.messages is not None
    _require_template(tokenizer, ex.file, ex.row)
    msgs = ex.messages
    try:
        ids = _chat_ids(tokenizer, msgs, generation_prompt=False)
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = _chat_ids(tokenizer, msgs[:i], generation_prompt=True)
            through = _chat_ids(tokenizer, msgs[: i + 1], generation_prompt=False)
            if ids[: len(before)] != before or ids[: len(through)] != through:
                raise PrefloopError(
                    "the tokenizer's chat template does not render a conversation turn by turn "
                    "(an earlier part is not a prefix of the whole), so assistant tokens cannot "
                    "be located",
                    file=ex.file,
                    row=ex.row,
                    field="messages",
                )
            spans.append((len(before), len(through)))
    except PrefloopError:
        raise
    except Exception as e:  # jinja errors raised by the template itself (e.g. role order rules)
        raise PrefloopError(
            f"chat template failed: {e}", file=ex.file, row=ex.row, field="messages"
        ) from None
    eos = int(tokenizer.eos_token_id)
    if msgs[-1]["role"] == "assistant" and ids[-1] != eos:
        # generation stops at EOS, so the last reply must teach it even if the template lacks it
        ids.append(eos)
        spans[-1] = (spans[-1][0], len(ids))
    return ids, spans


def _fit(
    ids: list[int],
    spans: list[tuple[int, int]],
    max_length: int,
    truncation: str,
    ex: SFTExample,
    counts: Counter[str],
) -> tuple[list[int], list[int]]:
    """Labels from spans, then make the row fit `max_length`.

    Too long: drop context from the left while the last target keeps at least one token before
    it; if the last target alone does not fit, keep up to half the window of context and cut
    the target's end. Targets cut at their start lose their labels (no loss on a reply's tail
    without its beginning).
    """
    labels = [IGNORE_INDEX] * len(ids)
    for s, e in spans:
        labels[s:e] = ids[s:e]
    if len(ids) <= max_length:
        return ids, labels
    if truncation == "error":
        raise PrefloopError(
            f"{len(ids)} tokens, longer than max_length {max_length} (shorten it, raise "
            "max_length, or use truncation 'left')",
            file=ex.file,
            row=ex.row,
            field="messages" if ex.messages is not None else "prompt",
        )
    last_start = spans[-1][0]
    start = len(ids) - max_length
    if start < last_start:
        counts["left"] += 1
    else:
        start = max(0, last_start - max_length // 2)
        counts["right"] += 1
    for s, e in spans:
        if s < start:
            labels[s:e] = [IGNORE_INDEX] * (e - s)
    return ids[start : start + max_length], labels[start : start + max_length]


def _check_truncation(truncation: str) -> None:
    if truncation not in ("left", "error"):
        raise PrefloopError(
            f"truncation must be 'left' or 'error', got {truncation!r}", field="truncation"
        )


def encode_sft(
    examples: Sequence[SFTExample], tokenizer: Any, max_length: int, truncation: str = "left"
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example; labels are -100 except on response/assistant tokens."""
    _check_truncation(truncation)
    if max_length < 2:
        raise PrefloopError(f"max_length must be at least 2, got {max_length}", field="max_length")
    counts: Counter[str] = Counter()
    pairs = iter(_encode_pairs([ex for ex in examples if ex.messages is None], tokenizer))
    rows = []
    for ex in examples:
        ids, spans = _encode_chat(ex, tokenizer) if ex.messages is not None else next(pairs)
        rows.append(_fit(ids, spans, max_length, truncation, ex, counts))
    if counts["left"]:
        warnings.warn(
            f"{counts['left']} of {len(examples)} SFT examples exceed max_length={max_length}: "
            "their prompts (or earlier turns) were truncated on the left",
            stacklevel=2,
        )
    if counts["right"]:
        warnings.warn(
            f"{counts['right']} of {len(examples)} SFT examples have a response longer than "
            f"max_length={max_length}: the response was cut (and loses its EOS)",
            stacklevel=2,
        )
    return rows


def encode_prompt(
    tokenizer: Any,
    prompt: str | Sequence[Message],
    max_prompt_tokens: int | None = None,
    truncation: str = "left",
) -> list[int]:
    """Prompt ids exactly as SFT formatted them: plain text as is (plus the tokenizer's BOS, if
    any); a conversation through the chat template with the assistant turn opened. Longer than
    `max_prompt_tokens`: left-truncated with a warning, or an error with truncation='error'."""
    _check_truncation(truncation)
    if isinstance(prompt, str):
        ids = _prompt_ids(tokenizer, prompt)
    else:
        _require_template(tokenizer)
        ids = _chat_ids(tokenizer, prompt, generation_prompt=True)
    if max_prompt_tokens is None or len(ids) <= max_prompt_tokens:
        return ids
    if truncation == "error":
        raise PrefloopError(
            f"prompt is {len(ids)} tokens, longer than the {max_prompt_tokens} allowed",
            field="prompt",
        )
    # constant text so Python's warning filter shows it once, not once per prompt
    warnings.warn(
        f"prompts longer than {max_prompt_tokens} tokens are truncated on the left", stacklevel=2
    )
    return ids[-max_prompt_tokens:] if max_prompt_tokens > 0 else []
