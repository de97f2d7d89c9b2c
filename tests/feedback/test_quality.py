"""Agreement statistics and aggregation against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefloop.feedback.quality import (
    LabelRecord,
    aggregate_bradley_terry,
    aggregate_majority,
    annotator_quality,
    bradley_terry,
    cohen_kappa,
    fleiss_kappa,
)


def test_cohen_kappa_hand_computed() -> None:
    # observed 3/4; marginals rater1 a:3 b:1, rater2 a:2 b:2 -> expected 1/2 -> kappa 1/2
    assert cohen_kappa([("a", "a"), ("b", "b"), ("a", "b"), ("a", "a")]) == pytest.approx(0.5)
    assert cohen_kappa([("a", "a"), ("b", "b")]) == pytest.approx(1.0)
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)
    assert cohen_kappa([("a", "a"), ("a", "a")]) is None  # one category only: undefined
    assert cohen_kappa([]) is None


def test_fleiss_kappa_hand_computed() -> None:
    # item P: (4+1-3)/6 = 1/3 and (9-3)/6 = 1 -> P_bar 2/3; p_a = 2/6, p_b = 4/6 -> P_e = 5/9
    assert fleiss_kappa([["a", "a", "b"], ["b", "b", "b"]]) == pytest.approx(
        (2 / 3 - 5 / 9) / (4 / 9)
    )
    assert fleiss_kappa([["a", "a"], ["b", "b"], ["tie", "tie", "tie"]]) == pytest.approx(1.0)
    assert fleiss_kappa([["a"], []]) is None  # no item with two ratings


def test_annotator_quality() -> None:
    recs = [
        LabelRecord(1, 10, "a", shown_left="a", seconds=4.0, gold_choice="a"),
        LabelRecord(1, 11, "b", shown_left="a", seconds=2.0, gold_choice="a"),
        LabelRecord(2, 10, "b", shown_left="b", seconds=6.0),
        LabelRecord(2, 11, "b", shown_left="a", seconds=1.0),
        LabelRecord(3, 10, "tie", shown_left="a", seconds=5.0),
    ]
    q = annotator_quality(recs)
    assert (q[10].labels, q[10].gold_labels, q[10].gold_accuracy) == (3, 1, 1.0)
    assert q[11].gold_accuracy == 0.0
    assert q[10].peer_pairs == 2 and q[10].peer_agreement == 0.5  # disagrees on 1, agrees on 2
    assert q[10].median_seconds == 5.0
    assert q[10].left_rate == 1.0  # both of its a/b picks were the left response
    assert q[11].left_rate == 0.0  # it picked the right-hand response both times


def test_majority_counts_ties_half() -> None:
    recs = [LabelRecord(1, i, c) for i, c in enumerate(["a", "a", "b"])]
    recs += [LabelRecord(2, i, c) for i, c in enumerate(["b", "tie", "both_bad"])]
    recs += [LabelRecord(3, i, c) for i, c in enumerate(["a", "b"])]
    aggs = {a.comparison_id: a for a in aggregate_majority(recs)}
    assert aggs[1].p_a == pytest.approx(2 / 3) and aggs[1].winner == "a"
    assert aggs[1].agreement == pytest.approx(2 / 3)
    assert aggs[2].p_a == pytest.approx(1 / 3) and aggs[2].winner == "b"
    assert aggs[3].winner is None  # balanced: not exported


def test_bradley_terry_recovers_strengths() -> None:
    # 0 beats 1 in 3 of 4 games, 1 beats 2 in 3 of 4: MLE gaps are log 3 each
    a, b = np.array([0, 0, 0, 0, 1, 1, 1, 1]), np.array([1, 1, 1, 1, 2, 2, 2, 2])
    s = np.array([1, 1, 1, 0, 1, 1, 1, 0], dtype=float)
    theta = bradley_terry(a, b, s, 3, prior=0.0)
    assert theta[0] - theta[1] == pytest.approx(math.log(3), abs=1e-6)
    assert theta[1] - theta[2] == pytest.approx(math.log(3), abs=1e-6)
    # an unbeaten item stays finite thanks to the prior
    theta = bradley_terry(np.array([0, 0]), np.array([1, 1]), np.array([1.0, 1.0]), 2, prior=1.0)
    assert np.all(np.isfinite(theta)) and theta[0] > theta[1]


def test_bradley_terry_aggregation_borrows_evidence() -> None:
    # responses 100 > 101 and 101 > 102 clearly; the 100-vs-102 pair itself is split 1:1
    def rec(cid: int, who: int, choice: str, ra: int, rb: int) -> LabelRecord:
        return LabelRecord(cid, who, choice, response_a_id=ra, response_b_id=rb)

    recs = [rec(1, i, "a", 100, 101) for i in range(3)] + [
        rec(2, i, "a", 101, 102) for i in range(3)
    ]
    recs += [rec(3, 0, "a", 100, 102), rec(3, 1, "b", 100, 102)]
    maj = {a.comparison_id: a for a in aggregate_majority(recs)}
    bt = {a.comparison_id: a for a in aggregate_bradley_terry(recs)}
    assert maj[3].winner is None
    assert bt[3].winner == "a" and bt[3].p_a > 0.6
    assert bt[1].winner == "a" and bt[1].votes == 3
    assert aggregate_bradley_terry([]) == []
