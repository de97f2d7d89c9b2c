"""The sampler's settings, in a module without torch so the CLI can build its flags cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from prefloop.config import option


@dataclass
class SamplingParams:
    max_new_tokens: int = option(32, "maximum tokens generated per response")
    temperature: float = option(1.0, "softmax temperature (0 = greedy)")
    top_p: float = option(1.0, "nucleus sampling: keep the smallest token set with this much mass")
    top_k: int = option(0, "keep only the k most likely tokens (0 = off)")
    n: int = option(1, "samples per prompt")
    seed: int | None = option(None, "seed for reproducible sampling")
    batch_size: int = option(64, "rows generated together (prompts x n)")
    truncation: str = option(
        "left", "prompt longer than the context: 'left' (truncate, warn) or 'error'"
    )
