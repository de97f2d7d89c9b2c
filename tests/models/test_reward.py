"""Reward model: last-token indexing, padding-independent scores, checkpoint format, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from prefloop.errors import PrefloopError
from prefloop.models.lm import build_model, pad_rows, save_pretrained
from prefloop.models.reward import (
    RewardEnsemble,
    build_reward_model,
    encode_pair,
    last_token_index,
    load_reward_ensemble,
    load_reward_model,
    read_normalization,
    reward_forward,
    score,
    set_normalization,
)
from prefloop.models.tokenizer import train_bpe_tokenizer

TEXTS = [
    "the movie was great and fun",
    "terrible boring film with awful acting",
    "I loved every minute of it",
    "I hated the ending, what a waste",
    "a fine, quiet and moving story",
]
PROMPTS = ["Review: ", "Write a review of the film.", "", "Tell me about the acting"]
RESPONSES = ["great fun", "awful and boring, a waste of time really", "loved it", "fine"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS * 20, vocab_size=300)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def sft_dir(request, tokenizer, tmp_path_factory) -> Path:
    model = build_model(request.param, tokenizer, n_layer=2, n_embd=32, n_head=2, context=64)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp(f"sft-{request.param}"))


@pytest.fixture(scope="module")
def reward_dir(sft_dir, tokenizer, tmp_path_factory) -> Path:
    model = build_reward_model(sft_dir, tokenizer, seed=1)
    set_normalization(model, torch.tensor([0.5, 1.5, 2.5]))  # gain 1, bias -1.5
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("rm"))


def test_last_token_index_right_left_and_unpadded() -> None:
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]
    assert last_token_index(torch.ones(2, 3, dtype=torch.long)).tolist() == [2, 2]
    with pytest.raises(ValueError):
        last_token_index(torch.tensor([[0, 0]]))


def test_pad_rows_sides() -> None:
    ids, mask = pad_rows([[5, 6, 7], [8]], pad=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_rows([[5, 6, 7], [8]], pad=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    # per-token floats to a fixed width; an empty row is all padding
    values, mask = pad_rows([[0.5], []], pad=-1.0, width=3, dtype=torch.float32)
    assert values.tolist() == [[0.5, -1.0, -1.0], [-1.0] * 3] and mask.tolist() == [
        [1, 0, 0],
        [0] * 3,
    ]
    with pytest.raises(ValueError, match="padding side"):
        pad_rows([[1]], 0, side="middle")


def test_build_from_sft_checkpoint(sft_dir, tokenizer) -> None:
    model = build_reward_model(sft_dir, tokenizer, seed=0)
    d = model.score.weight.shape[1]
    assert model.score.weight.shape == (1, d) and model.score.bias is None
    # head drawn from N(0, 1/sqrt(d+1)): the sample std is close to that (d=32: ~12% error)
    assert abs(model.score.weight.std().item() - 1 / math.sqrt(d + 1)) < 0.35 / math.sqrt(d + 1)
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    drop = {k: v for k, v in vars(model.config).items() if "dropout" in k or k.endswith("pdrop")}
    assert drop and all(v == 0.0 for v in drop.values() if isinstance(v, float))
    # the backbone is the SFT model's: same embedding weights
    from prefloop.models.lm import load_model

    sft = load_model(str(sft_dir))
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb, sft.get_input_embeddings().weight)


def test_scores_do_not_depend_on_batch_composition_or_padding_side(reward_dir) -> None:
    model, tok = load_reward_model(reward_dir)
    alone = torch.cat(
        [score(model, tok, [p], [r], batch_size=1) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    )
    for side in ("left", "right"):
        for bs in (2, 3, 4):
            together = score(model, tok, PROMPTS, RESPONSES, batch_size=bs, padding_side=side)
            assert torch.allclose(together, alone, atol=1e-5), (side, bs)
    # a row among different neighbours scores the same
    mixed = score(model, tok, [PROMPTS[0], "x" * 40], [RESPONSES[0], "y"], padding_side="left")
    assert torch.allclose(mixed[0], alone[0], atol=1e-5)


def test_right_padded_fast_path_matches_the_masked_path(reward_dir) -> None:
    model, tok = load_reward_model(reward_dir)
    rows = [encode_pair(tok, p, r, 64) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    ids, mask = pad_rows(rows, tok.pad_token_id, side="right")
    with torch.no_grad():
        masked = reward_forward(model, ids, mask)
        fast = reward_forward(model, ids, mask, right_padded=True)
    assert torch.allclose(masked, fast, atol=1e-5)


def test_plain_transformers_loads_the_checkpoint_with_identical_scores(reward_dir) -> None:
    ours, tok = load_reward_model(reward_dir)
    plain = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1).eval()
    rows = [encode_pair(tok, p, r, 64) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    ids, mask = pad_rows(rows, tok.pad_token_id, side="right")
    with torch.no_grad():
        hf = plain(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    raw = score(ours, tok, PROMPTS, RESPONSES, raw=True)
    assert torch.allclose(hf, raw, atol=1e-5)
    # the stored normalization (gain 1, bias -1.5) is applied at load by `score`
    assert read_normalization(reward_dir)["bias"] == pytest.approx(-1.5)
    assert torch.allclose(score(ours, tok, PROMPTS, RESPONSES), raw - 1.5, atol=1e-5)


def test_normalization_maps_samples_to_mean_0_std_1(reward_dir) -> None:
    model, tok = load_reward_model(reward_dir)
    raw = score(model, tok, PROMPTS, RESPONSES, raw=True)
    set_normalization(model, raw)
    normed = score(model, tok, PROMPTS, RESPONSES)
    assert abs(normed.mean().item()) < 1e-5 and abs(normed.std().item() - 1) < 1e-5


def test_causal_lm_is_refused_with_a_clear_error(sft_dir, tokenizer) -> None:
    from prefloop.models.lm import load_model

    causal = load_model(str(sft_dir))
    with pytest.raises(PrefloopError, match="no scalar head"):
        score(causal, tokenizer, ["a"], ["b"])
    with pytest.raises(PrefloopError, match="no scalar head"):
        load_reward_model(sft_dir)
    with pytest.raises(PrefloopError, match="cannot load"):
        load_reward_model(sft_dir / "missing")


def test_gradients_flow_to_head_and_backbone(reward_dir) -> None:
    model, tok = load_reward_model(reward_dir)
    model.train()
    ids, mask = pad_rows([encode_pair(tok, "a", "great", 64)], tok.pad_token_id)
    reward_forward(model, ids, mask).sum().backward()
    assert model.score.weight.grad is not None and model.score.weight.grad.abs().sum() > 0
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_long_inputs_keep_the_response(reward_dir) -> None:
    model, tok = load_reward_model(reward_dir)
    ids = encode_pair(tok, "the movie " * 100, "great fun", 64)
    assert len(ids) == 64 and ids[-1] == tok.eos_token_id
    assert torch.isfinite(score(model, tok, ["the movie " * 100], ["great fun"])).all()


def test_ensemble_mean_and_spread(reward_dir, sft_dir, tokenizer, tmp_path) -> None:
    member = build_reward_model(sft_dir, tokenizer, seed=7)
    save_pretrained(member, tokenizer, tmp_path / "ensemble" / "member-01")
    m0, tok = load_reward_model(reward_dir)
    ens = RewardEnsemble([m0, member], tok)
    out = ens.score(PROMPTS, RESPONSES)
    each = torch.stack([score(m0, tok, PROMPTS, RESPONSES), score(member, tok, PROMPTS, RESPONSES)])
    assert torch.allclose(out.members, each)
    assert torch.allclose(out.mean, each.mean(0)) and torch.allclose(out.spread, each.std(0))
    # saved layout: root = member 0, ensemble/member-*/ = the others
    save_pretrained(m0, tok, tmp_path)
    loaded = load_reward_ensemble(tmp_path)
    assert len(loaded.models) == 2
    assert torch.allclose(loaded.score(PROMPTS, RESPONSES).mean, out.mean, atol=1e-5)
