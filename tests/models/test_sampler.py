"""The sampler's log-probs are the log-probs a separate forward pass gives the same tokens."""

from __future__ import annotations

import pytest
import torch

from prefloop.errors import PrefloopError
from prefloop.models.sampler import (
    Sampler,
    SamplingParams,
    left_pad,
    right_pad,
    sample_tokens,
    sequence_logprobs,
    token_logprobs,
)

PROMPTS = ["the movie", "i loved this blender it works fine and the sound", "bad", ""]


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 0.9, 20)])
def test_logprobs_equal_forward_pass_with_left_padding(
    make_model, tokenizer, family, temperature, top_p, top_k
):
    model = make_model(family)
    gen = Sampler(model, tokenizer).generate(
        PROMPTS,
        SamplingParams(
            max_new_tokens=16, temperature=temperature, top_p=top_p, top_k=top_k, n=2, seed=3
        ),
    )
    assert len(gen.response_ids) == len(PROMPTS) * 2
    query, qmask = left_pad(gen.prompt_ids, tokenizer.pad_token_id)
    assert len({len(p) for p in gen.prompt_ids}) > 1, (
        "prompts of different lengths exercise left padding"
    )
    response, rmask = right_pad(gen.response_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        recomputed, _ = sequence_logprobs(model, query, qmask, response, rmask, temperature)
    sampled = right_pad([[0] * len(x) for x in gen.logprobs], 0)[0].float()
    for i, lps in enumerate(gen.logprobs):
        sampled[i, : len(lps)] = torch.tensor(lps)
    assert torch.allclose(recomputed * rmask, sampled, atol=1e-5), (
        (recomputed * rmask - sampled).abs().max()
    )


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_rows_that_finish_early_leave_the_batch_without_disturbing_the_others(
    make_model, tokenizer, family
):
    """Rows ending at different steps are dropped from the batch and its KV cache: every other
    row must still continue its own prompt (log-probs = a forward pass over its tokens)."""
    model = make_model(family)
    with torch.no_grad():  # make EOS likely enough that rows end at many different steps
        model.get_output_embeddings().weight[tokenizer.eos_token_id] *= 12.0
    gen = Sampler(model, tokenizer).generate(
        PROMPTS * 4, SamplingParams(max_new_tokens=24, n=2, seed=11)
    )
    ended = [len(r) for r, done in zip(gen.response_ids, gen.finished, strict=True) if done]
    assert len(set(ended)) >= 3 and 0 < len(ended) < len(gen.response_ids), ended
    query, qmask = left_pad(gen.prompt_ids, tokenizer.pad_token_id)
    response, rmask = right_pad(gen.response_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        recomputed, _ = sequence_logprobs(model, query, qmask, response, rmask, 1.0)
    for i, lps in enumerate(gen.logprobs):
        assert torch.allclose(recomputed[i, : len(lps)], torch.tensor(lps), atol=1e-5), i


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


@pytest.mark.parametrize(
    "top_k,top_p,expected",
    [
        (0, 1.0, [0.5, 0.3, 0.15, 0.05]),
        (2, 1.0, [0.625, 0.375, 0.0, 0.0]),
        (0, 0.7, [0.625, 0.375, 0.0, 0.0]),  # 0.5 alone is short of 0.7; 0.5 + 0.3 crosses it
        (0, 0.5, [1.0, 0.0, 0.0, 0.0]),
        (3, 0.9, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]),  # nucleus of the renormalized top-3
    ],
)
def test_sample_tokens_draws_the_filtered_distribution(top_k, top_p, expected):
    logp = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]])).repeat(20000, 1)  # shuffled order
    order = [1, 3, 2, 0]  # token ids from most to least likely
    draws = sample_tokens(logp, top_k, top_p, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    for rank, token in enumerate(order):
        assert abs(float(freq[token]) - expected[rank]) < 0.015, (token, freq.tolist())


def _nucleus(logp: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Reference by full sort: the renormalized top-k, then top-p, distribution of one row."""
    probs, order = logp.exp().sort(descending=True)
    probs = probs[: top_k or len(probs)]
    probs = probs / probs.sum()
    probs[(probs.cumsum(0) - probs) >= top_p] = 0.0
    out = torch.zeros_like(logp)
    out[order[: len(probs)]] = probs / probs.sum()
    return out


@pytest.mark.parametrize(
    ("logits", "top_k", "top_p"),
    [
        (torch.linspace(0.0, 6.0, 600) ** 2, 0, 0.9),  # peaked: the nucleus is in the window
        (torch.linspace(0.0, 1.0, 600), 0, 0.9),  # flat: ~530 kept, found from the tail up
        (torch.linspace(0.0, 1.0, 1000), 0, 0.5),  # flat, nucleus and tail both > 256: sort
        (torch.linspace(0.0, 1.0, 1000), 400, 0.7),  # top-k wider than the window: sort
        (torch.linspace(0.0, 3.0, 600) ** 2, 100, 0.8),  # top-k inside the window
    ],
)
def test_every_nucleus_path_draws_the_exact_filtered_distribution(logits, top_k, top_p):
    logp = torch.log_softmax(logits[torch.randperm(len(logits))], -1)
    expected = _nucleus(logp, top_k, top_p)
    draws = sample_tokens(logp.repeat(100_000, 1), top_k, top_p, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=len(logp)).float() / len(draws)
    assert not bool(freq[expected == 0].any()), "drew a token outside the nucleus"
    assert float((freq - expected).abs().sum()) < 0.1


def test_long_prompt_left_truncated_with_warning_or_error(make_model, tokenizer):
    model = make_model("gpt2", context=32)
    long_prompt = " ".join(["the movie was great"] * 40)
    with pytest.warns(UserWarning, match="left-truncated"):
        gen = Sampler(model, tokenizer).generate(
            [long_prompt], SamplingParams(max_new_tokens=8, seed=0)
        )
    assert len(gen.prompt_ids[0]) == 32 - 8
    with pytest.raises(PrefloopError, match="row 1"):
        Sampler(model, tokenizer).generate(
            [long_prompt], SamplingParams(max_new_tokens=8, truncation="error")
        )


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_value_and_gradient_match_log_softmax(temperature: float) -> None:
    """token_logprobs has a hand-written backward: it must equal autograd through log_softmax."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 11, generator=g).requires_grad_()
    targets = torch.randint(0, 11, (3, 5), generator=g)
    weights = torch.randn(3, 5, generator=g)
    expected = torch.log_softmax(x / temperature, -1).gather(-1, targets[..., None]).squeeze(-1)
    got = token_logprobs(x, targets, temperature)
    assert torch.allclose(got, expected, atol=1e-6)
    (grad_expected,) = torch.autograd.grad((expected * weights).sum(), x)
    (grad_got,) = torch.autograd.grad((got * weights).sum(), x)
    assert torch.allclose(grad_got, grad_expected, atol=1e-6)


def test_token_logprobs_of_bf16_logits_are_float32_with_a_bf16_gradient() -> None:
    """Under bf16 autocast the LM head's logits arrive in bf16: the log-probs are computed in
    float32 from them (as log_softmax(x.float()) would), and the gradient flows back in bf16."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 64, generator=g).bfloat16().requires_grad_()
    targets = torch.randint(0, 64, (2, 4), generator=g)
    weights = torch.randn(2, 4, generator=g)
    expected = torch.log_softmax(x.float(), -1).gather(-1, targets[..., None]).squeeze(-1)
    got = token_logprobs(x, targets, 1.0)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-6)
    (grad_expected,) = torch.autograd.grad((expected * weights).sum(), x)
    (grad_got,) = torch.autograd.grad((got * weights).sum(), x)
    assert grad_got.dtype == torch.bfloat16
    assert torch.equal(grad_got, grad_expected)
