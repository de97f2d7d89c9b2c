"""load_corpus validation and sequence packing."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from prefloop.data.corpus import load_corpus, pack
from prefloop.errors import PrefloopError


def test_load_corpus_from_jsonl_and_txt(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": t}) for t in ["a b", "c d"]))
    assert load_corpus(jsonl, text_field="body") == ["a b", "c d"]
    txt = tmp_path / "c.txt"
    txt.write_text("one\ntwo\n")
    assert load_corpus(str(txt)) == ["one", "two"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"other": "x"}', "row 2, field 'text': missing field"),
        ('{"text": ""}', "row 2, field 'text': empty text"),
        ('{"text": 42}', "row 2, field 'text': expected a string, got int"),
        ('{"text": ["a"]}', "row 2, field 'text': expected a string, got list"),
    ],
)
def test_load_corpus_bad_rows(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(PrefloopError) as info:
        load_corpus(path)
    assert str(info.value) == f"{path}, {message}"


def test_load_corpus_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(PrefloopError, match="no documents"):
        load_corpus(path)


def test_pack_shapes_and_shift() -> None:
    blocks = pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], block_size=3, eos_id=0)
    # stream: 1 2 3 0 4 5 0 6 7 8 9 0 -> rows of 4 with stride 3, the tail "9 0" dropped
    assert blocks.dtype == torch.long and blocks.shape == (3, 4)
    assert blocks.tolist() == [[1, 2, 3, 0], [0, 4, 5, 0], [0, 6, 7, 8]]
    # every next-token pair of the stream appears exactly once as (input, target)
    pairs = [(int(r[t]), int(r[t + 1])) for r in blocks for t in range(3)]
    stream = [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 0]
    assert pairs == list(itertools.pairwise(stream))[: len(pairs)]


def test_pack_large_and_errors() -> None:
    docs = [list(range(1, 1 + n % 50)) for n in range(1000)]
    total = sum(len(d) + 1 for d in docs)
    blocks = pack(docs, block_size=63, eos_id=0)
    assert blocks.shape == ((total - 1) // 63, 64)
    assert blocks.is_contiguous()
    with pytest.raises(PrefloopError, match="corpus too small"):
        pack([[1, 2]], block_size=8, eos_id=0)
    with pytest.raises(PrefloopError, match="block size"):
        pack([[1, 2]], block_size=0, eos_id=0)
