"""Annotators: anything that turns comparisons into labels. People label through the web app;
`SimulatedAnnotator` labels from a gold scoring function, with a configurable amount of noise.

How the simulated annotator chooses (Bradley–Terry with temperature t):

    d = gold(prompt, A) - gold(prompt, B)
    |d| <  tie_epsilon   ->  "tie"  (gold cannot tell them apart)
    otherwise            ->  "a" with probability sigmoid(d / t), else "b"

Its agreement with the noise-free gold on a pair is sigmoid(|d| / t): near 1 for clear pairs,
near 1/2 for close ones, as with human labelers. `t` is calibrated per batch so that the
*expected* agreement over the batch's non-tie pairs equals the configured `agreement`:

    mean_i sigmoid(|d_i| / t) = agreement

The left side falls monotonically from 1 (t -> 0) to 1/2 (t -> inf), so a bisection on log t
finds the unique solution. Calibrating on the differences at hand (rather than fixing t) keeps
the configured rate meaningful whatever the gold scale and however close the sampled pairs are.
agreement = 1 means no noise (t = 0); agreement = 0.5 means coin flips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from prefloop.errors import PrefloopError
from prefloop.feedback.gold import GoldScorer
from prefloop.feedback.models import ComparisonView, LabelIn
from prefloop.feedback.store import PreferenceStore


class Annotator(Protocol):
    name: str
    kind: str  # an annotators.kind value: human | end_user | simulated | imported

    def label(self, comparisons: Sequence[ComparisonView]) -> list[LabelIn]:
        """One label per comparison, in order."""
        ...


def calibrate_temperature(abs_diffs: np.ndarray, agreement: float) -> float:
    """The Bradley–Terry temperature t with mean(sigmoid(|d| / t)) == agreement (see module doc)."""
    d = abs_diffs[abs_diffs > 0]
    if len(d) == 0 or agreement >= 1.0:
        return 0.0
    if agreement <= 0.5:
        return math.inf

    def expected(log_t: float) -> float:
        return float(np.mean(1.0 / (1.0 + np.exp(-d / math.exp(log_t)))))

    # sigmoid(x) ~ 1/2 + x/4 for small x, so t = 1e6 * max|d| gives ~0.5000003 and
    # t = 1e-3 * min|d| gives ~1 - e^-1000: the solution lies between
    lo, hi = math.log(float(d.min()) * 1e-3), math.log(float(d.max()) * 1e6)
    for _ in range(200):
        mid = (lo + hi) / 2
        if expected(mid) > agreement:
            lo = mid  # too agreeable: more noise
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


@dataclass
class SimulatedAnnotator:
    """Labels comparisons from `gold(prompts, responses) -> scores` (higher is better) with
    Bradley–Terry noise calibrated to `agreement`; ties when |score difference| < tie_epsilon.
    Seeded: the same comparisons in the same order get the same labels."""

    gold: GoldScorer
    agreement: float = 0.75
    tie_epsilon: float = 1e-6
    seed: int = 0
    name: str = "simulated"
    kind: str = "simulated"

    def __post_init__(self) -> None:
        if not 0.5 <= self.agreement <= 1.0:
            raise PrefloopError(
                f"agreement must be in [0.5, 1] (coin flips .. no noise), got {self.agreement}",
                field="agreement",
            )
        if not self.tie_epsilon >= 0:
            raise PrefloopError("tie_epsilon must be >= 0", field="tie_epsilon")
        self._rng = np.random.default_rng(self.seed)
        # of the last batch, for reports
        self.temperature: float | None = None
        self.last_differences: np.ndarray = np.zeros(0)

    def gold_differences(self, comparisons: Sequence[ComparisonView]) -> np.ndarray:
        """gold(A) - gold(B) per comparison."""
        prompts = [c.prompt for c in comparisons]
        scores = self.gold(
            prompts + prompts,
            [c.response_a for c in comparisons] + [c.response_b for c in comparisons],
        )
        if len(scores) != 2 * len(comparisons):
            raise ValueError(
                f"gold scorer returned {len(scores)} scores for {2 * len(comparisons)}"
            )
        s = np.asarray(scores, dtype=np.float64)
        return s[: len(comparisons)] - s[len(comparisons) :]

    def label(self, comparisons: Sequence[ComparisonView]) -> list[LabelIn]:
        if not comparisons:
            return []
        d = self.last_differences = self.gold_differences(comparisons)
        tie = np.abs(d) < self.tie_epsilon
        t = calibrate_temperature(np.abs(d[~tie]), self.agreement)
        self.temperature = t
        u = self._rng.random(len(d))  # one draw per comparison, ties included: stable streams
        if t == 0.0:
            p_a = (d > 0).astype(np.float64)
        elif math.isinf(t):
            p_a = np.full(len(d), 0.5)
        else:
            p_a = 1.0 / (1.0 + np.exp(-d / t))
        choice = np.where(tie, "tie", np.where(u < p_a, "a", "b"))
        return [LabelIn(c.id, str(ch)) for c, ch in zip(comparisons, choice, strict=True)]


@dataclass(frozen=True)
class LabelRun:
    annotator: str
    labelled: int
    choices: dict[str, int]
    temperature: float | None
    gold_agreement: float | None  # realized agreement with noise-free gold on non-tie pairs


def label_pending(
    store: PreferenceStore,
    annotator: SimulatedAnnotator,
    *,
    limit: int | None = None,
    sources: Sequence[str] | None = None,
    chunk: int = 5000,
) -> LabelRun:
    """Label every comparison still short of labels that `annotator` has not labelled yet.

    Calibrates once over all of them (one batch), then writes in chunks of `chunk` labels,
    each its own transaction (a crash keeps the chunks already written; rerunning continues).
    """
    ann_id = store.ensure_annotator(annotator.name, annotator.kind)
    todo = store.next_comparisons(ann_id, limit, sources=sources)
    labels = annotator.label(todo)
    for start in range(0, len(labels), chunk):
        store.add_labels(ann_id, labels[start : start + chunk])
    counts = {c: sum(1 for lab in labels if lab.choice == c) for c in ("a", "b", "tie")}
    agree = None
    if labels:
        d = annotator.last_differences
        decided = [(lab.choice, x) for lab, x in zip(labels, d, strict=True) if lab.choice != "tie"]
        if decided:
            hits = sum((ch == "a") == (x > 0) for ch, x in decided)
            agree = hits / len(decided)
    return LabelRun(annotator.name, len(labels), counts, annotator.temperature, agree)
