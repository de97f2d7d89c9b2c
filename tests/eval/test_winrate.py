"""Win-rate and bootstrap interval."""

from __future__ import annotations

import pytest

from prefloop.eval.winrate import bootstrap_ci, preferences_from_scores, win_rate


def test_preferences_from_scores_wins_ties_losses() -> None:
    assert preferences_from_scores([1.0, 0.0, 0.5], [0.0, 1.0, 0.5]) == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError):
        preferences_from_scores([1.0], [1.0, 2.0])


def test_win_rate_counts_and_interval() -> None:
    prefs = [1.0] * 80 + [0.5] * 10 + [0.0] * 10
    wr = win_rate(prefs, seed=1)
    assert wr.rate == pytest.approx(0.85)
    assert (wr.wins, wr.ties, wr.losses, wr.n) == (80, 10, 10, 100)
    # binomial-ish standard error ~ sqrt(.85*.15/100) ≈ 0.034 -> interval about ±0.07
    assert 0.76 < wr.ci_low < 0.81 < 0.89 < wr.ci_high < 0.93
    assert wr.ci_low <= wr.rate <= wr.ci_high


def test_bootstrap_degenerate_and_reproducible() -> None:
    assert bootstrap_ci([1.0] * 20) == (1.0, 1.0)
    assert bootstrap_ci([0.0, 1.0] * 10, seed=3) == bootstrap_ci([0.0, 1.0] * 10, seed=3)
    with pytest.raises(ValueError):
        win_rate([])


def test_interval_narrows_with_more_prompts() -> None:
    small = win_rate([1.0, 0.0] * 10)
    large = win_rate([1.0, 0.0] * 500)
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low) / 3
