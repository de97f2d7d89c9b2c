"""The embedded review task: variety, determinism, neutral prompts, disjoint splits."""

from __future__ import annotations

import re
import statistics

import pytest

from prefloop.data import reviews as R
from prefloop.errors import PrefloopError
from prefloop.feedback.gold import sentiment_gold, vader_compound


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.!?])\s+", text)


def test_grammar_has_20k_distinct_sentences() -> None:
    distinct = {s for r in R.reviews(30_000, seed=0) for s in _sentences(r.text)}
    assert len(distinct) >= 20_000


def test_reviews_are_deterministic_and_seed_dependent() -> None:
    assert R.reviews(50, seed=3) == R.reviews(50, seed=3)
    assert R.reviews(50, seed=3) != R.reviews(50, seed=4)


def test_review_shape() -> None:
    rs = R.reviews(2_000, seed=1)
    for r in rs:
        assert r.text == r.prompt + r.response
        assert r.response.startswith(" ") and not r.response.startswith("  ")
        assert r.sentiment in ("pos", "neg", "mixed")
        assert 1 <= len(_sentences(r.response.strip())) <= 3
        assert len(r.text.split()) <= 45
    share = {s: sum(r.sentiment == s for r in rs) / len(rs) for s in ("pos", "neg", "mixed")}
    assert 0.3 < share["pos"] < 0.5 and 0.3 < share["neg"] < 0.5 and 0.1 < share["mixed"] < 0.3
    assert {r.domain for r in rs} == {"product", "movie", "book"}


def test_vader_separates_positive_and_negative_continuations() -> None:
    rs = R.reviews(3_000, seed=2)
    pos = vader_compound([r.response for r in rs if r.sentiment == "pos"])
    neg = vader_compound([r.response for r in rs if r.sentiment == "neg"])
    assert statistics.mean(pos) > 0.3
    assert statistics.mean(neg) < -0.3
    # and nearly every single one lands on its own side
    assert sum(x > 0 for x in pos) / len(pos) > 0.97
    assert sum(x < 0 for x in neg) / len(neg) > 0.97


def test_openings_are_sentiment_neutral() -> None:
    prompts = [e["prompt"] for e in R.sft_examples(2_000, seed=5)]
    prompts += R.rl_prompts(500, seed=5, split="train") + R.rl_prompts(300, seed=5, split="eval")
    assert max(abs(x) for x in vader_compound(prompts)) == 0.0


def test_sentiment_gold_scores_responses_only() -> None:
    prompts = ["I hate everything and", "I love it and"]
    scores = sentiment_gold(prompts, [" it is great.", " awful."])
    assert scores[0] > 0.5 and scores[1] < -0.3
    assert vader_compound([""]) == [0.0]


def test_sft_examples_and_corpus() -> None:
    ex = R.sft_examples(300, seed=7)
    assert all(set(e) == {"prompt", "response"} for e in ex)
    assert len({e["prompt"] for e in ex}) > 250
    docs = R.corpus(300, seed=7)
    assert docs == [e["prompt"] + e["response"] for e in ex]


def test_rl_prompt_splits_are_disjoint_and_distinct() -> None:
    train = R.rl_prompts(3_000, seed=0, split="train")
    evals = R.rl_prompts(1_000, seed=0, split="eval")
    assert len(set(train)) == 3_000 and len(set(evals)) == 1_000
    assert not set(train) & set(evals)
    # eval items never appear in training data of any kind
    eval_items = {n for d in ("product", "movie", "book") for n, _ in R._items(d, "eval")}
    sft_text = " ".join(R.corpus(3_000, seed=0) + train)
    assert not any(item in sft_text for item in eval_items)
    assert R.rl_prompts(20, seed=1, split="eval") == R.rl_prompts(20, seed=1, split="eval")


def test_rl_prompts_can_exhaust_a_split_and_refuse_more() -> None:
    every = R._all_openings("eval")
    assert set(R.rl_prompts(300, seed=0, split="eval")) <= set(every)
    assert sorted(R.rl_prompts(len(every), seed=0, split="eval")) == sorted(every)
    with pytest.raises(PrefloopError, match=f"has {len(every)} distinct eval prompts"):
        R.rl_prompts(len(every) + 1, seed=0, split="eval")
    with pytest.raises(PrefloopError, match="split must be"):
        R.rl_prompts(1, seed=0, split="test")  # type: ignore[arg-type]


def test_reviews_fit_48_tokens_of_a_2k_bpe() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(R.corpus(2_000, seed=0), trainer=trainer)
    lengths = sorted(len(e.ids) + 1 for e in tok.encode_batch(R.corpus(2_000, seed=1)))  # + EOS
    assert lengths[len(lengths) // 2] <= 32 and lengths[int(0.99 * len(lengths))] <= 48
