"""Held-out metrics of a reward model: accuracy against the labels and against the noise-free
gold, Bradley-Terry loss, and a calibration table (predicted P(chosen) vs observed)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from prefloop.models.reward import score
from prefloop.train.losses import bradley_terry

if TYPE_CHECKING:
    from prefloop.train.reward import PairRecord

CALIBRATION_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CLEAR_GOLD_GAP = 0.1  # `accuracy_gold_clear`: pairs whose gold scores differ at least this much


def calibration_table(p_chosen: torch.Tensor) -> list[dict[str, Any]]:
    """Predicted P(chosen) vs observed, folded onto the favourite: confidence = max(p, 1 - p),
    observed = how often the favourite was the labelled choice. A calibrated model's rows have
    observed ~ confidence."""
    conf = torch.maximum(p_chosen, 1 - p_chosen)
    right = (p_chosen > 0.5).float()
    rows = []
    for lo, hi in itertools.pairwise(CALIBRATION_BINS):
        inside = (conf >= lo) & ((conf < hi) if hi < 1.0 else (conf <= hi))
        n = int(inside.sum())
        rows.append({
            "bin": f"{lo:.1f}-{hi:.1f}",
            "count": n,
            "predicted": float(conf[inside].mean()) if n else float("nan"),
            "observed": float(right[inside].mean()) if n else float("nan"),
        })  # fmt: skip
    return rows


def expected_calibration_error(table: Sequence[dict[str, Any]]) -> float:
    total = sum(r["count"] for r in table)
    return sum(r["count"] * abs(r["observed"] - r["predicted"]) for r in table if r["count"]) / max(
        total, 1
    )


def gold_accuracy(
    records: Sequence[PairRecord], gap: torch.Tensor, eps: float
) -> tuple[float | None, int, float | None]:
    """(RM accuracy against the noise-free gold, pairs scored, label agreement with gold).

    Each comparison counts once however many labels it has; pairs whose gold scores differ by
    less than `eps` have no gold winner and are skipped."""
    from prefloop.feedback.gold import sentiment_gold

    gold_c = sentiment_gold([r.prompt for r in records], [r.chosen for r in records])
    gold_r = sentiment_gold([r.prompt for r in records], [r.rejected for r in records])
    seen, rm_right, label_right = set(), 0, 0
    for i, r in enumerate(records):
        key = (r.prompt, *sorted((r.chosen, r.rejected)))
        if r.tie or key in seen or abs(gold_c[i] - gold_r[i]) < eps:
            continue
        seen.add(key)
        gold_says_chosen = gold_c[i] > gold_r[i]
        rm_right += int(bool(gap[i] > 0) == gold_says_chosen)
        label_right += int(gold_says_chosen)
    n = len(seen)
    return (rm_right / n if n else None), n, (label_right / n if n else None)


def heldout_metrics(
    models: Sequence[Any], tokenizer: Any, heldout: Sequence[PairRecord], use_gold: bool, eps: float
) -> dict[str, Any]:
    """Accuracy vs the held-out labels (and gold), Bradley-Terry loss and calibration.

    Loss and calibration use member 0's raw scores (the probabilities it was trained to give);
    accuracies use the ensemble mean of normalized scores."""
    decided = [r for r in heldout if not r.tie]
    if not decided:
        return {}
    prompts = [r.context for r in decided]
    raw_c = score(models[0], tokenizer, prompts, [r.chosen for r in decided], 64, raw=True)
    raw_r = score(models[0], tokenizer, prompts, [r.rejected for r in decided], 64, raw=True)
    gap = torch.stack([
        score(m, tokenizer, prompts, [r.chosen for r in decided], 64)
        - score(m, tokenizer, prompts, [r.rejected for r in decided], 64)
        for m in models
    ]).mean(0)  # fmt: skip  # (N,)
    table = calibration_table(torch.sigmoid(raw_c - raw_r))
    metrics: dict[str, Any] = {
        "accuracy": float((gap > 0).float().mean()),
        "heldout_loss": float(bradley_terry(raw_c, raw_r).mean()),
        "ece": expected_calibration_error(table),
        "calibration": table,
    }
    if use_gold:
        acc, n, agreement = gold_accuracy(decided, gap, eps)
        metrics.update(accuracy_gold=acc, gold_pairs=n, label_gold_agreement=agreement)
        clear, n_clear, _ = gold_accuracy(decided, gap, max(eps, CLEAR_GOLD_GAP))
        metrics.update(accuracy_gold_clear=clear, gold_pairs_clear=n_clear)
    return metrics
