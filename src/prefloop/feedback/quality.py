"""Label quality and aggregation: gold accuracy, peer agreement, Cohen's and Fleiss' kappa,
time per label, left/right bias, and majority / Bradley-Terry aggregation per comparison.

Everything here is a pure function of `LabelRecord`s, so it is tested without a database and
reused by the admin page, the API and the export.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

CATEGORIES = ("a", "b", "tie", "both_bad")
# Arena convention: a tie or "both bad" is half a win for each side
SCORE_A = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}


@dataclass(frozen=True)
class LabelRecord:
    comparison_id: int
    annotator_id: int
    choice: str  # a | b | tie | both_bad
    shown_left: str | None = None  # which response was on the left
    seconds: float | None = None
    gold_choice: str | None = None  # the known answer when the comparison is gold
    response_a_id: int | None = None
    response_b_id: int | None = None


@dataclass(frozen=True)
class AnnotatorQuality:
    annotator_id: int
    labels: int
    gold_labels: int
    gold_accuracy: float | None  # share of gold comparisons answered with the gold choice
    peer_pairs: int
    peer_agreement: float | None  # share of (this label, a peer's label) pairs that agree
    cohen_kappa: float | None  # Cohen's kappa of this annotator against peers, pooled pairs
    median_seconds: float | None
    left_rate: float | None  # share of a/b decisions that picked the left response (0.5 = none)


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters from (rater1, rater2) category pairs; None if undefined."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(1 for x, y in pairs if x == y) / n
    first, second = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    if expected >= 1.0:  # both raters used a single, identical category: kappa undefined
        return None
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(items: Iterable[Sequence[str]]) -> float | None:
    """Fleiss' kappa over items with >= 2 ratings each (varying rater counts allowed)."""
    p_items, totals, n_ratings = [], Counter[str](), 0
    for ratings in items:
        n = len(ratings)
        if n < 2:
            continue
        counts = Counter(ratings)
        p_items.append((sum(c * c for c in counts.values()) - n) / (n * (n - 1)))
        totals.update(counts)
        n_ratings += n
    if not p_items:
        return None
    p_bar = sum(p_items) / len(p_items)
    p_e = sum((c / n_ratings) ** 2 for c in totals.values())
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def annotator_quality(records: Sequence[LabelRecord]) -> dict[int, AnnotatorQuality]:
    """Per-annotator quality from all labels (peers = the other labels on the same comparison)."""
    by_comparison: dict[int, list[LabelRecord]] = defaultdict(list)
    by_annotator: dict[int, list[LabelRecord]] = defaultdict(list)
    for r in records:
        by_comparison[r.comparison_id].append(r)
        by_annotator[r.annotator_id].append(r)
    out = {}
    for annotator_id, mine in by_annotator.items():
        gold = [r for r in mine if r.gold_choice is not None]
        pairs = [
            (r.choice, peer.choice)
            for r in mine
            for peer in by_comparison[r.comparison_id]
            if peer.annotator_id != annotator_id
        ]
        seconds = [r.seconds for r in mine if r.seconds is not None]
        sided = [r for r in mine if r.choice in ("a", "b") and r.shown_left in ("a", "b")]
        out[annotator_id] = AnnotatorQuality(
            annotator_id=annotator_id,
            labels=len(mine),
            gold_labels=len(gold),
            gold_accuracy=_share(r.choice == r.gold_choice for r in gold),
            peer_pairs=len(pairs),
            peer_agreement=_share(x == y for x, y in pairs),
            cohen_kappa=cohen_kappa(pairs),
            median_seconds=statistics.median(seconds) if seconds else None,
            left_rate=_share(r.choice == r.shown_left for r in sided),
        )
    return out


def _share(flags: Iterable[bool]) -> float | None:
    values = list(flags)
    return sum(values) / len(values) if values else None


# ---- aggregation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    comparison_id: int
    votes: int
    p_a: float  # aggregated probability that response a is better
    agreement: float  # share of votes that agree with the aggregated winner (ties count half)

    @property
    def winner(self) -> str | None:
        """'a', 'b', or None when the votes are balanced (such comparisons are not exported)."""
        if abs(self.p_a - 0.5) < 1e-9:
            return None
        return "a" if self.p_a > 0.5 else "b"


def aggregate_majority(records: Sequence[LabelRecord]) -> list[Aggregate]:
    """Per comparison: share of votes for a, ties and both-bad counting half for each side."""
    groups: dict[int, list[LabelRecord]] = defaultdict(list)
    for r in records:
        groups[r.comparison_id].append(r)
    out = []
    for cid in sorted(groups):
        scores = [SCORE_A[r.choice] for r in groups[cid]]
        p_a = sum(scores) / len(scores)
        out.append(Aggregate(cid, len(scores), p_a, _agreement(scores, p_a)))
    return out


def _agreement(scores: Sequence[float], p_a: float) -> float:
    winner_score = 1.0 if p_a >= 0.5 else 0.0
    return sum(1.0 - abs(s - winner_score) for s in scores) / len(scores)


def bradley_terry(
    a: np.ndarray,
    b: np.ndarray,
    score_a: np.ndarray,
    n_items: int,
    prior: float = 1.0,
    iters: int = 500,
) -> np.ndarray:
    """Bradley-Terry log-strengths by MM iterations (Hunter 2004), O(games) per iteration.

    Game g is item a[g] against item b[g]; score_a[g] is 1 if a won, 0 if b won, 0.5 for a tie.
    `prior` adds games against a virtual item of strength 1 (half won, half lost), which keeps
    strengths finite when an item won (or lost) every game. Returns theta (centred at 0) with
    P(i beats j) = sigmoid(theta_i - theta_j).
    """
    won = (
        np.bincount(a, weights=score_a, minlength=n_items)
        + np.bincount(b, weights=1.0 - score_a, minlength=n_items)
        + prior / 2
    )
    p = np.ones(n_items)
    for _ in range(iters):
        inv = 1.0 / (p[a] + p[b])
        denom = (
            np.bincount(a, weights=inv, minlength=n_items)
            + np.bincount(b, weights=inv, minlength=n_items)
            + prior / (p + 1.0)
        )
        new = won / denom
        done = np.max(np.abs(np.log(new) - np.log(p))) < 1e-9
        p = new
        if done:
            break
    theta: np.ndarray = np.log(p)
    return theta - theta.mean()


def aggregate_bradley_terry(records: Sequence[LabelRecord], prior: float = 1.0) -> list[Aggregate]:
    """Per comparison P(a better) from a Bradley-Terry fit over responses.

    Responses that appear in several comparisons (k responses per prompt) share one strength, so
    the verdict on one pair borrows evidence from the others (a > b and b > c say something about
    a vs c); for an isolated pair this is a smoothed vote share. Needs response ids on records.
    """
    index: dict[int, int] = {}
    ea: list[int] = []
    eb: list[int] = []
    scores_a: list[float] = []
    groups: dict[int, list[LabelRecord]] = defaultdict(list)
    for r in records:
        if r.response_a_id is None or r.response_b_id is None:
            raise ValueError("Bradley-Terry aggregation needs response ids on every label")
        a = index.setdefault(r.response_a_id, len(index))
        b = index.setdefault(r.response_b_id, len(index))
        ea.append(a)
        eb.append(b)
        scores_a.append(SCORE_A[r.choice])
        groups[r.comparison_id].append(r)
    if not index:
        return []
    theta = bradley_terry(
        np.array(ea, dtype=np.int64),
        np.array(eb, dtype=np.int64),
        np.array(scores_a),
        len(index),
        prior=prior,
    )
    out = []
    for cid in sorted(groups):
        first = groups[cid][0]
        diff = theta[index[first.response_a_id]] - theta[index[first.response_b_id]]  # type: ignore[index]
        p_a = float(1.0 / (1.0 + np.exp(-diff)))
        scores = [SCORE_A[r.choice] for r in groups[cid]]
        out.append(Aggregate(cid, len(scores), p_a, _agreement(scores, p_a)))
    return out


AGGREGATORS = {"majority": aggregate_majority, "bradley_terry": aggregate_bradley_terry}
