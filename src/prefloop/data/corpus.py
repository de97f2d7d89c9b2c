"""Pretraining corpora: load documents from any row source, pack token streams into blocks."""

from __future__ import annotations

import os

import torch

from prefloop.data.rows import read_rows, require_str
from prefloop.errors import PrefloopError


def load_corpus(source: str | os.PathLike[str], text_field: str = "text") -> list[str]:
    """The documents of `source` (file, saved dataset or dataset id), one per row.

    Every row must carry a non-empty string in `text_field`; the first that does not stops the
    load with a PrefloopError naming file, row and field (so nothing is trained on bad data).
    """
    name = str(source)
    docs = [
        require_str(row, text_field, file=name, row_no=row_no) for row_no, row in read_rows(source)
    ]
    if not docs:
        raise PrefloopError("no documents (the file has no rows)", file=name)
    return docs


def pack(token_lists: list[list[int]], block_size: int, eos_id: int) -> torch.Tensor:
    """Concatenate documents, each followed by EOS, and cut the stream into training rows.

    Returns a (N, block_size + 1) int64 tensor: row i is `stream[i*B : i*B + B + 1]`, so inputs
    `row[:-1]` and targets `row[1:]` shift by one and consecutive rows share one boundary token
    (every next-token pair of the stream is trained on exactly once). The ragged tail is dropped.
    """
    if block_size < 1:
        raise PrefloopError(f"block size must be at least 1, got {block_size}", field="block_size")
    stream: list[int] = []
    for ids in token_lists:
        stream.extend(ids)
        stream.append(eos_id)
    n_rows = (len(stream) - 1) // block_size
    if n_rows < 1:
        raise PrefloopError(
            f"corpus too small: {len(stream)} tokens (with EOS separators) do not fill one block "
            f"of {block_size + 1}"
        )
    flat = torch.tensor(stream[: n_rows * block_size + 1], dtype=torch.long)
    # (N, B+1) overlapping windows with stride B: a view, then copied to own its memory
    return flat.unfold(0, block_size + 1, block_size).contiguous()
