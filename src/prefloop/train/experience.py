"""The Experience batch: the only contract between making experience and learning from it.

Rollout code (prefloop.train.rollout) fills one under no_grad; the PPO learner
(prefloop.train.ppo) only reads it. A faster generation backend or a remote reward model can
replace the rollout side without touching the learner, as long as it fills these fields.

Shapes: B = sequences, P = prompt tokens (left-padded), T = response tokens (right-padded).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Experience:
    sequences: Tensor  # (B, P+T) long: left-padded prompt ids, then response ids (pad after EOS)
    attention_mask: Tensor  # (B, P+T) long: 1 on real prompt tokens and on response tokens
    response_mask: Tensor  # (B, T) float: 1 on response tokens up to and including EOS
    old_logprobs: Tensor  # (B, T) log π_old(a_t), temperature-scaled, at sampling time
    ref_logprobs: Tensor  # (B, T) log π_ref(a_t), same temperature
    values: Tensor  # (B, T) V_old(s_t) from the value model at rollout time
    rewards: Tensor  # (B, T) -β·k1 per token + score at the last response token
    advantages: Tensor  # (B, T) GAE(γ, λ), whitened over the batch if configured
    returns: Tensor  # (B, T) advantages (before whitening) + values: the value targets
    scores: Tensor  # (B,) sequence score (after the missing-EOS penalty)

    @property
    def prompt_len(self) -> int:
        """P: responses start at this column of `sequences`."""
        return self.sequences.shape[1] - self.response_mask.shape[1]

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def select(self, index: Tensor) -> Experience:
        """The rows `index` (a minibatch); all tensors stay aligned."""
        return Experience(
            **{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)}
        )

    def to(self, device: torch.device | str) -> Experience:
        return Experience(
            **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)}
        )
