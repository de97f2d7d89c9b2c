"""Gold scorers: the ground truth the simulated annotators, evaluation and PPO checks rely on.

For the embedded review task the gold judge is VADER (the `vaderSentiment` package): a
rule-based sentiment analyser whose *compound* score lies in [-1, 1]. It scores only the
response, because the prompts are sentiment-neutral openings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

GoldScorer = Callable[[Sequence[str], Sequence[str]], list[float]]
"""(prompts, responses) -> one score per pair; higher means better."""


@functools.cache
def _analyzer() -> SentimentIntensityAnalyzer:
    # Loading the lexicon takes ~0.1 s; build it once per process.
    return SentimentIntensityAnalyzer()


def vader_compound(texts: Sequence[str]) -> list[float]:
    """VADER compound sentiment of each text, in [-1, 1] (0 for empty or neutral text)."""
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


def sentiment_gold(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """The default task's `GoldScorer`: positivity of the response (the prompt is ignored)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return vader_compound(responses)
