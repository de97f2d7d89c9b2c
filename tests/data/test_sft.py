"""SFT loading and encoding: exact response-only labels, chat templates, truncation, bad rows."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from prefloop.data import reviews
from prefloop.data.sft import (
    IGNORE_INDEX,
    SFTExample,
    encode_prompt,
    encode_sft,
    load_sft,
    load_sft_rows,
)
from prefloop.errors import PrefloopError

ROLE_TOKEN_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# plain-text markers and no EOS in the template: encode_sft must append EOS itself
PLAIN_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]


def _tokenizer(template: str | None = ROLE_TOKEN_TEMPLATE) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(reviews.corpus(300, seed=0), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIALS[2:],
        chat_template=template,
    )


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return _tokenizer()


def _ids(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_pair_labels_cover_exactly_the_response_and_eos(tok) -> None:
    prompt, response = "I bought the Zephyr blender last week, and", " it works great. Five stars."
    [(ids, labels)] = encode_sft([SFTExample(prompt, response)], tok, max_length=64)
    p, r = _ids(tok, prompt), _ids(tok, response)
    assert ids == p + r + [tok.eos_token_id]
    assert labels == [IGNORE_INDEX] * len(p) + r + [tok.eos_token_id]
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == response + "<|endoftext|>"
    # the sampler / PPO prompt is the exact unlabeled prefix
    assert encode_prompt(tok, prompt) == ids[: len(p)]


def test_embedded_examples_fit_and_mask(tok) -> None:
    examples = load_sft_rows(reviews.sft_examples(200, seed=3))
    rows = encode_sft(examples, tok, max_length=128)
    for ex, (ids, labels) in zip(examples, rows, strict=True):
        n_prompt = len(encode_prompt(tok, ex.prompt))
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
        assert tok.decode(ids[n_prompt:-1]) == ex.response


def test_special_token_text_in_data_stays_text(tok) -> None:
    [(ids, _)] = encode_sft([SFTExample("say", " <|endoftext|> ok")], tok, max_length=64)
    assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id


@pytest.mark.parametrize("template", [ROLE_TOKEN_TEMPLATE, PLAIN_TEMPLATE])
def test_chat_labels_only_on_assistant_turns(template: str) -> None:
    tok = _tokenizer(template)
    messages = [
        {"role": "system", "content": "You write reviews."},
        {"role": "user", "content": "Review the Zephyr blender."},
        {"role": "assistant", "content": "It works great."},
        {"role": "user", "content": "And the lid?"},
        {"role": "assistant", "content": "The lid is awful."},
    ]
    [(ids, labels)] = encode_sft([SFTExample(messages=messages)], tok, max_length=128)
    full = tok.apply_chat_template(messages, tokenize=False)
    eos_added = not full.endswith("<|endoftext|>")
    assert tok.decode(ids) == full + ("<|endoftext|>" if eos_added else "")
    # labeled tokens form exactly two runs: each assistant reply and its turn end
    runs, current = [], []
    for t, lab in zip(ids, labels, strict=True):
        if lab == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert lab == t
            current.append(t)
    runs.append(current)
    turn_end = "<|endoftext|>" if template == ROLE_TOKEN_TEMPLATE else "\n"
    assert [tok.decode(r) for r in runs] == [
        "It works great." + turn_end,
        "The lid is awful." + turn_end + ("<|endoftext|>" if eos_added else ""),
    ]
    # the prompt for the last reply is what encode_prompt gives for the conversation so far
    prefix = encode_prompt(tok, messages[:4])
    assert ids[: len(prefix)] == prefix and labels[len(prefix) - 1] == IGNORE_INDEX
    assert labels[len(prefix)] != IGNORE_INDEX


def test_chat_needs_a_template_that_renders_turn_by_turn() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "great"}]
    example = SFTExample(messages=messages, file="chat.jsonl", row=7)
    with pytest.raises(PrefloopError) as info:
        encode_sft([example], _tokenizer(None), max_length=64)
    assert str(info.value).startswith("chat.jsonl, row 7, field 'messages': the tokenizer has no")
    with pytest.raises(PrefloopError, match="no chat template"):
        encode_prompt(_tokenizer(None), messages[:1])
    counting = "{{ messages|length }}" + ROLE_TOKEN_TEMPLATE
    with pytest.raises(PrefloopError, match="turn by turn"):
        encode_sft([example], _tokenizer(counting), max_length=64)
    failing = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(PrefloopError, match="chat template failed: roles must alternate"):
        encode_sft([example], _tokenizer(failing), max_length=64)


def test_long_prompt_is_left_truncated_with_a_warning(tok) -> None:
    prompt = " ".join(["I bought the Zephyr blender last week, and"] * 10)
    response = " it works great."
    ex = SFTExample(prompt, response, file="sft.jsonl", row=3)
    with pytest.warns(UserWarning, match="1 of 1 SFT examples exceed max_length=24"):
        [(ids, labels)] = encode_sft([ex], tok, max_length=24)
    full_ids, full_labels = encode_sft([ex], tok, max_length=1000)[0]
    assert ids == full_ids[-24:] and labels == full_labels[-24:]
    assert labels[0] == IGNORE_INDEX and labels[-1] == tok.eos_token_id
    with pytest.raises(PrefloopError) as info:
        encode_sft([ex], tok, max_length=24, truncation="error")
    assert str(info.value).startswith("sft.jsonl, row 3, field 'prompt': ")
    assert "longer than max_length 24" in str(info.value)


def test_long_response_is_cut_on_the_right(tok) -> None:
    ex = SFTExample("Review:", " it works great." * 20)
    with pytest.warns(UserWarning, match="response longer than max_length=16"):
        [(ids, labels)] = encode_sft([ex], tok, max_length=16)
    n_prompt = len(encode_prompt(tok, "Review:"))
    assert len(ids) == 16 and ids[:n_prompt] == encode_prompt(tok, "Review:")
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt and labels[n_prompt:] == ids[n_prompt:]


def test_encode_prompt_truncation(tok) -> None:
    prompt = "I bought the Zephyr blender last week, and " * 5
    full = encode_prompt(tok, prompt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert encode_prompt(tok, prompt, max_prompt_tokens=10) == full[-10:]
    assert "truncated on the left" in str(caught[0].message)
    with pytest.raises(PrefloopError, match="longer than the 10 allowed"):
        encode_prompt(tok, prompt, max_prompt_tokens=10, truncation="error")
    with pytest.raises(PrefloopError, match="truncation must be"):
        encode_prompt(tok, prompt, truncation="right")


def _write(tmp_path: Path, rows: list, name: str = "sft.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_load_formats(tmp_path: Path) -> None:
    pairs = _write(
        tmp_path, [{"prompt": "a", "response": " b"}, {"prompt": "c", "completion": " d"}]
    )
    assert load_sft(pairs) == [SFTExample("a", " b"), SFTExample("c", " d")]
    assert load_sft(pairs)[1].row == 2 and load_sft(pairs)[1].file == str(pairs)
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    convs = _write(tmp_path, [{"messages": chat}], "chat.jsonl")
    assert load_sft(convs) == [SFTExample(messages=chat)]


USER = {"role": "user", "content": "q"}
ASSISTANT = {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    ("rows", "where", "message"),
    [
        ([{"prompt": "a", "response": "b"}, {"messages": [USER, ASSISTANT]}],
         "row 2, field 'messages'", "mixed formats: this row is messages but row 1 is prompt/resp"),
        ([{"messages": [USER, ASSISTANT]}, {"prompt": "a", "response": "b"}],
         "row 2, field 'prompt'", "mixed formats"),
        ([{"prompt": "a"}], "row 1, field 'response'", "missing field"),
        ([{"text": "a"}], "row 1, field 'prompt'", "expected 'prompt' and 'response' fields"),
        ([{"prompt": "a", "response": "  "}], "row 1, field 'response'", "empty text"),
        ([{"prompt": 3, "response": "b"}], "row 1, field 'prompt'", "expected a string, got int"),
        ([{"messages": "hi"}], "row 1, field 'messages'", "expected a list, got str"),
        ([{"messages": [USER, "x"]}], "row 1, field 'messages[1]'", "expected an object"),
        ([{"messages": [{"role": "bot", "content": "a"}]}], "row 1, field 'messages[0].role'",
         "role must be one of system, user, assistant, tool, got 'bot'"),
        ([{"messages": [{"role": "user"}]}], "row 1, field 'messages[0].content'",
         "expected a string, got nothing"),
        ([{"messages": [USER, {"role": "assistant", "content": ""}]}],
         "row 1, field 'messages[1].content'", "empty text"),
        ([{"messages": [USER]}], "row 1, field 'messages'", "no assistant message"),
        (['{"prompt": "a", "response": "b"}', '{"prompt": "a", "resp'], "row 2", "invalid JSON"),
    ],
)  # fmt: skip
def test_bad_rows_name_file_row_and_field(
    tmp_path: Path, rows: list, where: str, message: str
) -> None:
    path = _write(tmp_path, rows)
    with pytest.raises(PrefloopError) as info:
        load_sft(path)
    assert str(info.value).startswith(f"{path}, {where}: {message}")


def test_invalid_utf8_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "sft.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff", "response": "b"}\n')
    with pytest.raises(PrefloopError, match=r"row 2: invalid UTF-8"):
        load_sft(path)
    path.write_text("")
    with pytest.raises(PrefloopError, match="no SFT examples"):
        load_sft(path)
