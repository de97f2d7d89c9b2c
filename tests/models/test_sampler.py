"""The sampler's log-probs are the log-probs a separate forward pass gives the same tokens."""

from __future__ import annotations

import pytest
import torch

from prefloop.errors import PrefloopError
from prefloop.models.sampler import (
    Sampler,
    SamplingParams,
    filter_logits,
    left_pad,
    right_pad,
    sequence_logprobs,
)

PROMPTS = ["the movie", "i loved this blender it works fine and the sound", "bad", ""]


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 0.9, 20)])
def test_logprobs_equal_forward_pass_with_left_padding(make_model, tokenizer, family, temperature, top_p, top_k):
    model = make_model(family)
    gen = Sampler(model, tokenizer).generate(
        PROMPTS, SamplingParams(max_new_tokens=16, temperature=temperature, top_p=top_p, top_k=top_k, n=2, seed=3)
    )
    assert len(gen.response_ids) == len(PROMPTS) * 2
    query, qmask = left_pad(gen.prompt_ids, tokenizer.pad_token_id)
    assert len({len(p) for p in gen.prompt_ids}) > 1, "prompts of different lengths exercise left padding"
    response, rmask = right_pad(gen.response_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        recomputed, _ = sequence_logprobs(model, query, qmask, response, rmask, temperature)
    sampled = right_pad([[0] * len(x) for x in gen.logprobs], 0)[0].float()
    for i, lps in enumerate(gen.logprobs):
        sampled[i, : len(lps)] = torch.tensor(lps)
    assert torch.allclose(recomputed * rmask, sampled, atol=1e-5), (recomputed * rmask - sampled).abs().max()


def test_same_seed_same_samples_and_eos_stops(make_model, tokenizer):
    model = make_model("gpt2")
    s = Sampler(model, tokenizer)
    p = SamplingParams(max_new_tokens=40, temperature=1.0, n=4, seed=7)
    a, b = s.generate(PROMPTS, p), s.generate(PROMPTS, p)
    assert a.response_ids == b.response_ids
    for ids, done in zip(a.response_ids, a.finished, strict=True):
        assert (ids[-1] == tokenizer.eos_token_id) == done
        assert tokenizer.eos_token_id not in ids[:-1]
        assert len(ids) <= 40


def test_batched_equals_one_by_one_greedy(make_model, tokenizer):
    model = make_model("llama")
    s = Sampler(model, tokenizer)
    p = SamplingParams(max_new_tokens=10, temperature=0.0)
    batched = s.generate(PROMPTS[:3], p).response_ids
    single = [s.generate([q], p).response_ids[0] for q in PROMPTS[:3]]
    assert batched == single


def test_top_k_and_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    # nucleus 0.7: 0.5 alone is not enough, 0.5 + 0.3 crosses it -> keep two
    assert torch.isinf(filter_logits(logits, 0, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 0, 0.5)).tolist() == [[False, True, True, True]]


def test_long_prompt_left_truncated_with_warning_or_error(make_model, tokenizer):
    model = make_model("gpt2", context=32)
    long_prompt = " ".join(["the movie was great"] * 40)
    with pytest.warns(UserWarning, match="left-truncated"):
        gen = Sampler(model, tokenizer).generate([long_prompt], SamplingParams(max_new_tokens=8, seed=0))
    assert len(gen.prompt_ids[0]) == 32 - 8
    with pytest.raises(PrefloopError, match="row 1"):
        Sampler(model, tokenizer).generate([long_prompt], SamplingParams(max_new_tokens=8, truncation="error"))
