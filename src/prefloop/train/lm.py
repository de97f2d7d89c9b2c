"""Next-token prediction on (input_ids, labels) rows: the task behind pretraining and SFT.

Pretraining rows are packed blocks whose labels are the ids themselves; SFT rows carry -100
on prompt tokens so the loss covers the response only. One task, two data preparations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


def next_token_loss(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of predicting labels[:, 1:] from ids[:, :-1]; returns (loss, tokens)."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[
        :, :-1
    ]  # (B, T-1, V)
    targets = labels[:, 1:]
    n = int((targets != IGNORE).sum())
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE
    )
    return loss, n


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-pad rows to (B, T) ids, attention mask and labels (-100 on padding)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
        labels[i, : len(y)] = torch.tensor(y)
    return ids, mask, labels


@dataclass
class LanguageModelingTask:
    """Shuffled epochs over `rows`; batch `step` is a deterministic function of (seed, step)."""

    rows: list[tuple[list[int], list[int]]]
    eval_rows: list[tuple[list[int], list[int]]]
    batch_size: int
    grad_accum: int
    pad_id: int
    seed: int = 0

    def microbatches(self, step: int) -> list[tuple[torch.Tensor, ...]]:
        per_step = self.batch_size * self.grad_accum
        start = step * per_step
        out = []
        for m in range(self.grad_accum):
            idx = [self._index(start + m * self.batch_size + j) for j in range(self.batch_size)]
            out.append(collate([self.rows[i] for i in idx], self.pad_id))
        return out

    def _index(self, k: int) -> int:
        epoch, pos = divmod(k, len(self.rows))
        if getattr(self, "_perm_epoch", None) != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = torch.randperm(len(self.rows), generator=g).tolist()
            self._perm_epoch = epoch
        return self._perm[pos]

    def loss(
        self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, n = next_token_loss(model, *batch)
        return loss, {"loss/train": loss.item(), "charts/tokens": float(n)}

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        if not self.eval_rows:
            return {}
        total, count = 0.0, 0
        for i in range(0, len(self.eval_rows), self.batch_size):
            loss, n = next_token_loss(
                model, *collate(self.eval_rows[i : i + self.batch_size], self.pad_id)
            )
            total += float(loss) * n
            count += n
        mean = total / max(count, 1)
        return {"loss/eval": mean, "charts/eval_perplexity": math.exp(min(mean, 50.0))}


def unigram_entropy(rows: Sequence[tuple[list[int], list[int]]]) -> float:
    """Entropy (nats) of the label-token unigram distribution: the loss of a model with no context."""
    counts: dict[int, int] = {}
    for _, labels in rows:
        for t in labels[1:]:
            if t != IGNORE:
                counts[t] = counts.get(t, 0) + 1
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0
