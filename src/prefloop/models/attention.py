"""SDPA attention in float32 where a bfloat16 one is slow: training under CPU bf16 autocast.

Autocast runs `scaled_dot_product_attention` in bf16. On CPU (torch 2.13) the flash-attention
forward is as fast in bf16 as in float32, but its backward is about 4x slower (23 vs 6.6 ms for
32 x 8 heads x 52 tokens x 64 on a Xeon with AMX; docs/benchmarks.md), and a bf16 PPO step at 21M spent a fifth of its
time there. So while gradients are on, CPU bf16 attention is computed in float32 (also the more
precise) and its output handed back in bf16; everything else goes to transformers' SDPA as is.
"bf16" means any of query, key and value: Llama-family RoPE multiplies q and k by float32 cos/sin
under autocast, so there only the value arrives in bf16 (autocast would cast all three down).
Sampling and scoring run without grad and keep bf16 attention (its forward is as fast); the
learner's log-probs then differ from the sampler's by bf16 rounding, as they would anyway.

`install()` registers the wrapper as transformers' "sdpa" attention (its documented extension
point, `AttentionInterface.register`); the training loop calls it when a bf16 run starts on CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward


def sdpa_float32_backward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """transformers' `sdpa_attention_forward`, in float32 for bf16 CPU tensors under grad."""
    bf16 = torch.bfloat16 in (query.dtype, key.dtype, value.dtype)
    slow = bf16 and query.device.type == "cpu" and torch.is_grad_enabled()
    if not slow:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(torch.bfloat16), weights  # what autocast's own bf16 attention returns


def install() -> None:
    """Make `sdpa_float32_backward` transformers' SDPA attention (idempotent)."""
    AttentionInterface.register("sdpa", sdpa_float32_backward)
