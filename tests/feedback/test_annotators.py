"""SimulatedAnnotator: calibrated agreement with gold, ties, seeding, and `label_pending`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from prefloop.errors import PrefloopError
from prefloop.feedback.annotators import SimulatedAnnotator, calibrate_temperature, label_pending
from prefloop.feedback.models import ComparisonIn, ComparisonView, PromptIn, ResponseIn
from prefloop.feedback.store import PreferenceStore


def number_gold(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """A gold scorer for tests: the response text is its score."""
    return [float(r) for r in responses]


def _comparisons(n: int, seed: int, scale: float = 1.0) -> tuple[list[ComparisonView], np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.normal(scale=scale, size=(n, 2))
    views = [
        ComparisonView(i, "p", None, repr(float(a)), repr(float(b)), "", False)
        for i, (a, b) in enumerate(scores)
    ]
    return views, scores[:, 0] - scores[:, 1]


def _agreement(labels, d: np.ndarray) -> float:
    decided = [(lab.choice, x) for lab, x in zip(labels, d, strict=True) if lab.choice != "tie"]
    return float(np.mean([(ch == "a") == (x > 0) for ch, x in decided]))


@pytest.mark.parametrize("rate", [0.75, 0.9])
def test_agreement_with_gold_matches_the_configured_rate(rate: float) -> None:
    views, d = _comparisons(5000, seed=1)
    labels = SimulatedAnnotator(number_gold, agreement=rate, seed=7).label(views)
    assert len(labels) == 5000
    assert abs(_agreement(labels, d) - rate) <= 0.03


def test_calibration_hits_the_rate_in_expectation_whatever_the_scale() -> None:
    for scale in (0.01, 1.0, 300.0):
        _, d = _comparisons(2000, seed=2, scale=scale)
        t = calibrate_temperature(np.abs(d), 0.75)
        expected = np.mean(1 / (1 + np.exp(-np.abs(d) / t)))
        assert expected == pytest.approx(0.75, abs=1e-6)
        assert t == pytest.approx(calibrate_temperature(np.abs(d) / scale, 0.75) * scale, rel=1e-4)
    assert calibrate_temperature(np.array([0.3, 1.0]), 1.0) == 0.0
    assert calibrate_temperature(np.array([0.3, 1.0]), 0.5) == float("inf")


def test_extremes_no_noise_and_ties() -> None:
    views, d = _comparisons(500, seed=3)
    perfect = SimulatedAnnotator(number_gold, agreement=1.0).label(views)
    assert _agreement(perfect, d) == 1.0
    eps = float(np.quantile(np.abs(d), 0.2))
    labels = SimulatedAnnotator(number_gold, agreement=0.8, tie_epsilon=eps).label(views)
    ties = [lab.choice == "tie" for lab in labels]
    assert ties == list(np.abs(d) < eps)
    assert 0.15 < np.mean(ties) < 0.25


def test_seeded_and_reproducible() -> None:
    views, _ = _comparisons(300, seed=4)
    a = SimulatedAnnotator(number_gold, seed=11).label(views)
    b = SimulatedAnnotator(number_gold, seed=11).label(views)
    c = SimulatedAnnotator(number_gold, seed=12).label(views)
    assert a == b
    assert a != c


@pytest.mark.parametrize("rate", [0.3, 1.2])
def test_bad_agreement_is_a_user_error(rate: float) -> None:
    with pytest.raises(PrefloopError, match="agreement"):
        SimulatedAnnotator(number_gold, agreement=rate)


def test_label_pending_labels_each_comparison_once(tmp_path) -> None:
    rng = np.random.default_rng(5)
    with PreferenceStore(f"sqlite:///{tmp_path / 'p.db'}") as store:
        with store.transaction() as tx:
            pids = tx.add_prompts([PromptIn(f"p{i}") for i in range(200)])
            rids = tx.add_responses(
                [ResponseIn(p, repr(float(x))) for p in pids for x in rng.normal(size=2)]
            )
            tx.add_comparisons(
                [ComparisonIn(p, rids[2 * i], rids[2 * i + 1], "s") for i, p in enumerate(pids)]
            )
        ann = SimulatedAnnotator(number_gold, agreement=0.75, seed=0)
        run = label_pending(store, ann, chunk=64)
        assert run.labelled == 200 and run.choices["tie"] == 0
        assert run.gold_agreement is not None and 0.6 < run.gold_agreement < 0.9
        assert label_pending(store, ann).labelled == 0  # nothing left for this annotator
        stats = store.stats()
        assert stats["pending"] == 0 and stats["labels_by_kind"] == {"simulated": 200}
