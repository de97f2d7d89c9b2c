"""Win-rates with bootstrap confidence intervals.

A comparison of A and B on one prompt is a preference p in {1 (A wins), 0.5 (tie), 0 (B wins)};
the win-rate is the mean of p over prompts, and its 95% interval comes from resampling the
prompts with replacement (percentile bootstrap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class WinRate:
    rate: float  # mean preference for A (ties count 0.5)
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def preferences_from_scores(
    scores_a: Sequence[float], scores_b: Sequence[float], tie_eps: float = 1e-9
) -> list[float]:
    """1 where A scores higher, 0 where B does, 0.5 within `tie_eps`."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"{len(scores_a)} scores for A but {len(scores_b)} for B")
    out = []
    for a, b in zip(scores_a, scores_b, strict=True):
        out.append(0.5 if abs(a - b) <= tie_eps else float(a > b))
    return out


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    x = torch.tensor(list(values), dtype=torch.float64)
    if x.numel() == 0:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (n_boot, x.numel()), generator=g)
    means = x[idx].mean(dim=1)
    alpha = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return float(low), float(high)


def win_rate(preferences: Sequence[float], n_boot: int = 2000, seed: int = 0) -> WinRate:
    """Win-rate of A over B from per-prompt preferences, with a bootstrap 95% interval."""
    if not preferences:
        raise ValueError("no comparisons")
    prefs = [float(p) for p in preferences]
    low, high = bootstrap_ci(prefs, n_boot=n_boot, seed=seed)
    return WinRate(
        rate=sum(prefs) / len(prefs),
        ci_low=low,
        ci_high=high,
        wins=sum(p == 1.0 for p in prefs),
        ties=sum(p == 0.5 for p in prefs),
        losses=sum(p == 0.0 for p in prefs),
    )
