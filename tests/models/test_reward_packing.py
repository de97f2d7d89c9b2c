"""Padding-free reward training: packed rows score and train exactly like padded rows."""

from __future__ import annotations

import pytest
import torch

from prefloop.models.lm import build_model, save_pretrained
from prefloop.models.reward import (
    build_reward_model,
    can_pack,
    pack_rows,
    packed_reward_forward,
    reward_forward,
)
from prefloop.models.tokenizer import train_bpe_tokenizer
from prefloop.train.reward import PairRecord, RewardTask, encode_records

TEXTS = ["the movie was great and fun", "terrible boring film with awful acting", "fine"]


def test_pack_rows_places_every_token_once_and_rows_start_at_position_0() -> None:
    rows = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 0, 0, 0], [7, 8, 9, 0, 0], [10, 0, 0, 0, 0]])
    lengths = torch.tensor([4, 2, 3, 1])
    p = pack_rows(rows, lengths, width=5, pad_id=0)
    # first fit by decreasing length: [4-row, 1-row] [3-row, 2-row]
    assert p.input_ids.tolist() == [[1, 2, 3, 4, 10], [7, 8, 9, 5, 6]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    flat = p.input_ids.flatten()
    assert flat[p.last].tolist() == [4, 6, 9, 10]  # each row's last token
    # a row longer than the width gets a line of its own; unused slots are pads at position 0
    p = pack_rows(rows, lengths, width=3, pad_id=99)
    assert p.input_ids.shape == (3, 4)
    assert sorted(t for t in p.input_ids.flatten().tolist() if t != 99) == list(range(1, 11))
    assert all(p.position_ids.flatten()[p.input_ids.flatten() == 99] == 0)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS * 20, vocab_size=300)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_packed_scores_and_gradients_equal_padded(family, tokenizer, tmp_path) -> None:
    sft = build_model(family, tokenizer, n_layer=2, n_embd=32, n_head=2, context=64)
    model = build_reward_model(save_pretrained(sft, tokenizer, tmp_path), tokenizer, seed=1)
    assert can_pack(model)
    model.train()
    records = [
        PairRecord(f"p{i}", "great " * (i % 5 + 1), "boring fun " * (i % 3)) for i in range(6)
    ]
    pairs = encode_records(records, tokenizer, 64)
    padded = RewardTask(pairs, batch_size=6, grad_accum=1).microbatches(0)[0]
    packed = RewardTask(pairs, 6, 1, pack_width=16, pad_id=tokenizer.pad_token_id).microbatches(0)[
        0
    ]
    assert packed["packed"].input_ids.numel() < padded["input_ids"].numel()  # less padding

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
