"""Padding-free reward training: packed pairs (each prompt once) score and train exactly like
padded rows."""

from __future__ import annotations

import pytest
import torch

from prefloop.models.lm import build_model, pad_rows, save_pretrained, takes_4d_mask
from prefloop.models.packing import (
    GROUPED_LINE_WIDTH,
    line_multiple,
    pack_lines,
    pack_pairs,
    packed_sizes,
    shared_prefixes,
)
from prefloop.models.reward import (
    build_reward_model,
    packed_reward_forward,
    reward_forward,
)
from prefloop.models.tokenizer import train_bpe_tokenizer
from prefloop.train.reward import (
    EncodedPairs,
    PairRecord,
    RewardConfig,
    RewardTask,
    encode_records,
)

TEXTS = ["the movie was great and fun", "terrible boring film with awful acting", "fine"]


def test_pack_pairs_holds_each_prompt_once_and_every_row_attends_to_its_own_tokens() -> None:
    # pairs (row i, row 3 + i); pair 0 shares [1, 2], pair 1 shares [5], pair 2 shares nothing
    rows = [[1, 2, 3, 4], [5, 6], [7, 8, 9], [1, 2, 10], [5, 11, 12], [13]]
    lengths = torch.tensor([len(r) for r in rows])
    padded = torch.tensor([r + [0] * (4 - len(r)) for r in rows])
    p = pack_pairs(padded, lengths, width=8, pad_id=0)
    # first fit by decreasing size: pair 0 (4 + 3 - 2 = 5 tokens) and pair 1 (2 + 3 - 1 = 4)
    # cannot share a line of 8; pair 2 (3 + 1 = 4) joins pair 1
    assert p.input_ids.tolist() == [[1, 2, 3, 4, 10, 0, 0, 0], [5, 6, 11, 12, 7, 8, 9, 13]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 0, 0], [0, 1, 1, 2, 0, 1, 2, 0]]
    flat = p.input_ids.flatten()
    assert flat[p.last].tolist() == [4, 6, 9, 10, 12, 13]  # each row's last token
    for row, keys, valid in zip(rows, p.keys, p.key_valid, strict=True):
        assert flat[keys[valid]].tolist() == row  # each row's own tokens, in order
    mask = p.attention_mask[:, 0]
    # the rejected response of pair 0 (column 4) sees the shared prompt, not the chosen response
    assert mask[0, 4].tolist() == [True, True, False, False, True, False, False, False]
    # pair 2 (columns 4..7 of line 1) never sees pair 1; padding sees only itself
    assert mask[1, 6].tolist() == [False, False, False, False, True, True, True, False]
    assert mask[0, 6].tolist() == [False] * 6 + [True, False]


def test_pack_lines_balances_lines_without_adding_any() -> None:
    # first fit by decreasing size: [40, 20], [30, 30], [10, 10] (longest line 60); balanced:
    # three lines too, [40, 10], [30, 20], [30, 10], so the batch is trimmed to 50 columns
    size = [40, 30, 30, 20, 10, 10]
    lines = pack_lines(size, 64)
    assert sorted(i for line in lines for i in line) == list(range(len(size)))
    assert len(lines) == 3
    assert max(sum(size[i] for i in line) for line in lines) == 50
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):  # never more lines than first fit, never a line over the width
        size = torch.randint(1, 65, (int(torch.randint(1, 40, (1,), generator=gen)),),
                             generator=gen).tolist()  # fmt: skip
        room: list[int] = []
        for s in sorted(size, reverse=True):
            k = next((k for k, r in enumerate(room) if r >= s), len(room))
            room += [64] * (k == len(room))
            room[k] -= s
        lines = pack_lines(size, 64)
        assert sorted(i for line in lines for i in line) == list(range(len(size)))
        assert len(lines) <= len(room)
        assert max(sum(size[i] for i in line) for line in lines) <= 64


def _shared_prefix(a: list[int], b: list[int]) -> int:
    rows, _ = pad_rows([a, b], 0)
    return int(shared_prefixes(rows, torch.tensor([len(a), len(b)]))[0])


def test_shared_prefix_leaves_each_row_its_last_token() -> None:
    assert _shared_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert _shared_prefix([1, 2], [1, 2, 3]) == 1  # row [1, 2] keeps its last token
    assert _shared_prefix([5], [5]) == 0
    assert _shared_prefix([1], [2, 3]) == 0


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS * 20, vocab_size=300)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_packed_scores_and_gradients_equal_padded(family, tokenizer, tmp_path) -> None:
    sft = build_model(family, tokenizer, n_layer=2, n_embd=32, n_head=2, context=64)
    model = build_reward_model(save_pretrained(sft, tokenizer, tmp_path), tokenizer, seed=1)
    assert takes_4d_mask(model)
    model.train()
    # prompts of different lengths; some responses start alike (shared beyond the prompt)
    records = [
        PairRecord("the movie " * (i % 3 + 1), "great " * (i % 5 + 1), "great boring " * (i % 3))
        for i in range(6)
    ]
    pairs = encode_records(records, tokenizer, 64)
    padded = RewardTask(pairs, batch_size=6, grad_accum=1).microbatches(0)[0]
    pad_id = tokenizer.pad_token_id
    packed = RewardTask(pairs, 6, 1, pack_width=16, pad_id=pad_id).microbatches(0)[0]
    real = int(padded["attention_mask"].sum())
    assert packed["packed"].input_ids.numel() < real  # no padding, and prompts held once

    def run(batch):
        model.zero_grad()
        if "packed" in batch:
            r = packed_reward_forward(model, batch["packed"])
        else:
            r = reward_forward(model, batch["input_ids"], batch["attention_mask"])
        (r * torch.arange(1.0, r.numel() + 1)).sum().backward()
        return r.detach(), [p.grad.clone() for p in model.parameters()]

    r_pad, g_pad = run(padded)
    r_pack, g_pack = run(packed)
    assert torch.allclose(r_pack, r_pad, atol=1e-5)
    for a, b in zip(g_pack, g_pad, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # the task's loss is the same either way
    loss_pad = RewardTask(pairs, 6, 1).loss(model, padded)[0]
    loss_pack = RewardTask(pairs, 6, 1).loss(model, packed)[0]
    assert loss_pack.item() == pytest.approx(loss_pad.item(), abs=1e-6)


@pytest.mark.parametrize("pack_width", [0, 16])
def test_widths_rounded_to_a_multiple_score_and_train_the_same(tokenizer, tmp_path, pack_width):
    """Under bf16 the batches' token width is rounded up (fewer distinct matmul shapes): the
    extra columns are padding, so scores and gradients do not change."""
    from prefloop.models.lm import width_multiple

    sft = build_model("gpt2", tokenizer, n_layer=2, n_embd=32, n_head=2, context=64)
    model = build_reward_model(save_pretrained(sft, tokenizer, tmp_path), tokenizer, seed=1)
    records = [PairRecord("the movie " * (i % 2 + 1), "great " * (i + 1), "dull") for i in range(5)]
    pairs = encode_records(records, tokenizer, 64)
    pad_id = tokenizer.pad_token_id
    assert width_multiple(False) == 1 and width_multiple(True) == 8

    def batch(multiple):
        return RewardTask(pairs, 5, 1, pack_width=pack_width, pad_id=pad_id,
                          width_multiple=multiple).microbatches(0)[0]  # fmt: skip

    exact, rounded = batch(1), batch(8)
    key = "packed" if pack_width else "input_ids"
    width = lambda b: (b["packed"].input_ids if pack_width else b["input_ids"]).shape[1]  # noqa: E731
    assert width(exact) % 8 != 0 and width(rounded) % 8 == 0 and width(rounded) > width(exact)

    def run(b):
        model.zero_grad()
        loss = RewardTask(pairs, 5, 1).loss(model, b)[0]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    (l1, g1), (l8, g8) = run(exact), run(rounded)
    assert key in rounded
    assert l8.item() == pytest.approx(l1.item(), abs=1e-6)
    for a, b in zip(g1, g8, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_attention_pair_by_pair_equals_whole_lines(family, bf16, tokenizer, tmp_path, monkeypatch):
    """In CPU training packed lines attend pair by pair (models/attention.py): the same scores
    and gradients as attention over whole lines under the block mask (float32: to rounding)."""
    import dataclasses

    from prefloop.models import attention

    attention.install()
    sft = build_model(family, tokenizer, n_layer=2, n_embd=32, n_head=2, context=64)
    model = build_reward_model(save_pretrained(sft, tokenizer, tmp_path), tokenizer, seed=1)
    model.train()
    records = [  # short pairs, many to a line
        PairRecord("the movie " * (i % 2 + 1), "great " * (i % 3 + 1), "boring " * (i % 2 + 1))
        for i in range(16)
    ]
    pairs = encode_records(records, tokenizer, 64)
    pad_id = tokenizer.pad_token_id
    packed = RewardTask(pairs, 16, 1, pack_width=64, pad_id=pad_id).microbatches(0)[0]["packed"]
    assert packed.groups is not None and packed.groups.pays()
    grouped = []
    inner = attention.grouped_attention
    monkeypatch.setattr(
        attention, "grouped_attention", lambda *a, **k: grouped.append(1) or inner(*a, **k)
    )

    def run(p):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            r = packed_reward_forward(model, p)
        (r * torch.arange(1.0, r.numel() + 1)).sum().backward()
        return r.detach(), [q.grad.clone() for q in model.parameters()]

    r_lines, g_lines = run(dataclasses.replace(packed, groups=None))
    assert grouped == []
    r_pairs, g_pairs = run(packed)
    assert len(grouped) == 1  # the first layer; the last runs at the scored tokens only
    tol = 2e-2 if bf16 else 1e-5

    def same(r, g, r_ref, g_ref):
        assert torch.allclose(r, r_ref, atol=tol / 2, rtol=tol / 2)
        for a, b in zip(g, g_ref, strict=True):
            assert torch.allclose(a, b, atol=tol * float(b.abs().max()) + 1e-6)

    same(r_pairs, g_pairs, r_lines, g_lines)
    # so `prefloop reward` packs a batch into one line by default: no padding between lines
    wide, multiple = RewardConfig().pack_width, line_multiple(64, bf16=bf16)
    assert wide == GROUPED_LINE_WIDTH and multiple == (64 if bf16 else 1)
    assert (line_multiple(64, bf16=False), line_multiple(0, bf16=True)) == (1, 8)
    task = RewardTask(pairs, 16, 1, pack_width=wide, pad_id=pad_id, width_multiple=multiple)
    one = task.microbatches(0)[0]["packed"]
    assert one.input_ids.shape[0] == 1 < packed.input_ids.shape[0]
    assert one.input_ids.shape[1] % multiple == 0
    r_one, g_one = run(one)
    same(r_one, g_one, r_pairs, g_pairs)
    # pairs longer than the math route's limit attend over whole lines (no (G, G) scores kept)
    monkeypatch.setattr(attention, "MATH_MAX_KEYS", packed.groups.group - 1)
    grouped.clear()
    r_long, g_long = run(packed)
    assert grouped == []
    same(r_long, g_long, r_lines, g_lines)


def _pairs_of_random_lengths(n: int, seed: int = 0) -> EncodedPairs:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(6, 34, (2 * n,), generator=g)  # 3 prompt tokens + a response each
    rows = torch.zeros(2 * n, 34, dtype=torch.long)
    for r, k in enumerate(lengths.tolist()):
        rows[r, :3] = torch.tensor([1, 2, 3])  # the prompt, shared by both rows of a pair
        rows[r, 3:k] = 10 + r % n + (n if r >= n else 0)  # a response of its own
    return EncodedPairs(rows, lengths, torch.zeros(n, dtype=torch.bool), torch.zeros(n))


def test_one_line_batches_are_chosen_to_fill_their_rounding(monkeypatch) -> None:
    """Under bf16 each batch is one packed line, its width rounded up to 64: the epoch's
    batches are arranged so that little of that rounding is padding, with every pair once."""
    from prefloop.train import reward

    pairs = _pairs_of_random_lengths(16 * 64)
    size = packed_sizes(pairs.rows, pairs.lengths)
    assert size.tolist() == (pairs.lengths[:1024] + pairs.lengths[1024:] - 3).tolist()
    edge = [([1, 2, 3], [1, 2, 3, 4]), ([1, 2], [1, 2]), ([5], [6, 7]), ([1, 2, 9], [1, 3, 9])]
    chosen_then_rejected = [r for rows in zip(*edge, strict=True) for r in rows]
    rows, _ = pad_rows(chosen_then_rejected, 0)
    lengths = torch.tensor([len(r) for r in chosen_then_rejected])
    few = EncodedPairs(rows, lengths, torch.zeros(4, dtype=torch.bool), torch.zeros(4))
    # shared prefixes 2, 1, 0, 1: each row keeps its last token; a difference ends the prefix
    assert packed_sizes(few.rows, few.lengths).tolist() == [5, 3, 3, 5]

    def epoch(task: RewardTask) -> tuple[list[int], int]:
        seen, slots = [], 0
        for step in range(64):
            packed = task.microbatches(step)[0]["packed"]
            assert packed.input_ids.shape == (1, packed.input_ids.shape[1])  # one line
            slots += packed.input_ids.numel()
            seen += task._indices(step * 16, 16).tolist()
        return seen, slots

    def task() -> RewardTask:
        return RewardTask(pairs, 16, 1, seed=3, pack_width=1024, pad_id=0, width_multiple=64)

    seen, filled = epoch(task())
    assert sorted(seen) == list(range(1024))  # each pair once
    with monkeypatch.context() as m:
        m.setattr(reward, "fill_lines", lambda *args: None)
        seen_plain, plain = epoch(task())
    assert sorted(seen_plain) == list(range(1024))
    tokens = int(size.sum())
    assert plain - tokens > 64 * 20  # ~32 padding tokens a batch when batches are not arranged
    assert filled - tokens < (plain - tokens) / 3
